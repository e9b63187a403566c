"""The three terms of the DINOv2 objective, each in its own module."""

from biovfm_dinov2.loss.dino_clstoken import DINOClsTokenLoss
from biovfm_dinov2.loss.ibot_patch import IBOTPatchLoss
from biovfm_dinov2.loss.koleo import KoLeoLoss

__all__ = ["DINOClsTokenLoss", "IBOTPatchLoss", "KoLeoLoss"]
