"""The one error type for every checkpoint problem a user can cause (file, size, vocabulary, categories)."""

from ..errors import IfsegError


class CheckpointError(IfsegError, ValueError):
    """A checkpoint or model directory that cannot be used; the message names the file and what was expected."""
