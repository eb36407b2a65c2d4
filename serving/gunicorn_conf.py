"""gunicorn settings for the Flask app: gunicorn -c serving/gunicorn_conf.py 'serving.flask_app:create_app()'.

Command-line flags win over this file (e.g. -b 127.0.0.1:5001); WEB_CONCURRENCY sets the number of workers.
SIGTERM stops gracefully, within graceful_timeout seconds: the workers answer new requests 503 while the ones they
hold finish, and close the port once no new request has arrived for half a second (serving/gunicorn_worker.py).
SIGINT and SIGQUIT stop at once.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile

bind = ["127.0.0.1:5000"]
# Processes, each with its own copy of the model and one torch thread: on a small CPU model, several single-threaded
# workers serve more requests than one worker whose torch threads fight over the same cores.
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, min(4, os.cpu_count() or 1))))
# gevent (serving/gunicorn_worker.py says why): a connection costs a greenlet, not a thread, so idle and slow
# clients cannot take a worker's capacity; the worker adds read deadlines, a bounded body and JSON errors.
worker_class = "serving.gunicorn_worker.FlaskGeventWorker"
worker_connections = 1000  # open connections per worker; more wait in the listen queue
# Seconds a connection may stay idle, and the deadline for a request's line and headers to arrive (the gevent
# worker's keep-alive timeout covers both); the body's deadline is the app's FLASK_BODY_TIMEOUT_SECONDS.
keepalive = 5
timeout = 30
graceful_timeout = 20
# gunicorn's defaults, spelled out: longer lines and headers are refused (414, 431) before any of the app runs.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# No preloading: each worker imports torch, loads the model and starts its own version poller after the fork
# (a thread started in the master would not survive the fork).
preload_app = False
accesslog = None  # one log line per request would cost more than the prediction; /metrics counts requests
control_socket_disable = True  # gunicorn 27's control socket has one path per user: two servers would collide

# prometheus_client's multiprocess mode: every worker writes its metrics into files here, /metrics adds them up.
# It must be set before any worker imports prometheus_client, which is why it is set in this file.
_created_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _created_metrics_dir = tempfile.mkdtemp(prefix="flask-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server) -> None:
    """Clear metric files a previous run left in a reused PROMETHEUS_MULTIPROC_DIR."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def post_fork(server, worker) -> None:
    """In each new worker: the app's log lines in gunicorn's error log (the worker pins torch to one thread)."""
    serving_logger = logging.getLogger("serving")
    serving_logger.setLevel(logging.INFO)
    serving_logger.handlers = list(server.log.error_log.handlers)
    serving_logger.propagate = False


def worker_exit(server, worker) -> None:
    """Stop the worker's model poller before the process exits."""
    application = getattr(worker, "wsgi", None)
    extensions = getattr(application, "extensions", {})
    manager = extensions.get("model_manager") if isinstance(extensions, dict) else None
    if manager is not None:
        manager.stop()


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics folder this file created."""
    if _created_metrics_dir is not None:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
