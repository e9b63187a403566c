"""Reading stored weights with one-line errors: a file that is not safetensors, a
truncated one, or tensors that do not fit the model they are loaded into."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from biovfm_core.errors import ConfigError

# ViT widths of the sizes biovfm builds, to name what a file's shapes were made by.
_VIT_WIDTHS = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, or an error naming it and what is wrong."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # safetensors' SafetensorError: a bad header or a short file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        low = reason.lower()
        # A safetensors file starts with its header's length; a pickle or zip (torch.save)
        # starts with bytes that read as an absurd length. A cut file keeps its length.
        if "too large" in low or "headertoolarge" in low:
            hint = "not a safetensors file (a torch.save pickle renamed?)"
        elif any(w in low for w in ("incomplete", "too small", "length", "eof", "covered")):
            hint = "truncated or damaged (an interrupted copy or write?)"
        else:
            hint = "not a readable safetensors file"
        raise ConfigError(f"{path}: {hint}: {reason}") from None


def _shape(text: str) -> str:
    return "[" + text.replace(" ", "") + "]"


def describe_mismatch(message: str, limit: int = 3) -> str:
    """torch's multi-line ``Error(s) in loading state_dict`` as one line: the first
    mismatched shapes (file vs model), then the first missing and unexpected keys."""
    parts = []
    sizes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
        r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)",
        message,
    )
    if sizes:
        shown = ", ".join(f"{k} (file {_shape(a)}, model {_shape(b)})" for k, a, b in sizes[:limit])
        more = f" and {len(sizes) - limit} more" if len(sizes) > limit else ""
        parts.append(f"{len(sizes)} shape mismatch(es): {shown}{more}")
    for kind in ("Missing", "Unexpected"):
        found = re.search(rf"{kind} key\(s\) in state_dict: (.*?)\.\s*(?:\n|$|Unexpected)", message)
        if found:
            keys = [k.strip().strip('"') for k in found.group(1).split(",")]
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {kind.lower()} key(s): {', '.join(keys[:limit])}{more}")
    return "; ".join(parts) if parts else " ".join(message.split())[:300]


def vit_hint(state: dict[str, torch.Tensor]) -> str:
    """What ViT the stored shapes describe (width, depth, patch), or ''."""
    patch = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)
    if patch is None or patch.ndim != 4:
        return ""
    width, side = int(patch.shape[0]), int(patch.shape[-1])
    blocks = {m.group(1) for k in state if (m := re.search(r"(?:^|\.)blocks\.(\d+)\.", k))}
    size = _VIT_WIDTHS.get(width)
    name = f" (vit_{size}: --backbone vit_{size})" if size else ""
    return f"; the file holds a ViT of width {width}{name}, depth {len(blocks)}, patch {side}"


def load_checked(
    load: Callable[[dict[str, torch.Tensor]], object],
    state: dict[str, torch.Tensor],
    path: str | Path,
    target: str,
) -> None:
    """``load(state)``; a mismatch becomes an error naming the file, the model it was
    loaded into, the first mismatched keys and what the file's shapes describe."""
    try:
        load(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: does not fit {target}: {describe_mismatch(str(exc))}{vit_hint(state)}"
        ) from None
