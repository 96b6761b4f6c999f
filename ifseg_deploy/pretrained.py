"""Deprecated: the adapted-model directory lives in :mod:`ifseg_deploy.model_dir` (this alias goes in the next
release)."""

import warnings

from .model_dir import AdaptedModel  # noqa: F401

warnings.warn("ifseg_deploy.pretrained is now ifseg_deploy.model_dir (or `from ifseg_deploy import AdaptedModel`)",
              DeprecationWarning, stacklevel=2)
