"""PNG grids of equal square tiles (PIL), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

GAP = 2


def upsample(patch_map: np.ndarray, tile: int) -> np.ndarray:
    """``(h, w[, 3])`` per-patch values → ``(tile, tile[, 3])``, each patch a block."""
    from PIL import Image

    arr = np.asarray(patch_map, np.float32)
    h, w = arr.shape[:2]
    rep = np.repeat(np.repeat(arr, -(-tile // h), axis=0), -(-tile // w), axis=1)
    if rep.shape[0] == tile and rep.shape[1] == tile:
        return rep
    img = Image.fromarray(_to_uint8(rep))
    return np.asarray(img.resize((tile, tile), Image.NEAREST), np.float32) / 255.0


def heat(values: np.ndarray) -> np.ndarray:
    """A map scaled to its own min..max, through matplotlib's ``inferno``."""
    from matplotlib import colormaps

    v = np.asarray(values, np.float64)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    return colormaps["inferno"](v)[..., :3].astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid_size(rows: int, cols: int, tile: int) -> tuple[int, int]:
    """``(width, height)`` of a grid PNG."""
    return cols * tile + (cols + 1) * GAP, rows * tile + (rows + 1) * GAP


def grid_png(rows: list[list[np.ndarray | None]], tile: int) -> bytes:
    """Rows of ``(tile, tile, 3)`` tiles in [0, 1] (``None``: an empty cell) as PNG."""
    from PIL import Image

    cols = max(len(r) for r in rows)
    width, height = grid_size(len(rows), cols, tile)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            y, x = GAP + r * (tile + GAP), GAP + c * (tile + GAP)
            canvas[y : y + tile, x : x + tile] = _to_uint8(cell[..., :3])
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, rows: list[list[np.ndarray | None]], tile: int) -> Path:
    from biovfm_core.files import write_atomic

    return write_atomic(path, grid_png(rows, tile))
