"""`python -m serving.tfserving`: start the server with tensorflow_model_server's flags."""

import logging
import os
import sys

from experiment import library_logs

if __name__ == "__main__":
    # Before the server's modules import TensorFlow: its start-up lines below warning stay out of the log.
    library_logs.quiet()
    from serving.tfserving.main import main

    status = main()
    # The server has drained and stopped (or never started); what is left is TensorFlow's and grpc's teardown at
    # interpreter exit, 1 to 2 s per process on a busy machine, which would push the exit past the grace period
    # that a supervisor enforces. Nothing in it matters any more, so the process ends here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
