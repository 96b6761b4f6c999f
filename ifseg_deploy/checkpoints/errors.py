"""The one error type for every checkpoint problem a user can cause (file, size, vocabulary, categories)."""

from ..errors import ArtifactError


class CheckpointError(ArtifactError):
    """A checkpoint or model directory that cannot be used; the message names the file and what was expected."""
