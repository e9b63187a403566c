"""Matching a teacher's patch grid to the student's.

A ViT-S/14 teacher at 224 px has a 16x16 grid, a ViT-Ti/16 student 14x14: their patch
tokens cover different squares of the image. The teacher's tokens are resampled as an
image of ``D`` channels to the student's grid (bilinear, antialiased when shrinking),
so each student patch is taught by the teacher's features at the same place. DINOv3
instead requires equal patch sizes (dinov3/train/ssl_meta_arch.py, _setup_distillation:
``assert distillation_cfg.student.patch_size == self.cfg.student.patch_size``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def patch_grid(size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The ``(rows, cols)`` of patches a ViT with ``patch_size`` cuts an image into."""
    return size[0] // patch_size, size[1] // patch_size


def match_grid(tokens: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """Patch tokens ``(B, src_h*src_w, D)`` resampled to ``(B, dst_h*dst_w, D)``.

    Row-major token order (a ViT's). Equal grids return ``tokens`` itself.
    """
    if tuple(src) == tuple(dst):
        return tokens
    b, n, d = tokens.shape
    if n != src[0] * src[1]:
        raise ValueError(f"{n} patch tokens do not form a {src[0]}x{src[1]} grid")
    image = tokens.transpose(1, 2).reshape(b, d, src[0], src[1]).float()
    shrinking = dst[0] < src[0] or dst[1] < src[1]
    out = F.interpolate(image, size=dst, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(b, d, dst[0] * dst[1]).transpose(1, 2).to(tokens.dtype)
