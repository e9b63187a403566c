"""DICOM files and trees (pydicom).

``load`` returns what the scanner measured, not display values: the modality LUT
(RescaleSlope / RescaleIntercept) is applied, so CT comes back as float32
Hounsfield units; other images keep their stored integer type when no rescale is
present. MONOCHROME1 images (bright = low value, common in CR/DX X-ray) are
inverted within their stored bit range so that bone is bright everywhere.
Multi-frame objects (cine ultrasound, enhanced CT/MR, NM) become one record per
frame, ``file.dcm#frame=N``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import (
    DEFAULT_MAX_PIXELS,
    SampleRecord,
    ScanProblem,
    SourceTags,
    normalise_modality,
)

from ._common import (
    SIDECAR_EXTENSIONS,
    allowed_modalities,
    join_uri,
    require_location,
    split_uri,
    walk_files,
)

# DICOM Modality (0008,0060) values → our ids; the rest (SEG, RTDOSE, SR...) are
# not images of a patient's anatomy and are skipped when the modality is inferred.
_DICOM_MODALITY = {
    "CT": "ct",
    "MR": "mr",
    "US": "us",
    "CR": "xray",
    "DX": "xray",
    "MG": "xray",
    "RF": "xray",
    "XA": "xray",
    "IO": "xray",
    "PX": "xray",
    "NM": "nm",
    "PT": "nm",
    "ES": "endoscopy",
    "SM": "microscopy",
    "GM": "microscopy",
    "OP": "fundus",
    "XC": "dermoscopy",
    "OPT": "octa",
    "OCT": "octa",
}


def _tsyntax(ds) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "", "unknown transfer syntax"
    return str(uid), getattr(uid, "name", str(uid))


def decoder_problem(ds) -> str | None:  # type: ignore[no-untyped-def]
    """Why this dataset's pixel data cannot be decoded here, or None."""
    from pydicom.pixels import get_decoder

    uid, name = _tsyntax(ds)
    if not uid:
        return None
    try:
        dec = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {name} ({uid}) is not supported by pydicom"
    if not dec.is_available:
        missing = "; ".join(dec.missing_dependencies) or "no decoder plugin"
        return f"no installed handler can decode transfer syntax {name} ({uid}): install one of: {missing}"
    return None


class DicomReader:
    """DICOM files, or folder trees of them (any file name; non-DICOM files are reported).

    Options
    -------
    split_frames: a multi-frame object yields one record per frame; off, only the
        middle frame is used.
    max_pixels: frames with more pixels are refused (decompression-bomb guard).
    extensions: comma list of file extensions to consider (``".dcm,.dicom"``); empty
        means every file, since DICOM files often have no extension.
    """

    def __init__(
        self,
        location: str,
        tags: SourceTags,
        *,
        split_frames: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        extensions: str = "",
    ) -> None:
        self.location = require_location(location, "dicom")
        self.tags = tags
        self.split_frames = split_frames
        self.max_pixels = max_pixels
        self.extensions = {e.strip().lower() for e in extensions.split(",") if e.strip()}
        self.allowed = allowed_modalities(tags)

    def scan(self) -> Iterator[SampleRecord | ScanProblem]:
        import pydicom
        from pydicom.errors import InvalidDicomError

        for path in walk_files(self.location):
            if isinstance(path, ScanProblem):
                yield path
                continue
            ext = os.path.splitext(path)[1].lower()
            if self.extensions and ext not in self.extensions:
                continue
            if ext in SIDECAR_EXTENSIONS:
                continue
            if os.path.getsize(path) == 0:
                yield ScanProblem(path, "zero-byte file")
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except InvalidDicomError:
                yield ScanProblem(path, "not a DICOM file (no DICM preamble)")
                continue
            except Exception as exc:
                yield ScanProblem(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}")
                continue
            if "Rows" not in ds or "Columns" not in ds:
                sop = getattr(ds, "SOPClassUID", None)
                yield ScanProblem(
                    path, f"no image in this DICOM object ({getattr(sop, 'name', sop)})"
                )
                continue
            pixels = int(ds.Rows) * int(ds.Columns)
            if pixels > self.max_pixels:
                yield ScanProblem(
                    path, f"{ds.Columns}x{ds.Rows} frame exceeds {self.max_pixels} pixels"
                )
                continue
            problem = decoder_problem(ds)
            if problem:
                yield ScanProblem(path, problem)
                continue
            modality = self._modality(ds)
            if modality is None:
                wanted = ",".join(self.allowed)
                yield ScanProblem(
                    path, f"DICOM modality {ds.get('Modality')!r} is not one of {wanted}"
                )
                continue
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
            except (TypeError, ValueError):
                yield ScanProblem(path, f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}")
                continue
            anatomy = self.tags.anatomy
            if anatomy == "unknown" and ds.get("BodyPartExamined"):
                anatomy = str(ds.BodyPartExamined).strip().lower() or "unknown"
            if frames == 1:
                indices: list[int | None] = [None]
            elif self.split_frames:
                indices = list(range(frames))
            else:
                indices = [frames // 2]
            for i in indices:
                uri = path if i is None else join_uri(path, frame=i)
                yield SampleRecord(
                    uri=uri, source=self.tags.source, modality=modality, anatomy=anatomy
                )

    def _modality(self, ds) -> str | None:  # type: ignore[no-untyped-def]
        if len(self.allowed) == 1:
            return self.allowed[0]
        found = _DICOM_MODALITY.get(str(ds.get("Modality", "")).upper())
        if found is None:
            try:
                found = normalise_modality(str(ds.get("Modality", "")))
            except ValueError:
                return None
        return found if found in self.allowed else None

    def load(self, record: SampleRecord) -> np.ndarray:
        path, frag = split_uri(record.uri)
        frame = int(frag["frame"]) if "frame" in frag else None
        return load_dicom(path, frame, self.max_pixels)


def load_dicom(
    path: str, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one DICOM frame to modality values (HU for CT), MONOCHROME1 inverted."""
    import pydicom

    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "zero-byte file")
        ds = pydicom.dcmread(path)
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(path, f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    if "PixelData" not in ds:
        raise BadImageError(path, "no pixel data")
    if int(ds.Rows) * int(ds.Columns) > max_pixels:
        raise BadImageError(path, f"{ds.Columns}x{ds.Rows} frame exceeds {max_pixels} pixels")
    problem = decoder_problem(ds)
    if problem:
        raise BadImageError(path, problem)
    _, name = _tsyntax(ds)
    try:
        from pydicom.pixels import pixel_array

        arr = pixel_array(ds, index=frame) if frame is not None else ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 and frame is None:
            arr = arr[len(arr) // 2]
    except Exception as exc:
        raise BadImageError(
            path, f"cannot decode pixel data (transfer syntax {name}): {type(exc).__name__}: {exc}"
        ) from exc
    return _to_values(ds, arr, path)


def _to_values(ds, arr: np.ndarray, path: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if rgb.dtype == np.uint16:  # 16-bit palette entries: the colours are 8-bit in the top byte
            rgb = (rgb >> 8).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if arr.ndim == 3:  # colour (RGB, or YBR already converted by pydicom)
        return np.ascontiguousarray(arr)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    rescaled = "RescaleSlope" in ds or "RescaleIntercept" in ds
    if rescaled:
        out = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    else:
        out = arr
    if photometric == "MONOCHROME1":
        # Invert inside the stored range, not the image's own min/max, so the same
        # tissue gets the same value in every image of a series.
        if rescaled:
            out = np.float32(lo + hi) - out
        else:
            wide = out.astype(np.int64)
            out = (lo + hi - wide).astype(arr.dtype if not signed else np.int32)
    if ds.get("Modality") == "CT" and out.dtype != np.float32:
        out = out.astype(np.float32)
    return np.ascontiguousarray(out)
