"""The Python REST servers' front end: uvicorn, configured through its public Config only, in a background thread.

uvicorn parses HTTP in C (httptools) on a C event loop (uvloop): a slow or idle connection costs a few kilobytes,
never a thread. It runs serving.frontend.asgi's bridge, which keeps the body limit and deadlines and runs the WSGI
app on a thread pool. What uvicorn itself refuses, in its own plain text (docs/performance.md, "The front end's own
refusals", lists every case):
- malformed HTTP (request line, headers, chunked framing): 400 "Invalid HTTP request received.", and closes;
- a request arriving while max_connections are open (by default three quarters of the open-file limit, raised to
  its hard maximum), its own included: limit_concurrency's 503, and closes.
A kept-alive connection idle for keep_alive_seconds after an answer is closed (timeout_keep_alive). uvicorn has no
deadline for headers, no limit on their size, and no timer on a connection idle before its first request; a proxy
in front (nginx) adds those where the port faces the network.
"""

from __future__ import annotations

import concurrent.futures
import logging
import resource
import socket
import threading
import time
from collections.abc import Iterable
from typing import Protocol
from wsgiref.types import StartResponse, WSGIEnvironment

import uvicorn

from serving.frontend.asgi import FrontEndSettings, WsgiBridge

__all__ = ["FrontEndSettings", "RestFrontEnd", "connection_limit", "listening_socket"]
LISTEN_BACKLOG = 2048
# Open files kept for everything but REST connections (models, gRPC, logs) when the cap follows the open-file limit.
FILE_RESERVE_FRACTION = 4
MAX_CONNECTIONS_CEILING = 16384


def connection_limit() -> int:
    """REST connections one process may hold: the open-file limit, raised to its hard maximum, less a reserve.

    Raising the soft limit is what a server facing many clients is expected to do (the common default of 1024 would
    let 1,000 idle sockets take every file); a quarter is kept for models, gRPC and logs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    wanted = max(soft, MAX_CONNECTIONS_CEILING * 2) if hard == resource.RLIM_INFINITY else hard
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # some systems refuse; the soft limit then stays what it was
            pass
    return max(16, min(MAX_CONNECTIONS_CEILING, soft - soft // FILE_RESERVE_FRACTION))


def listening_socket(host: str, port: int, share_port: bool) -> socket.socket:
    """A bound, listening TCP socket; with share_port, other processes may bind the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class DrainableApp(Protocol):
    """A WSGI app that can refuse new requests and wait for those it admitted (serving.frontend.draining)."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse, /) -> Iterable[bytes]: ...

    def drain(self, timeout_s: float) -> bool: ...


class RestFrontEnd:
    """uvicorn serving a WSGI app (with a drain(timeout) method) on an already bound socket, in its own thread."""

    def __init__(self, app: DrainableApp, sock: socket.socket, settings: FrontEndSettings) -> None:
        self.app = app
        self.sock = sock
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rest")
        config = uvicorn.Config(
            WsgiBridge(app, settings, self.executor),
            http="httptools",
            loop="uvloop",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # the server's own logging set-up stays in charge
            access_log=False,  # a line per request would cost more than the request
            proxy_headers=False,  # the port is the server itself, not behind a proxy it should trust
            server_header=False,  # as TensorFlow Serving's evhttp answers: a Date header, no Server header
            date_header=True,
            timeout_keep_alive=max(round(settings.keep_alive_seconds), 1),
            limit_concurrency=settings.max_connections or connection_limit(),
            backlog=LISTEN_BACKLOG,
        )
        # uvicorn warns once per malformed request and per refused connection: any client could fill the log.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, args=([sock],), name="rest-server", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self, grace_s: float) -> bool:
        """Stop listening, close idle connections, answer 503 on kept-alive ones, wait for requests in flight."""
        deadline = time.monotonic() + grace_s
        self.server.config.timeout_graceful_shutdown = max(int(grace_s), 1)
        self.server.should_exit = True  # uvicorn's loop notices within 0.1 s
        drained = self.app.drain(grace_s)
        self._thread.join(max(deadline - time.monotonic(), 0.0) + 1.0)
        self.executor.shutdown(wait=False)
        return drained and not self._thread.is_alive()
