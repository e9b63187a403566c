"""``biovfm eval``'s work: models × benchmarks × protocols → results on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from biovfm_core.errors import ConfigError
from biovfm_core.eval import protocols as P
from biovfm_core.eval.conventions import THRESHOLD_RULES, thresholds_for
from biovfm_core.eval.conventions import evaluate as evaluate_metrics
from biovfm_core.eval.data import Benchmark, expand_benchmarks, load_benchmark
from biovfm_core.eval.features import FEATURE_KINDS, FeatureCache, extract, split_features
from biovfm_core.eval.report import (
    check_folder_convention,
    headline_tables,
    write_result,
    write_tables,
)
from biovfm_core.models.specs import LoadedModel, check_models, load_model
from biovfm_core.results import CONVENTIONS, PROTOCOLS


@dataclass
class EvalSettings:
    """Every choice of an evaluation; recorded in each result JSON."""

    protocols: tuple[str, ...] = ("linear",)
    features: str = "mean"
    image_size: int | None = None  # None: the backbone's own input size
    size: int = 28  # MedMNIST+ file size
    epochs: int = 10
    probe_augment: bool = False  # the study's rotation + padded crop, re-extracted per epoch
    lr: float = 1e-2
    probe_batch_size: int = 128
    knn_k: int = 20
    knn_temperature: float = 0.07
    finetune_epochs: int = 5
    finetune_lr: float = 5e-4
    layer_decay: float = 0.65
    finetune_batch_size: int = 64
    metrics: str = "study"  # the metric convention (biovfm_core/eval/conventions.py)
    threshold: float | None = None  # None: maximise validation MCC
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 128  # feature extraction
    device: str = "auto"
    backbone_options: dict = field(default_factory=dict)

    def check(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ConfigError(f"--protocol must be among {', '.join(PROTOCOLS)}, not {bad}")
        if self.features not in FEATURE_KINDS:
            raise ConfigError(f"--features must be one of {', '.join(FEATURE_KINDS)}")
        if self.metrics not in CONVENTIONS:
            raise ConfigError(f"--metrics must be one of {', '.join(CONVENTIONS)}")
        if self.metrics == "medmnist" and self.threshold not in (None, 0.5):
            raise ConfigError(
                "--metrics medmnist thresholds at 0.5, as MedMNIST's Evaluator; "
                "drop --threshold or use --metrics study/standard"
            )
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError("--threshold must be 'mcc' or a number in (0, 1)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate_one(
    model: LoadedModel,
    bench: Benchmark,
    protocol: str,
    settings: EvalSettings,
    cache: FeatureCache,
    out_dir: Path,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict:
    """One (model, benchmark, protocol): scores, thresholds, metrics, files written."""
    size = settings.image_size or int(getattr(model.backbone, "image_size", 224))
    task = bench.scoring
    labels = {s: y for s, (_, y) in bench.splits.items()}
    start = time.perf_counter()
    if protocol == "finetune":
        out = P.finetune(
            model.backbone,
            bench,
            kind=settings.features,
            size=size,
            epochs=settings.finetune_epochs,
            lr=settings.finetune_lr,
            layer_decay=settings.layer_decay,
            batch_size=settings.finetune_batch_size,
            seed=settings.seed,
            device=device,
        )
    else:
        feats = split_features(
            model.identity,
            model.backbone,
            bench,
            settings.features,
            cache,
            size=size,
            device=device,
            batch_size=settings.batch_size,
            log=log,
        )
        if protocol == "linear":
            out = P.linear_probe(
                feats,
                labels,
                task,
                bench.num_classes,
                epochs=settings.epochs,
                lr=settings.lr,
                batch_size=settings.probe_batch_size,
                seed=settings.seed,
                device=device,
                train_features=(
                    _augmented_train_features(model, bench, settings, size, device)
                    if settings.probe_augment
                    else None
                ),
            )
        else:
            out = P.knn_probe(
                feats,
                labels,
                task,
                bench.num_classes,
                k=settings.knn_k,
                temperature=settings.knn_temperature,
                device=device,
            )
    convention = settings.metrics
    thresholds = thresholds_for(convention, task, out.val_scores, labels["val"], settings.threshold)
    metrics = evaluate_metrics(
        convention,
        task,
        labels["test"],
        out.test_scores,
        thresholds,
        resamples=settings.bootstrap,
        seed=settings.seed,
    )
    record = {
        "model": model.name,
        "benchmark": bench.name,
        "protocol": protocol,
        "task": bench.task,
        "scored_as": task,
        "num_classes": bench.num_classes,
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "thresholds": None if thresholds is None else thresholds.tolist(),
        "metrics_convention": convention,
        "threshold_rule": (
            "fixed, applied as " + ("score > t" if convention != "standard" else "score >= t")
            if settings.threshold is not None and convention != "medmnist"
            else THRESHOLD_RULES[convention]
        ),
        "objective": model.objective,
        "backbone": model.backbone_name,
        "params_m": round(model.params_m, 3),
        "seed": settings.seed,
        "source": model.source,
        "model_identity": model.identity,
        "benchmark_file": bench.location,
        "benchmark_size": bench.size,
        "input_size": size,
        "n": {s: len(y) for s, y in labels.items()},
        "settings": {k: v for k, v in asdict(settings).items() if k != "protocols"},
        "protocol_info": out.info,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_result(out_dir, record, labels["test"], out.test_scores, labels["val"], out.val_scores)
    auc = metrics["auc"]
    log(
        f"{model.name} | {bench.name} | {protocol}: AUC {auc.value:.4f}"
        + (f" [{auc.ci_low:.4f}, {auc.ci_high:.4f}]" if auc.ci_low is not None else "")
        + f", ACC {metrics['acc'].value:.4f}"
        + (f", MCC {metrics['mcc'].value:.4f}" if "mcc" in metrics else "")
        + f" ({convention} metrics)"
    )
    return record


def _augmented_train_features(
    model: LoadedModel, bench: Benchmark, settings: EvalSettings, size: int, device
) -> Callable[[int], np.ndarray]:
    """Per-epoch features of freshly augmented train images (seeded by epoch)."""
    images = bench.splits["train"][0]

    def features(epoch: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        out = extract(
            model.backbone, images, size=size, device=device,
            batch_size=settings.batch_size, augment=gen,
        )  # fmt: skip
        if settings.features == "both":
            return np.concatenate([out["cls"], out["mean"]], axis=1)
        return out[settings.features]

    return features


def run_eval(
    model_specs: list[str],
    benchmark_specs: list[str],
    settings: EvalSettings,
    *,
    out_dir: str | Path,
    medmnist_root: str | None = None,
    cache_dir: str | Path | None = None,
    registry=None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Evaluate every model on every benchmark with every protocol; write the tables."""
    from biovfm_core.registry import get_registry

    settings.check()
    registry = registry or get_registry()
    device = resolve_device(settings.device)
    out = Path(out_dir)
    # Before any work: one results folder holds one convention (its tables mix nothing).
    check_folder_convention(out, settings.metrics)
    # Every model spec exists, reads and fits the image size before anything is
    # extracted: a typo in the last model must not cost the first one's evaluation
    # and leave a partial output folder.
    check_models(
        model_specs,
        registry,
        options=settings.backbone_options,
        seed=settings.seed,
        image_size=settings.image_size,
    )
    cache = FeatureCache(cache_dir)
    pairs = expand_benchmarks(benchmark_specs, medmnist_root, settings.size)
    benches = [load_benchmark(kind, loc, registry) for kind, loc in pairs]
    records = []
    for spec in model_specs:
        model = load_model(spec, registry, options=settings.backbone_options, seed=settings.seed)
        model.backbone.to(device)
        log(f"model {model.name}: {model.params_m:.1f}M parameters, identity {model.identity}")
        for bench in benches:
            for protocol in settings.protocols:
                records.append(
                    evaluate_one(model, bench, protocol, settings, cache, out, device, log)
                )
        model.backbone.to("cpu")
    # Made only now: a spec that fails to load leaves no empty output folder behind.
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_tables(out)
    log("\n" + headline_tables(md_path))
    log(f"wrote {csv_path} and {md_path}")
    return records


def mean_auc(records: list[dict]) -> float:
    return float(np.mean([r["metrics"]["auc"]["value"] for r in records]))
