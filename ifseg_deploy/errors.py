"""The errors a user can cause, in four families under one base, so every command catches one type.

* :class:`InputError`: what the user gave is wrong (category names, options, paths, images, datasets);
  :class:`UsageError` for options that cannot go together.
* :class:`ArtifactError`: a file or folder is missing, damaged, of another kind, or stale (checkpoints, model
  directories, ONNX files, engines).
* :class:`BackendError`: an engine is not installed here or fails to load (ONNX Runtime providers, TensorRT).
* :class:`QualityError`: an export failed its own check (parity with its reference, the INT8 gate).

``ifseg-deploy`` prints the message as ``Error: ...`` and exits with :attr:`IfsegError.exit_code`; ``--debug``
(or ``IFSEG_DEPLOY_DEBUG=1``) shows the traceback instead. Anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations


class IfsegError(Exception):
    """Base of every error ifseg-deploy raises on purpose; its message says what happened and what to do."""

    exit_code = 1


class InputError(IfsegError, ValueError):
    """Bad input from the user: names, options, paths, images, datasets."""


class UsageError(InputError):
    """Options that cannot go together (exit status 2, as for click's own usage errors)."""

    exit_code = 2


class ArtifactError(IfsegError, ValueError):
    """A checkpoint, model directory, ONNX file or engine that cannot be used as it is."""


class BackendError(IfsegError, RuntimeError):
    """An inference engine that is missing here or fails to start."""


class QualityError(IfsegError, RuntimeError):
    """An exported model that fails its accuracy gate."""


#: The name the first version of this module used; kept for one release.
IfsegUsageError = UsageError
