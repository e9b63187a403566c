"""Backbones trained by `biovfm train` beat the random-init floor on a real-image task.

The task: which of three real biomedical images (scikit-image's retina fundus
photograph, immunohistochemistry section and phase-contrast cell micrograph) a
64 px gray patch comes from, each patch standardised so brightness and contrast
give nothing away. Random-init ViT-Ti features reach a linear-probe AUC of about
0.87 here; 600 supervised steps on the train split (CPU, ~1 minute) lift it to ~0.95,
and 600 label-free DINOv2 steps (slow test) lift the kNN AUC from 0.85 to 0.90.
The check goes through the whole chain: training views normalised one way, the
export recording it, evaluation preparing images the study's way and mapping them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def write_patch_task(path: Path, seed: int = 0) -> Path:
    from skimage import color, data, transform

    rng = np.random.default_rng(seed)
    sources = [
        color.rgb2gray(data.retina()),
        color.rgb2gray(data.immunohistochemistry()),
        data.cell().astype(np.float64) / 255.0,
    ]

    def patches(img: np.ndarray, n: int) -> list[np.ndarray]:
        out = []
        h, w = img.shape
        while len(out) < n:
            side = int(rng.integers(64, min(h, w) // 3))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            p = transform.resize(img[y : y + side, x : x + side], (64, 64), anti_aliasing=True)
            if p.std() < 0.02:
                continue
            p = (p - p.mean()) / p.std()
            out.append(np.clip(p * 40 + 128, 0, 255).astype(np.uint8))
        return out

    arrays = {}
    for split, n in (("train", 150), ("val", 30), ("test", 100)):
        images, labels = [], []
        for k, img in enumerate(sources):
            images += patches(img, n)
            labels += [k] * n
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.array(labels).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def biovfm(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        capture_output=True, text=True, timeout=3600,  # a hang guard only
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def eval_record(eval_dir: Path, model: str, protocol: str) -> dict:
    """The JSON `biovfm eval` wrote for ``model`` (its folder name) on the patch task."""
    return json.loads((eval_dir / model / "patches" / f"{protocol}.json").read_text())


def assert_beats_floor(trained: dict, floor: dict) -> None:
    """Better beyond both intervals' reach: the trained model's lower bound is above
    the floor's value, and its value above the floor's upper bound."""
    assert trained["ci_low"] > floor["value"] and trained["value"] > floor["ci_high"], (
        trained,
        floor,
    )


@pytest.mark.slow
def test_trained_backbone_beats_random_init_and_every_protocol_runs(tmp_path):
    # 600 training steps (~1 minute on 2 idle cores, 8+ beside other jobs): a learning
    # check, so `slow`. The default suite keeps each objective's few-step loss-drop
    # check on real images (test_dinov2, test_mae, test_supervised).
    task = write_patch_task(tmp_path / "patches.npz")
    biovfm(
        "train", "--objective", "supervised", "--data", f"medmnist:{task}?modality=microscopy",
        "--device", "cpu", "--max-steps", "600", "--batch-size", "30", "--set", "optim.lr=1e-3",
        "--set", "data.num_workers=2", "--output", str(tmp_path), "--name", "sup",
    )  # fmt: skip
    biovfm(
        "eval", str(tmp_path / "sup"), "random:vit_tiny", "--benchmark", f"medmnist:{task}",
        "--protocol", "linear", "--protocol", "knn", "--protocol", "finetune",
        "--epochs", "30", "--finetune-epochs", "1", "--image-size", "64", "--device", "cpu",
        "--bootstrap", "200",
        "--cache", "none", "-o", str(tmp_path / "eval"),
    )  # fmt: skip
    eval_dir = tmp_path / "eval"
    # Every protocol ran end to end on the real-image benchmark, for both models.
    for model in ("sup", "random_vit_tiny"):
        for protocol in ("linear", "knn", "finetune"):
            auc = eval_record(eval_dir, model, protocol)["metrics"]["auc"]["value"]
            assert 0.5 < auc <= 1.0, (model, protocol)
            assert (eval_dir / model / "patches" / f"{protocol}.npz").is_file()
    trained = eval_record(eval_dir, "sup", "linear")["metrics"]["auc"]
    floor = eval_record(eval_dir, "random_vit_tiny", "linear")["metrics"]["auc"]
    assert floor["value"] < 0.95  # the task is not trivial for random features
    # Measured: trained 0.949 [0.923, 0.967] against the floor's 0.875 [0.852, 0.900].
    assert_beats_floor(trained, floor)


@pytest.mark.slow
def test_self_supervised_dinov2_beats_random_init_on_knn(tmp_path):
    # No labels in training: 600 steps of the DINOv2 CPU preset on the 450 train
    # patches (the whole test took 8-9 minutes on 2 cores). The DINO loss stayed within
    # 0.04 of ln K all the way (DINOv2's own recipe runs 125k steps), yet the
    # teacher's features already separate the sources better. Measured: kNN AUC
    # 0.901 [0.875, 0.925] against the floor's 0.850 [0.818, 0.885]; the linear
    # probe, 0.897 against 0.875, is within the intervals, so only kNN is asserted.
    task = write_patch_task(tmp_path / "patches.npz")
    log = biovfm(
        "train", "--objective", "dinov2", "--data", f"medmnist:{task}?modality=microscopy",
        "--device", "cpu", "--max-steps", "600", "--batch-size", "32",
        "--set", "data.num_workers=2", "--output", str(tmp_path), "--name", "dino",
        # The in-training monitor and the sentinels on a run that learns (issue 26):
        # no collapse or instability alarm, and the monitor's kNN rises.
        "--set", f"train.monitor=medmnist:{task}", "--set", "train.monitor_every=200",
        # Without DINOv2's ViT-L regularisation: with its defaults (drop-path 0.3 in
        # every block, LayerScale 1e-5) this 600-step ViT-Ti run measured kNN AUC 0.734
        # [0.688, 0.774], below the floor's 0.850 [0.815, 0.882] (2026-11-30).
        "--opt", "backbone.drop_path_rate=0", "--opt", "backbone.layer_scale_init=none",
    )  # fmt: skip
    biovfm(
        "eval", str(tmp_path / "dino"), "random:vit_tiny", "--benchmark", f"medmnist:{task}",
        "--protocol", "knn", "--image-size", "64", "--device", "cpu", "--bootstrap", "200",
        "--cache", "none", "-o", str(tmp_path / "eval"),
    )  # fmt: skip
    trained = eval_record(tmp_path / "eval", "dino", "knn")["metrics"]["auc"]
    floor = eval_record(tmp_path / "eval", "random_vit_tiny", "knn")["metrics"]["auc"]
    assert_beats_floor(trained, floor)
    assert "warning: step" not in log, log
    with open(tmp_path / "dino" / "metrics.csv") as f:
        monitor = [float(r["monitor/knn_auc"]) for r in csv.DictReader(f) if r["monitor/knn_auc"]]
    print("monitor kNN AUC at steps 200, 400, 600:", monitor)
    assert len(monitor) == 3 and monitor[-1] > monitor[0], monitor
