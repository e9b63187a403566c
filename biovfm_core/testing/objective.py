"""``check_objective``: options, a real step on demo views, resumption, evaluation."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo, ViewSpec
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.backbone import _check_backbone_object
from biovfm_core.testing.errors import _fail
from biovfm_core.testing.options import check_options
from biovfm_core.testing.samples import KIT_BACKBONE_SIZE, _batch, _default_recipe


def check_objective(
    name_or_factory: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    backbone: str = "vit_tiny",
    backbone_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    registry: Any = None,
) -> None:
    """Check an objective: options, a real step on demo views, resumption, evaluation.

    ``name_or_factory`` is a registered objective name or the factory itself
    (``factory(backbone, task, *, <options>)``). It is built with its ``"cpu"``
    preset (``preset=`` replaces that preset for a bare factory) plus ``options``.
    """
    import torch

    plugin = _Plugin(
        "objective", name_or_factory, preset=preset, options=options, registry=registry
    )
    check_options(plugin)
    what = plugin.what
    from biovfm_core.registry import get_registry

    reg = plugin.registry or get_registry()
    # As `biovfm train` on a CPU: the backbone's own "cpu" preset, then the given options.
    bb_options = {**reg.preset("backbones", backbone, "cpu"), **(backbone_options or {})}
    accepted = reg.options("backbones", backbone)
    if "image_size" in accepted:
        # Tiny: the eval check runs at the backbone's own size, which this sets.
        bb_options.setdefault("image_size", KIT_BACKBONE_SIZE)
    for option, value in plugin.presets.get("backbone", {}).items():
        if option in accepted:
            bb_options.setdefault(option, value)
        # An option the backbone lacks is skipped, as `biovfm train` does.

    def build(build_seed: int) -> tuple[Any, Any, TaskInfo]:
        torch.manual_seed(build_seed)
        net = reg.build("backbones", backbone, options=bb_options)
        task = TaskInfo()
        try:
            return plugin.build(net, task), net, task
        except ConfigError:
            # An objective that needs labels says so without them (hookspecs); retry.
            task = TaskInfo(num_classes=2)
            torch.manual_seed(build_seed)
            net = reg.build("backbones", backbone, options=bb_options)
            return plugin.build(net, task), net, task

    objective, net, task = build(seed)
    _check_objective_shape(objective, what)
    views: ViewSpec = objective.views
    if task.num_classes is not None and not views.needs_labels:
        raise _fail(
            what,
            "it refuses unlabelled data (ConfigError without task.num_classes) but its "
            "views.needs_labels is False, so the pipeline cannot name the unlabelled sources",
            "set needs_labels=True in the ViewSpec of an objective that needs labels",
        )
    owned = {id(p) for p in objective.parameters()}
    backbone_params = [p for p in net.parameters() if p.requires_grad]
    if not backbone_params or not any(id(p) in owned for p in backbone_params):
        raise _fail(
            what,
            "the backbone it was given is not among its parameters, so the optimizer "
            "would never train it",
            "keep the backbone as a sub-module (self.backbone = backbone)",
        )
    recipe = _default_recipe(views)
    labelled = task.num_classes is not None
    batches = [_batch(views, recipe, seed + k, labelled) for k in range(2)]

    # Step 0 in full (a finite scalar loss with gradients on the backbone), then what a
    # checkpoint keeps; resuming from it must give step 1's loss exactly.
    objective.train()
    first, first_state = _two_steps(objective, batches, seed, what, backbone_params)
    fresh, _, _ = build(seed + 1)
    try:
        fresh.load_state_dict(first_state["model"])
    except Exception as exc:
        raise _fail(
            what,
            f"a freshly built objective cannot load its own state_dict ({exc})",
            "build the same modules for the same options (no shapes that depend on data "
            "seen during training)",
        ) from None
    fresh.train()
    resumed = _next_loss(fresh, batches[1], first_state, what)
    if not torch.equal(first, resumed):
        raise _fail(
            what,
            f"after a state_dict round trip the next loss is {resumed.item():.6g}, "
            f"not {first.item():.6g} as without the interruption",
            "keep everything that changes across steps (EMA teacher, centers, step "
            "counters) in parameters or buffers, and draw randomness from torch's global "
            "generator, never a private one",
        )

    _check_eval_backbone(objective, what)


def _check_objective_shape(objective: Any, what: str) -> None:
    from torch import nn

    if not isinstance(objective, nn.Module):
        raise _fail(
            what, f"the factory returned {type(objective).__name__}", "return a torch.nn.Module"
        )
    if not isinstance(getattr(objective, "views", None), ViewSpec):
        raise _fail(
            what,
            "it has no `views` ViewSpec",
            "set self.views = ViewSpec(...) (from biovfm_core.protocols) in __init__",
        )
    for hook in ("training_step", "before_optimizer_step", "after_optimizer_step", "eval_backbone"):
        if not callable(getattr(objective, hook, None)):
            raise _fail(
                what,
                f"it has no {hook}() method",
                "implement it, or mix in biovfm_core.protocols.ObjectiveBase for the no-op step "
                "hooks",
            )


def _step(objective: Any, batch: Batch, step: int, what: str) -> dict[str, Any]:
    import torch

    out = objective.training_step(batch, StepInfo(step, 4, 4))
    if not isinstance(out, Mapping) or "loss" not in out:
        raise _fail(
            what,
            f"training_step returned {type(out).__name__}, not a dict with 'loss'",
            'return {"loss": scalar_tensor, ...}',
        )
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.dim() != 0:
        raise _fail(
            what,
            f"the loss is {type(loss).__name__} of shape {getattr(loss, 'shape', None)}",
            "return a 0-dim tensor (reduce with .mean() or .sum())",
        )
    if not bool(torch.isfinite(loss)):
        raise _fail(what, f"the loss is {loss.item()} on demo views", "keep the loss finite")
    if not loss.requires_grad:
        raise _fail(what, "the loss does not require grad", "do not detach the loss")
    for key, value in out.items():
        if key == "loss":
            continue
        try:
            number = float(value.detach() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            raise _fail(
                what,
                f"training_step's extra entry {key!r} is {type(value).__name__}",
                "log only scalars (0-dim tensors or floats) besides 'loss'",
            ) from None
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise _fail(what, f"logged entry {key!r} requires grad", f"return {key}.detach()")
        del number
    return dict(out)


def _optimizer(objective: Any) -> Any:
    import torch

    return torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)


def _two_steps(objective: Any, batches: list[Batch], seed: int, what: str, backbone_params):
    """Step 0 in full, then the state a checkpoint keeps, then step 1's loss."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    objective.zero_grad(set_to_none=True)
    optimizer = _optimizer(objective)
    info = StepInfo(0, 4, 4)
    _step(objective, batches[0], 0, what)["loss"].backward()
    grads = [p.grad for p in backbone_params if p.grad is not None]
    if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
        raise _fail(
            what,
            "the loss has no gradient on the backbone's parameters",
            "compute the loss from the backbone's outputs (forward_tokens of the batch's "
            "views) without detaching them",
        )
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(what, "backward gave NaN/inf gradients on the backbone", "keep the loss finite")
    objective.before_optimizer_step(info)
    optimizer.step()
    logged = objective.after_optimizer_step(info)
    if not isinstance(logged, Mapping):
        raise _fail(
            what,
            f"after_optimizer_step returned {type(logged).__name__}",
            "return a dict of floats to log (or {}; ObjectiveBase does)",
        )
    optimizer.zero_grad(set_to_none=True)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch": torch.random.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        buffer,
    )
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    return _next_loss(objective, batches[1], state, what, optimizer=optimizer), state


def _next_loss(objective: Any, batch: Batch, state: dict, what: str, optimizer=None):
    import numpy as np
    import torch

    if optimizer is None:
        optimizer = _optimizer(objective)
        optimizer.load_state_dict(state["optimizer"])
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    return _step(objective, batch, 1, what)["loss"].detach()


def _check_eval_backbone(objective: Any, what: str) -> None:
    import torch

    backbone = objective.eval_backbone()
    _check_backbone_object(backbone, f"{what}: eval_backbone()")
    backbone.eval()
    # Evaluation extracts at the backbone's own input size (its position embeddings'),
    # whatever crop size training used.
    size = int(backbone.image_size)
    with torch.no_grad():
        out = backbone.forward_tokens(torch.rand(2, backbone.in_chans, size, size))
    if tuple(out.cls.shape) != (2, backbone.embed_dim):
        raise _fail(
            what,
            f"eval_backbone() gives features of shape {tuple(out.cls.shape)} for 2 images, "
            f"not (2, embed_dim={backbone.embed_dim})",
            "return the backbone module itself (or its EMA copy), whose forward_tokens().cls "
            "is (B, embed_dim)",
        )
