"""alignlab: alignment experiments on model organisms with known ground truth."""

__version__ = "0.1.0"


class AlignlabError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits with code 2."""
