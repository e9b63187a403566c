"""Hook implementation of the built-in dataset readers.

Only strings are registered here, so importing this module (which ``biovfm --help``
and ``biovfm plugins`` do) imports neither numpy nor pydicom nor nibabel.
"""

from __future__ import annotations

from biovfm_core import hookimpl


@hookimpl
def biovfm_register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(
        "folder",
        "biovfm_readers.folder:FolderReader",
        description="PNG/JPEG/TIFF (8/16-bit)/BMP image folders; label from sub-folder",
    )
    register(
        "dicom",
        "biovfm_readers.dicom:DicomReader",
        description="DICOM files or trees: rescale to HU, frames split, MONOCHROME1 inverted",
    )
    register(
        "nifti",
        "biovfm_readers.nifti:NiftiReader",
        description="NIfTI volumes cut into 2D slices along an axis, empty slices skipped",
    )
    register(
        "medmnist",
        "biovfm_readers.medmnist:MedMNISTReader",
        description="MedMNIST v2 / MedMNIST+ .npz (28/64/128/224 px, gray or RGB, labelled)",
    )
    register(
        "demo",
        "biovfm_readers.demo:DemoReader",
        description="built-in demo images shipped in scikit-image, pydicom and nibabel",
    )
    register(
        "shards",
        "biovfm_core.data.shards.reader:ShardReader",
        description="shard folders from `biovfm data pack` (litdata chunks + biovfm index); "
        "no options, one shard set per run",
    )
    register(
        "demo_benchmark",
        "biovfm_readers.demo_benchmark:DemoBenchmarkReader",
        description="offline benchmark tasks (modality, texture, plane) cut from the demo images; "
        "eval with --benchmark demo",
    )
