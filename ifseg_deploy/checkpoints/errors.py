"""The one error type for every checkpoint problem a user can cause (file, size, vocabulary, categories)."""


class CheckpointError(ValueError):
    """A checkpoint or model directory that cannot be used; the message names the file and what was expected."""
