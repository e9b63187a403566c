"""``check_backbone``: attributes, tokens at two sizes, masking, gradients, parameter
count and a state_dict round trip."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import _fail
from biovfm_core.testing.options import check_options
from biovfm_core.testing.samples import KIT_BACKBONE_DEPTH, KIT_TRY_SIZES


def _check_backbone_object(backbone: Any, what: str) -> None:
    from torch import nn

    if not isinstance(backbone, nn.Module):
        raise _fail(what, f"got {type(backbone).__name__}", "return a torch.nn.Module")
    for attr in ("embed_dim", "patch_size", "image_size", "in_chans"):
        value = getattr(backbone, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(
                what,
                f"attribute {attr} is {value!r}",
                f"set self.{attr} to a positive int (see protocols.Backbone)",
            )
    if not callable(getattr(backbone, "forward_tokens", None)):
        raise _fail(
            what,
            "it has no forward_tokens()",
            "implement forward_tokens(images, *, mask=None, keep=None) -> BackboneOutput",
        )


def check_backbone(
    name_or_factory: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    seed: int = 0,
    registry: Any = None,
) -> None:
    """Check a backbone: attributes, tokens at its own and a smaller size, masking,
    gradients, ``num_parameters`` and a state_dict round trip."""
    import torch

    plugin = _Plugin("backbone", name_or_factory, preset=preset, options=options, registry=registry)
    check_options(plugin)
    what = plugin.what
    if "depth" in plugin.specs():
        plugin.options.setdefault("depth", KIT_BACKBONE_DEPTH)  # as check_objective
    net = _smallest_working(plugin, seed)
    _check_backbone_object(net, what)
    if not callable(getattr(net, "num_parameters", None)):
        raise _fail(what, "it has no num_parameters()", "add num_parameters() -> int")
    counted = sum(p.numel() for p in net.parameters())
    if int(net.num_parameters()) != counted:
        raise _fail(
            what,
            f"num_parameters() says {net.num_parameters()}, its parameters hold {counted}",
            "count every parameter (the study plots results against this number)",
        )
    net.eval()
    d, p = net.embed_dim, net.patch_size
    for size in _sizes(net):
        images = torch.rand(2, net.in_chans, size, size)
        with torch.no_grad():
            out = net.forward_tokens(images)
        _check_tokens(out, 2, d, (size // p) ** 2 if p > 1 else None, what, size)
        with torch.no_grad():
            again = net.forward_tokens(images)
        if not torch.equal(out.cls, again.cls):
            raise _fail(
                what,
                "two forwards of the same images in eval mode differ",
                "make eval-mode forward deterministic (dropout/drop-path only in train mode)",
            )
    images = torch.rand(2, net.in_chans, net.image_size, net.image_size)
    with torch.no_grad():
        plain = net.forward_tokens(images)
    tokens = plain.patches.shape[1]
    try:
        with torch.no_grad():
            unmasked = net.forward_tokens(images, mask=torch.zeros(2, tokens, dtype=torch.bool))
            masked = net.forward_tokens(images, mask=torch.ones(2, tokens, dtype=torch.bool))
        if not torch.allclose(unmasked.cls, plain.cls, atol=1e-5):
            raise _fail(
                what,
                "forward_tokens with an all-False mask differs from no mask",
                "replace only patches where mask is True with the mask token",
            )
        if torch.allclose(masked.cls, plain.cls, atol=1e-6):
            raise _fail(
                what,
                "an all-True mask leaves the output unchanged",
                "replace masked patches with a (learned) mask token before the blocks",
            )
    except NotImplementedError:
        pass  # documented: a backbone that cannot mask says so
    try:
        keep = torch.arange(0, tokens, 2).expand(2, -1)
        with torch.no_grad():
            kept = net.forward_tokens(images, keep=keep)
        if tuple(kept.patches.shape) != (2, keep.shape[1], d):
            raise _fail(
                what,
                f"with keep= of {keep.shape[1]} indices the patches are "
                f"{tuple(kept.patches.shape)}",
                "return only the kept patches, (B, K, embed_dim), in the order of keep",
            )
    except NotImplementedError:
        pass
    net.train()
    net.zero_grad(set_to_none=True)
    net.forward_tokens(images).cls.float().pow(2).mean().backward()
    if not any(q.grad is not None and bool(q.grad.abs().sum() > 0) for q in net.parameters()):
        raise _fail(what, "cls has no gradient on the parameters", "do not detach the tokens")
    net.eval()
    torch.manual_seed(seed + 1)
    twin = plugin.build()
    twin.load_state_dict(net.state_dict())
    twin.eval()
    with torch.no_grad():
        if not torch.equal(twin.forward_tokens(images).cls, net.forward_tokens(images).cls):
            raise _fail(
                what,
                "a fresh backbone loaded with this one's state_dict gives other outputs",
                "keep all weights in parameters or buffers",
            )


def _sizes(net: Any) -> tuple[int, int]:
    """The backbone's own size and a smaller one (half, in whole patches)."""
    p = net.patch_size
    return net.image_size, max(p, (net.image_size // 2) // p * p)


def _smallest_working(plugin: _Plugin, seed: int) -> Any:
    """The backbone built at the smallest of ``KIT_TRY_SIZES`` it runs at (both its
    size and half of it), so the checks are quick; a CNN whose downsampling outruns
    a 16 px input (timm:convnext_atto needs 64) is tried bigger, not failed."""
    import torch

    given = "image_size" in plugin.options or "image_size" not in plugin.specs()
    errors: list[str] = []
    for size in () if given else KIT_TRY_SIZES:
        plugin.options["image_size"] = size
        torch.manual_seed(seed)
        net = plugin.build()
        _check_backbone_object(net, plugin.what)
        try:
            net.eval()
            with torch.no_grad():
                for side in _sizes(net):
                    net.forward_tokens(torch.rand(2, net.in_chans, side, side))
        except RuntimeError as exc:  # e.g. "Kernel size can't be greater than actual input size"
            errors.append(f"{size} px: {str(exc).splitlines()[0]}")
            continue
        return net
    if errors:
        raise _fail(
            plugin.what,
            f"it runs at none of {', '.join(map(str, KIT_TRY_SIZES))} px (with half that "
            f"size too): {'; '.join(errors)}",
            "accept inputs of at least 256 px and half that, or give the kit the size it "
            "needs: check_backbone(name, options={'image_size': N})",
        )
    torch.manual_seed(seed)
    return plugin.build()


def _check_tokens(out: Any, b: int, d: int, n: int | None, what: str, size: int) -> None:
    import torch

    cls = getattr(out, "cls", None)
    patches = getattr(out, "patches", None)
    if not isinstance(cls, torch.Tensor) or not isinstance(patches, torch.Tensor):
        raise _fail(
            what,
            f"forward_tokens returned {type(out).__name__}",
            "return biovfm_core.protocols.BackboneOutput(cls=..., patches=...)",
        )
    if tuple(cls.shape) != (b, d):
        raise _fail(
            what,
            f"at {size} px cls is {tuple(cls.shape)}, not ({b}, embed_dim={d})",
            "return the (B, embed_dim) class token (or the mean patch token)",
        )
    if patches.dim() != 3 or patches.shape[0] != b or patches.shape[2] != d:
        raise _fail(
            what, f"at {size} px patches are {tuple(patches.shape)}", "return (B, N, embed_dim)"
        )
    if n is not None and patches.shape[1] != n:
        raise _fail(
            what,
            f"at {size} px there are {patches.shape[1]} patch tokens, not {n}",
            "drop register/class tokens from patches and interpolate position embeddings "
            "for other input sizes",
        )
    if not bool(torch.isfinite(cls).all()):
        raise _fail(what, f"cls has NaN/inf at {size} px", "keep the forward finite")
