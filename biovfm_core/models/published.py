"""Published weights as a run's starting point (``biovfm train --init SPEC``).

A spec is one of: an official DINOv2 torch-hub file (``dinov2_vits14_pretrain.pth``,
flat keys with ``mask_token``, optional ``register_tokens``); an official MAE file
(``mae_pretrain_vit_base.pth``, weights under ``model``, decoder keys dropped); a timm
or Hugging Face model folder (``config.json`` + ``model.safetensors`` in timm's
layout); a biovfm run or export; or ``timm:NAME`` whose weights timm can load (from
its cache on an offline machine).

Every source is brought to timm's ``VisionTransformer`` layout with timm's own
converters (``_convert_dinov2``, ``checkpoint_filter_fn``, ``resample_abs_pos_embed``),
then loaded strictly into the backbone's ViT. Three things are ours: the check
that patch size and register tokens agree; moving position rows between timm's
two token layouts (``no_embed_class`` or not), which adds exact zero rows or folds
them into the tokens, so features are unchanged; and resizing a DINOv2 file's
position table the way DINOv2's own model does (``biovfm_core.pos_embed``, rule
``"dinov2"``), at load and, through the backbone's ``pos_interpolation`` option, at
every other input size, so its features are the official model's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biovfm_core.errors import ConfigError
from biovfm_core.models.export import export_weights
from biovfm_core.models.hf_layout import read_hf_folder
from biovfm_core.models.normalisation import IMAGENET_NORM, unwrapped
from biovfm_core.models.runs import load_biovfm
from biovfm_core.models.weights import load_checked, read_safetensors
from biovfm_core.pos_embed import resize_patch_pos
from biovfm_core.registry import get_registry

SPEC_HELP = (
    "a DINOv2 hub .pth, an MAE .pth, a timm or Hugging Face transformers (Dinov2Model, "
    "ViTMAEModel) folder (config.json + model.safetensors), a biovfm run or export "
    "folder, or timm:NAME"
)


@dataclass
class InitSource:
    """Weights read from a spec, in timm's ``VisionTransformer`` key layout."""

    spec: str
    kind: str  # dinov2 | mae | timm-folder | hf-dinov2 | hf-vit_mae | safetensors | biovfm | timm
    state: dict[str, torch.Tensor]
    sha256: str | None = None
    no_embed_class: bool | None = None  # None: decide from the shapes
    dropped: list[str] = field(default_factory=list)  # keys the layout has, a backbone not
    input_norm: dict[str, list[float]] | None = None  # the mean/std its inputs were given
    what: str = "--init"  # how the user gave the spec, for errors: "--init" or "model"
    # How the source's own model resizes its position table (biovfm_core.pos_embed):
    # loads resize with it, and eval builds the backbone with it.
    pos_interpolation: str = "timm"

    def record(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "sha256": self.sha256}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_init(spec: str, registry=None, *, what: str = "--init") -> InitSource:
    """Read ``spec``'s weights (see the module docstring for the accepted specs).

    ``what`` is how the user gave the spec, and begins every error about it:
    ``--init`` for ``biovfm train``, ``model`` for ``biovfm eval`` and ``inspect``."""
    source = _read(spec, registry, what)
    source.what = what
    return source


def _read(spec: str, registry, what: str) -> InitSource:
    path = Path(spec).expanduser()
    if spec.startswith("timm:") and not path.exists():
        return _read_timm(spec, what)
    if not path.exists():
        raise ConfigError(f"{what} {spec}: no such file or folder; expected {SPEC_HELP}")
    if path.is_dir() or path.name == "backbone.json":
        folder = path if path.is_dir() else path.parent
        if (folder / "backbone.json").is_file() or (folder / "config.yaml").is_file():
            return _read_biovfm(spec, registry, what)
        if (folder / "config.json").is_file():
            return _read_timm_folder(spec, folder, what)
        raise ConfigError(
            f"{what} {spec}: a folder without config.json (timm/Hugging Face), "
            "backbone.json (biovfm export) or config.yaml (biovfm run)"
        )
    if path.suffix == ".safetensors":
        if (path.parent / "backbone.json").is_file():
            return _read_biovfm(str(path.parent), registry, what)
        state = _check_layout(spec, read_safetensors(path), what)
        return InitSource(spec, "safetensors", state, file_sha256(path))
    return _read_torch_file(spec, path, what)


def _read_torch_file(spec: str, path: Path, what: str = "--init") -> InitSource:
    from timm.models.vision_transformer import _convert_dinov2

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what} {path}: not a readable torch checkpoint: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path}: holds a {type(raw).__name__}, not a state dict")
    sha = file_sha256(path)
    if isinstance(raw.get("model"), dict):
        # MAE (models_mae.py): the encoder sits beside the decoder, whose mask token
        # and layers no encoder has.
        state = dict(raw["model"])
        dropped = sorted(k for k in state if k.startswith("decoder_") or k == "mask_token")
        for key in dropped:
            del state[key]
        return InitSource(
            str(path), "mae", _check_layout(spec, state, what), sha, False, dropped, IMAGENET_NORM
        )
    if "mask_token" in raw:
        # DINOv2 hub layout: timm's converter drops the (iBOT) mask token, renames the
        # SwiGLU weights and, with registers, moves to timm's no_embed_class layout.
        state = _convert_dinov2(dict(raw), None)
        return InitSource(
            str(path),
            "dinov2",
            _check_layout(spec, state, what),
            sha,
            "reg_token" in state,
            ["mask_token"],
            IMAGENET_NORM,
            # dinov2/hub/backbones.py: interpolate_offset=0.1, interpolate_antialias=False.
            pos_interpolation="dinov2",
        )
    return InitSource(str(path), "torch", _check_layout(spec, dict(raw), what), sha)


def _read_timm_folder(spec: str, folder: Path, what: str = "--init") -> InitSource:
    weights = folder / "model.safetensors"
    if not weights.is_file():
        found = sorted(folder.glob("*.safetensors"))
        if len(found) != 1:
            raise ConfigError(f"{what} {spec}: config.json without model.safetensors")
        weights = found[0]
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {folder / 'config.json'}: not readable JSON: {exc}") from None
    if isinstance(config, dict) and "model_type" in config:
        # transformers' Dinov2Model / ViTMAEModel layout (embeddings.*, encoder.layer.*).
        hf = read_hf_folder(spec, folder, weights)
        return InitSource(
            spec,
            hf["kind"],
            _check_layout(spec, hf["state"], what),
            file_sha256(weights),
            False,
            hf["dropped"],
            hf["input_norm"],
            pos_interpolation=hf["pos_interpolation"],
        )
    state = read_safetensors(weights)
    no_embed = (config.get("model_args") or {}).get("no_embed_class")
    arch = str(config.get("architecture", ""))
    if no_embed is None and arch:
        no_embed = _timm_no_embed_class(arch)
    pretrained = config.get("pretrained_cfg") or config
    norm = None
    if "mean" in pretrained and "std" in pretrained:
        norm = {"mean": list(pretrained["mean"]), "std": list(pretrained["std"])}
    return InitSource(
        spec,
        "timm-folder",
        _check_layout(spec, state, what),
        file_sha256(weights),
        no_embed,
        input_norm=norm,
    )


def _timm_no_embed_class(arch: str) -> bool | None:
    """Whether timm builds ``arch`` with ``no_embed_class`` (on the meta device: no memory)."""
    import timm

    if not timm.is_model(arch):
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
    except Exception:
        return None
    return getattr(model, "no_embed_class", None)


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """Hugging Face look-ups inside read the local cache only: a job must not hang on a
    hub it cannot reach (huggingface_hub retries for about a minute) nor use weights it
    fetched unasked. Scoped to the block: the setting is restored after it."""
    from huggingface_hub import constants

    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


# huggingface_hub's errors for a file not in the cache in offline mode (OSError
# subclasses, and RuntimeError from timm's own loader).
NOT_CACHED_ERRORS = (OSError, RuntimeError)


def not_cached(what: str, spec: str, exc: BaseException) -> ConfigError:
    """The one-line error for ``timm:NAME`` weights that are not in the local cache."""
    name = spec.removeprefix("timm:")
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    # A model (eval, inspect) can also be used untrained; --init has no such way out.
    untrained = (
        "" if what == "--init" else "; or --opt backbone.pretrained=false for random weights"
    )
    return ConfigError(
        f"{what} {spec}: timm's pretrained weights are not in the local Hugging Face "
        f"cache ({type(exc).__name__}: {reason}); download them first where there is "
        f"network (timm.create_model({name!r}, pretrained=True)) or pass the "
        f"downloaded file or folder{untrained}"
    )


def _read_timm(spec: str, what: str = "--init") -> InitSource:
    import timm

    name = spec.removeprefix("timm:")
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"{what} {spec}: timm has no model named {name!r}")
    try:
        with hub_cache_only():
            model = timm.create_model(name, pretrained=True, num_classes=0)
    except NOT_CACHED_ERRORS as exc:
        raise not_cached(what, spec, exc) from None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].float().cpu().numpy().tobytes())
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    norm = {"mean": list(cfg["mean"]), "std": list(cfg["std"])} if "mean" in cfg else None
    return InitSource(spec, "timm", state, h.hexdigest(), bool(model.no_embed_class), [], norm)


def _read_biovfm(spec: str, registry, what: str = "--init") -> InitSource:
    path = Path(spec).expanduser()
    model = load_biovfm(path.parent if path.is_file() else path, registry or get_registry())
    backbone = unwrapped(model.backbone)
    export = getattr(backbone, "export_state", None)
    if not callable(export):
        raise ConfigError(
            f"{what} {spec}: its backbone {model.backbone_name!r} has no timm ViT layout "
            "to start from"
        )
    state, _ = export()
    state = {k: v.detach().clone() for k, v in state.items()}
    sha = None
    for candidate in (Path(spec), Path(spec) / "export"):
        if (candidate / "backbone.json").is_file() and export_weights(candidate).is_file():
            info = json.loads((candidate / "backbone.json").read_text()).get("biovfm", {})
            sha = file_sha256(export_weights(candidate, info))
            break
    vit = getattr(backbone, "vit", None)
    return InitSource(
        spec,
        "biovfm",
        state,
        sha or model.identity,
        getattr(vit, "no_embed_class", None),
        pos_interpolation=getattr(backbone, "pos_interpolation", "timm"),
    )


def _check_layout(
    spec: str, state: dict[str, Any], what: str = "--init"
) -> dict[str, torch.Tensor]:
    if not any(k.endswith("patch_embed.proj.weight") for k in state):
        sample = ", ".join(list(state)[:4])
        raise ConfigError(
            f"{what} {spec}: not a ViT checkpoint in a layout biovfm reads (no "
            f"patch_embed.proj.weight; first keys: {sample}); expected {SPEC_HELP}"
        )
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------- loading

# biovfm's ViT sizes by width (their depths and heads are timm's / DINOv2's).
_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}


def backbone_for(source: InitSource) -> tuple[str, dict[str, Any]]:
    """The registered biovfm backbone and options whose ViT has ``source``'s shapes,
    at the image size its position table was made for (so no table is resampled)."""
    state = source.state
    patch = state["patch_embed.proj.weight"]
    width, side = int(patch.shape[0]), int(patch.shape[-1])
    size = _SIZES.get(width)
    if size is None:
        raise ConfigError(
            f"{source.spec}: a ViT of width {width}; biovfm's ViTs have widths "
            + ", ".join(f"{w} (vit_{n})" for w, n in _SIZES.items())
        )
    regs = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    n_prefix = (1 if "cls_token" in state else 0) + regs
    rows = int(state["pos_embed"].shape[1])
    if not _source_no_embed_class(source, n_prefix):
        rows -= n_prefix
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    options: dict[str, Any] = {
        "patch_size": side,
        "image_size": math.isqrt(rows) * side,
        "num_register_tokens": regs,
        "layer_scale_init": 1e-5 if "blocks.0.ls1.gamma" in state else None,
        # A SwiGLU MLP (DINOv2's ViT-g) packs two branches into fc1, not 4x the width.
        "swiglu": fc1 is not None and int(fc1.shape[0]) != 4 * width,
    }
    if source.pos_interpolation != "timm":
        # Other input sizes resize the table as the source's own model does.
        options["pos_interpolation"] = source.pos_interpolation
    return f"vit_{size}", options


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def _source_no_embed_class(source: InitSource, n_prefix: int) -> bool:
    if source.no_embed_class is not None:
        return source.no_embed_class
    rows = int(source.state["pos_embed"].shape[1])
    # Rows are grid² (prefix tokens without positions) or prefix + grid².
    return n_prefix > 0 and _is_square(rows) and not _is_square(rows - n_prefix)


def vit_state_for(source: InitSource, vit, target: str) -> dict[str, torch.Tensor]:
    """``source``'s weights for timm ViT ``vit``: checked, re-laid out, position
    embeddings resampled to ``vit``'s grid. ``target`` names the backbone in errors."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = dict(source.state)
    spec, what = source.spec, source.what
    src_patch = tuple(state["patch_embed.proj.weight"].shape[-2:])
    dst_patch = tuple(vit.patch_embed.proj.weight.shape[-2:])
    if src_patch != dst_patch:
        raise ConfigError(
            f"{what} {spec}: patch size {src_patch[0]} but {target} has patch size "
            f"{dst_patch[0]}; set --opt backbone.patch_size={src_patch[0]}"
        )
    src_regs = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    dst_regs = int(getattr(vit, "num_reg_tokens", 0))
    if src_regs != dst_regs:
        raise ConfigError(
            f"{what} {spec}: {src_regs} register token(s) but {target} has {dst_regs}; "
            f"set --opt backbone.num_register_tokens={src_regs}"
        )
    n_prefix = (1 if "cls_token" in state else 0) + src_regs
    if "pos_embed" in state and n_prefix and vit.pos_embed is not None:
        src_nec = _source_no_embed_class(source, n_prefix)
        dst_nec = bool(getattr(vit, "no_embed_class", False))
        pos = state["pos_embed"]
        if src_nec and not dst_nec:
            # Prefix tokens that had no position get a zero one: the same sums.
            state["pos_embed"] = torch.cat([pos.new_zeros(1, n_prefix, pos.shape[-1]), pos], 1)
        elif dst_nec and not src_nec:
            # The target adds no position to prefix tokens: fold theirs into the tokens.
            if "cls_token" in state:
                state["cls_token"] = state["cls_token"] + pos[:, :1]
            if src_regs:
                state["reg_token"] = state["reg_token"] + pos[:, 1 : 1 + src_regs]
            state["pos_embed"] = pos[:, n_prefix:]
    if source.pos_interpolation != "timm":
        # The source's own rule (DINOv2's offset resize), so features at this size are
        # the source model's; the filter below then finds the table already fitting.
        state = _resize_table(state, vit, source.pos_interpolation)
    # timm's filter resamples the position table to vit's grid (bicubic, antialiased,
    # what a dynamic-size timm ViT does on the fly) and drops retired keys.
    state = checkpoint_filter_fn(state, vit)
    own = vit.state_dict()
    # A classifier or pooling head the published model had; biovfm backbones have none.
    heads = sorted(k for k in state if k not in own and k.startswith(("head.", "fc_norm.")))
    for key in heads:
        del state[key]
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:6]) + (
                    f" and {len(keys) - 6} more" if len(keys) > 6 else ""
                )
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        hint = ""
        if any(".ls1.gamma" in k for k in missing):
            hint = "; the file has no LayerScale: set --opt backbone.layer_scale_init=null"
        elif any(".ls1.gamma" in k for k in unexpected):
            hint = "; the file has LayerScale: set --opt backbone.layer_scale_init=1e-5"
        raise ConfigError(f"{what} {spec}: does not fit {target}: {'; '.join(parts)}{hint}")
    return state


def _resize_table(state: dict[str, torch.Tensor], vit, rule: str) -> dict[str, torch.Tensor]:
    """``state``'s position table resized to ``vit``'s patch grid by ``rule``."""
    pos = state.get("pos_embed")
    if pos is None or vit.pos_embed is None:
        return state
    rows = 0 if vit.no_embed_class else int(vit.num_prefix_tokens)
    side = math.isqrt(int(pos.shape[1]) - rows)
    new = tuple(int(n) for n in vit.patch_embed.grid_size)
    if side * side != int(pos.shape[1]) - rows or (side, side) == new:
        return state
    resized = resize_patch_pos(pos[:, rows:], (side, side), new, rule)
    return {**state, "pos_embed": torch.cat([pos[:, :rows], resized], dim=1)}


def load_init(source: InitSource, backbone, target: str | None = None) -> None:
    """Load ``source`` into ``backbone`` (a biovfm ViT backbone with ``.vit``)."""
    vit = getattr(backbone, "vit", None)
    name = target or f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r}"
    if vit is None:
        raise ConfigError(
            f"{source.what} {source.spec}: {name} is not a ViT; it needs a ViT backbone"
        )
    # Shapes that differ (another width or depth) fail here, with what the file holds.
    load_checked(vit.load_state_dict, vit_state_for(source, vit, name), source.spec, name)


def init_objective(objective, backbone, source: InitSource, target: str) -> dict[str, Any]:
    """``source`` into the trained backbone and, where the objective keeps a separate
    evaluation copy (DINOv2's EMA teacher), into that too, so the two start equal."""
    load_init(source, backbone, target)
    try:
        eval_backbone = objective.eval_backbone()
    except (AttributeError, NotImplementedError):
        eval_backbone = backbone
    if eval_backbone is not backbone:
        eval_backbone.load_state_dict(backbone.state_dict())
    return source.record()


def check_recorded_sha(source: InitSource, recorded: str | None) -> None:
    """A config that names the init's checksum (a saved run config) must get those weights."""
    if recorded and source.sha256 and recorded != source.sha256:
        raise ConfigError(
            f"{source.what} {source.spec}: its checksum {source.sha256[:16]}... differs from "
            f"init_sha256 {recorded[:16]}... in the config; the file changed since the "
            "config was written (remove init_sha256 to accept the new weights)"
        )
