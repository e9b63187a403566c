"""Small MedMNIST-layout ``.npz`` files with learnable structure, for tests and the
extraction benchmark (no download needed): each class is a stripe orientation and
frequency, each multi-label finding a bright blob at its own position, under noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _images(
    labels: np.ndarray, side: int, rgb: bool, multilabel: bool, rng, signal: float
) -> np.ndarray:
    n = len(labels)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = rng.normal(0.5, 0.12, size=(n, side, side)).astype(np.float32)
    if multilabel:
        width = labels.shape[1]
        for j in range(width):
            cy, cx = 0.2 + 0.6 * ((j * 7) % width) / width, 0.2 + 0.6 * j / width
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.004)
            out += 2 * signal * labels[:, j, None, None] * blob
    else:
        for k in np.unique(labels):
            angle = np.pi * k / 5.0
            freq = 3 + 2 * (k % 3)
            wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
            out[labels == k] += signal * wave
    img = (np.clip(out, 0, 1) * 255).astype(np.uint8)
    if rgb:
        img = np.stack([img, np.roll(img, 1, axis=1), img[:, ::-1]], axis=-1)
    return img


def write_medmnist_npz(
    path: str | Path,
    *,
    num_classes: int = 3,
    multilabel: bool = False,
    sizes: tuple[int, int, int] = (60, 30, 30),
    side: int = 28,
    rgb: bool = False,
    seed: int = 0,
    signal: float = 0.3,
) -> Path:
    """Write ``{train,val,test}_{images,labels}`` as MedMNIST does (uint8 images,
    ``(N, 1)`` int labels or ``(N, L)`` 0/1 for multi-label). ``signal`` scales the
    class pattern against noise of std 0.12 (lower: harder)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        if multilabel:
            labels = (rng.random((n, num_classes)) < 0.4).astype(np.uint8)
            stored = labels
        else:
            labels = np.arange(n) % num_classes
            rng.shuffle(labels)
            stored = labels.reshape(-1, 1).astype(np.uint8)
        arrays[f"{split}_images"] = _images(labels, side, rgb, multilabel, rng, signal)
        arrays[f"{split}_labels"] = stored
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
