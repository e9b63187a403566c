"""The plugin conformance kit: call these from your plugin's own pytest.

In the manner of scikit-learn's ``check_estimator`` and gymnasium's ``check_env``,
each check builds your plugin the way ``biovfm train`` would on a CPU (its ``"cpu"``
preset, a tiny ``vit_tiny``, views of the built-in demo images) and exercises the
protocol of ``biovfm_core.protocols`` with real values::

    from biovfm_core.testing import check_objective

    def test_my_objective_conforms():
        check_objective("my_objective")          # a registered name ...
        check_objective(MyObjective, preset={"projection_dim": 64})  # ... or the factory

A failed check raises ``ConformanceError`` (an ``AssertionError``) whose message
names the plugin, what was observed, and what to change. Each check takes a few
seconds on a CPU.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from biovfm_core.errors import BadImageError, ConfigError
from biovfm_core.options import OptionSpec, factory_options, validate_options
from biovfm_core.protocols import (
    MODALITIES,
    Batch,
    SampleRecord,
    ScanProblem,
    SourceTags,
    StepInfo,
    TaskInfo,
    ViewSpec,
)

__all__ = [
    "ConformanceError",
    "check_augmentation",
    "check_backbone",
    "check_objective",
    "check_options",
    "check_reader",
]

# Small views so a check runs in seconds: what a CPU demo run would use.
KIT_VIEWS = ViewSpec(global_crops=2, global_size=32, local_crops=2, local_size=16)
BATCH = 4
KIT_BACKBONE_SIZE = 32


class ConformanceError(AssertionError):
    """A plugin does not follow the protocol; the message says what to change."""


def _fail(what: str, problem: str, fix: str) -> ConformanceError:
    return ConformanceError(f"{what}: {problem}. Fix: {fix}")


# ----------------------------------------------------------------------- plugins


class _Plugin:
    """A factory to check: a registered name (with its presets) or a bare callable."""

    def __init__(
        self,
        kind: str,
        name_or_factory: str | Callable[..., Any],
        *,
        preset: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        registry: Any,
    ) -> None:
        self.kind = kind  # singular: "objective", ...
        self.presets: dict[str, dict[str, Any]] = {}
        if isinstance(name_or_factory, str):
            from biovfm_core.registry import get_registry

            self.registry = registry or get_registry()
            try:
                registration, variant = self.registry.get(kind + "s", name_or_factory)
            except ConfigError as exc:
                raise ConformanceError(
                    f"{exc}. Fix: install the plugin's distribution (pip install -e .) so its "
                    "`biovfm` entry point registers the name, or pass the factory itself"
                ) from None
            self.name = name_or_factory
            self.what = f"{kind} {name_or_factory!r} (plugin {registration.plugin!r})"
            self.factory = registration.resolve()
            self.variant = variant
            self.presets = {k: dict(v) for k, v in registration.presets.items()}
        elif callable(name_or_factory):
            self.registry = registry
            self.name = getattr(name_or_factory, "__qualname__", repr(name_or_factory))
            self.what = f"{kind} factory {self.name}"
            self.factory = name_or_factory
            self.variant = None
        else:
            raise TypeError(f"expected a registered name or a factory, got {name_or_factory!r}")
        cpu = dict(self.presets.get("cpu", {}))
        if preset is not None:
            cpu = dict(preset)
        self.options = self.checked({**cpu, **(options or {})}, origin="'cpu' preset / options")

    def specs(self) -> dict[str, OptionSpec]:
        return factory_options(self.factory)

    def checked(self, given: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
        try:
            return validate_options(self.specs(), given, where=self.what, prefix=f"{self.kind}.")
        except ConfigError as exc:
            raise _fail(
                self.what,
                f"its {origin} does not match the factory's options ({exc})",
                "make every preset key a keyword-only parameter of the factory, with a "
                "value of its type hint",
            ) from None

    def build(self, *args: Any, **extra: Any) -> Any:
        kwargs = {**self.options, **extra}
        if self.variant is not None:
            kwargs["variant"] = self.variant
        return self.factory(*args, **kwargs)


def check_options(plugin: _Plugin) -> None:
    """Every option has a default and a type hint, and its default survives
    ``--opt kind.name=VALUE`` and a saved-and-reloaded config unchanged."""
    from biovfm_core.config import RunConfig

    for name, spec in plugin.specs().items():
        where = f"{plugin.what}, option {name!r}"
        if spec.required:
            raise _fail(
                where,
                "has no default, so a run that does not set it cannot build the plugin",
                f"give `{name}` a default value in the factory's signature",
            )
        if spec.annotation is Any or spec.annotation is inspect.Parameter.empty:
            raise _fail(
                where,
                "has no type hint, so biovfm cannot check or convert `--opt` strings",
                f"annotate `{name}` (int, float, bool, str, Literal[...], tuple[...], X | None)",
            )
        text = _render(spec.default)
        config = RunConfig()
        config.apply_opts([f"{plugin.kind}.{name}={text}"])
        try:
            via_opt = validate_options(
                {name: spec}, config.options[plugin.kind], where=plugin.what
            )[name]
            via_yaml = validate_options(
                {name: spec},
                RunConfig.from_dict(
                    {"options": {plugin.kind: {name: _plain(spec.default)}}}
                ).options[plugin.kind],
                where=plugin.what,
            )[name]
        except ConfigError as exc:
            raise _fail(
                where,
                f"its default {spec.default!r}, written as --opt {plugin.kind}.{name}={text}, "
                f"is rejected: {exc}",
                "make the default a value of the declared type (or widen the type hint)",
            ) from None
        for route, value in (("--opt", via_opt), ("a YAML config", via_yaml)):
            if not _same(value, spec.default):
                raise _fail(
                    where,
                    f"its default {spec.default!r} comes back from {route} as {value!r}",
                    "use a type hint biovfm converts exactly (int, float, bool, str, "
                    "Literal[...], tuple[...], X | None) and a default of that type",
                )


def _render(value: Any) -> str:
    """The text a user types after ``--opt kind.name=`` for ``value``."""
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("\n...")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)
    return a == b and type(a) is type(b)


# ------------------------------------------------------------------------- data


_DEMO_2D = "skimage"
_DEMO_ORIGIN = {"ct": "pydicom", "mr": "pydicom", "us": "pydicom", "nm": "pydicom"}


@functools.lru_cache(maxsize=4)
def _demo_records(origins: str) -> tuple[tuple[SampleRecord, ...], Any]:
    """The built-in demo images of ``origins`` (the ``demo`` reader's option)."""
    from biovfm_core.registry import get_registry

    reader = get_registry().build(
        "datasets", "demo", "", SourceTags(source="demo", modality="auto"),
        options={"origins": origins},
    )  # fmt: skip
    records = tuple(r for r in reader.scan() if isinstance(r, SampleRecord))
    if not records:
        raise RuntimeError(f"the built-in demo data ({origins}) is empty")
    return records, reader


def _demo_images(modality: str | None, count: int) -> list[tuple[Any, SampleRecord]]:
    """``count`` decoded demo images, of ``modality`` where the demo has it."""
    records, reader = _demo_records(_DEMO_ORIGIN.get(modality or "", _DEMO_2D))
    chosen = [r for r in records if r.modality == modality] if modality else []
    if not chosen:
        # A modality the demo lacks (xray): feed the 2D photos tagged as that modality.
        chosen = list(records)
        if modality:
            chosen = [SampleRecord(r.uri, r.source, modality, r.anatomy) for r in chosen]
    # Spread over the demo's different images, not one image's neighbouring patches.
    step = max(1, len(chosen) // count)
    picked = (chosen[::step] * count)[:count]
    return [(reader.load(r), r) for r in picked]


def _default_recipe(views: ViewSpec) -> Any:
    from biovfm_core.registry import get_registry

    return get_registry().build("augmentations", "default", views)


def _batch(views: ViewSpec, recipe: Any, seed: int, labels: bool) -> Batch:
    """A collated, device-transformed batch of demo images, as the loader makes it."""
    import numpy as np
    import torch

    from biovfm_core.data.dataset import collate

    samples = []
    for k, (image, record) in enumerate(_demo_images(None, BATCH)):
        out = recipe.sample_views(image, record, np.random.default_rng([seed, k]))
        samples.append({"views": out, "label": k % 2 if labels else None, "modality": "other"})
    batch = collate(samples)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return recipe.batch_transform(batch)
    finally:
        torch.random.set_rng_state(state)


# -------------------------------------------------------------------- objective


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


# --------------------------------------------------------------------- backbone


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
    if "image_size" in plugin.specs():
        plugin.options.setdefault("image_size", KIT_BACKBONE_SIZE)  # tiny, so it is quick
    what = plugin.what
    torch.manual_seed(seed)
    net = plugin.build()
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
    small = max(p, (net.image_size // 2) // p * p)
    for size in (net.image_size, small):
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


# ----------------------------------------------------------------- augmentation


def check_augmentation(
    name_or_factory: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    views: ViewSpec = KIT_VIEWS,
    modality: str | None = None,
    in_chans: int = 3,
    seed: int = 0,
    registry: Any = None,
) -> None:
    """Check a recipe on demo images: view shapes, pickling, seeded reproducibility
    (no global generators), and ``batch_transform``.

    ``modality`` picks demo images of that modality (a registered modality name,
    ``ct``, is its own default); modalities the demo lacks get its 2D photos.
    """
    import numpy as np
    import torch

    plugin = _Plugin(
        "augmentation", name_or_factory, preset=preset, options=options, registry=registry
    )
    check_options(plugin)
    what = plugin.what
    if modality is None and isinstance(name_or_factory, str) and name_or_factory in MODALITIES:
        modality = name_or_factory
    recipe = plugin.build(views)
    try:
        clone = pickle.loads(pickle.dumps(recipe))
    except Exception as exc:
        raise _fail(
            what,
            f"the recipe does not pickle ({type(exc).__name__}: {exc}); data-loader workers "
            "receive it pickled",
            "drop unpicklable members in __getstate__ and rebuild them in __setstate__",
        ) from None
    images = _demo_images(modality, 3)
    for k, (image, record) in enumerate(images):
        np.random.seed(1)
        random.seed(1)
        first = recipe.sample_views(image, record, np.random.default_rng([seed, k]))
        _check_views(first, views, in_chans, what, record)
        np.random.seed(2)
        random.seed(2)
        again = clone.sample_views(image, record, np.random.default_rng([seed, k]))
        if not _views_equal(first, again):
            raise _fail(
                what,
                f"the same rng seed gave different views of {record.uri} (after pickling, "
                "with numpy's and Python's global generators in another state)",
                "draw every random choice from the `rng` argument; seed albumentations from it "
                "(compose.set_random_state(rng, random.Random(int(rng.integers(2**63)))))",
            )
    image, record = images[0]
    a = recipe.sample_views(image, record, np.random.default_rng([seed, 0]))
    b = recipe.sample_views(image, record, np.random.default_rng([seed + 1, 0]))
    if _views_equal(a, b):
        raise _fail(
            what,
            "two different rng seeds gave identical views",
            "draw the crops' randomness from the `rng` argument",
        )
    from biovfm_core.data.dataset import collate

    samples = [
        {"views": recipe.sample_views(img, rec, np.random.default_rng(k)), "label": None,
         "modality": rec.modality}
        for k, (img, rec) in enumerate(images)
    ]  # fmt: skip
    outs = []
    for _ in range(2):
        batch = collate(copy.deepcopy(samples))
        torch.manual_seed(seed)
        outs.append(recipe.batch_transform(batch))
    out = outs[0]
    if not isinstance(out, Batch):
        raise _fail(what, "batch_transform did not return a Batch", "return the transformed Batch")
    for kind, size, count in (
        ("global", views.global_size, views.global_crops),
        ("local", views.local_size, views.local_crops),
    ):
        tensors = out.global_views if kind == "global" else out.local_views
        if len(tensors) != count or any(
            tuple(t.shape) != (len(images), in_chans, size, size) or not t.is_floating_point()
            for t in tensors
        ):
            raise _fail(
                what,
                f"batch_transform changed the {kind} views' number or shape",
                "keep every view's (B, C, H, W) float shape",
            )
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise _fail(what, f"batch_transform gave NaN/inf {kind} views", "keep them finite")
    same = all(
        torch.equal(x, y)
        for x, y in zip(
            outs[0].global_views + outs[0].local_views,
            outs[1].global_views + outs[1].local_views,
            strict=True,
        )
    )
    if not same:
        raise _fail(
            what,
            "batch_transform gave different results under the same torch seed",
            "draw its randomness from torch's global generator (checkpoints restore it)",
        )
    for attr in ("mean", "std"):
        value = getattr(recipe, attr, None)
        if value is not None and len(list(value)) != 3:
            raise _fail(what, f"{attr} is {value!r}", f"make {attr} three floats, or drop it")


def _check_views(out: Any, views: ViewSpec, in_chans: int, what: str, record: SampleRecord) -> None:
    import numpy as np

    if not isinstance(out, Mapping) or set(out) != {"global", "local"}:
        raise _fail(
            what,
            f"sample_views returned {type(out).__name__} {list(out) if isinstance(out, Mapping) else ''}",
            'return {"global": [...], "local": [...]}',
        )
    for kind, count, size in (
        ("global", views.global_crops, views.global_size),
        ("local", views.local_crops, views.local_size),
    ):
        if len(out[kind]) != count:
            raise _fail(
                what,
                f"{len(out[kind])} {kind} views of {record.uri}, the ViewSpec asks for {count}",
                f"make views.{kind}_crops views",
            )
        for view in out[kind]:
            shape = getattr(view, "shape", None)
            if (
                not isinstance(view, np.ndarray)
                or view.dtype != np.float32
                or shape != (in_chans, size, size)
            ):
                raise _fail(
                    what,
                    f"a {kind} view of {record.uri} ({record.modality}) is "
                    f"{type(view).__name__} {getattr(view, 'dtype', '')} {shape}",
                    f"return float32 arrays (C={in_chans}, {size}, {size}) as the ViewSpec asks "
                    "(repeat gray images to 3 channels)",
                )
            if not np.isfinite(view).all():
                raise _fail(what, f"a {kind} view of {record.uri} has NaN/inf", "keep views finite")


def _views_equal(a: Mapping[str, list], b: Mapping[str, list]) -> bool:
    import numpy as np

    return all(
        len(a[k]) == len(b[k])
        and all(np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True))
        for k in ("global", "local")
    )


# ------------------------------------------------------------------------ reader


def check_reader(
    name_or_factory: str | Callable[..., Any],
    location: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    modality: str = "auto",
    broken: str | Path | Callable[[Path], Path] | None = None,
    registry: Any = None,
) -> None:
    """Check a reader on real files at ``location``: scan, modality contract, load,
    pickling, and ``BadImageError`` on a broken file.

    ``broken``: a broken file of the reader's format, or a function writing one into
    the folder it gets. By default the kit truncates a copy of the first image's file.
    """
    import numpy as np

    plugin = _Plugin("dataset", name_or_factory, preset=preset, options=options, registry=registry)
    check_options(plugin)
    what = plugin.what
    tags = SourceTags(source="kit", modality=modality)
    reader = plugin.build(str(location), tags)
    for method in ("scan", "load"):
        if not callable(getattr(reader, method, None)):
            raise _fail(what, f"it has no {method}()", "follow protocols.DatasetReader")
    try:
        reader = pickle.loads(pickle.dumps(reader))
    except Exception as exc:
        raise _fail(
            what,
            f"the reader does not pickle ({type(exc).__name__}: {exc}); loader workers get it "
            "pickled",
            "keep open files/handles out of the pickled state (__getstate__), reopen lazily",
        ) from None
    items = list(reader.scan())
    records = [r for r in items if isinstance(r, SampleRecord)]
    strays = [r for r in items if not isinstance(r, SampleRecord | ScanProblem)]
    if strays:
        raise _fail(
            what,
            f"scan() yielded {type(strays[0]).__name__}",
            "yield only SampleRecord or ScanProblem",
        )
    if not records:
        problems = "; ".join(f"{p.path}: {p.reason}" for p in items[:3])
        raise _fail(
            what,
            f"scan() of {location} found no image{' (' + problems + ')' if problems else ''}",
            "pass a location with images of the reader's format, or fix scan()",
        )
    allowed = MODALITIES if modality == "auto" else tuple(modality.split(","))
    for record in records:
        if record.modality not in allowed:
            raise _fail(
                what,
                f"record {record.uri} carries modality {record.modality!r} for "
                f"tags.modality={modality!r}",
                f"give each record exactly one id of {', '.join(allowed)} "
                "('other' when it cannot be told); tags.modality is a constraint, not a value",
            )
        if record.source != tags.source:
            raise _fail(
                what,
                f"record {record.uri} has source {record.source!r}, not {tags.source!r}",
                "copy tags.source into every record",
            )
    if [r for r in reader.scan() if isinstance(r, SampleRecord)] != records:
        raise _fail(what, "two scans gave different records", "make scan() deterministic")
    for record in records[:2]:
        image = reader.load(record)
        if (
            not isinstance(image, np.ndarray)
            or image.ndim not in (2, 3)
            or min(image.shape[:2]) < 1
        ):
            raise _fail(
                what,
                f"load({record.uri}) returned {type(image).__name__} "
                f"{getattr(image, 'shape', None)}",
                "return a numpy array (H, W) or (H, W, C)",
            )
        if not np.array_equal(image, reader.load(record)):
            raise _fail(what, f"loading {record.uri} twice differs", "make load() deterministic")
    _check_broken(reader, records[0], broken, what)


def _check_broken(reader: Any, record: SampleRecord, broken: Any, what: str) -> None:
    path, sep, fragment = record.uri.partition("#")
    with tempfile.TemporaryDirectory(prefix="biovfm-kit-") as folder:
        folder_path = Path(folder)
        if broken is None:
            source = Path(path)
            if not source.is_file():
                raise ConformanceError(
                    f"{what}: cannot make a broken file from {record.uri}, which is not a file; "
                    "pass broken= (a broken file of your format, or a function writing one)"
                )
            target = folder_path / source.name
            shutil.copyfile(source, target)
            data = target.read_bytes()
            target.write_bytes(data[: max(1, len(data) // 3)])
        elif callable(broken):
            target = Path(broken(folder_path))
        else:
            target = Path(broken)
        uri = str(target) + (sep + fragment if sep else "")
        bad = SampleRecord(uri, record.source, record.modality, record.anatomy, record.label)
        try:
            reader.load(bad)
        except BadImageError:
            return
        except Exception as exc:
            raise _fail(
                what,
                f"load() of a broken file ({target.name}) raised {type(exc).__name__}: {exc}",
                "catch the decoder's errors and raise biovfm_core.errors.BadImageError(path, "
                "reason) so training skips and reports the image",
            ) from None
        raise _fail(
            what,
            f"load() of a broken file ({target.name}) returned an image",
            "verify the file decodes completely and raise BadImageError(path, reason) if not",
        )
