"""The fixed, seeded set of images ``biovfm inspect`` shows every model.

Every model sees the same images, prepared the way ``biovfm eval`` prepares them
(intensities in [0, 1], gray repeated to 3 channels, then ``(u - 0.5) / 0.5``), so
pictures of two models can be compared image for image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from biovfm_core.errors import ConfigError

# Body vs. air on a CT slice: air is -1000 HU, lung about -800, fat -100, soft tissue
# 0..80; -300 keeps the whole body (lungs excepted) and drops the air and the couch foam.
BODY_HU = -300.0
# CT in Hounsfield units is shown (and fed) through the soft-tissue window 40/400.
SOFT_TISSUE = (40.0, 400.0)


@dataclass
class ShownImages:
    """``unit``: ``(N, S, S, 3)`` float32 in [0, 1]; ``body``: for CT slices in HU, the
    ``(S, S)`` body mask (HU > ``BODY_HU``) of image ``i``."""

    uris: list[str]
    modalities: list[str]
    unit: np.ndarray
    body: dict[int, np.ndarray] = field(default_factory=dict)

    def model_input(self, size: int) -> torch.Tensor:
        x = torch.from_numpy(self.unit).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.5


def select_records(records: list, count: int, seed: int) -> list:
    """All records in the order they are shown: CT slices first (up to half of
    ``count``: they carry the body-vs-background check), then every modality in turn,
    each shuffled by ``seed``, so a set covers every modality present and is the same
    on each run. Callers take from the front, skipping images that fail to load."""
    rng = np.random.default_rng(seed)
    by_modality: dict[str, list] = {}
    for record in records:
        by_modality.setdefault(record.modality, []).append(record)
    for group in by_modality.values():
        order = rng.permutation(len(group))
        group[:] = [group[i] for i in order]
    ct = by_modality.get("ct", [])
    chosen = ct[: max(1, count // 2)]
    del ct[: len(chosen)]
    queues = [by_modality[m] for m in sorted(by_modality)]
    while any(queues):
        for queue in queues:
            if queue:
                chosen.append(queue.pop(0))
    return chosen


def to_unit(image: np.ndarray, modality: str) -> np.ndarray:
    """Decoded values → ``(H, W, 3)`` float32 in [0, 1]: uint8 / 255, CT in HU through
    the soft-tissue window, anything else its robust 0.5-99.5 percentile range."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"unsupported image shape {img.shape}")
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.dtype == np.uint8:
        unit = img.astype(np.float32) / 255.0
    elif modality == "ct":
        level, width = SOFT_TISSUE
        unit = np.clip((img.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)
    else:
        flat = img.astype(np.float32).reshape(-1)
        lo, hi = np.percentile(flat[:: max(1, flat.size // 65536)], (0.5, 99.5))
        hi = hi if hi > lo else lo + 1.0
        unit = np.clip((img.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if unit.ndim == 2:
        unit = unit[..., None]
    if unit.shape[-1] == 1:
        unit = np.repeat(unit, 3, axis=-1)
    return unit


def square(image: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """Centre square crop resized to ``size``; ``(H, W[, C])`` in, same layout out."""
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[y : y + side, x : x + side], dtype=np.float32)
    t = torch.from_numpy(crop)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    if side != size:
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        t = F.interpolate(t, size=(size, size), mode=mode, **kwargs)
    out = t[0, 0] if image.ndim == 2 else t[0].permute(1, 2, 0)
    return out.numpy()


def load_images(data: list[str], *, count: int = 12, seed: int = 0, size: int = 224) -> ShownImages:
    """Scan ``data`` (the demo data when empty), pick ``count`` images, prepare them."""
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.scan import scan_sources

    sources, _ = resolve_data(data)
    index, _ = scan_sources(sources, stop_on_error=True, stop_on_missing=True)
    where = " ".join(data) or "(demo)"
    if len(index) == 0:
        raise ConfigError(f"--data {where}: no images found")
    readers = {s.name: s.build_reader() for s in sources if s.exists}
    records = select_records([index.record(i) for i in range(len(index))], count, seed)
    uris, modalities, units, body = [], [], [], {}
    for record in records:
        if len(uris) == count:
            break
        try:
            raw = np.asarray(readers[record.source].load(record))
            unit = square(to_unit(raw, record.modality), size)
        except Exception:  # an undecodable image is skipped: the set is for looking at
            continue
        if record.modality == "ct" and raw.ndim == 2 and raw.dtype != np.uint8:
            body[len(uris)] = square(raw.astype(np.float32), size) > BODY_HU
        uris.append(record.uri)
        modalities.append(record.modality)
        units.append(unit)
    if len(uris) < 2:
        raise ConfigError(f"--data {where}: fewer than 2 readable images to show")
    return ShownImages(uris, modalities, np.stack(units).astype(np.float32), body)
