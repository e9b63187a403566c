"""The in-training monitor: kNN (and optionally linear-probe) scores of the evaluation
backbone on a fixed, cached benchmark subsample, every ``train.monitor_every`` steps.

The protocols, thresholds and intervals are ``biovfm eval``'s (DINO's weighted kNN,
k=20, T=0.07; the study's metric convention with its 1,000 resamples), so a monitor
curve and a later ``biovfm eval`` of the export measure the same thing. It must not
change the run it watches: the images are chosen by a private ``RandomState(0)``, the
global random generators are saved and restored around it (the linear probe seeds
torch's), and each module's train/eval mode is put back.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from biovfm_core.errors import ConfigError
from biovfm_core.eval import protocols as P
from biovfm_core.eval.conventions import DEFAULT_CONVENTION, STUDY_RESAMPLES, thresholds_for
from biovfm_core.eval.conventions import evaluate as evaluate_metrics
from biovfm_core.eval.data import (
    DEMO_KIND,
    DEMO_TASKS,
    MEDMNIST_2D,
    SIZES,
    SPLITS,
    Benchmark,
    load_benchmark,
    medmnist_path,
)
from biovfm_core.eval.features import extract
from biovfm_core.train.monitoring import PREFIX, monitor_columns

# Images per split when the spec names no N: enough for a stable kNN AUC, little
# enough to cost well under 5% of the steps between two evaluations (benchmarks/).
DEFAULT_SAMPLES = 1000
MEDMNIST_ROOT_ENV = "BIOVFM_MEDMNIST_ROOT"


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``train.monitor`` -> (dataset kind, location, images per split)."""
    text, samples = spec, DEFAULT_SAMPLES
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit():
        text, samples = head, int(tail)
        if samples < 2:
            raise ConfigError(f"train.monitor={spec}: the subsample needs at least 2 images")
    if text in ("demo", f"demo:{DEMO_TASKS[0]}"):
        return DEMO_KIND, DEMO_TASKS[0], samples
    kind, sep, rest = text.partition(":")
    if kind == "demo" and rest in DEMO_TASKS:
        return DEMO_KIND, rest, samples
    if not sep or not rest:
        raise ConfigError(
            f"train.monitor={spec!r}: write demo, demo:TASK ({', '.join(DEMO_TASKS)}), "
            "medmnist:FLAG[:N], medmnist:FILE.npz[:N], folder:PATH[:N] or KIND:LOCATION[:N]"
        )
    if kind == "medmnist" and not rest.lower().endswith(".npz"):
        return "medmnist", str(_medmnist_file(spec, rest)), samples
    return kind, rest, samples


def _medmnist_file(spec: str, flag: str) -> Path:
    if flag not in MEDMNIST_2D:
        raise ConfigError(
            f"train.monitor={spec}: {flag!r} is not a MedMNIST 2D flag "
            f"({', '.join(MEDMNIST_2D)}); or pass medmnist:FILE.npz"
        )
    root = os.environ.get(MEDMNIST_ROOT_ENV)
    if not root:
        raise ConfigError(
            f"train.monitor={spec}: set {MEDMNIST_ROOT_ENV} to the folder holding the "
            "MedMNIST .npz files, or pass medmnist:FILE.npz"
        )
    for size in SIZES:  # smallest first: the monitor resizes to the crop anyway
        path = medmnist_path(root, flag, size)
        if path.is_file():
            return path
    raise ConfigError(f"train.monitor={spec}: no {flag} .npz file in {root}")


def subsample(bench: Benchmark, samples: int) -> Benchmark:
    """At most ``samples`` images per split, the same ones every time (its own
    ``RandomState(0)``, never a training stream), in their stored order."""
    rng = np.random.RandomState(0)
    splits = {}
    for split in SPLITS:
        images, labels = bench.splits[split]
        if len(images) > samples:
            keep = np.sort(rng.choice(len(images), samples, replace=False))
            images, labels = images[keep], labels[keep]
        splits[split] = (np.ascontiguousarray(images), np.ascontiguousarray(labels))
    return dataclasses.replace(bench, splits=splits)


class TrainingMonitor:
    """kNN (and linear-probe) AUC and accuracy with the study's intervals."""

    def __init__(
        self,
        bench: Benchmark,
        *,
        image_size: int,
        device: torch.device,
        linear: bool = False,
        convention: str = DEFAULT_CONVENTION,
        resamples: int = STUDY_RESAMPLES,
        batch_size: int = 128,
    ) -> None:
        self.bench = bench
        self.image_size = image_size
        self.device = device
        self.linear = linear
        self.convention = convention
        self.resamples = resamples
        self.batch_size = batch_size
        self.columns = monitor_columns(linear)
        self.labels = {s: y for s, (_, y) in bench.splits.items()}

    def describe(self) -> str:
        n = "/".join(str(len(y)) for y in self.labels.values())
        protocols = "kNN and linear probe" if self.linear else "kNN"
        return (
            f"monitor: {protocols} on {self.bench.name} ({n} train/val/test images at "
            f"{self.image_size}px), {self.convention} metrics"
        )

    def measure(self, backbone: torch.nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        modes = [(m, m.training) for m in backbone.modules()]
        cuda = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                features = {
                    split: extract(
                        backbone,
                        images,
                        size=self.image_size,
                        device=self.device,
                        batch_size=self.batch_size,
                    )["cls"]
                    for split, (images, _) in self.bench.splits.items()
                }
                row = self._scores("knn", features)
            if self.linear:
                with torch.random.fork_rng(devices=cuda):
                    row.update(self._scores("linear", features))
        finally:
            for module, mode in modes:
                module.training = mode
        row[PREFIX + "seconds"] = time.perf_counter() - start
        return row

    def _scores(self, protocol: str, features: dict[str, np.ndarray]) -> dict[str, float]:
        task, classes = self.bench.scoring, self.bench.num_classes
        if protocol == "knn":
            out = P.knn_probe(features, self.labels, task, classes, device=self.device)
        else:
            out = P.linear_probe(features, self.labels, task, classes, device=self.device)
        thresholds = thresholds_for(self.convention, task, out.val_scores, self.labels["val"], None)
        metrics = evaluate_metrics(
            self.convention,
            task,
            self.labels["test"],
            out.test_scores,
            thresholds,
            resamples=self.resamples,
        )
        row = {}
        for name in ("auc", "acc"):
            value = metrics[name]
            row[f"{PREFIX}{protocol}_{name}"] = value.value
            row[f"{PREFIX}{protocol}_{name}_low"] = value.ci_low
            row[f"{PREFIX}{protocol}_{name}_high"] = value.ci_high
        return row


def build_monitor(config, registry, device: torch.device, image_size: int) -> TrainingMonitor:
    """The monitor ``config.train.monitor`` names, its subsample loaded once."""
    kind, location, samples = parse_spec(config.train.monitor)
    bench = subsample(load_benchmark(kind, location, registry), samples)
    return TrainingMonitor(
        bench, image_size=image_size, device=device, linear=config.train.monitor_linear
    )
