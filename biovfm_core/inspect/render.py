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


TITLE_H = 18  # pixels for the title line
LABEL_H = 14  # pixels for a line of column labels
LABEL_W = 76  # pixels for row labels


def grid_png(
    rows: list[list[np.ndarray | None]],
    tile: int,
    *,
    title: str | None = None,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
) -> bytes:
    """Rows of ``(tile, tile, 3)`` tiles in [0, 1] (``None``: an empty cell) as PNG, with
    a title (the model, what the picture is) and labels per row or column (the
    modality), so a PNG says what it shows without index.html beside it."""
    from PIL import Image, ImageDraw

    cols = max(len(r) for r in rows)
    width, height = grid_size(len(rows), cols, tile)
    top = (TITLE_H if title else 0) + (LABEL_H if col_labels else 0)
    left = LABEL_W if row_labels else 0
    canvas = np.full((height + top, width + left, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            y, x = top + GAP + r * (tile + GAP), left + GAP + c * (tile + GAP)
            canvas[y : y + tile, x : x + tile] = _to_uint8(cell[..., :3])
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((GAP + 2, 3), _fit(draw, title, width + left - 4), fill=(0, 0, 0))
    for c, label in enumerate(col_labels or []):
        x = left + GAP + c * (tile + GAP)
        draw.text((x + 2, top - LABEL_H + 1), _fit(draw, label, tile - 2), fill=(60, 60, 60))
    for r, label in enumerate(row_labels or []):
        y = top + GAP + r * (tile + GAP) + tile // 2 - 6
        draw.text((3, y), _fit(draw, label, LABEL_W - 6), fill=(60, 60, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fit(draw, text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels of the default font."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def write_png(path: Path, rows: list[list[np.ndarray | None]], tile: int, **labels) -> Path:
    """``grid_png`` written atomically; ``labels``: its title, row and column labels."""
    from biovfm_core.files import write_atomic

    return write_atomic(path, grid_png(rows, tile, **labels))
