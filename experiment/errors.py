"""The one exception type for user mistakes, reported as a single sentence and a non-zero exit."""


class UsageError(Exception):
    """A mistake in what the user asked for (flags, paths, data); its message is one sentence."""
