"""``biovfm inspect``: load each model, extract features on the shown images, draw."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biovfm_core.inspect.attention import Features, extract
from biovfm_core.inspect.images import ShownImages, load_images
from biovfm_core.inspect.pca import body_agreement, foreground_agreement, patch_mask, pca_maps
from biovfm_core.inspect.render import heat, upsample, write_png
from biovfm_core.inspect.retrieval import global_features, neighbours


@dataclass
class InspectSettings:
    count: int = 12
    seed: int = 0
    image_size: int | None = None  # default: the first model's own input side
    tile: int = 96
    k: int = 5
    features: str = "mean"
    device: str = "auto"
    backbone_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelPictures:
    """What was drawn for one model (paths relative to the output folder)."""

    spec: str
    name: str
    folder: str
    pictures: dict[str, str]
    heads: int
    grid: tuple[int, int]
    body_iou: float | None  # PCA fitted on the CT slices alone
    body_iou_shown: float | None  # the shown map (PCA fitted on all images)
    neighbours: list[list[int]]
    cosines: list[list[float]]


def _slug(i: int, name: str) -> str:
    return f"{i + 1}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "model")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def draw_model(
    shown: ShownImages,
    feats: Features,
    out: Path,
    folder: str,
    settings: InspectSettings,
    name: str = "model",
) -> tuple[dict[str, str], dict[str, Any]]:
    """The three grids of one model; returns their paths and the numbers behind them."""
    tile = settings.tile
    thumbs = _thumbs(shown, tile)
    patches = feats.patches.numpy()
    # The foreground split per modality: one split fitted over all of them separates
    # modalities, and left the low-contrast ultrasound images all black.
    maps = pca_maps(patches, feats.grid, groups=list(shown.modalities))
    labels = list(shown.modalities)
    pictures = {}
    pictures["pca"] = f"{folder}/pca.png"
    write_png(
        out / pictures["pca"],
        [thumbs, [upsample(m, tile) for m in maps.rgb]],
        tile,
        title=f"{name}: PCA of patch features (first component per modality: background "
        "black; next three as RGB)",
        col_labels=labels,
        row_labels=["image", "PCA"],
    )
    heads = 0
    if feats.attention is not None:
        h, w = feats.grid
        att = feats.attention.numpy().reshape(len(thumbs), -1, h, w)
        heads = att.shape[1]
        rows = [
            [
                thumbs[i],
                *[upsample(heat(a), tile) for a in att[i]],
                upsample(heat(att[i].mean(0)), tile),
            ]
            for i in range(len(thumbs))
        ]
        pictures["attention"] = f"{folder}/attention.png"
        write_png(
            out / pictures["attention"],
            rows,
            tile,
            title=f"{name}: last block's CLS attention, image then each of {heads} heads, "
            "then their mean",
            row_labels=labels,
        )
    idx, cos = neighbours(global_features(feats.cls, feats.patches, settings.features), settings.k)
    pictures["retrieval"] = f"{folder}/retrieval.png"
    rows = [[thumbs[i], *[thumbs[j] for j in idx[i].tolist()]] for i in range(len(thumbs))]
    write_png(
        out / pictures["retrieval"],
        rows,
        tile,
        title=f"{name}: each image, then its {settings.k} nearest neighbours "
        f"({settings.features} features, cosine)",
        row_labels=labels,
    )
    shown_iou = None
    if shown.body:
        shown_iou = float(
            np.mean(
                [
                    foreground_agreement(maps.foreground[i], patch_mask(m, feats.grid))
                    for i, m in shown.body.items()
                ]
            )
        )
    numbers = {
        "heads": heads,
        "body_iou": body_agreement(patches, feats.grid, shown.body),
        "body_iou_shown": shown_iou,
        "neighbours": idx.tolist(),
        "cosines": [[round(float(c), 4) for c in row] for row in cos.tolist()],
    }
    return pictures, numbers


def _thumbs(shown: ShownImages, tile: int) -> list[np.ndarray]:
    from biovfm_core.inspect.images import square

    return [square(u, tile) for u in shown.unit]


def run_inspect(
    specs: list[str],
    data: list[str],
    out_dir: str | Path,
    settings: InspectSettings,
    *,
    registry=None,
    log: Callable[[str], None] = print,
) -> list[ModelPictures]:
    """Draw every model's pictures on the same images into ``out_dir`` with index.html."""
    from biovfm_core.inspect.page import write_page
    from biovfm_core.models.specs import check_image_size, load_model
    from biovfm_core.registry import get_registry

    registry = registry or get_registry()
    out = Path(out_dir)
    device = _device(settings.device)
    models = []
    # Every model is loaded, and fits the image size, before anything is drawn or the
    # output folder is made: a typo in the second spec leaves nothing behind.
    for spec in specs:
        opts = settings.backbone_options if spec.startswith(("random:", "timm:")) else None
        models.append(load_model(spec, registry, options=opts, seed=settings.seed))
    size = settings.image_size or int(models[0].backbone.image_size)
    for spec, model in zip(specs, models, strict=True):
        check_image_size(model, spec, size, "model")
    shown = load_images(
        data, count=settings.count, seed=settings.seed, size=max(size, settings.tile)
    )
    log(
        f"inspect: {len(shown.uris)} images ({', '.join(sorted(set(shown.modalities)))}) at {size} px"
    )
    images = shown.model_input(size)
    results = []
    for i, (spec, model) in enumerate(zip(specs, models, strict=True)):
        folder = _slug(i, model.name)
        backbone = model.backbone.to(device)
        feats = extract(backbone, images)
        model.backbone = backbone.cpu()
        pictures, numbers = draw_model(shown, feats, out, folder, settings, model.name)
        results.append(
            ModelPictures(spec, model.name, folder, pictures, grid=feats.grid, **numbers)
        )
        score = numbers["body_iou"]
        log(
            f"  {model.name}: {feats.grid[0]}x{feats.grid[1]} patches, {numbers['heads']} heads"
            + (f", CT body IoU {score:.3f}" if score is not None else "")
        )
    summary = {
        "images": shown.uris,
        "modalities": shown.modalities,
        "image_size": size,
        "features": settings.features,
        "seed": settings.seed,
        "models": [r.__dict__ for r in results],
    }
    from biovfm_core.files import write_atomic

    write_atomic(out / "inspect.json", json.dumps(summary, indent=2).encode())
    write_page(out / "index.html", shown, results, settings, size)
    return results
