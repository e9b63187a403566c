"""Real biomedical images for learning checks: crops of scikit-image's bundled
immunohistochemistry and retina photographs (no download)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _bundled_images() -> tuple:
    from skimage import data

    # Downscaled once: decoding and cropping the 1411 px fundus image dominates otherwise.
    return tuple(
        F.interpolate(
            torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0,
            size=(256, 256),
            mode="bilinear",
            antialias=True,
        )[0]
        for img in (data.immunohistochemistry(), data.retina())
    )


def real_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """Random square crops of two bundled biomedical images, resized to ``size``."""
    g = torch.Generator().manual_seed(seed)
    sources = _bundled_images()
    crops = []
    for i in range(n):
        img = sources[i % 2]
        side = int(torch.randint(img.shape[1] // 4, img.shape[1] // 2, (1,), generator=g))
        top = int(torch.randint(0, img.shape[1] - side, (1,), generator=g))
        left = int(torch.randint(0, img.shape[2] - side, (1,), generator=g))
        crop = img[:, top : top + side, left : left + side][None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    x = torch.stack(crops)
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
