"""The built-in demo dataset: real medical images that ship inside installed packages.

Used when ``--data`` is omitted, so every command runs with no download. Origins
(all files are read from the installed package; nothing is fetched):

scikit-image (``skimage.data``)
    * ``retina`` — colour fundus photograph of a human retina (Wikimedia Commons,
      public domain), 1411x1411 → fundus / eye, cut into patches.
    * ``microaneurysms`` — crop of a fundus image with microaneurysms (from the
      e-ophtha / DIARETDB-style grading literature, as packaged by scikit-image),
      102x102 gray → fundus / eye.
    * ``immunohistochemistry`` — IHC-stained colonic tissue (scikit-image's
      ``immunohistochemistry``), 512x512 RGB → microscopy / colon, patches.
    * ``cell`` — phase-contrast light-microscopy image of a cell, 660x550 gray →
      microscopy / cell, patches.

pydicom (``pydicom/data/test_files``, only files that ship in the wheel)
    * ``CT_small.dcm`` — CT slice downsized from NEMA WG04 ``CT1_UNC`` → ct, HU.
    * ``693_J2KI.dcm`` — CT slice (JPEG 2000) from pydicom's issue 693 set → ct.
    * ``J2K_pixelrep_mismatch.dcm`` — head CT slice (JPEG 2000 lossless) → ct / head.
    * ``MR_small.dcm`` — MR slice downsized from NEMA WG04 ``MR1_UNC`` → mr.
    * ``examples_overlay.dcm`` — Siemens abdominal MR (liver lesion) → mr / abdomen.
    * ``examples_rgb_color.dcm`` — ultrasound (``US1_UNCR``) → us.
    * ``examples_palette.dcm`` — palette-colour ultrasound (``OBXXXX1A``) → us.
    * ``examples_ybr_color.dcm`` — 30-frame JPEG ultrasound cine → us, per frame.
    * ``JPEG2000.dcm`` — whole-body bone scintigraphy → nm / whole body.

nibabel (``nibabel/tests/data``)
    * ``example4d.nii.gz`` — EPI functional MRI of a human brain (first volume),
      axial slices → mr / brain.
    * ``anatomical.nii`` — downsampled T1 anatomical MRI of a brain (from SPM's
      example data) → mr / brain.

Files whose decoder is not installed (e.g. JPEG 2000 without Pillow's OpenJPEG)
are reported as scan problems and left out, never a crash.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import SampleRecord, ScanProblem, SourceTags

from ._common import join_uri, split_uri

# name: (modality, anatomy, whether to cut into patches, background threshold)
SKIMAGE_IMAGES: dict[str, tuple[str, str, bool, float]] = {
    "retina": ("fundus", "eye", True, 25.0),
    "microaneurysms": ("fundus", "eye", False, 0.0),
    "immunohistochemistry": ("microscopy", "colon", True, 0.0),
    "cell": ("microscopy", "cell", True, 0.0),
}

PYDICOM_FILES: dict[str, tuple[str, str]] = {
    "CT_small.dcm": ("ct", "unknown"),
    "693_J2KI.dcm": ("ct", "unknown"),
    "J2K_pixelrep_mismatch.dcm": ("ct", "head"),
    "MR_small.dcm": ("mr", "unknown"),
    "examples_overlay.dcm": ("mr", "abdomen"),
    "examples_rgb_color.dcm": ("us", "unknown"),
    "examples_palette.dcm": ("us", "unknown"),
    "examples_ybr_color.dcm": ("us", "unknown"),
    "JPEG2000.dcm": ("nm", "whole body"),
}

NIBABEL_FILES: dict[str, tuple[str, str, int]] = {
    "example4d.nii.gz": ("mr", "brain", 2),
    "anatomical.nii": ("mr", "brain", 2),
}

ORIGINS = ("skimage", "pydicom", "nibabel")


def pydicom_test_dir() -> str:
    # Read the wheel's own folder: pydicom's get_testdata_file() would try to
    # download files that are not bundled, which hangs without a network.
    import pydicom

    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def nibabel_test_dir() -> str:
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")


@functools.lru_cache(maxsize=8)
def _skimage(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


class DemoReader:
    """Real images bundled with scikit-image, pydicom and nibabel (no download).

    Options
    -------
    patch: side of the square patches large 2D images are cut into.
    origins: comma list of ``skimage``, ``pydicom``, ``nibabel``.
    """

    def __init__(
        self,
        location: str = "",
        tags: SourceTags | None = None,
        *,
        patch: int = 256,
        origins: str = "skimage,pydicom,nibabel",
    ) -> None:
        self.tags = tags or SourceTags(source="demo", modality="auto")
        self.source = self.tags.source or "demo"
        self.patch = patch
        self.origins = tuple(o.strip() for o in origins.split(",") if o.strip())
        unknown = set(self.origins) - set(ORIGINS)
        if unknown:
            from biovfm_core.errors import ConfigError

            raise ConfigError(
                f"demo reader: unknown origins {sorted(unknown)}; valid: {', '.join(ORIGINS)}"
            )

    def scan(self) -> Iterator[SampleRecord | ScanProblem]:
        if "skimage" in self.origins:
            yield from self._scan_skimage()
        if "pydicom" in self.origins:
            yield from self._scan_pydicom()
        if "nibabel" in self.origins:
            yield from self._scan_nibabel()

    def _scan_skimage(self) -> Iterator[SampleRecord | ScanProblem]:
        for name, (modality, anatomy, tile, background) in SKIMAGE_IMAGES.items():
            uri = f"skimage:{name}"
            try:
                img = _skimage(name)
            except Exception as exc:
                yield ScanProblem(uri, f"scikit-image data not available: {exc}")
                continue
            h, w = img.shape[:2]
            p = self.patch
            if not tile or h < p or w < p:
                yield SampleRecord(uri=uri, source=self.source, modality=modality, anatomy=anatomy)
                continue
            for y in range(0, h - p + 1, p):
                for x in range(0, w - p + 1, p):
                    # Fundus photographs are a disc on black; corner patches show nothing.
                    if background and img[y : y + p, x : x + p].mean() < background:
                        continue
                    yield SampleRecord(
                        uri=join_uri(uri, y=y, x=x, size=p),
                        source=self.source,
                        modality=modality,
                        anatomy=anatomy,
                    )

    def _scan_pydicom(self) -> Iterator[SampleRecord | ScanProblem]:
        from .dicom import DicomReader

        root = pydicom_test_dir()
        for name, (modality, anatomy) in PYDICOM_FILES.items():
            path = os.path.join(root, name)
            if not os.path.exists(path):
                yield ScanProblem(path, "not shipped with this pydicom version")
                continue
            tags = SourceTags(source=self.source, modality=modality, anatomy=anatomy)
            for item in DicomReader(path, tags).scan():
                if isinstance(item, SampleRecord) and item.anatomy != anatomy:
                    item = SampleRecord(item.uri, item.source, item.modality, anatomy, item.label)
                yield item

    def _scan_nibabel(self) -> Iterator[SampleRecord | ScanProblem]:
        from .nifti import NiftiReader

        root = nibabel_test_dir()
        for name, (modality, anatomy, axis) in NIBABEL_FILES.items():
            path = os.path.join(root, name)
            if not os.path.exists(path):
                yield ScanProblem(path, "not shipped with this nibabel version")
                continue
            tags = SourceTags(source=self.source, modality=modality, anatomy=anatomy)
            yield from NiftiReader(path, tags, axis=axis).scan()

    def load(self, record: SampleRecord) -> np.ndarray:
        path, frag = split_uri(record.uri)
        if path.startswith("skimage:"):
            name = path.split(":", 1)[1]
            if name not in SKIMAGE_IMAGES:
                raise BadImageError(record.uri, "not a demo image")
            img = _skimage(name)
            if "size" in frag:
                y, x, s = int(frag["y"]), int(frag["x"]), int(frag["size"])
                img = img[y : y + s, x : x + s]
            return np.ascontiguousarray(img)
        if ".nii" in path:
            from .nifti import load_nifti_slice

            return load_nifti_slice(path, int(frag.get("axis", 2)), int(frag.get("slice", 0)))
        from .dicom import load_dicom

        return load_dicom(path, int(frag["frame"]) if "frame" in frag else None)
