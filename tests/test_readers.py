"""Readers on real files written at test time, and on the images bundled in packages."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from biovfm_readers.dicom import DicomReader
from biovfm_readers.folder import FolderReader
from biovfm_readers.medmnist import MedMNISTReader
from biovfm_readers.nifti import NiftiReader
from PIL import Image

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import SampleRecord, ScanProblem, SourceTags


def _split(items):
    recs = [x for x in items if isinstance(x, SampleRecord)]
    probs = [x for x in items if isinstance(x, ScanProblem)]
    return recs, probs


# ------------------------------------------------------------------ folder
def test_folder_formats_labels_and_bad_files(tmp_path):
    import tifffile

    (tmp_path / "benign").mkdir()
    (tmp_path / "malignant").mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "benign" / "a.png")
    Image.fromarray(rgb).save(tmp_path / "benign" / "b.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "malignant" / "c.bmp")
    img16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "malignant" / "d16.tif", img16)
    Image.fromarray(img16).save(tmp_path / "malignant" / "e16.png")
    tifffile.imwrite(tmp_path / "malignant" / "f8.tiff", rgb)
    (tmp_path / "benign" / "zero.png").write_bytes(b"")
    (tmp_path / "benign" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (tmp_path / "benign" / "a.png").read_bytes()
    (tmp_path / "benign" / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "benign" / "notes.txt").write_text("sidecar, ignored")
    (tmp_path / "benign" / "movie.avi").write_bytes(b"RIFF")
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / "malignant" / "bomb.png")

    reader = FolderReader(
        str(tmp_path),
        SourceTags("s", "xray", "chest"),
        labels_from_subfolders=True,
        max_pixels=10_000,
    )
    recs, probs = _split(list(reader.scan()))
    assert reader.classes == ["benign", "malignant"]
    names = {os.path.basename(r.uri): r for r in recs}
    # Truncated PNG still has a valid header: it is found at load time instead.
    assert set(names) == {"a.png", "b.jpg", "trunc.png", "c.bmp", "d16.tif", "e16.png", "f8.tiff"}
    assert names["a.png"].label == 0 and names["c.bmp"].label == 1
    assert all(r.modality == "xray" and r.anatomy == "chest" for r in recs)
    reasons = {os.path.basename(p.path): p.reason for p in probs}
    assert "zero-byte" in reasons["zero.png"]
    assert "cannot read image header" in reasons["corrupt.png"]
    assert "exceeds" in reasons["bomb.png"]
    assert "unsupported" in reasons["movie.avi"]
    assert "notes.txt" not in reasons

    a = reader.load(names["a.png"])
    assert a.dtype == np.uint8 and a.shape == (20, 30, 3) and np.array_equal(a, rgb)
    for name in ("d16.tif", "e16.png"):
        arr = reader.load(names[name])
        assert arr.dtype == np.uint16 and arr.max() == img16.max()
        assert np.array_equal(arr, img16)
    assert reader.load(names["c.bmp"]).shape == (20, 30)
    assert reader.load(names["f8.tiff"]).shape == (20, 30, 3)
    with pytest.raises(BadImageError) as err:
        reader.load(names["trunc.png"])
    assert "trunc.png" in str(err.value)


# ------------------------------------------------------------------- dicom
def _write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    slope=None,
    intercept=None,
    modality="CT",
    frames=None,
    bits=12,
    signed=False,
    tsyntax=None,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    data = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    if tsyntax is not None:
        from pydicom.encaps import encapsulate

        data = encapsulate([data])  # compressed syntaxes need encapsulated fragments
    ds.PixelData = data
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_monochrome1_frames_and_errors(tmp_path):
    from pydicom.uid import JPEGLSLossless

    raw = np.array([[0, 1000], [1024, 2000]], dtype=np.uint16)
    _write_dicom(tmp_path / "ct.dcm", raw, slope=1, intercept=-1024)
    _write_dicom(tmp_path / "cr.dcm", raw, photometric="MONOCHROME1", modality="CR", bits=12)
    multi = np.stack([np.full((4, 5), k * 10, np.uint16) for k in range(3)])
    _write_dicom(tmp_path / "mf.dcm", multi, modality="MR", frames=3)
    _write_dicom(tmp_path / "jls.dcm", raw, tsyntax=JPEGLSLossless)
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 20)

    reader = DicomReader(str(tmp_path), SourceTags("d", "ct,xray,mr"))
    recs, probs = _split(list(reader.scan()))
    by = {r.uri.replace(str(tmp_path) + "/", ""): r for r in recs}
    assert set(by) == {"ct.dcm", "cr.dcm", "mf.dcm#frame=0", "mf.dcm#frame=1", "mf.dcm#frame=2"}
    assert by["ct.dcm"].modality == "ct" and by["cr.dcm"].modality == "xray"
    assert by["mf.dcm#frame=0"].modality == "mr"

    hu = reader.load(by["ct.dcm"])
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024, -24], [0, 976]])
    inv = reader.load(by["cr.dcm"])  # 12-bit MONOCHROME1: v -> 4095 - v
    np.testing.assert_array_equal(inv, 4095 - raw.astype(np.int64))
    assert reader.load(by["mf.dcm#frame=2"]).max() == 20

    reasons = {os.path.basename(p.path): p.reason for p in probs}
    assert "zero-byte" in reasons["empty.dcm"]
    assert "not a DICOM" in reasons["junk.dcm"]
    # No installed handler decodes JPEG-LS here: a per-file problem naming the syntax.
    assert "JPEG-LS Lossless" in reasons["jls.dcm"]
    with pytest.raises(BadImageError) as err:
        reader.load(SampleRecord(str(tmp_path / "jls.dcm"), "d", "ct"))
    assert "jls.dcm" in str(err.value) and "JPEG-LS" in err.value.reason


def test_dicom_bundled_real_ct_in_hounsfield():
    from biovfm_readers.demo import pydicom_test_dir

    path = os.path.join(pydicom_test_dir(), "CT_small.dcm")
    reader = DicomReader(path, SourceTags("ct", "ct"))
    (rec,) = list(reader.scan())
    hu = reader.load(rec)
    assert hu.shape == (128, 128) and hu.dtype == np.float32
    # Stored values 128..2191 with intercept -1024: air ~ -900 HU, bone > 1000 HU.
    assert hu.min() == pytest.approx(128 - 1024) and hu.max() == pytest.approx(2191 - 1024)


# ------------------------------------------------------------------- nifti
def test_nifti_slices_stride_and_empty_skipped(tmp_path):
    import nibabel as nib

    vol = np.zeros((6, 7, 10), np.int16)
    for k in range(2, 8):
        vol[:, :, k] = np.arange(42, dtype=np.int16).reshape(6, 7) * k - 1000
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 not gzip")

    reader = NiftiReader(str(tmp_path), SourceTags("n", "ct", "abdomen"), axis=2, stride=1)
    recs, probs = _split(list(reader.scan()))
    assert [r.uri.split("slice=")[1] for r in recs] == ["2", "3", "4", "5", "6", "7"]
    assert len(probs) == 1 and "broken.nii.gz" in probs[0].path
    s = reader.load(recs[0])
    np.testing.assert_array_equal(s, vol[:, :, 2])

    strided = NiftiReader(str(tmp_path / "v.nii.gz"), SourceTags("n", "ct"), axis=2, stride=3)
    assert [r.uri.split("slice=")[1] for r in strided.scan()] == ["3", "6"]
    along0 = NiftiReader(str(tmp_path / "v.nii.gz"), SourceTags("n", "ct"), axis=0)
    recs0 = [r for r in along0.scan() if isinstance(r, SampleRecord)]
    assert len(recs0) == 6 and along0.load(recs0[0]).shape == (7, 10)


# ---------------------------------------------------------------- medmnist
def _medmnist(path, n=(10, 4, 6), size=28, rgb=False, multilabel=False, compressed=True):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n, strict=True):
        shape = (k, size, size, 3) if rgb else (k, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            rng.integers(0, 2, (k, 14)) if multilabel else rng.integers(0, 9, (k, 1))
        )
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [True, False])
def test_medmnist_pretraining_and_benchmark(tmp_path, compressed):
    path = tmp_path / "pathmnist_64.npz"
    arrays = _medmnist(path, size=64, rgb=True, compressed=compressed)
    reader = MedMNISTReader(str(path), SourceTags("pathmnist", "auto"))
    recs = list(reader.scan())
    assert len(recs) == 10 and recs[3].uri.endswith("#train/3")
    assert recs[0].modality == "microscopy" and recs[0].anatomy == "colon"
    assert recs[3].label == int(arrays["train_labels"][3, 0])
    np.testing.assert_array_equal(reader.load(recs[3]), arrays["train_images"][3])
    imgs, labels = reader.split_arrays("test")
    assert imgs.shape == (6, 64, 64, 3) and labels.shape == (6,)
    assert len(list(MedMNISTReader(str(path), SourceTags("p", "auto"), split="all").scan())) == 20


def test_medmnist_multilabel_gray_and_bad_layout(tmp_path):
    path = tmp_path / "chestmnist.npz"
    arrays = _medmnist(path, multilabel=True)
    reader = MedMNISTReader(str(path), SourceTags("chest", "auto"))
    recs = list(reader.scan())
    assert recs[0].modality == "xray" and reader.multilabel
    assert recs[2].label == tuple(int(v) for v in arrays["train_labels"][2])
    assert reader.load(recs[2]).shape == (28, 28)
    _imgs, labels = reader.split_arrays("val")
    assert labels.shape == (4, 14)

    np.savez(tmp_path / "pathmnist.npz", images=np.zeros((3, 28, 28), np.uint8))
    (prob,) = list(MedMNISTReader(str(tmp_path / "pathmnist.npz"), SourceTags("x", "auto")).scan())
    assert isinstance(prob, ScanProblem) and "train_images" in prob.reason
    with zipfile.ZipFile(tmp_path / "x.zip", "w"):
        pass
    (tmp_path / "bloodmnist.npz").write_bytes(b"PK broken")
    (prob,) = list(MedMNISTReader(str(tmp_path / "bloodmnist.npz"), SourceTags("x", "auto")).scan())
    assert "not a readable" in prob.reason


# -------------------------------------------------------------------- demo
def test_demo_dataset_real_images_with_honest_tags():
    from biovfm_readers.demo import DemoReader

    reader = DemoReader()
    recs, _probs = _split(list(reader.scan()))
    mods = {r.modality for r in recs}
    assert {"ct", "mr", "us", "fundus", "microscopy"} <= mods
    assert len(recs) >= 50
    by_mod = {}
    for r in recs:
        by_mod.setdefault(r.modality, r)
    ct = reader.load(by_mod["ct"])
    assert ct.dtype == np.float32 and ct.min() < -500  # Hounsfield units (air)
    fundus = reader.load(by_mod["fundus"])
    assert fundus.shape == (256, 256, 3) and fundus.dtype == np.uint8
    brain = [r for r in recs if r.anatomy == "brain"]
    assert brain and reader.load(brain[0]).ndim == 2


def test_max_pixels_defaults_come_from_one_constant():
    import inspect

    from biovfm_readers.dicom import DicomReader
    from biovfm_readers.folder import FolderReader
    from biovfm_readers.nifti import NiftiReader

    from biovfm_core.config import DataConfig
    from biovfm_core.protocols import DEFAULT_MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == 200_000_000
    assert DataConfig().max_image_pixels == DEFAULT_MAX_PIXELS
    for reader in (FolderReader, DicomReader, NiftiReader):
        assert inspect.signature(reader).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS


def test_nifti_gz_slices_come_from_one_decoded_volume_with_the_values_of_a_slice_read(
    tmp_path, monkeypatch
):
    import nibabel as nib
    from biovfm_readers import nifti

    rng = np.random.default_rng(3)
    scaled = nib.Nifti1Image(rng.integers(0, 3000, (7, 6, 5)).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(0.5, -1024)  # stored codes → HU, as scanners write them
    nib.save(scaled, str(tmp_path / "ct.nii.gz"))
    four_d = rng.normal(size=(5, 4, 3, 2)).astype(">f4")  # big-endian, 2 volumes
    nib.save(nib.Nifti1Image(four_d, np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    reads = []
    real = nifti._read_volume
    monkeypatch.setattr(nifti, "_read_volume", lambda p, v: reads.append(p) or real(p, v))
    for name, volume in (("ct.nii.gz", 0), ("fmri.nii.gz", 1)):
        path = str(tmp_path / name)
        for axis in (0, 1, 2):
            reader = NiftiReader(path, SourceTags("s", "mr"), axis=axis, volume=volume)
            records = [r for r in reader.scan() if isinstance(r, SampleRecord)]
            assert len(records) > 1
            reads.clear()  # the scan reads the volume too
            for record in records:
                got = reader.load(record)
                k = int(record.uri.rsplit("slice=", 1)[1])
                want = nifti.load_nifti_slice(path, axis, k, volume)
                assert got.dtype == want.dtype and got.dtype.isnative
                np.testing.assert_array_equal(got, want)
            assert reads == [path]  # one decode for all the slices, not one per slice
