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
    with pytest.raises(SourceError, match=r"'typo' failed: KeyError: 'auto'"):
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
    assert "'typo' failed" in res.output and "verfy" in res.output and not out.exists()
    res = CliRunner().invoke(
        cli, ["data", "scan", "--data", cat, "-o", str(out), "--allow-missing-sources"]
    )
    assert res.exit_code == 0, res.output
    assert "error: " in res.output and "verfy" in res.output and out.exists()


# ------------------------------------------------------------- issue 13 section 3
def test_readme_data_scan_command_reports_a_catalog_without_output(tmp_path, monkeypatch):
    """`biovfm data scan --data biovfm21m --root /data`, exactly as README.md writes it."""
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
