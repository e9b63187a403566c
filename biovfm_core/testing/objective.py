"""``check_objective``: options, a real step on demo views, resumption, evaluation."""

from __future__ import annotations

import copy
import io
import pickle
import random
from collections.abc import Callable, Mapping
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo, ViewSpec
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.backbone import _check_backbone_object
from biovfm_core.testing.errors import _fail
from biovfm_core.testing.options import check_options, check_options_matter
from biovfm_core.testing.samples import (
    KIT_BACKBONE_DEPTH,
    KIT_BACKBONE_SIZE,
    _batch,
    _default_recipe,
)


def check_objective(
    name_or_factory: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    backbone: str = "vit_tiny",
    backbone_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    registry: Any = None,
    load_model: Callable[[str], Any] | None = None,
) -> None:
    """Check an objective: options, a real step on demo views, resumption, evaluation.

    ``name_or_factory`` is a registered objective name or the factory itself
    (``factory(backbone, task, *, <options>)``). It is built with its ``"cpu"``
    preset (``preset=`` replaces that preset for a bare factory) plus ``options``.
    ``load_model`` is the ``TaskInfo.load_model`` it gets (default: the engine's, so an
    objective that learns from a teacher can be given ``teacher="random:vit_tiny"``).
    """
    import torch

    from biovfm_core.models.specs import frozen_loader

    plugin = _Plugin(
        "objective", name_or_factory, preset=preset, options=options, registry=registry
    )
    check_options(plugin)
    what = plugin.what
    from biovfm_core.registry import get_registry

    reg = plugin.registry or get_registry()
    load_model = load_model or frozen_loader(reg)
    # As `biovfm train` on a CPU: the backbone's own "cpu" preset, then the given options.
    bb_options = {**reg.preset("backbones", backbone, "cpu"), **(backbone_options or {})}
    accepted = reg.options("backbones", backbone)
    if "image_size" in accepted:
        # Tiny: the eval check runs at the backbone's own size, which this sets.
        bb_options.setdefault("image_size", KIT_BACKBONE_SIZE)
    if "depth" in accepted:
        # Two blocks show every protocol fault twelve do, in a fraction of the time.
        bb_options.setdefault("depth", KIT_BACKBONE_DEPTH)
    for option, value in plugin.presets.get("backbone", {}).items():
        if option in accepted:
            bb_options.setdefault(option, value)
        # An option the backbone lacks is skipped, as `biovfm train` does.

    def build(build_seed: int) -> tuple[Any, Any, TaskInfo]:
        torch.manual_seed(build_seed)
        net = reg.build("backbones", backbone, options=bb_options)
        task = TaskInfo(load_model=load_model)
        try:
            return plugin.build(net, task), net, task
        except ConfigError:
            # An objective that needs labels says so without them (hookspecs); retry.
            task = TaskInfo(num_classes=2, load_model=load_model)
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
    # Before the teacher checks, which take an eval_backbone() other than the
    # student's backbone for a teacher.
    _check_backbone_object(objective.eval_backbone(), f"{what}: eval_backbone()")
    _check_copies(objective, what)
    teacher = _teacher(objective, net)
    if teacher is not None:
        _check_teacher_is_a_copy(teacher, net, what)
    recipe = _default_recipe(views)
    labelled = task.num_classes is not None
    batches = [_batch(views, recipe, seed + k, labelled) for k in range(2)]
    objective.train()
    _check_uses_the_batch(objective, batches, seed, what)

    # Step 0 in full (a finite scalar loss with gradients on the backbone), then what a
    # checkpoint keeps; resuming from it must give step 1's loss exactly.
    before = None if teacher is None else _snapshot(teacher)
    logged: list[Mapping[str, Any]] = []
    first, first_state = _two_steps(objective, batches, seed, what, backbone_params, logged)
    if before is not None:
        _check_teacher_moved(before, _snapshot(teacher), logged[0], what)
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

    # Built once: a ViT's weight init costs more than the steps the kit then takes.
    torch.manual_seed(seed)
    pristine = reg.build("backbones", backbone, options=bb_options)

    def observe(changed: dict[str, Any]) -> tuple[Any, Any]:
        torch.manual_seed(seed)
        other_net = copy.deepcopy(pristine)
        kwargs = {**changed, **({"variant": plugin.variant} if plugin.variant else {})}
        built = plugin.factory(other_net, task, **kwargs)
        return _fingerprint(built, batches, seed, views)

    check_options_matter(
        plugin,
        observe,
        shown="views, state_dict shapes, lr_freeze(), "
        "and the losses, logged values and weights of two steps",
    )


def _check_copies(objective: Any, what: str) -> None:
    """``copy.deepcopy`` (EMA teachers, distributed wrappers, checkpoint-averaging tools)
    and ``pickle`` (process spawning) must work; the culprit attribute is named."""
    try:
        copy.deepcopy(objective)
    except Exception as exc:
        raise _fail(
            what,
            f"copy.deepcopy of the objective fails ({type(exc).__name__}: {exc}"
            f"{_culprit(objective, copy.deepcopy)}); training would stop when a checkpoint "
            "or a DDP/FSDP wrap meets it",
            "keep locks, open files, threads and clients out of the module (create them "
            "lazily, or drop them in __getstate__/__deepcopy__)",
        ) from None
    try:
        pickle.dumps(objective)
    except Exception as exc:
        if _pickles_without_parametrizations(objective):
            # torch refuses to pickle a parametrized module (weight_norm as
            # torch.nn.utils.parametrizations, as DINOv2's heads use) as a whole by
            # design; biovfm saves state_dicts, never pickled modules, and the same
            # module without its parametrizations pickles, so nothing else is at fault.
            return
        raise _fail(
            what,
            f"pickle.dumps of the objective fails ({type(exc).__name__}: {exc}"
            f"{_culprit(objective, pickle.dumps)})",
            "keep locks, open files, threads and clients out of the module (create them "
            "lazily, or drop them in __getstate__)",
        ) from None


def _culprit(objective: Any, copier: Callable[[Any], Any]) -> str:
    """``; the culprit is <module>.<attr>``: the first plain attribute that fails alone."""
    for prefix, module in objective.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                continue
            if attr.startswith("_") and isinstance(value, dict):
                continue  # torch's own hook tables
            try:
                copier(value)
            except Exception:
                return f"; the culprit is {(prefix + '.' if prefix else '')}{attr} ({type(value).__name__})"
    return ""


def _pickles_without_parametrizations(objective: Any) -> bool:
    """Whether everything but torch's parametrized modules pickles."""
    from torch import nn
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in objective.modules()):
        return False

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, nn.Module) and parametrize.is_parametrized(obj):
                return (_placeholder, ())  # torch's own module: its weights are in state_dict
            return NotImplemented

    try:
        Pickler(io.BytesIO()).dump(objective)
    except Exception:
        return False
    return True


def _placeholder() -> None:
    return None


def _teacher(objective: Any, net: Any) -> Any:
    """The objective's teacher: its ``teacher`` module, or an ``eval_backbone()`` other
    than the backbone it was given (protocols.Objective)."""
    from torch import nn

    declared = getattr(objective, "teacher", None)
    if isinstance(declared, nn.Module):
        return declared
    evaluated = objective.eval_backbone()
    return None if evaluated is net else evaluated


def _check_teacher_is_a_copy(teacher: Any, net: Any, what: str) -> None:
    student = {p.data_ptr() for p in net.parameters()}
    shared = [n for n, p in teacher.named_parameters() if p.data_ptr() in student]
    if teacher is net or shared:
        raise _fail(
            what,
            f"its teacher shares {len(shared) or 'all'} parameter(s) with the student "
            f"({', '.join(shared[:3]) or 'it is the same module'}): the teacher is the "
            "student, so the EMA is a no-op and self-distillation collapses",
            "build the teacher as a copy: self.teacher = copy.deepcopy(student); "
            "self.teacher.requires_grad_(False)",
        )
    trained = [n for n, p in teacher.named_parameters() if p.requires_grad]
    if trained:
        raise _fail(
            what,
            f"its teacher's parameters require grad ({', '.join(trained[:3])}), so the "
            "optimizer trains them",
            "call self.teacher.requires_grad_(False) and update it in after_optimizer_step",
        )


def _snapshot(module: Any) -> list[Any]:
    return [p.detach().clone() for p in module.parameters()]


def _check_teacher_moved(
    before: list[Any], after: list[Any], logged: Mapping[str, Any], what: str
) -> None:
    import torch

    if any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        return
    momentum = [float(v) for k, v in logged.items() if "momentum" in k]
    if momentum and min(momentum) >= 1.0:
        return  # momentum 1 (or a frozen teacher that logs it): no update is right
    raise _fail(
        what,
        "its teacher's weights are unchanged after an optimizer step and "
        "after_optimizer_step, so the EMA teacher is never updated",
        "update the teacher in after_optimizer_step (e.g. lightly's update_momentum("
        "student, teacher, m)) and return {'teacher_momentum': m}; a frozen teacher "
        "returns {'teacher_momentum': 1.0}",
    )


def _check_uses_the_batch(objective: Any, batches: list[Batch], seed: int, what: str) -> None:
    """Two different batches from the same state and seed must give different losses."""
    import torch

    losses = []
    for batch in batches:
        twin = copy.deepcopy(objective)  # a forward may update state (centers)
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(twin.training_step(batch, StepInfo(0, 4, 4))["loss"].detach())
    if torch.equal(losses[0], losses[1]):
        raise _fail(
            what,
            f"two different batches give the same loss ({losses[0].item():.6g}): "
            "training_step ignores its batch",
            "compute the loss from batch.global_views / batch.local_views (not from a "
            "stored buffer or a cached earlier batch)",
        )


def _fingerprint(objective: Any, batches: list[Batch], seed: int, views: ViewSpec):
    """What the kit can see of a built objective: its declarations, and the losses,
    logged values and weights of two full steps (one early, one late in a short run,
    so warm-ups and schedules show)."""

    seen: dict[str, Any] = {
        "views": objective.views,
        "optim_recipe": getattr(objective, "optim_recipe", None),
        "lr_freeze": objective.lr_freeze()
        if callable(getattr(objective, "lr_freeze", None))
        else None,
        "shapes": {k: tuple(v.shape) for k, v in objective.state_dict().items()},
    }
    if objective.views != views:
        return seen, None  # other views: already different, and the batches would not fit
    return seen, lambda: _trace(objective, batches, seed)


def _trace(objective: Any, batches: list[Batch], seed: int) -> dict[str, Any]:
    import torch

    seen: dict[str, Any] = {}
    objective.train()
    # SGD: no moments to keep, and any gradient shows in the weights.
    optimizer = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(seed)
    trace = []
    early, late = StepInfo(0, 4, 2), StepInfo(3, 4, 2)
    loss = objective.training_step(batches[0], early)["loss"]
    loss.backward()
    objective.before_optimizer_step(early)
    optimizer.step()
    logged = objective.after_optimizer_step(early)
    trace.append((loss.detach(), {k: float(v) for k, v in dict(logged).items()}))
    # Late in the run (schedules, warm-ups): the loss and the after-step hook suffice.
    with torch.no_grad():
        loss = objective.training_step(batches[1], late)["loss"]
    logged = objective.after_optimizer_step(late)
    trace.append((loss.detach(), {k: float(v) for k, v in dict(logged).items()}))
    seen["trace"] = trace
    seen["weights"] = [
        v.detach().double().sum() for v in objective.state_dict().values() if v.is_floating_point()
    ]
    return seen


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
        if key == "signals":
            _check_signals(value, what)
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


def _check_signals(signals: Any, what: str) -> None:
    """``out["signals"]``: a mapping of name -> detached tensor (see
    ``biovfm_core.train.signals`` for the names the loop turns into sentinels)."""
    import torch

    if not isinstance(signals, Mapping):
        raise _fail(
            what,
            f"training_step's 'signals' is {type(signals).__name__}",
            'return {"signals": {"embeddings": tensor, ...}}',
        )
    for name, value in signals.items():
        if not isinstance(value, torch.Tensor) or value.requires_grad:
            raise _fail(
                what,
                f"signal {name!r} is not a detached tensor",
                f"return {name}.detach() in out['signals']",
            )


def _optimizer(objective: Any) -> Any:
    import torch

    return torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)


def _two_steps(
    objective: Any,
    batches: list[Batch],
    seed: int,
    what: str,
    backbone_params,
    logged_out: list[Any] | None = None,
):
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
    if logged_out is not None:
        logged_out.append(logged)
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
