"""Issue 17's acceptance path: pack → train → kill → resume → export, counts adding up.

The sources are a DICOM tree (pydicom's own test files, one truncated), a NIfTI folder
(CT-like volumes sliced axially) and the built-in demo images; the pack goes through
the CLI exactly as a user types it, the training through the loop with the micro ViT
of ``test_train_faults``.
"""

from __future__ import annotations

import csv
import json

import litdata
import pytest
from click.testing import CliRunner
from test_shards_pack import _dicom_tree, _nifti
from test_shards_train import _shards_config
from test_train_engine import final_state
from test_train_faults import _registry

from biovfm_core.cli.main import cli
from biovfm_core.data.catalog import resolve_data
from biovfm_core.data.scan import scan_sources
from biovfm_core.data.shards import format as fmt
from biovfm_core.data.shards.reader import ShardReader
from biovfm_core.train import loop


class _Killed(Exception):
    pass


def test_pack_train_kill_resume_export_on_dicom_nifti_and_demo(tmp_path, monkeypatch):
    dicom = _dicom_tree(tmp_path / "dcm")
    _nifti(tmp_path / "nii", shape=(20, 18, 5), seed=1)
    _nifti(tmp_path / "nii", shape=(16, 16, 4), seed=2, dtype="float32")
    data = [
        f"dicom:{dicom}?modality=ct",
        f"nifti:{tmp_path / 'nii'}?modality=ct",
        "demo:?origins=nibabel&patch=64",
    ]
    scanned, _ = scan_sources(resolve_data(data)[0])
    out = tmp_path / "shards"
    args = ["data", "pack", "-o", str(out), "--workers", "1", "--part-size", "8", "-q"]
    for spec in data:
        args += ["--data", spec]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    # Counts: every scanned image is packed or listed, once.
    with open(out / fmt.PROBLEMS, encoding="utf-8") as f:
        problems = list(csv.DictReader(f))
    decode_failures = [p for p in problems if p["path"].endswith("truncated.dcm")]
    assert len(decode_failures) == 1, problems
    manifest = fmt.read_manifest(str(out))
    assert manifest.images == len(scanned) - 1
    assert len(litdata.StreamingDataset(str(out))) == manifest.images
    by_source = scanned.counts("source")
    by_source["dcm"] -= 1  # a source is named after its folder

    # Train, "killed" right after the step-4 checkpoint, mid-epoch.
    registry = _registry()
    changes = {"train.max_steps": 6, "train.checkpoint_every": 4, "train.batch_size": 4}
    seen: list[int] = []
    real_load = ShardReader.load_row
    monkeypatch.setattr(
        ShardReader,
        "load_row",
        lambda self, row, uri=None: seen.append(row) or real_load(self, row, uri),
    )
    real_save = loop._Trainer._save

    def save_then_die(self, step, p):
        real_save(self, step, p)
        if step == 4:
            raise _Killed

    monkeypatch.setattr(loop._Trainer, "_save", save_then_die)
    with pytest.raises(_Killed):
        loop.train(_shards_config(tmp_path, out, name="run", **changes), registry, progress=False)
    monkeypatch.setattr(loop._Trainer, "_save", real_save)
    assert len(seen) == 16  # 4 steps of 4, no prefetch beyond them with 0 workers

    resumed = _shards_config(tmp_path, out, name="run", **changes)
    resumed.resume = str(tmp_path / "run")
    assert loop.train(resumed, registry, progress=False).steps == 6
    # Steps 1-4 before the kill and 5-6 after it: 24 distinct images of one epoch.
    assert len(seen) == 24 and len(set(seen)) == 24
    assert set(seen) <= set(range(manifest.images))

    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["data"]["images"] == manifest.images
    assert report["data"]["by_source"] == {k: v for k, v in by_source.items() if v}
    _, state = final_state(tmp_path / "run")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 0, 6)

    from biovfm_core.models.runs import load_export
    from biovfm_core.registry import get_registry

    assert load_export(tmp_path / "run" / "export", get_registry()).extra["step"] == 6
