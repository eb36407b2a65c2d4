"""A TorchServe handler that does no work: the same answer to every request (benchmarks.floors' TorchServe floor).

benchmarks.floors packs it with torch-model-archiver into an archive of its own, with the digits model's
model-config.yaml, so that TorchServe runs it with the same workers and batching as the real handler.
"""

ANSWER = '{"predictions":[{"probabilities":[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1],"classes":3}]}'


class NoopHandler:
    """Reads nothing, computes nothing: one fixed answer per request of the batch."""

    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return [ANSWER] * len(data)


_service = NoopHandler()


def handle(data, context):
    """TorchServe's entry point for a module handler."""
    if data is None:
        return None
    return _service.handle(data, context)
