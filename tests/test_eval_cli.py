"""`biovfm eval` end to end: a run trained here, a random floor, results files, --compare."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from biovfm_core.cli.main import cli
from biovfm_core.eval.conventions import evaluate_study
from biovfm_core.eval.data import load_benchmark
from biovfm_core.eval.features import FeatureCache, split_features
from biovfm_core.eval.synthetic import write_medmnist_npz
from biovfm_core.models.specs import load_model
from biovfm_core.registry import get_registry
from biovfm_core.results import read_results

TINY_TRAIN = [
    "--backbone", "vit_tiny", "--batch-size", "8", "--max-steps", "2",
    "--set", "data.num_workers=0",
    "--opt", "objective.prototypes=128", "--opt", "objective.head_hidden_dim=64",
    "--opt", "objective.head_bottleneck_dim=32", "--opt", "objective.local_crops=2",
    "--opt", "objective.global_size=32", "--opt", "objective.local_size=16",
    "--opt", "backbone.image_size=32",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    done = subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", "train", *TINY_TRAIN,
         "--output", str(root), "--name", "tiny"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "tiny"


def eval_cli(*args: str):
    result = CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_eval_of_a_trained_run_writes_json_npz_csv_md(trained_run, tmp_path):
    data = write_medmnist_npz(tmp_path / "breastmnist.npz", num_classes=2, sizes=(60, 30, 30))
    out = tmp_path / "out"
    code, log = eval_cli(
        str(trained_run), "random:vit_tiny", "--opt", "backbone.image_size=32",
        "--benchmark", f"medmnist:{data}", "--protocol", "linear", "--protocol", "knn",
        "--epochs", "20", "--bootstrap", "200", "--output", str(out),
        "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    # --opt applies to random:/timm: models only; a run carries its own options.
    assert code == 2 and "applies only to random: and timm:" in log
    code, log = eval_cli(
        str(trained_run), "--benchmark", f"medmnist:{data}", "--protocol", "linear",
        "--protocol", "knn", "--epochs", "20", "--bootstrap", "200", "--output", str(out),
        "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert code == 0, log
    code, log = eval_cli(
        "random:vit_tiny", "--opt", "backbone.image_size=32", "--benchmark",
        f"medmnist:{data}", "--protocol", "linear", "--epochs", "20", "--bootstrap", "200",
        "--output", str(out), "--cache", "none",
    )  # fmt: skip
    assert code == 0, log
    for protocol in ("linear", "knn"):
        record = json.loads((out / "tiny" / "breastmnist" / f"{protocol}.json").read_text())
        assert record["task"] == "binary" and record["input_size"] == 32
        assert record["backbone"] == "vit_tiny" and record["objective"] == "dinov2"
        saved = np.load(out / "tiny" / "breastmnist" / f"{protocol}.npz")
        # Anyone can recompute the metrics from the saved labels, scores and threshold:
        # by default the study's (the mean of its resamples, which need no seed).
        assert record["metrics_convention"] == "study"
        again = evaluate_study(
            "binary", saved["test_labels"], saved["test_scores"], saved["thresholds"],
            resamples=200,
        )  # fmt: skip
        for metric, value in again.items():
            m = record["metrics"][metric]
            assert m["value"] == pytest.approx(value.value, abs=1e-12)
            assert m["point"] == pytest.approx(value.point, abs=1e-12)
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
    rows = read_results(out / "results.csv")
    assert {(r.model, r.protocol) for r in rows} == {
        ("tiny", "linear"),
        ("tiny", "knn"),
        ("random:vit_tiny", "linear"),
    }
    assert len(rows) == 3 * 8 and {r.convention for r in rows} == {"study"}
    md = (out / "results.md").read_text()
    assert "### linear — auc" in md and "| random:vit_tiny |" in md and "| mean |" in md

    # --compare: B - A per metric with the intervals.
    single = tmp_path / "a.csv"
    with open(out / "results.csv") as f:
        lines = [ln for ln in f if ",random:vit_tiny," not in ln]
    single.write_text("".join(lines))
    code, text = eval_cli("--compare", str(single), str(out / "results.csv"))
    assert code == 0 and "breastmnist\tlinear\tauc" in text and ("overlap" in text)
    tiny_auc = next(
        r for r in rows if r.model == "tiny" and r.protocol == "linear" and r.metric == "auc"
    )
    assert f"{tiny_auc.value:.4f}" in text


def test_checkpoint_and_export_give_the_same_features(trained_run, tmp_path):
    data = write_medmnist_npz(tmp_path / "toy.npz", sizes=(8, 4, 4))
    reg = get_registry()
    bench = load_benchmark("medmnist", str(data), reg)
    exported = load_model(str(trained_run), reg)
    no_export = tmp_path / "copy"
    shutil.copytree(trained_run, no_export, ignore=shutil.ignore_patterns("export"))
    from_ckpt = load_model(str(no_export), reg)
    assert from_ckpt.source.endswith("step_00000002") and exported.source.endswith("export")
    a = split_features("a", exported.backbone, bench, "both", FeatureCache(None), size=32)
    b = split_features("b", from_ckpt.backbone, bench, "both", FeatureCache(None), size=32)
    np.testing.assert_allclose(a["test"], b["test"], rtol=1e-5, atol=1e-5)


def test_bad_benchmark_and_missing_root_are_one_line_errors(tmp_path):
    code, log = eval_cli("random:vit_tiny", "--benchmark", "medmnist:pathmnist")
    assert code == 2 and "--medmnist-root" in log
    code, log = eval_cli(
        "random:vit_tiny", "--benchmark", "medmnist:all", "--medmnist-root", str(tmp_path)
    )
    assert code == 2 and "pathmnist.npz does not exist" in log
    code, log = eval_cli(
        "random:vit_tiny", "--benchmark", "medmnist:foo", "--medmnist-root", str(tmp_path)
    )
    assert code == 2 and "not one of the 12" in log


def test_results_csv_columns_are_the_schema(tmp_path):
    data = write_medmnist_npz(
        tmp_path / "chestmnist.npz", num_classes=14, multilabel=True, sizes=(40, 20, 20)
    )
    out = tmp_path / "out"
    code, log = eval_cli(
        "random:vit_tiny", "--opt", "backbone.image_size=32", "--benchmark", f"medmnist:{data}",
        "--protocol", "knn", "--threshold", "0.5", "--bootstrap", "0", "--output", str(out),
        "--cache", "none",
    )  # fmt: skip
    assert code == 0, log
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    from biovfm_core.results import COLUMNS

    assert tuple(header) == COLUMNS
    record = json.loads((out / "random_vit_tiny" / "chestmnist" / "knn.json").read_text())
    assert record["thresholds"] == [0.5] * 14 and record["metrics"]["auc"]["ci_low"] is None
    assert {r.convention for r in read_results(out / "results.csv")} == {"study"}
    assert "Metric convention: **study**" in (out / "results.md").read_text()
    # Another convention into the same folder would mix its tables: refused up front.
    code, log = eval_cli(
        "random:vit_tiny", "--opt", "backbone.image_size=32", "--benchmark", f"medmnist:{data}",
        "--protocol", "knn", "--metrics", "medmnist", "--output", str(out), "--cache", "none",
    )  # fmt: skip
    assert code == 2 and "holds results computed with --metrics study" in log


def test_trained_input_maps_the_studys_normalisation_to_the_trained_one():
    from biovfm_core.models.normalisation import TrainedInput

    class Probe(torch.nn.Module):
        embed_dim, patch_size, image_size, in_chans = 4, 16, 32, 3

        def forward_tokens(self, images):
            self.seen = images
            return None

    probe = Probe()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    adapter = TrainedInput(probe, mean, std)
    u = torch.rand(2, 3, 8, 8)  # [0, 1] intensities
    adapter.forward_tokens((u - 0.5) / 0.5)  # what evaluation prepares
    expected = (u - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(probe.seen, expected)
    assert adapter.embed_dim == 4 and adapter.image_size == 32
