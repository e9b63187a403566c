"""Faults in the data: bad sources, symlink loops, odd file names, NaN volumes, huge images.

Each test reproduces one item of issue 14 (or issue 13's `data scan` report) with
real files written under tmp_path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from biovfm_core.cli.main import cli
from biovfm_core.config import RunConfig
from biovfm_core.data.catalog import resolve_data
from biovfm_core.data.scan import SourceError, scan_sources


def _pngs(folder, n, size=(24, 20), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _catalog(tmp_path, body, name="cat.yaml"):
    path = tmp_path / name
    path.write_text(f"root: {tmp_path}\nmissing: report\nsources:\n{body}")
    return str(path)


GOOD = """  - name: good
    reader: folder
    path: good
    modality: xray
"""
TYPO = """  - name: typo
    reader: folder
    path: typo
    modality: ct
    options: {verfy: false}
"""
ABSENT = """  - name: absent
    reader: folder
    path: not_downloaded
    modality: mr
    url: https://example.org/absent
"""


# ------------------------------------------------------------------ issue 14 item 2
def _open_index(cat, tmp_path, **data):
    from biovfm_core.train.data import open_index

    config = RunConfig()
    config.data.sources = [cat]
    for key, value in data.items():
        setattr(config.data, key, value)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return open_index(config, run_dir)


def test_a_source_with_a_bad_option_stops_training_naming_it(tmp_path, capsys):
    _pngs(tmp_path / "good", 3)
    _pngs(tmp_path / "typo", 2)
    cat = _catalog(tmp_path, GOOD + TYPO)
    with pytest.raises(SourceError, match=r"'typo'.*verfy"):
        _open_index(cat, tmp_path)
    # Going on is a choice, and the warning lists what was left out.
    index, report = _open_index(cat, tmp_path, allow_missing_sources=True)
    assert index.counts("source") == {"good": 3}
    assert len(report["dropped_sources"]) == 1 and "verfy" in report["dropped_sources"][0]
    err = capsys.readouterr().err
    assert "warning: training without 1 data source(s): typo (failed:" in err


def test_an_absent_catalog_source_stops_training_with_its_download_page(tmp_path, capsys):
    _pngs(tmp_path / "good", 3)
    cat = _catalog(tmp_path, GOOD + ABSENT)
    with pytest.raises(SourceError, match=r"absent.*https://example.org/absent.*allow_missing"):
        _open_index(cat, tmp_path)
    index, _ = _open_index(cat, tmp_path, allow_missing_sources=True)
    assert len(index) == 3 and "absent (missing" in capsys.readouterr().err


def test_an_absent_optional_source_is_not_an_error(tmp_path):
    _pngs(tmp_path / "good", 3)
    cat = _catalog(tmp_path, GOOD + ABSENT + "    optional: true\n")
    index, report = _open_index(cat, tmp_path)
    assert len(index) == 3 and report["dropped_sources"] == []


class _BrokenReader:
    """Yields two records, then fails like a third-party reader's bug would."""

    def __init__(self, tags):
        self.tags = tags
        self.classes: list[str] = []

    def scan(self):
        from biovfm_core.protocols import SampleRecord

        for i in range(2):
            yield SampleRecord(f"/x/{i}.png", self.tags.source, "ct", "chest")
        raise KeyError("auto")


def test_any_exception_while_scanning_fails_the_source_and_keeps_none_of_its_records(
    tmp_path, monkeypatch
):
    from biovfm_core.data import catalog

    _pngs(tmp_path / "good", 3)
    _pngs(tmp_path / "typo", 1)
    real_build = catalog.SourceSpec.build_reader

    def build(spec):
        return _BrokenReader(spec.tags) if spec.name == "typo" else real_build(spec)

    monkeypatch.setattr(catalog.SourceSpec, "build_reader", build)
    sources, _ = resolve_data([_catalog(tmp_path, GOOD + TYPO.replace("verfy", "verify"))])
    with pytest.raises(SourceError, match=r"'typo' \(reader 'folder'\) failed: KeyError: 'auto'"):
        scan_sources(sources, stop_on_error=True)
    index, report = scan_sources(sources)
    assert index.counts("source") == {"good": 3}  # the two records before the failure are gone
    status = {s.name: (s.status, s.found) for s in report.sources}
    assert status == {"good": ("present", 3), "typo": ("error", 0)}
    assert [index.uri(i).rsplit("/", 1)[1] for i in range(3)] == ["0.png", "1.png", "2.png"]


def test_data_scan_stops_on_a_failing_source_unless_allowed(tmp_path):
    _pngs(tmp_path / "good", 3)
    _pngs(tmp_path / "typo", 2)
    cat = _catalog(tmp_path, GOOD + TYPO)
    out = tmp_path / "idx.npz"
    res = CliRunner().invoke(cli, ["data", "scan", "--data", cat, "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert (
        "'typo' (reader 'folder') failed" in res.output
        and "verfy" in res.output
        and not out.exists()
    )
    res = CliRunner().invoke(
        cli, ["data", "scan", "--data", cat, "-o", str(out), "--allow-missing-sources"]
    )
    assert res.exit_code == 0, res.output
    assert "error: " in res.output and "verfy" in res.output and out.exists()


# ------------------------------------------------------------- issue 13 section 3
def test_readme_data_scan_command_reports_a_catalog_without_output(tmp_path, monkeypatch):
    """`biovfm data scan --data biovfm21m --root /data`, exactly as docs/data.md writes it."""
    root = tmp_path / "data"
    _pngs(root / "BUS-B", 4)  # one of the 61 sources downloaded (catalog expects 163: short)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["data", "scan", "--data", "biovfm21m", "--root", str(root)])
    assert res.exit_code == 0, res.output
    assert "4 images from 61 sources (1 short, 60 missing)" in res.output
    assert "download: https://nihcc.app.box.com/v/ChestXray-NIHCC" in res.output
    assert "index written" not in res.output and list(tmp_path.glob("*.npz")) == []

    # A root that does not exist yet is the report "all 61 missing", not an error.
    res = CliRunner().invoke(
        cli, ["data", "scan", "--data", "biovfm21m", "--root", str(tmp_path / "nope"), "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    assert [s["status"] for s in report["sources"]] == ["missing"] * 61
    assert report["index"] is None and all(s["url"] for s in report["sources"])


# ------------------------------------------------------------------ issue 14 item 3
@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) when the code under test loops forever."""
    import signal

    # A hang guard, not a speed limit: generous, so a busy machine never trips it.
    def expired(signum, frame):
        raise TimeoutError("the scan did not finish within 600 s: it loops")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(600)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_symlink_loops_index_each_real_file_once_and_end(tmp_path, deadline):
    import os

    root = _pngs(tmp_path / "imgs", 3)
    _pngs(root / "sub", 2, seed=1)
    os.symlink("..", root / "sub" / "up")  # loop 1: back to the root
    os.symlink("../sub", root / "sub" / "again")  # loop 2: into itself
    os.symlink("sub", root / "alias")  # the same folder under a second name
    os.symlink("0.png", root / "same.png")  # the same file under a second name
    outside = _pngs(tmp_path / "elsewhere", 1, seed=2)
    os.symlink(outside / "0.png", root / "sub" / "outside.png")  # a real extra image
    os.symlink(tmp_path / "gone.png", root / "broken.png")
    out = tmp_path / "idx.npz"
    res = CliRunner().invoke(
        cli, ["data", "scan", "--data", f"folder:{root}?modality=xray", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    assert report["sources"][0]["found"] == 6  # 3 + 2 + the one outside the tree
    from biovfm_core.data.index import SampleIndex

    uris = sorted(os.path.relpath(u, root) for u in map(SampleIndex.load(out).uri, range(6)))
    assert uris == ["0.png", "1.png", "2.png", "sub/0.png", "sub/1.png", "sub/outside.png"]
    problems = (tmp_path / "idx.problems.csv").read_text()
    assert "broken.png,cannot open: broken symbolic link" in problems


# ------------------------------------------------------------------ issue 14 item 5
def test_a_file_name_that_is_not_utf8_is_indexed_and_loaded_losslessly(tmp_path):
    import os

    from biovfm_core.data.index import SampleIndex
    from biovfm_core.data.scan import open_reader

    root = _pngs(tmp_path / "odd", 2)
    pixels = np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)
    Image.fromarray(pixels).save(os.fsdecode(os.fsencode(root) + b"/\xff.png"))
    open(os.fsencode(root) + b"/\xfe-empty.png", "wb").close()
    out = tmp_path / "idx.npz"
    spec = f"folder:{root}?modality=xray"
    res = CliRunner().invoke(cli, ["data", "scan", "--data", spec, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 images from 1 sources" in res.output and "1 unusable files" in res.output
    index = SampleIndex.load(out)
    names = [os.fsencode(index.uri(i)).rsplit(b"/", 1)[1] for i in range(len(index))]
    assert names == [b"0.png", b"1.png", b"\xff.png"]
    loaded = open_reader(index, "odd").load(index.record(2))
    np.testing.assert_array_equal(loaded, pixels)
    # The problem list names the empty file by its real bytes.
    row = (tmp_path / "idx.problems.csv").read_bytes().splitlines()[1]
    assert row == b"odd," + os.fsencode(root) + b"/\xfe-empty.png,zero-byte file"
    res = CliRunner().invoke(cli, ["data", "stats", "--data", spec, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["total"] == 3


# ------------------------------------------------------------------ issue 14 item 7
def test_an_all_nan_nifti_volume_is_a_listed_problem_without_numpy_warnings(tmp_path):
    import warnings

    import nibabel as nib

    root = tmp_path / "mr"
    root.mkdir()
    good = np.full((5, 6, 4), np.nan, np.float32)
    good[:, :, 1] = np.arange(30, dtype=np.float32).reshape(5, 6)  # one usable slice
    nib.save(nib.Nifti1Image(good, np.eye(4)), root / "good.nii.gz")
    nan = np.full((5, 6, 4), np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 4), np.int16), np.eye(4)), root / "zero.nii.gz")
    sources, _ = resolve_data([f"nifti:{root}?modality=mr"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice" RuntimeWarning would raise
        index, report = scan_sources(sources)
    assert [index.uri(i).rsplit("/", 1)[1] for i in range(len(index))] == [
        "good.nii.gz#axis=2&slice=1"
    ]
    problems = {p.rsplit("/", 1)[1]: reason for _, p, reason in report.problems}
    assert problems == {
        "nan.nii.gz": "no usable slice: every voxel is NaN or infinite",
        "zero.nii.gz": "no usable slice: every slice is constant (e.g. all 0)",
    }
    assert report.sources[0].problems == 2


# ----------------------------------------------------------------- issue 14 item 12
def test_max_pixels_above_pillows_limit_lifts_it_for_that_reader_only(tmp_path, monkeypatch):
    import warnings

    from biovfm_readers.folder import FolderReader
    from PIL import Image

    from biovfm_core.errors import BadImageError
    from biovfm_core.protocols import SampleRecord, ScanProblem, SourceTags

    # Pillow's limit made tiny, so that real images exceed it cheaply: it warns above
    # 100 pixels and refuses above 200.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    root = tmp_path / "big"
    pixels = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30).astype(np.uint8)
    root.mkdir()
    Image.fromarray(pixels).save(root / "a.png")  # 1200 pixels: Pillow refuses
    Image.fromarray(pixels[:12, :12]).save(root / "b.png")  # 144 pixels: Pillow warns
    tags = SourceTags("big", "xray")
    roomy = FolderReader(str(root), tags, max_pixels=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would raise
        records = list(roomy.scan())
        assert all(isinstance(r, SampleRecord) for r in records) and len(records) == 2
        np.testing.assert_array_equal(roomy.load(records[0]), pixels)
        np.testing.assert_array_equal(roomy.load(records[1]), pixels[:12, :12])
    # Our limit still decides, below Pillow's too, with our message.
    strict = FolderReader(str(root), tags, max_pixels=1000)
    problems = [r for r in strict.scan() if isinstance(r, ScanProblem)]
    assert [p.reason for p in problems] == ["30x40 = 1200 pixels exceeds the limit of 1000"]
    with pytest.raises(BadImageError, match="exceeds the limit of 1000"):
        strict.load(records[0])
    # Pillow's global guard is unchanged for everyone else.
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(root / "a.png")


# ------------------------------------------------------------------ issue 16 item 3
class _AutoReader:
    """A plugin reader that passes the source's tag on instead of one modality id."""

    def __init__(self, tags):
        self.tags = tags

    def scan(self):
        from biovfm_core.protocols import SampleRecord

        yield SampleRecord("/x/0.npy", self.tags.source, self.tags.modality, "chest")


def test_a_record_with_modality_auto_names_the_reader_not_a_key_error(tmp_path, monkeypatch):
    from biovfm_core.data import catalog

    (tmp_path / "npy").mkdir()
    monkeypatch.setattr(catalog.SourceSpec, "build_reader", lambda spec: _AutoReader(spec.tags))
    res = CliRunner().invoke(cli, ["data", "scan", "--data", f"folder:{tmp_path / 'npy'}"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: data source 'npy' (reader 'folder') failed: /x/0.npy: ")
    assert "record modality 'auto' is not one modality id (xray, ct," in res.output
    assert "KeyError" not in res.output


# ------------------------------------------------------------------ issue 16 item 4
def test_a_folder_of_unknown_modality_trains_with_the_default_recipe_and_says_so(tmp_path, capsys):
    from biovfm_core.data.dataset import collate
    from biovfm_core.protocols import ViewSpec
    from biovfm_core.registry import get_registry
    from biovfm_core.train.data import training_data

    root = _pngs(tmp_path / "my_images", 3)
    config = RunConfig()
    index, _ = _open_index(f"folder:{root}", tmp_path)
    assert index.counts("modality") == {"other": 3}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"warning: folder:{root}: cannot tell the modality of 3 images; they train with the "
        f"default augmentation recipe (name it, e.g. 'folder:{root}?modality=xray'"
    )
    views = ViewSpec(global_size=16, local_size=8, local_crops=1)
    data = training_data(index, views, config, get_registry())
    assert set(data.dataset.recipes) == {"default"}
    batch = collate([data.dataset[(i, 7)] for i in range(3)])
    assert batch.size == 3 and batch.global_views[0].shape == (3, 3, 16, 16)

    # `data scan` shows the same note; a source whose modalities were listed still
    # refuses an image it cannot place.
    res = CliRunner().invoke(cli, ["data", "scan", "--data", f"folder:{root}"])
    assert res.exit_code == 0 and "note: folder:" in res.output
    res = CliRunner().invoke(cli, ["data", "scan", "--data", f"folder:{root}?modality=ct,mr"])
    assert res.exit_code == 2 and "cannot tell the modality of its images" in res.output


def test_an_index_from_before_other_was_added_still_loads(tmp_path):
    from biovfm_core.data.index import SampleIndex, build_index
    from biovfm_core.protocols import SampleRecord

    path = build_index([SampleRecord("/a/0.png", "s", "octa")]).save(tmp_path / "i.npz")
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(arrays["meta"].tobytes())
    meta["modalities"] = meta["modalities"][:10]  # the list before "other"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    assert SampleIndex.load(path).record(0).modality == "octa"


# ------------------------------------------------------------------ issue 24 item 8
def test_a_lone_source_with_no_images_says_so_instead_of_advising_to_go_on(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError) as excinfo:
        _open_index(f"folder:{tmp_path / 'empty'}", tmp_path)
    assert str(excinfo.value) == (
        "no images to train on: empty (no usable images, 0 unusable files); it is the only "
        "source. Check the path and the reader options (`biovfm data scan --data ...` lists "
        "unusable files)"
    )
    # With another source that has images, going on without it stays the advice.
    _pngs(tmp_path / "good", 2)
    cat = _catalog(tmp_path, GOOD + GOOD.replace("good", "empty"))
    with pytest.raises(SourceError, match=r"gave no images: empty .*allow_missing_sources=true"):
        _open_index(cat, tmp_path)
    index, _ = _open_index(cat, tmp_path, allow_missing_sources=True)
    assert index.counts("source") == {"good": 2}
