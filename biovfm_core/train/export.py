"""Export of a trained backbone: ``backbone.safetensors`` plus ``backbone.json``.

The weights are the module evaluation uses (DINOv2's EMA teacher). Backbones that
know their host library's layout (``export_state()``, as the timm ViTs do) export in
it, so ``timm.create_model(**json["timm"], pretrained=True,
pretrained_cfg_overlay={"file": "backbone.safetensors"})`` loads them; every export
also records the biovfm backbone name and options, so
``get_registry().build("backbones", name, options=...)`` followed by
``load_state_dict`` rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from biovfm_core.config import write_atomic


def export_backbone(
    backbone,
    out_dir: Path,
    *,
    backbone_name: str,
    backbone_options: dict[str, Any],
    step: int,
    source: str,
    input_norm: dict[str, list[float]] | None = None,
) -> Path:
    """Write ``backbone.safetensors`` and ``backbone.json`` into ``out_dir``; return the former."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export = getattr(backbone, "export_state", None)
    if callable(export):
        state, description = export()
        layout = "host"
    else:
        state, description = backbone.state_dict(), {}
        layout = "biovfm"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    weights = out_dir / "backbone.safetensors"
    tmp = out_dir / ".backbone.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"step": str(step), "source": source})
    tmp.replace(weights)
    description = {
        **description,
        "biovfm": {
            "backbone": backbone_name,
            "options": backbone_options,
            "layout": layout,
            "step": step,
            "source": source,
            "num_parameters": int(sum(t.numel() for t in tensors.values())),
            # The normalisation the training views ended with; evaluation feeds the
            # backbone the same, whatever its own convention for preparing images.
            **({"input": input_norm} if input_norm else {}),
        },
    }
    write_atomic(out_dir / "backbone.json", (json.dumps(description, indent=2) + "\n").encode())
    return weights
