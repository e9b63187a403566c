"""`biovfm data pack`: real PNG, DICOM and NIfTI files decoded once into a shard folder.

Every check compares values: each shard item decodes to exactly what the source's
reader gives (within 1/65535 of the range for float data), litdata item i is row i
of biovfm-index.npz, and a pack killed mid-way and run again holds every image once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import litdata
import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from biovfm_core import hookimpl
from biovfm_core.cli.main import cli
from biovfm_core.data.catalog import resolve_data
from biovfm_core.data.index import SampleIndex
from biovfm_core.data.scan import open_reader, scan_sources
from biovfm_core.data.shards import format as fmt
from biovfm_core.data.shards.pack import pack, resize_stored
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.protocols import SampleRecord

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- files


def _png_folder(root: Path, n_gray: int = 3) -> Path:
    """8-bit gray, 8-bit RGB and 16-bit gray PNGs of assorted sizes, and a corrupt one."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n_gray):
        cv2.imwrite(str(root / f"g{i:02d}.png"), rng.integers(0, 256, (9 + i, 7), np.uint8))
    rgb = rng.integers(0, 256, (6, 11, 3), np.uint8)
    cv2.imwrite(str(root / "rgb.png"), rgb[:, :, ::-1])  # cv2 writes BGR
    cv2.imwrite(str(root / "x16.png"), rng.integers(0, 65536, (20, 40), np.uint16))
    (root / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    return root


def _dicom_tree(root: Path) -> Path:
    src = Path(pydicom.__file__).parent / "data" / "test_files"
    (root / "a").mkdir(parents=True)
    shutil.copy(src / "CT_small.dcm", root / "a" / "ct.dcm")  # int16, HU after rescale
    shutil.copy(src / "MR_small.dcm", root / "mr.dcm")
    shutil.copy(src / "MR_truncated.dcm", root / "truncated.dcm")  # header fine, pixels cut
    return root


def _nifti(root: Path, shape=(6, 5, 4), dtype=np.int16, seed=1) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    if np.dtype(dtype).kind == "f":
        vol = rng.normal(0, 3.3, shape).astype(dtype)
    else:
        vol = rng.integers(-1024, 1500, shape).astype(dtype)  # CT-like HU
    path = root / f"vol_{np.dtype(dtype).name}.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path


def _items(out: Path):
    ds = litdata.StreamingDataset(str(out))
    return [ds[i] for i in range(len(ds))]


def _image(item: dict, encoding: str = fmt.DEFAULT_ENCODING) -> np.ndarray:
    stored = fmt.decode(item["image"], encoding, item["uri"])
    return fmt.from_stored(stored, item["scale"], item["offset"])


def _problems(out: Path) -> list[dict[str, str]]:
    with open(out / fmt.PROBLEMS, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _assert_same_values(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    if ref.dtype.kind == "f":
        tol = float(ref.max() - ref.min()) / 65535 + 1e-6
        np.testing.assert_allclose(got, ref, atol=tol, rtol=0)
    else:
        np.testing.assert_array_equal(got.astype(np.int64), ref.astype(np.int64))


# ----------------------------------------------------------------------- tests


def test_pack_round_trips_values_and_aligns_litdata_items_with_the_index(tmp_path):
    folder = _png_folder(tmp_path / "png")
    dicom = _dicom_tree(tmp_path / "dcm")
    nii = tmp_path / "nii"
    _nifti(nii, dtype=np.int16)
    _nifti(nii, dtype=np.float32, seed=2)
    data = [f"folder:{folder}?verify=false", f"dicom:{dicom}", f"nifti:{nii}"]
    out = tmp_path / "shards"
    report = pack(data, str(out), workers=1, part_size=3)

    index = SampleIndex.load(out / fmt.INDEX)
    items = _items(out)
    # Rows are the scan's, in scan order, less the two files that do not decode.
    sources, _ = resolve_data(data)
    scanned, _ = scan_sources(sources)
    expected = [
        scanned.uri(i)
        for i in range(len(scanned))
        if not scanned.uri(i).endswith(("zz_corrupt.png", "truncated.dcm"))
    ]
    assert [index.uri(i) for i in range(len(index))] == expected
    assert [it["uri"] for it in items] == expected
    assert report.images == len(items) == fmt.read_manifest(str(out)).images == len(expected)
    assert report.parts == -(-len(scanned) // 3) and report.chunks >= report.parts

    kinds = set()
    for i, item in enumerate(items):
        rec = index.record(i)
        assert (item["source"], item["modality"], item["anatomy"]) == (
            rec.source,
            rec.modality,
            rec.anatomy,
        )
        ref = np.asarray(open_reader(index, rec.source).load(rec))
        kinds.add(ref.dtype.name)
        _assert_same_values(_image(item), ref)
    # 8-bit, 16-bit PNG, HU CT (int16) and float MR all went through.
    assert {"uint8", "uint16", "int16", "float32"} <= kinds

    reasons = {Path(p["path"]).name: p["reason"] for p in _problems(out)}
    assert set(reasons) == {"zz_corrupt.png", "truncated.dcm"}
    assert report.problems == 2
    # The index keeps each source as given, for provenance.
    assert index.sources_meta["png"]["options"] == {"verify": "false"}
    assert not (out / ".pack").exists()


def test_scan_problems_are_listed_and_missing_catalog_sources_reported(tmp_path):
    folder = _png_folder(tmp_path / "data" / "png")
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(
        "root: data\nmissing: report\nsources:\n"
        "  - {name: pngs, reader: folder, path: png, modality: xray}\n"
        "  - {name: absent, reader: folder, path: nowhere, url: https://example.org/dl}\n"
    )
    out = tmp_path / "shards"
    result = CliRunner().invoke(
        cli, ["data", "pack", "--data", str(catalog), "-o", str(out), "--workers", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "source absent: missing" in result.output and "https://example.org/dl" in result.output
    assert "packed 5 images (2 problems" in result.output
    rows = {(p["source"], Path(p["path"]).name) for p in _problems(out)}
    # verify=true (default): the corrupt file is found by the scan, before decoding.
    assert rows == {("pngs", "zz_corrupt.png"), ("absent", "nowhere")}
    assert fmt.read_manifest(str(out)).sources == {"pngs": 5, "absent": 0}
    assert len(litdata.StreamingDataset(str(out))) == 5
    assert folder.exists()


class NpyVolumes:
    """A third-party reader of 3-D ``.npy`` volumes with an ``axis`` option."""

    def __init__(self, location, tags, *, axis: int = 2):
        self.location, self.tags, self.axis = location, tags, axis

    def scan(self):
        vol = np.load(self.location)
        for k in range(vol.shape[self.axis]):
            yield SampleRecord(
                uri=f"{self.location}#axis={self.axis}&slice={k}",
                source=self.tags.source,
                modality="mr",
                anatomy="brain",
            )

    def load(self, record):
        frag = dict(kv.split("=") for kv in record.uri.split("#")[1].split("&"))
        vol = np.load(self.location)
        return np.take(vol, int(frag["slice"]), axis=int(frag["axis"]))


class NpyPlugin:
    @hookimpl
    def biovfm_register_datasets(self, register):
        register("npyvol", NpyVolumes)


def test_planes_cut_volumes_of_any_reader_with_an_axis_option(tmp_path):
    from biovfm_core.registry import get_registry

    get_registry().add_plugin(NpyPlugin(), name="npytest")
    vol = np.random.default_rng(3).normal(size=(6, 5, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    _nifti(tmp_path / "nii")
    data = [
        f"npyvol:{tmp_path / 'v.npy'}",
        f"nifti:{tmp_path / 'nii'}",
        f"folder:{_png_folder(tmp_path / 'p')}",
    ]

    out = tmp_path / "axial"
    pack(data, str(out), workers=1)
    counts = fmt.read_manifest(str(out)).sources
    assert counts == {"v.npy": 4, "nii": 4, "p": 5}

    out3 = tmp_path / "three"
    pack(data, str(out3), workers=1, planes="axial,coronal,sagittal")
    assert fmt.read_manifest(str(out3)).sources == {"v.npy": 15, "nii": 15, "p": 5}
    index = SampleIndex.load(out3 / fmt.INDEX)
    items = _items(out3)
    npy = [i for i in range(len(index)) if index.record(i).source == "v.npy"]
    # Per source, planes in the order asked: axial (axis 2), coronal (1), sagittal (0).
    axes = [index.uri(i).split("axis=")[1][0] for i in npy]
    assert axes == ["2"] * 4 + ["1"] * 5 + ["0"] * 6
    for i in npy:
        axis, k = (int(v.split("=")[1]) for v in index.uri(i).split("#")[1].split("&"))
        _assert_same_values(_image(items[i]), np.take(vol, k, axis=axis))
    assert index.sources_meta["nii"]["planes"] == ["axial", "coronal", "sagittal"]
    assert "axis" not in index.sources_meta["nii"]["options"]


def test_max_side_shrinks_with_area_averaging_and_keeps_16_bits(tmp_path):
    folder = tmp_path / "png"
    folder.mkdir()
    img = np.random.default_rng(4).integers(0, 65536, (20, 40), np.uint16)
    cv2.imwrite(str(folder / "a.png"), img)
    cv2.imwrite(str(folder / "small.png"), img[:5, :8])
    out = tmp_path / "s"
    pack([f"folder:{folder}"], str(out), workers=1, max_side=10, encoding="raw")
    items = {Path(it["uri"]).name: it for it in _items(out)}
    big = _image(items["a.png"], "raw")
    assert big.dtype == np.uint16 and big.shape == (5, 10)
    np.testing.assert_array_equal(big, cv2.resize(img, (10, 5), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(_image(items["small.png"], "raw"), img[:5, :8])  # not enlarged
    rgb = np.zeros((30, 15, 3), np.uint8)
    assert resize_stored(rgb, 10).shape == (10, 5, 3)


def test_two_workers_write_the_same_set_as_one(tmp_path):
    folder = _png_folder(tmp_path / "png", n_gray=7)
    one, two = tmp_path / "one", tmp_path / "two"
    pack([f"folder:{folder}"], str(one), workers=1, part_size=2)
    report = pack([f"folder:{folder}"], str(two), workers=2, part_size=2)
    a, b = _items(one), _items(two)
    assert report.parts == 5 and len(a) == len(b) == 9
    for x, y in zip(a, b, strict=True):
        assert x["uri"] == y["uri"]
        np.testing.assert_array_equal(_image(x), _image(y))


def test_a_complete_or_foreign_folder_is_not_overwritten_silently(tmp_path):
    folder = _png_folder(tmp_path / "png")
    out = tmp_path / "s"
    pack([f"folder:{folder}"], str(out), workers=1)
    again = pack([f"folder:{folder}"], str(out), workers=2)  # workers do not change the set
    assert again.already_complete and again.images == 5
    with pytest.raises(ConfigError, match=r"complete shard set .*differs in: max_side"):
        pack([f"folder:{folder}"], str(out), workers=1, max_side=4)
    redo = pack([f"folder:{folder}"], str(out), workers=1, max_side=4, overwrite=True)
    assert redo.images == 5 and fmt.read_manifest(str(out)).options["max_side"] == 4

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        pack([f"folder:{folder}"], str(foreign), workers=1)
    with pytest.raises(ConfigError, match=r"thesis\.tex"):
        pack([f"folder:{folder}"], str(foreign), workers=1, overwrite=True)
    assert (foreign / "thesis.tex").exists()


_KILLABLE = """
import os, sys, time
import biovfm_readers.folder as folder

load = folder.FolderReader.load

def blocking_load(self, record):
    if record.uri.endswith("g07.png"):
        time.sleep(120)  # stands for a long decode; the test kills us here
    return load(self, record)

folder.FolderReader.load = blocking_load
from biovfm_core.cli.main import cli
cli(sys.argv[1:])
"""


def test_a_killed_pack_resumes_without_losing_or_repeating_an_image(tmp_path):
    folder = _png_folder(tmp_path / "png", n_gray=11)  # 13 good images, 1 corrupt
    out = tmp_path / "shards"
    args = ["data", "pack", "--data", f"folder:{folder}?verify=false", "-o", str(out)]
    args += ["--workers", "1", "--part-size", "2", "-q"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], env=env)
    parts = out / ".pack" / "parts"
    deadline = time.monotonic() + 600  # hang guard only
    try:
        # g07.png is row 7: parts 0-2 (rows 0-5) finish, part 3 blocks on it.
        while not (parts / "000002" / "part.json").exists():
            assert proc.poll() is None, "pack ended before it could be killed"
            assert time.monotonic() < deadline, "pack never finished a part"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(ConfigError, match="has not finished"):
        fmt.read_manifest(str(out))
    done = sorted(p.name for p in parts.iterdir())
    assert done[:3] == ["000000", "000001", "000002"] and ".tmp" in done[3]
    kept = os.stat(parts / "000000" / "chunk-0-0.bin").st_ino

    # Other options are refused: they would mix two plans in one set.
    runner = CliRunner()
    refused = runner.invoke(cli, [*args, "--encoding", "raw"])
    assert refused.exit_code == 2 and "unfinished pack" in refused.output
    assert "encoding" in refused.output

    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 of 7 parts from an earlier run" in result.output
    index = SampleIndex.load(out / fmt.INDEX)
    good = sorted(str(p) for p in folder.iterdir() if p.name != "zz_corrupt.png")
    uris = [it["uri"] for it in _items(out)]
    assert uris == [index.uri(i) for i in range(len(index))] == good  # each once, in order
    assert [Path(p["path"]).name for p in _problems(out)] == ["zz_corrupt.png"]
    assert os.stat(out / "chunk-0-0.bin").st_ino == kept  # moved, not rewritten
    assert not (out / ".pack").exists()
    meta = json.loads((out / fmt.MANIFEST).read_text())
    assert meta["images"] == 13 and meta["options"]["problems"] == 1


def test_progress_lines_give_images_per_second_and_eta_from_the_clock():
    from biovfm_core.data.shards.pack import _Progress

    now, lines = [0.0], []
    bar = _Progress(100, 0, lines.append, every=10.0, clock=lambda: now[0])
    now[0] = 5.0
    bar.update(20)  # within the interval: quiet
    now[0] = 10.0
    bar.update(50)
    assert lines == ["packed 50/100 images (50%), 5.0 images/s, ETA 10s"]
    # A resumed pack's rate counts only what this run decoded.
    resumed = _Progress(1000, 400, lines.append, every=10.0, clock=lambda: now[0])
    now[0] = 110.0
    resumed.update(600)
    assert lines[-1] == "packed 600/1000 images (60%), 2.0 images/s, ETA 3m20s"


def test_labels_and_tags_travel_with_each_image(tmp_path):
    root = tmp_path / "cls"
    for k, cls in enumerate(("benign", "malignant")):
        (root / cls).mkdir(parents=True)
        for i in range(2 + k):
            cv2.imwrite(str(root / cls / f"{i}.png"), np.full((4, 4), 10 * i + k, np.uint8))
    out = tmp_path / "s"
    spec = f"folder:{root}?labels_from_subfolders=true&modality=dermoscopy&anatomy=skin"
    pack([spec], str(out), workers=1)
    items = _items(out)
    index = SampleIndex.load(out / fmt.INDEX)
    assert [it["label"] for it in items] == index.labels.tolist() == [0, 0, 1, 1, 1]
    assert {(it["modality"], it["anatomy"], it["source"]) for it in items} == {
        ("dermoscopy", "skin", "cls")
    }
    assert index.sources_meta["cls"]["classes"] == ["benign", "malignant"]


def test_a_file_name_that_is_not_utf8_packs_and_reads_back(tmp_path):
    root = tmp_path / "names"
    root.mkdir()
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:  # Latin-1 name
        f.write(cv2.imencode(".png", img)[1].tobytes())
    out = tmp_path / "s"
    pack([f"folder:{root}"], str(out), workers=1)
    (item,) = _items(out)
    index = SampleIndex.load(out / fmt.INDEX)
    assert os.path.exists(index.uri(0))  # the index keeps the exact bytes
    assert item["uri"] == index.uri(0).encode("utf-8", "backslashreplace").decode()
    np.testing.assert_array_equal(_image(item), img)


def test_packing_the_biovfm21m_catalog_packs_what_is_present_and_lists_the_rest(tmp_path):
    bus = tmp_path / "root" / "BUS-B"
    bus.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(bus / f"{i}.png"), np.full((5, 6), i, np.uint8))
    out = tmp_path / "s"
    args = ["data", "pack", "--data", "biovfm21m", "--root", str(bus.parent), "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "source BUS-B: short" in result.output  # 3 of the 163 the study lists
    assert "source ChestXray-14: missing" in result.output
    assert "packed 3 images (60 problems" in result.output
    rows = _problems(out)
    assert len(rows) == 60 and all("missing" in r["reason"] for r in rows)
    assert fmt.read_manifest(str(out)).images == len(litdata.StreamingDataset(str(out))) == 3


def test_a_pack_stopped_while_finishing_finishes_on_the_rerun(tmp_path, monkeypatch):
    folder = _png_folder(tmp_path / "png", n_gray=5)
    out = tmp_path / "s"

    def crash(self):
        raise KeyboardInterrupt  # stopped after the chunks moved, before the manifest

    with monkeypatch.context() as m:
        m.setattr(fmt.Manifest, "to_json", crash)
        with pytest.raises(KeyboardInterrupt):
            pack([f"folder:{folder}"], str(out), workers=1, part_size=2)
    assert (out / "chunk-0-0.bin").exists() and not (out / fmt.MANIFEST).exists()
    report = pack([f"folder:{folder}"], str(out), workers=1, part_size=2)
    assert report.parts_resumed == report.parts == 4 and report.packed_now == 0
    uris = [it["uri"] for it in _items(out)]
    assert uris == sorted(str(p) for p in folder.iterdir() if p.name != "zz_corrupt.png")


def test_packing_to_an_object_store_url_is_refused_with_the_way_to_do_it(tmp_path):
    with pytest.raises(ConfigError, match="pack locally, then upload"):
        pack(["demo:"], "s3://bucket/set")
    assert not os.path.exists("s3:")  # nothing written beside the caller either


# ------------------------------------------------------------ issue 24: faults at scale


def test_a_second_pack_into_a_folder_being_packed_is_refused_and_nothing_is_lost(tmp_path):
    folder = _png_folder(tmp_path / "png", n_gray=11)  # 13 good images, 1 corrupt
    out = tmp_path / "shards"
    args = ["data", "pack", "--data", f"folder:{folder}?verify=false", "-o", str(out)]
    args += ["--workers", "1", "--part-size", "2", "-q"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], env=env)
    parts = out / ".pack" / "parts"
    deadline = time.monotonic() + 600  # hang guard only
    try:
        # The first pack holds the folder, blocked in part 3 (on g07.png).
        while not (parts / "000002" / "part.json").exists():
            assert proc.poll() is None, "pack ended before the second one could start"
            assert time.monotonic() < deadline, "pack never finished a part"
            time.sleep(0.05)
        before = sorted(p.name for p in parts.iterdir())
        second = CliRunner().invoke(cli, args)
        assert second.exit_code == 2
        assert second.output.startswith(
            f"error: shard folder {out} is being packed by pid {proc.pid} on host "
        )
        assert "this pack stops without reading or writing there" in second.output
        assert second.output.count("\n") == 1
        assert sorted(p.name for p in parts.iterdir()) == before  # nothing touched
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The killer's lock names a pid that is gone: the rerun takes it over and resumes.
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid
    lines = []
    spec = [f"folder:{folder}?verify=false"]
    # The CLI's --chunk-mb 64: other options would be refused as another plan.
    report = pack(spec, str(out), workers=1, part_size=2, chunk_bytes=64_000_000, progress=lines.append)  # fmt: skip
    assert any(f"taking over the lock of pid {proc.pid}" in line for line in lines)
    assert report.parts_resumed == 3 and report.images == 13
    good = sorted(str(p) for p in folder.iterdir() if p.name != "zz_corrupt.png")
    assert [it["uri"] for it in _items(out)] == good
    assert sorted(os.listdir(out)) == sorted(
        ["biovfm-index.npz", "biovfm-shards.json", "index.json", "pack_problems.csv"]
        + [f"chunk-{p}-0.bin" for p in range(7)]
    )  # no lock, no .pack left


def test_two_packs_started_at_once_leave_one_whole_set(tmp_path):
    """Two different sources packed into one folder at the same moment: one pack
    wins, the other is refused (by the lock, or by the set the first completed)."""
    a = _png_folder(tmp_path / "a", n_gray=5)
    b = tmp_path / "b"
    b.mkdir()
    for i in range(6):
        cv2.imwrite(str(b / f"b{i}.png"), np.full((5, 4), 40 + i, np.uint8))
    out = tmp_path / "shards"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    cmd = [sys.executable, "-m", "biovfm_core.cli.main", "data", "pack", "-o", str(out), "-q"]
    cmd += ["--workers", "1", "--part-size", "2"]
    procs = [
        subprocess.Popen(
            [*cmd, "--data", f"folder:{src}?verify=false"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for src in (a, b)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]  # hang guard only
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outputs
    winner = codes.index(0)
    refused = outputs[1 - winner]
    assert "is being packed by pid" in refused or "complete shard set made with other" in refused
    assert "Traceback" not in refused and refused.count("\n") == 1, refused
    src = (a, b)[winner]
    good = sorted(str(p) for p in src.iterdir() if p.name != "zz_corrupt.png")
    index = SampleIndex.load(out / fmt.INDEX)
    assert [it["uri"] for it in _items(out)] == [index.uri(i) for i in range(len(index))] == good
    assert not (out / ".pack").exists() and not (out / ".lock").exists()


def _fail_os_open(monkeypatch, under: Path, code: int, message: str) -> None:
    """``os.open`` of any path under ``under`` fails as a read-only mount would."""
    real = os.open

    def fake(path, *args, **kwargs):
        if os.fspath(path).startswith(str(under)):
            raise OSError(code, message, os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


def test_packing_onto_a_read_only_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    import errno

    folder = _png_folder(tmp_path / "png")
    out = tmp_path / "mnt" / "shards"
    out.mkdir(parents=True)
    _fail_os_open(monkeypatch, out, errno.EROFS, "Read-only file system")
    result = CliRunner().invoke(
        cli, ["data", "pack", "--data", f"folder:{folder}", "-o", str(out), "-q"]
    )
    assert result.exit_code == 2
    assert result.output == (
        f"error: -o {out}: cannot write there (Read-only file system: {out}/.lock); the "
        "folder or its file system is read-only or not yours. Choose a writable folder for -o\n"
    )
    assert os.listdir(out) == []


def test_a_disk_that_fills_up_stops_the_pack_in_one_line_and_the_rerun_resumes(
    tmp_path, monkeypatch
):
    import errno

    from litdata.streaming.writer import BinaryWriter

    folder = _png_folder(tmp_path / "png", n_gray=5)  # 7 good images, 1 corrupt
    out = tmp_path / "s"
    data = [f"folder:{folder}?verify=false"]
    real = BinaryWriter.write_chunk_to_file
    written = []

    def fill_up(self, raw_data, filename, compress=None):
        if len(written) == 2:  # the third chunk (part 2) finds the disk full mid-write
            path = os.path.join(self._cache_dir, filename)
            with open(path, "wb") as f:
                f.write(raw_data[: len(raw_data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", path)
        written.append(filename)
        return real(self, raw_data, filename, compress)

    with monkeypatch.context() as m:
        m.setattr(BinaryWriter, "write_chunk_to_file", fill_up)
        with pytest.raises(BiovfmError) as excinfo:
            pack(data, str(out), workers=1, part_size=2)
    message = str(excinfo.value)
    assert message.startswith(f"-o {out}: the disk is full (No space left on device: {out}/")
    assert message.endswith("run the same command again; it resumes after the last finished part")
    # Two whole parts kept, no half-written one, no lock.
    assert sorted(os.listdir(out / ".pack" / "parts")) == ["000000", "000001"]
    assert not (out / ".lock").exists()

    report = pack(data, str(out), workers=1, part_size=2)
    assert report.parts_resumed == 2 and report.packed_now == 4 and report.images == 7
    clean = tmp_path / "clean"
    pack(data, str(clean), workers=1, part_size=2)
    for x, y in zip(_items(out), _items(clean), strict=True):
        assert x["uri"] == y["uri"]
        np.testing.assert_array_equal(_image(x), _image(y))
    assert len(_items(out)) == 7


def test_the_worker_count_printed_is_the_one_used_and_fewer_says_why(tmp_path):
    folder = _png_folder(tmp_path / "png")  # 5 good images, 1 corrupt: 6 rows
    lines: list[str] = []
    pack([f"folder:{folder}?verify=false"], str(tmp_path / "a"), workers=2, part_size=2, progress=lines.append)  # fmt: skip
    assert "packing 6 images in 3 part(s) with 2 workers" in lines
    lines.clear()
    pack([f"folder:{folder}?verify=false"], str(tmp_path / "b"), workers=2, progress=lines.append)
    assert (
        "packing 6 images in 1 part(s) with 1 worker (of 2 asked: only 1 part(s) of up to "
        "4096 images to write, one worker each; a smaller --part-size spreads the work)"
    ) in lines
