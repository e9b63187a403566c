"""Export of a trained backbone: one weights file plus ``backbone.json``.

The weights are the module evaluation uses (DINOv2's EMA teacher). Backbones that
know their host library's layout (``export_state()``, as the timm ViTs do) export in
it, and the folder is then also a timm / Hugging Face model folder: ``config.json``
(architecture, ``model_args`` and ``pretrained_cfg``), ``model.safetensors`` and a
``README.md`` model card, so ``timm.create_model("local-dir:EXPORT", pretrained=True)``
loads it without biovfm, and the folder uploads to the Hub as it is. That
``model.safetensors`` is the export's only weights file: a second name for the same
bytes (the ``backbone.safetensors`` of earlier exports) doubled the folder on every
copy, upload or filesystem without hard links. Other backbones export their own
``state_dict`` as ``backbone.safetensors``. ``backbone.json`` names the file
(``biovfm.weights``) and records the biovfm backbone name and options, so
``get_registry().build("backbones", name, options=...)`` followed by
``load_state_dict`` (or ``load_export_state``) rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from biovfm_core.files import write_atomic
from biovfm_core.models.hf_layout import write_hf_folder

TIMM_WEIGHTS = "model.safetensors"  # the name timm and the Hugging Face Hub look for
BIOVFM_WEIGHTS = "backbone.safetensors"  # a backbone without a host library's layout


def export_weights(folder: Path, info: dict[str, Any] | None = None) -> Path:
    """The weights file of the export in ``folder``: the one ``backbone.json`` names, or
    for exports that predate the name, ``backbone.safetensors`` (which they all have)."""
    named = (info or {}).get("weights")
    if named:
        return folder / Path(named).name
    if (folder / BIOVFM_WEIGHTS).is_file() or not (folder / TIMM_WEIGHTS).is_file():
        return folder / BIOVFM_WEIGHTS
    return folder / TIMM_WEIGHTS


def export_backbone(
    backbone,
    out_dir: Path,
    *,
    backbone_name: str,
    backbone_options: dict[str, Any],
    step: int,
    source: str,
    input_norm: dict[str, list[float]] | None = None,
    init: dict[str, Any] | None = None,
    run_config: Any = None,
    hf: bool = False,
) -> Path:
    """Write the weights and ``backbone.json`` into ``out_dir``; return the weights file
    (``model.safetensors`` for a host-layout backbone, else ``backbone.safetensors``).
    ``hf``: also a transformers folder in ``out_dir/hf`` (``train.export_hf``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export = getattr(backbone, "export_state", None)
    if callable(export):
        state, description = export()
        layout = "host"
    else:
        state, description = backbone.state_dict(), {}
        layout = "biovfm"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    name = TIMM_WEIGHTS if "timm" in description else BIOVFM_WEIGHTS
    weights = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"step": str(step), "source": source})
        tmp.replace(weights)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    description = {
        **description,
        "biovfm": {
            "backbone": backbone_name,
            "options": backbone_options,
            "layout": layout,
            "weights": name,
            "step": step,
            "source": source,
            "num_parameters": int(sum(t.numel() for t in tensors.values())),
            # The normalisation the training views ended with; evaluation feeds the
            # backbone the same, whatever its own convention for preparing images.
            **({"input": input_norm} if input_norm else {}),
            # The published weights the run started from (--init), with their checksum.
            **({"init": init} if init else {}),
        },
    }
    write_atomic(out_dir / "backbone.json", (json.dumps(description, indent=2) + "\n").encode())
    # An earlier export into this folder (a run exported again after resuming) may have
    # left the other name: one weights file, the one backbone.json names.
    for other in {TIMM_WEIGHTS, BIOVFM_WEIGHTS} - {name}:
        (out_dir / other).unlink(missing_ok=True)
    if "timm" in description:
        write_timm_folder(out_dir, description, run_config=run_config)
    if hf:
        write_hf_folder(out_dir / "hf", backbone, description)  # transformers' Dinov2Model
    return weights


def timm_config(description: dict[str, Any]) -> dict[str, Any]:
    """timm's ``config.json`` for an export: architecture, rebuild arguments, and the
    input the weights expect (size, and the normalisation training ended with)."""
    timm_args = description["timm"]
    kwargs = dict(timm_args["kwargs"])
    size = int(kwargs.get("img_size", 224))
    norm = description["biovfm"].get("input") or {"mean": [0.5] * 3, "std": [0.5] * 3}
    return {
        "architecture": timm_args["model_name"],
        "num_classes": 0,
        "num_features": description.get("embed_dim"),
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": norm["mean"],
            "std": norm["std"],
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "other",
        },
    }


def write_timm_folder(
    out_dir: Path, description: dict[str, Any], *, run_config: Any = None
) -> None:
    """``config.json`` and ``README.md`` beside the export's ``model.safetensors``."""
    config = timm_config(description)
    write_atomic(out_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    write_atomic(out_dir / "README.md", model_card(out_dir, description, run_config).encode())


def model_card(out_dir: Path, description: dict[str, Any], run_config: Any = None) -> str:
    """A short Hugging Face model card: what the model is, how it was made, how to load it,
    and the run's eval results when ``RUN/eval/results.md`` exists."""
    info = description["biovfm"]
    arch = description["timm"]["model_name"]
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-feature-extraction, timm, biovfm]",
        "---",
        "",
        f"# {info['backbone']} ({info['source']})",
        "",
        f"A {info['backbone']} backbone ({info['num_parameters'] / 1e6:.1f}M parameters, timm "
        f"`{arch}` layout) pretrained with biovfm for "
        f"{info['step']} step(s). It outputs features (no classifier).",
        "",
        "```python",
        "import timm",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)',
        "```",
        "",
    ]
    norm = info.get("input")
    if norm:
        mean = [round(v, 4) for v in norm["mean"]]
        std = [round(v, 4) for v in norm["std"]]
        lines += [f"Inputs: RGB scaled to [0, 1], then (x - {mean}) / {std}.", ""]
    lines += ["## Recipe", ""]
    if run_config is not None:
        lines += [
            f"- objective: `{run_config.objective}`, backbone: `{run_config.backbone}`",
            f"- batch size {run_config.train.batch_size}, seed {run_config.train.seed}",
            f"- data: {', '.join(run_config.data.sources) or 'the built-in demo data'}"
            + (f" (fraction {run_config.data.fraction})" if run_config.data.fraction < 1 else ""),
        ]
    if info.get("init"):
        init = info["init"]
        lines.append(f"- started from `{init['spec']}` (sha256 {str(init.get('sha256'))[:16]})")
    lines += [f"- steps: {info['step']}", ""]
    run = out_dir.parent if out_dir.name == "export" else out_dir
    if (run / "config.yaml").is_file() and run_config is None:
        lines += [f"The full config is `{run.name}/config.yaml`.", ""]
    results = run / "eval" / "results.md"
    if results.is_file():
        body = results.read_text(encoding="utf-8").split("\n", 1)[-1].strip()
        lines += ["## Evaluation", "", body, ""]
    return "\n".join(lines)
