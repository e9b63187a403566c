"""``biovfm eval``: evaluate models on the 12 MedMNIST benchmarks and other labelled data."""

from __future__ import annotations

import click

from biovfm_core.errors import ConfigError


def _threshold(value: str) -> float | None:
    if value.lower() == "mcc":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--threshold must be 'mcc' or a number, not {value!r}") from None


def _backbone_options(opts: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for text in opts:
        key, sep, value = text.partition("=")
        if not sep or not key.startswith("backbone."):
            raise ConfigError(f"--opt {text!r}: write backbone.KEY=VALUE")
        out[key.removeprefix("backbone.")] = value
    return out


@click.command("eval")
@click.argument("models", nargs=-1)
@click.option(
    "--benchmark",
    "benchmarks",
    multiple=True,
    metavar="SPEC",
    help="demo (offline tasks built from bundled images; demo:modality, demo:texture, demo:plane), "
    "medmnist:<flag>, medmnist:all (the 12), medmnist:<file.npz>, folder:<path> (a "
    "path/{train,val,test}/<class>/ image folder), or <dataset kind>:<location> for a "
    "reader with train/val/test splits (repeatable).",
)
@click.option("--medmnist-root", type=click.Path(file_okay=False), help="Folder of MedMNIST .npz.")
@click.option(
    "--size", type=click.Choice(["28", "64", "128", "224"]), default="28", show_default=True,
    help="MedMNIST+ file size: {flag}.npz (28) or {flag}_{size}.npz.",
)  # fmt: skip
@click.option(
    "--protocol", "protocols", multiple=True, type=click.Choice(["linear", "knn", "finetune"]),
    help="linear (default), knn, finetune; repeatable.",
)  # fmt: skip
@click.option(
    "--features", type=click.Choice(["mean", "cls", "both"]), default="mean", show_default=True,
    help="Frozen features: mean of patch tokens (the study's), CLS, or both concatenated.",
)  # fmt: skip
@click.option(
    "--image-size", type=int, default=None,
    help="Model input side images are resized to (default: the backbone's; study: 224).",
)  # fmt: skip
@click.option(
    "--epochs", type=int, default=10, show_default=True,
    help="Linear-probe epochs (the study: 100; the default keeps CPU runs short).",
)  # fmt: skip
@click.option(
    "--probe-augment/--no-probe-augment", default=False, show_default=True,
    help="The study's linear-probe augmentation (rotation ±30°, crop with 4 px padding): "
    "train features are re-extracted from augmented images every epoch (epochs × the "
    "extraction cost; off keeps the cached features).",
)  # fmt: skip
@click.option("--lr", type=float, default=1e-2, show_default=True, help="Linear-probe AdamW lr.")
@click.option("--knn-k", type=int, default=20, show_default=True)
@click.option("--knn-temperature", type=float, default=0.07, show_default=True)
@click.option("--finetune-epochs", type=int, default=5, show_default=True)
@click.option("--finetune-lr", type=float, default=5e-4, show_default=True)
@click.option("--layer-decay", type=float, default=0.65, show_default=True)
@click.option(
    "--metrics", "metrics", type=click.Choice(["study", "medmnist", "standard"]),
    default="study", show_default=True,
    help="Metric definitions: study (the BioVFM-21M evaluator: positive-class F1, its MCC "
    "thresholds, mean and percentiles of 1000 resamples), medmnist (MedMNIST's Evaluator: "
    "AUC and ACC at 0.5 only, no CI) or standard (biovfm's earlier definitions). "
    "Recorded in every result; tables of different conventions are not mixed.",
)  # fmt: skip
@click.option(
    "--threshold", default="mcc", show_default=True,
    help="Binary/multi-label decision threshold: 'mcc' (maximise validation MCC, by the "
    "--metrics convention's rule) or a number.",
)  # fmt: skip
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Resamples; 0: none.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Extraction batch.")
@click.option(
    "--output", "-o", type=click.Path(file_okay=False), default="eval", show_default=True,
    help="Results folder; tables cover every result already in it.",
)  # fmt: skip
@click.option(
    "--cache", default=None,
    help="Feature cache folder (default ~/.cache/biovfm/features, $BIOVFM_CACHE/features); "
    "'none': keep features in memory only.",
)  # fmt: skip
@click.option(
    "--opt", "opts", multiple=True, metavar="backbone.KEY=VALUE",
    help="Backbone option for random:/timm: models, e.g. backbone.pretrained=false.",
)  # fmt: skip
@click.option(
    "--compare", nargs=2, type=click.Path(dir_okay=False), default=None, metavar="A.csv B.csv",
    help="Print per-metric differences B-A of two results tables with CI overlap; no eval.",
)  # fmt: skip
def eval_(models, benchmarks, medmnist_root, size, protocols, features, image_size, epochs,
          probe_augment, lr,
          knn_k, knn_temperature, finetune_epochs, finetune_lr, layer_decay, metrics, threshold,
          bootstrap, seed, device, batch_size, output, cache, opts, compare) -> None:  # fmt: skip
    """Evaluate MODELS (run folders, exports, random:<backbone>, timm:<name>, DINOv2
    hub or MAE .pth files, timm/Hugging Face folders) on
    benchmarks with a linear probe, kNN or fine-tuning; AUC, ACC, balanced accuracy,
    MCC, F1 with 95% bootstrap intervals.

    \b
    biovfm eval runs/dinov2 random:vit_small --benchmark medmnist:all --medmnist-root data
    biovfm eval runs/mae --benchmark medmnist:path/to/breastmnist_224.npz --protocol knn
    biovfm eval --compare eval-a/results.csv eval-b/results.csv
    """
    if compare:
        from biovfm_core.eval.report import compare_tables

        click.echo(compare_tables(*compare))
        return
    if not models:
        raise ConfigError("give at least one model: a run folder, an export, random:<b>, timm:<n>")
    if not benchmarks:
        raise ConfigError("give at least one --benchmark (e.g. medmnist:all)")
    from biovfm_core.eval.features import default_cache_dir
    from biovfm_core.eval.runner import EvalSettings, run_eval

    settings = EvalSettings(
        protocols=tuple(protocols) or ("linear",),
        features=features,
        image_size=image_size,
        size=int(size),
        epochs=epochs,
        probe_augment=probe_augment,
        lr=lr,
        knn_k=knn_k,
        knn_temperature=knn_temperature,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        layer_decay=layer_decay,
        metrics=metrics,
        threshold=_threshold(threshold),
        bootstrap=bootstrap,
        seed=seed,
        batch_size=batch_size,
        device=device,
        backbone_options=_backbone_options(opts),
    )
    cache_dir = None if cache == "none" else (cache or default_cache_dir())
    run_eval(
        list(models),
        list(benchmarks),
        settings,
        out_dir=output,
        medmnist_root=medmnist_root,
        cache_dir=cache_dir,
        log=click.echo,
    )
