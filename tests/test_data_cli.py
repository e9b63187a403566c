from __future__ import annotations

import csv
import json

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from biovfm_core.cli.main import cli
from biovfm_core.data.dataset import BadImageLog, ImageDataset, collate
from biovfm_core.data.index import SampleIndex
from biovfm_core.protocols import Batch, ViewSpec


def _folder(tmp_path):
    root = tmp_path / "cxr"
    (root / "normal").mkdir(parents=True)
    (root / "pneumonia").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        sub = "normal" if i % 2 else "pneumonia"
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(
            root / sub / f"{i}.png"
        )
    (root / "normal" / "zero.png").write_bytes(b"")
    good = (root / "normal" / "1.png").read_bytes()
    (root / "normal" / "trunc.png").write_bytes(good[:60])
    return root


def test_scan_and_stats_on_catalog_with_missing_and_short(tmp_path):
    _folder(tmp_path)
    cat = tmp_path / "cat.yaml"
    cat.write_text(f"""root: {tmp_path}
missing: report
sources:
  - name: cxr
    reader: folder
    path: cxr
    modality: xray
    anatomy: chest
    expected_count: 100
    options: {{labels_from_subfolders: true, verify: false}}
  - name: absent
    reader: dicom
    path: not_downloaded
    modality: ct
""")
    runner = CliRunner()
    out = tmp_path / "idx.npz"
    res = runner.invoke(
        cli, ["data", "scan", "--data", str(cat), "--data", "demo", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    status = {s["name"]: s["status"] for s in report["sources"]}
    assert status == {"cxr": "short", "absent": "missing", "demo": "present"}
    found = {s["name"]: s["found"] for s in report["sources"]}
    assert found["cxr"] == 7  # verify off: zero-byte found at scan, truncated only at load
    problems = list(csv.DictReader((tmp_path / "idx.problems.csv").read_text().splitlines()))
    assert [p["path"].endswith("zero.png") for p in problems] == [True]

    res = runner.invoke(
        cli, ["data", "stats", "--index", str(out), "--json", "--csv", str(tmp_path / "c.csv")]
    )
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output[res.output.index("{") :])
    assert stats["source"]["cxr"] == 7 and stats["modality"]["xray"] == 7
    assert stats["anatomy"]["chest"] == 7
    rows = list(csv.DictReader((tmp_path / "c.csv").read_text().splitlines()))
    assert {"by": "source", "name": "cxr", "images": "7"} in rows

    # The dataset decodes through the recorded readers, skips the truncated file and says why.
    from biovfm_augment.recipes import MultiCropRecipe

    index = SampleIndex.load(out)
    cxr = index.select(np.flatnonzero(index.source_ids == index.sources.index("cxr")))
    ds = ImageDataset(cxr, MultiCropRecipe(ViewSpec(global_size=32, local_size=16, local_crops=2)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    log = BadImageLog()
    batches = list(log.track(loader))
    assert sum(b.size for b in batches) == 6 and all(isinstance(b, Batch) for b in batches)
    assert batches[0].labels.dtype == torch.int64 and batches[0].global_views[0].shape[1:] == (
        3,
        32,
        32,
    )
    assert log.count == 1 and log.entries[0][0].endswith("trunc.png")
    log.write(str(tmp_path / "bad_images.csv"))
    assert "trunc.png" in (tmp_path / "bad_images.csv").read_text()


def test_bad_catalog_fails_naming_line(tmp_path):
    cat = tmp_path / "bad.yaml"
    cat.write_text(
        f"root: {tmp_path}\nsources:\n  - name: a\n    reader: jpegfolder\n    path: .\n    modality: ct\n"
    )
    res = CliRunner().invoke(
        cli, ["data", "scan", "--data", str(cat), "-o", str(tmp_path / "i.npz")]
    )
    assert res.exit_code == 2 and f"{cat}:3" in res.output and "jpegfolder" in res.output


def test_stats_scans_kind_path_directly(tmp_path):
    root = _folder(tmp_path)
    res = CliRunner().invoke(
        cli, ["data", "stats", "--data", f"folder:{root}?modality=xray&anatomy=chest"]
    )
    assert res.exit_code == 0, res.output
    assert (
        "xray" in res.output and "7 images" in res.output
    )  # the truncated PNG has an intact header
    assert "1 unusable files" in res.output


def test_scan_of_a_shard_set_breaks_it_down_by_original_source(tmp_path):
    from biovfm_core.data.shards.pack import pack

    for name, n in (("a", 3), ("b", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((6, 5), i, np.uint8)).save(tmp_path / name / f"{i}.png")
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(
        f"root: {tmp_path}\nsources:\n"
        "  - {name: alpha, reader: folder, path: a, modality: xray}\n"
        "  - {name: beta, reader: folder, path: b, modality: ct}\n"
    )
    pack([str(catalog)], str(tmp_path / "set"), workers=1)
    res = CliRunner().invoke(cli, ["data", "scan", "--data", f"shards:{tmp_path / 'set'}", "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["set", "shards", "present", "5", "0"]
    assert lines[2].split() == ["packed", "from", "alpha", "3", "images", "(xray", "3)"]
    assert lines[3].split() == ["packed", "from", "beta", "2", "images", "(ct", "2)"]
    assert lines[4].startswith("5 images from 1 sources")
