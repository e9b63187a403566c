"""Hugging Face transformers' ``Dinov2Model`` / ``ViTMAEModel`` folders, to and from
timm's ``VisionTransformer`` layout.

A transformers folder is ``config.json`` (``model_type`` ``dinov2`` or ``vit_mae``) and
``model.safetensors`` with ``embeddings.*`` and per-layer keys. Both key spellings are
read: transformers 4.x's (``encoder.layer.N.attention.attention.query``, what the
Hub's checkpoints hold) and 5.x's (``layers.N.attention.q_proj``). The folder biovfm
writes uses the 4.x spelling, which every transformers from 4.40 loads (5.x renames it
on load). The conversion is key renaming and concatenation only, so reading and
writing need no transformers; loading the written folder with
``transformers.AutoModel.from_pretrained`` does (``pip install 'biovfm[hf]'``).

Position tables: transformers' Dinov2Model resizes with bicubic to the size, no
antialias (``modeling_dinov2.py interpolate_pos_encoding``), so a Dinov2 folder is
read with ``pos_interpolation="bicubic"``; at the table's own size every rule agrees.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic

HF_MODEL_TYPES = ("dinov2", "vit_mae")
HF_EXTRA = "pip install 'biovfm[hf]'"

# Per-layer names: transformers 4.x and 5.x (Dinov2 and ViTMAE) -> timm.
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_IN_LAYER = {
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.weights_in": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
    "mlp.weights_out": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": 0,
    "attention.q_proj": 0,
    "attention.attention.key": 1,
    "attention.k_proj": 1,
    "attention.attention.value": 2,
    "attention.v_proj": 2,
}
# transformers 5.x splits the SwiGLU input projection (weights_in = [gate; up]).
_SWIGLU_5X = {"mlp.gate_proj": 0, "mlp.up_proj": 1}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def hf_model_type(folder: Path) -> str | None:
    """``config.json``'s ``model_type`` when it names a transformers model, else None."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def hf_to_timm(
    state: dict[str, torch.Tensor], spec: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A transformers Dinov2 / ViTMAE state dict in timm's ViT layout, and the keys dropped
    (mask token, MAE decoder, classifier heads)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key
        for prefix in ("dinov2.", "vit."):  # ...ForImageClassification, ViTMAEForPreTraining
            name = name.removeprefix(prefix)
        if name in _TOP:
            out[_TOP[name]] = value
            continue
        match = _LAYER.match(name)
        if match is None:
            dropped.append(key)  # embeddings.mask_token, decoder.*, classifier.*, pooler
            continue
        block, rest = match.group(1), match.group(2)
        stem, _, leaf = rest.rpartition(".")  # leaf: weight / bias / lambda1
        if rest in _IN_LAYER:  # layer_scale*.lambda1 has no leaf of its own
            out[f"blocks.{block}.{_IN_LAYER[rest]}"] = value
        elif stem in _IN_LAYER:
            out[f"blocks.{block}.{_IN_LAYER[stem]}.{leaf}"] = value
        elif stem in _QKV:
            parts.setdefault((f"blocks.{block}.attn.qkv.{leaf}", "qkv"), {})[_QKV[stem]] = value
        elif stem in _SWIGLU_5X:
            parts.setdefault((f"blocks.{block}.mlp.fc1.{leaf}", "glu"), {})[_SWIGLU_5X[stem]] = (
                value
            )
        else:
            raise ConfigError(
                f"{spec}: transformers weight {key!r} has no place in a ViT; biovfm reads "
                "Dinov2Model and ViTMAEModel folders"
            )
    for (target, kind), pieces in parts.items():
        need = 3 if kind == "qkv" else 2
        if sorted(pieces) != list(range(need)):
            raise ConfigError(f"{spec}: {target} is missing some of its {kind} parts")
        out[target] = torch.cat([pieces[i] for i in range(need)], dim=0)
    return out, sorted(dropped)


def read_hf_folder(spec: str, folder: Path, weights: Path) -> dict[str, Any]:
    """What ``published`` needs of a transformers folder: timm-layout state, dropped
    keys, input normalisation and the position rule of the model's own code."""
    from biovfm_core.models.weights import read_safetensors

    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise ConfigError(
            f"--init {spec}: a transformers {kind!r} model; biovfm reads "
            f"{', '.join(HF_MODEL_TYPES)} folders (Dinov2Model, ViTMAEModel)"
        )
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise ConfigError(
            f"--init {folder / 'config.json'}: hidden_act {config.get('hidden_act')!r}, "
            f"qkv_bias {config.get('qkv_bias')}; biovfm's ViT needs gelu and qkv_bias true"
        )
    state, dropped = hf_to_timm(read_safetensors(weights), spec)
    if kind == "dinov2" and "blocks.0.ls1.gamma" not in state:
        raise ConfigError(f"--init {spec}: a Dinov2Model without layer_scale weights")
    norm = None
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            processor = json.loads(pre.read_text())
            if "image_mean" in processor and "image_std" in processor:
                norm = {"mean": list(processor["image_mean"]), "std": list(processor["image_std"])}
        except (OSError, ValueError):
            norm = None
    return {
        "state": state,
        "dropped": dropped,
        "input_norm": norm,
        # transformers' Dinov2Model: bicubic to the size, no antialias. ViTMAEModel
        # refuses other sizes unless asked, so timm's rule is as good as any there.
        "pos_interpolation": "bicubic" if kind == "dinov2" else "timm",
        "kind": f"hf-{kind}",
    }


def write_hf_folder(out_dir: Path, backbone, description: dict[str, Any]) -> Path | None:
    """A transformers ``Dinov2Model`` folder of a biovfm ViT backbone (``.vit``: timm's
    ``VisionTransformer`` with a class token and position rows for it, no registers);
    None, writing nothing, for other backbones. LayerScale absent: ``lambda1`` = 1."""
    from safetensors.torch import save_file

    vit = getattr(backbone, "vit", None)
    if (
        vit is None
        or vit.cls_token is None
        or vit.pos_embed is None
        or int(getattr(vit, "num_reg_tokens", 0))
        or vit.no_embed_class
        or getattr(vit, "global_pool", "token") not in ("token", "")
    ):
        return None
    state = {k: v.detach().cpu() for k, v in vit.state_dict().items()}
    dim = int(vit.embed_dim)
    depth = len(vit.blocks)
    out: dict[str, torch.Tensor] = {}
    for hf_key, timm in _TOP.items():
        out[hf_key] = state[timm]
    out["embeddings.mask_token"] = torch.zeros(1, dim)  # iBOT's; unused by features
    swiglu = False
    for i in range(depth):
        b, layer = f"blocks.{i}.", f"encoder.layer.{i}."
        q, k, v = state[b + "attn.qkv.weight"].chunk(3, dim=0)
        qb, kb, vb = state[b + "attn.qkv.bias"].chunk(3, dim=0)
        fc1 = state[b + "mlp.fc1.weight"]
        swiglu = int(fc1.shape[0]) != 4 * dim
        mlp_in, mlp_out = (
            ("mlp.weights_in", "mlp.weights_out") if swiglu else ("mlp.fc1", "mlp.fc2")
        )
        out.update(
            {
                layer + "norm1.weight": state[b + "norm1.weight"],
                layer + "norm1.bias": state[b + "norm1.bias"],
                layer + "attention.attention.query.weight": q,
                layer + "attention.attention.key.weight": k,
                layer + "attention.attention.value.weight": v,
                layer + "attention.attention.query.bias": qb,
                layer + "attention.attention.key.bias": kb,
                layer + "attention.attention.value.bias": vb,
                layer + "attention.output.dense.weight": state[b + "attn.proj.weight"],
                layer + "attention.output.dense.bias": state[b + "attn.proj.bias"],
                layer + "layer_scale1.lambda1": state.get(b + "ls1.gamma", torch.ones(dim)),
                layer + "norm2.weight": state[b + "norm2.weight"],
                layer + "norm2.bias": state[b + "norm2.bias"],
                layer + f"{mlp_in}.weight": fc1,
                layer + f"{mlp_in}.bias": state[b + "mlp.fc1.bias"],
                layer + f"{mlp_out}.weight": state[b + "mlp.fc2.weight"],
                layer + f"{mlp_out}.bias": state[b + "mlp.fc2.bias"],
                layer + "layer_scale2.lambda1": state.get(b + "ls2.gamma", torch.ones(dim)),
            }
        )
    patch = int(vit.patch_embed.proj.weight.shape[-1])
    grid = int(vit.patch_embed.grid_size[0])
    config = {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": dim,
        "num_hidden_layers": depth,
        "num_attention_heads": int(vit.blocks[0].attn.num_heads),
        # fc1 is 4x wide (the swiglu test above); with SwiGLU transformers takes 2/3 of
        # 4x, rounded up to 8, per branch: DINOv2's SwiGLUFFNFused widths.
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": float(vit.norm.eps),
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": int(vit.patch_embed.proj.in_channels),
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": swiglu,
        "torch_dtype": "float32",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.contiguous() for k, t in out.items()}
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    write_atomic(out_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    norm = (description.get("biovfm") or {}).get("input")
    if norm:
        processor = {
            "image_processor_type": "BitImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": grid * patch},
            "do_center_crop": True,
            "crop_size": {"height": grid * patch, "width": grid * patch},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": norm["mean"],
            "image_std": norm["std"],
            "resample": 3,
        }
        write_atomic(
            out_dir / "preprocessor_config.json", (json.dumps(processor, indent=2) + "\n").encode()
        )
    return out_dir
