"""DINOv2's PCA picture of patch features (Oquab et al. 2023, fig. 1 and fig. 9).

As the paper describes it: a PCA of the patch features of a set of images; patches
with a negative score on the first component are removed as background; a second PCA
on the remaining (foreground) patches gives three components shown as RGB, background
black. The first component's sign is arbitrary (the official notebook loads a
precomputed direction); here the side holding fewer of the images' border patches is
called foreground (objects, and bodies on a scanner's table, rarely fill the edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PcaMaps:
    """``foreground``: ``(N, h, w)`` bool; ``rgb``: ``(N, h, w, 3)`` float in [0, 1]."""

    foreground: np.ndarray
    rgb: np.ndarray


def _components(x: np.ndarray, k: int) -> np.ndarray:
    """Projections of rows of ``x`` on its first ``k`` principal axes, sign fixed so the
    largest loading of each axis is positive (the same picture on every run)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return centred @ (axes * signs[:, None]).T


def border_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def foreground_split(patches: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(N, h*w, D)`` → ``(N, h, w)``: the first component above its mean, oriented so
    that border patches are mostly background."""
    n, t, d = patches.shape
    h, w = grid
    first = _components(patches.reshape(n * t, d).astype(np.float64), 1)[:, 0]
    above = (first > 0).reshape(n, h, w)
    border = border_mask(h, w)
    if above[:, border].mean() > (~above)[:, border].mean():
        above = ~above
    return above


def pca_maps(
    patches: np.ndarray, grid: tuple[int, int], groups: list[str] | None = None
) -> PcaMaps:
    """The picture for ``(N, h*w, D)`` patch features. The foreground split is fitted
    per group of similar images (``groups``: one label per image, e.g. its modality), as
    DINOv2 does: fitted on all images, the first component separates modalities, and
    low-contrast ones (an ultrasound fan on black) fall wholly on the background side
    and show black. The colours are fitted on every foreground patch together, so
    they compare across images."""
    n, t, d = patches.shape
    h, w = grid
    if groups is None:
        fg = foreground_split(patches, grid)
    else:
        fg = np.zeros((n, h, w), bool)
        for label in sorted(set(groups)):
            ids = [i for i, g in enumerate(groups) if g == label]
            fg[ids] = foreground_split(patches[ids], grid)
    rgb = np.zeros((n * t, 3))
    flat_fg = fg.reshape(-1)
    chosen = patches.reshape(n * t, d)[flat_fg].astype(np.float64)
    if len(chosen) >= 2:
        comps = _components(chosen, 3)
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
        lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
        rgb[flat_fg] = np.clip((comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return PcaMaps(fg, rgb.reshape(n, h, w, 3))


def patch_mask(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A pixel mask ``(S, S)`` → the patches of a ``grid`` more than half covered."""
    import torch

    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    return (torch.nn.functional.adaptive_avg_pool2d(m, grid)[0, 0] > 0.5).numpy()


def foreground_agreement(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    union = np.logical_or(predicted, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, truth).sum() / union)


def body_agreement(
    patches: np.ndarray, grid: tuple[int, int], body: dict[int, np.ndarray]
) -> float | None:
    """Mean IoU of the PCA foreground and the HU body mask over the CT slices, with the
    PCA fitted on the CT slices alone (DINOv2 fits it per group of similar images)."""
    if not body:
        return None
    ids = sorted(body)
    fg = foreground_split(patches[ids], grid)
    scores = [foreground_agreement(fg[j], patch_mask(body[i], grid)) for j, i in enumerate(ids)]
    return float(np.mean(scores))
