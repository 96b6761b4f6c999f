"""Image-free adaptation (`ifseg-deploy adapt`): train SegOFA on word maps of the category names."""

from .config import AdaptConfig
from .trainer import AdaptationInterrupted, AdaptResult, adapt

__all__ = ["AdaptConfig", "AdaptResult", "AdaptationInterrupted", "adapt"]
