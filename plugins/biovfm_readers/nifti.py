"""NIfTI volumes (nibabel) read as 2D slices.

A volume ``v.nii.gz`` becomes records ``v.nii.gz#axis=2&slice=k`` for every
``stride``-th slice along ``axis`` that is not constant (background-only slices carry
nothing to learn and are common at the ends of a scan). Values are the scaled
voxel values (``scl_slope``/``scl_inter`` applied), so CT NIfTI stays in HU.
4D volumes use one time point (option ``volume``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import DEFAULT_MAX_PIXELS, SampleRecord, ScanProblem, SourceTags

from ._common import ModalityGuess, join_uri, require_location, split_uri, walk_files

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class NiftiReader:
    """A NIfTI file, or a folder tree of ``.nii`` / ``.nii.gz`` files, as 2D slices.

    Options
    -------
    axis: the axis slices are cut along (0 sagittal, 1 coronal, 2 axial for RAS data).
    stride: keep every ``stride``-th slice (neighbouring slices are near duplicates).
    volume: time point of a 4D series.
    max_pixels: slices with more pixels are refused.
    """

    def __init__(
        self,
        location: str,
        tags: SourceTags,
        *,
        axis: int = 2,
        stride: int = 1,
        volume: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        from biovfm_core.errors import ConfigError

        self.location = require_location(location, "nifti")
        if axis not in (0, 1, 2):
            raise ConfigError(f"nifti reader: axis must be 0, 1 or 2, not {axis}")
        if stride < 1:
            raise ConfigError(f"nifti reader: stride must be >= 1, not {stride}")
        self.tags = tags
        self.axis = axis
        self.stride = stride
        self.volume = volume
        self.max_pixels = max_pixels
        self._modality = ModalityGuess("nifti", self.location, tags)
        self.allowed = self._modality.allowed
        # The last gzipped volume decoded: ((path, volume), array). gzip cannot seek,
        # so reading one slice decompresses the file up to it; keeping the volume makes
        # the next slices of the same file (a pack, a scan-ordered read) free.
        self._cached: tuple[tuple[str, int], np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cached": None}

    @property
    def notes(self) -> list[str]:
        """What the last ``scan`` wants the user to know (an unnamed modality)."""
        return self._modality.notes

    def scan(self) -> Iterator[SampleRecord | ScanProblem]:
        self._modality.unnamed = 0
        for path in walk_files(self.location):
            if isinstance(path, ScanProblem):
                yield path
                continue
            if not path.lower().endswith(_NIFTI_SUFFIXES):
                continue
            if os.path.getsize(path) == 0:
                yield ScanProblem(path, "zero-byte file")
                continue
            modality = self._modality(path)
            try:
                vol = _read_volume(path, self.volume)
            except Exception as exc:
                yield ScanProblem(path, f"cannot read NIfTI volume: {type(exc).__name__}: {exc}")
                continue
            shape = vol.shape
            plane = int(np.prod([s for i, s in enumerate(shape) if i != self.axis]))
            if plane > self.max_pixels:
                yield ScanProblem(path, f"slices of {plane} pixels exceed {self.max_pixels}")
                continue
            others = tuple(i for i in range(3) if i != self.axis)
            # Constant slices have max == min; NaN-only slices count as empty too.
            # fmax/fmin skip NaN like nanmax/nanmin, without the "All-NaN slice" warning.
            with np.errstate(invalid="ignore"):
                spread = np.fmax.reduce(vol, axis=others) - np.fmin.reduce(vol, axis=others)
            kept = [k for k in range(0, shape[self.axis], self.stride) if spread[k] > 0]
            if not kept:
                yield ScanProblem(path, _why_empty(vol))
            for k in kept:
                yield SampleRecord(
                    uri=join_uri(path, axis=self.axis, slice=k),
                    source=self.tags.source,
                    modality=modality,
                    anatomy=self.tags.anatomy,
                )

    def load(self, record: SampleRecord) -> np.ndarray:
        path, frag = split_uri(record.uri)
        axis = int(frag.get("axis", self.axis))
        k = int(frag.get("slice", 0))
        vol_idx = int(frag.get("volume", self.volume))
        if path.lower().endswith(".gz"):
            vol = self._gz_volume(path, vol_idx)
            if vol is not None and 0 <= k < vol.shape[axis]:
                return _native_slice(vol[(slice(None),) * axis + (k,)])
        return load_nifti_slice(path, axis, k, vol_idx)

    def _gz_volume(self, path: str, volume: int) -> np.ndarray | None:
        """The whole volume, decoded once while its slices are asked for in turn;
        ``None`` (read the slice alone) for a volume too large to hold or unreadable."""
        if self._cached is not None and self._cached[0] == (path, volume):
            return self._cached[1]
        self._cached = None
        try:
            import nibabel as nib

            if int(np.prod(nib.load(path).shape[:3])) > _MAX_CACHED_VOXELS:
                return None
            vol = _read_volume(path, volume)
        except Exception:  # the slice read below names the file and the reason
            return None
        self._cached = ((path, volume), vol)
        return vol


# 128M voxels: 512 MB as float32, one volume per reader (per loader worker).
_MAX_CACHED_VOXELS = 1 << 27


def _why_empty(vol: np.ndarray) -> str:
    """Why a volume gave no slices (a file that gives nothing is a problem to list)."""
    finite = np.isfinite(vol) if vol.dtype.kind in "fc" else None
    if finite is not None and not finite.any():
        return "no usable slice: every voxel is NaN or infinite"
    value = vol[finite][0] if finite is not None else vol.flat[0]
    return f"no usable slice: every slice is constant (e.g. all {value})"


def _read_volume(path: str, volume: int) -> np.ndarray:
    import nibabel as nib

    img = nib.load(path)
    if len(img.shape) < 3:
        raise ValueError(f"expected a 3D or 4D volume, got shape {img.shape}")
    proxy = img.dataobj
    data = proxy[..., volume] if len(img.shape) == 4 else proxy[...]
    data = np.asarray(data)
    while data.ndim > 3:  # 5D (rare): first element of the extra axes
        data = data[..., 0]
    return data


def load_nifti_slice(path: str, axis: int, k: int, volume: int = 0) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(path)
        index: list[object] = [slice(None)] * len(img.shape)
        index[axis] = k
        if len(img.shape) >= 4:
            index[3] = volume
        for i in range(4, len(img.shape)):
            index[i] = 0
        arr = np.asarray(img.dataobj[tuple(index)])
    except Exception as exc:
        raise BadImageError(
            path, f"cannot read NIfTI slice axis={axis} slice={k}: {type(exc).__name__}: {exc}"
        ) from exc
    if arr.ndim != 2:
        raise BadImageError(path, f"slice has shape {arr.shape}, expected 2D")
    return _native_slice(arr)


def _native_slice(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if not arr.dtype.isnative:  # big-endian files; torch and cv2 want native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)
