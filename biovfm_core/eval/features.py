"""Frozen features, extracted once per (model, benchmark, input size, kind, split).

One forward pass yields both the CLS and the mean-patch features, and both are
cached, so switching ``--features`` or protocol never re-runs the backbone.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from biovfm_core.eval.data import SPLITS, Benchmark, preprocess
from biovfm_core.files import chmod_as_open

FEATURE_KINDS = ("cls", "mean", "both")
_STORED = ("cls", "mean")


def default_cache_dir() -> Path:
    return Path(os.environ.get("BIOVFM_CACHE", Path.home() / ".cache" / "biovfm")) / "features"


class FeatureCache:
    """``.npy`` files under ``root``, one per key, written atomically (temp + rename),
    so an interrupted extraction never leaves a truncated file behind."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None
        # Without a folder, features still serve every protocol of this process.
        self._memory: dict[tuple, np.ndarray] = {}

    def path(self, model_id: str, bench: Benchmark, size: int, kind: str, split: str) -> Path:
        digest = hashlib.sha256(bench.fingerprint.encode()).hexdigest()[:12]
        name = f"{bench.name}-{digest}_{size}px_{kind}_{split}.npy"
        return self.root / model_id / name  # type: ignore[operator]

    @staticmethod
    def _key(model_id: str, bench: Benchmark, size: int, kind: str, split: str) -> tuple:
        return (model_id, bench.fingerprint, size, kind, split)

    def get(self, *key) -> np.ndarray | None:
        if self.root is None:
            return self._memory.get(self._key(*key))
        p = self.path(*key)
        return np.load(p) if p.is_file() else None

    def put(self, array: np.ndarray, *key) -> None:
        if self.root is None:
            self._memory[self._key(*key)] = array
            return
        p = self.path(*key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".npy")
        try:
            chmod_as_open(fd)
            with os.fdopen(fd, "wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@torch.no_grad()
def extract(
    backbone: torch.nn.Module,
    images: np.ndarray,
    *,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    augment: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """CLS and mean-patch features ``(N, D)`` float32 of uint8 ``images`` (of randomly
    augmented copies when ``augment`` is a generator; those are never cached)."""
    backbone.eval()
    cls, mean = [], []
    amp = torch.device(device).type == "cuda"
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start : start + batch_size], size, device, augment)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = backbone.forward_tokens(x)
        cls.append(out.cls.float().cpu())
        mean.append(out.patches.float().mean(dim=1).cpu())
    dim = int(getattr(backbone, "embed_dim", 0))
    empty = np.zeros((0, dim), np.float32)
    return {
        "cls": torch.cat(cls).numpy() if cls else empty,
        "mean": torch.cat(mean).numpy() if mean else empty,
    }


def split_features(
    model_id: str,
    backbone: torch.nn.Module,
    bench: Benchmark,
    kind: str,
    cache: FeatureCache,
    *,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    log=None,
) -> dict[str, np.ndarray]:
    """Features of every split for ``kind`` (``cls``, ``mean`` or ``both``), from the
    cache where present."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, not {kind!r}")
    out = {}
    for split in SPLITS:
        stored = {k: cache.get(model_id, bench, size, k, split) for k in _STORED}
        if any(v is None for v in stored.values()):
            images = bench.splits[split][0]
            if log:
                log(f"  extracting {bench.name}/{split}: {len(images)} images at {size}px")
            stored = extract(backbone, images, size=size, device=device, batch_size=batch_size)
            for k in _STORED:
                cache.put(stored[k], model_id, bench, size, k, split)
        out[split] = (
            np.concatenate([stored["cls"], stored["mean"]], axis=1)
            if kind == "both"
            else stored[kind]
        )
    return out
