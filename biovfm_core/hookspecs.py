"""The five extension points of biovfm.

A plugin is a module (or object) with functions marked ``@biovfm_core.hookimpl``
named after the hooks below; it is found through the ``biovfm`` entry-point group
of its distribution::

    # pyproject.toml of your package
    [project.entry-points.biovfm]
    my_plugin = "my_package.plugin"

Each hook receives one argument, ``register``, a callable::

    register(name: str, factory: Callable | str, *, description: str = "",
             presets: dict[str, dict] | None = None, override: bool = False) -> None

``name`` is what users type (``--objective my_loss``); lowercase letters, digits,
``_``, ``-`` and ``.``. A name that ends with ``:`` registers a *family*: the user
writes ``timm:resnet50`` and the factory receives ``variant="resnet50"``.

``factory`` is the class or function that builds the object, or a string
``"package.module:attr"`` naming it. Prefer the string: it is imported only when a
command needs that very object, so ``biovfm --help`` and ``biovfm plugins`` stay
fast even when your plugin imports torch.

``presets`` names option sets for a setting; biovfm knows ``"cpu"``: the values
``biovfm train`` uses on a machine without a GPU for options the user did not set
(e.g. fewer prototypes, smaller crops), so the demo finishes in minutes there. An
objective's ``"backbone"`` preset holds the backbone options its recipe sets (DINOv2:
drop-path, LayerScale); ``biovfm train`` applies them on every machine where the
backbone has the option and the user did not set it.

Options. Every keyword-only parameter of a factory is a user-facing option, settable
from YAML (``options: {objective: {teacher_temp: 0.07}}``) or the command line
(``--opt objective.teacher_temp=0.07``). Give each a default and a type hint
(``int``, ``float``, ``bool``, ``str``, ``tuple[float, float]``, ``X | None``);
biovfm checks types and rejects unknown option names, listing the valid ones.
A class whose ``__init__`` ends in ``**kwargs`` (passed to ``super().__init__``)
also offers its base class's keyword-only parameters, so a subclass lists only
what it adds.
Describe them in the factory's docstring, one entry per option in an ``Args:``
section (``name: what it does``; numpy ``Parameters`` and ``:param name:`` work
too); ``biovfm plugins --options NAME`` shows the docstring, each option's
description, type, default and ``"cpu"`` preset value. Reject a bad option value by
raising ``biovfm_core.errors.ConfigError`` naming the option. The positional
parameters are supplied by biovfm and differ per kind (below).

Preset values are checked against the factory's options when used: a typo there is
reported as your plugin's problem (naming it and its distribution), not the user's.

A name biovfm's own plugins register (``dinov2``, ``vit_small``, ``folder``, ``ct``)
stays theirs: a third party registering it is refused (listed by ``biovfm plugins``
as its problem) and the built-in keeps working. ``override=True`` asks to replace the
built-in; it takes effect only when the user also names it in
``BIOVFM_ALLOW_OVERRIDE`` (``dinov2``, or ``objective:dinov2``), because installing a
package must not silently change what a plain ``biovfm train`` runs.

Problems degrade per name. Two plugins registering the same name for the same kind,
an invalid name or factory, make only that name unusable: using it is an error that
names the plugins and distributions involved; ``biovfm plugins`` lists every such
problem. A plugin that fails to import, or whose hook raises, is reported as a
warning naming it, and every other plugin keeps working; an unknown name then
mentions the failed plugins. Any non-biovfm exception raised by a factory (or by
importing a ``"module:attr"`` factory) becomes one ``PluginError`` line naming the
plugin, its distribution and the factory; ``BIOVFM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("biovfm")

Register = Callable[..., None]


@hookspec
def biovfm_register_backbones(register: Register) -> None:
    """Register image encoders.

    Factory signature: ``factory(*, <options>) -> Backbone`` (a family factory also
    takes ``variant: str``). The result follows ``biovfm_core.protocols.Backbone``:
    a ``torch.nn.Module`` with ``embed_dim``, ``patch_size``, ``image_size``,
    ``in_chans``, ``forward_tokens(images, mask=None, keep=None) -> BackboneOutput``
    and ``num_parameters()``. Token ``mask`` serves iBOT, ``keep`` serves MAE; a
    backbone that cannot do them raises ``NotImplementedError`` naming itself.

    Example::

        @hookimpl
        def biovfm_register_backbones(register):
            register("convnext_med", "my_pkg.models:ConvNextMed",
                     description="ConvNeXt with a medical stem")
    """


@hookspec
def biovfm_register_objectives(register: Register) -> None:
    """Register training objectives (DINOv2, MAE, supervised, yours).

    Factory signature: ``factory(backbone: Backbone, task: TaskInfo, *, <options>)
    -> Objective``. The factory owns ``backbone`` from then on (deep-copy it for an
    EMA teacher). ``task`` says whether the data has labels and how many classes.

    The result follows ``biovfm_core.protocols.Objective``: a ``torch.nn.Module``
    with a ``views: ViewSpec`` attribute (which crops the data pipeline must make),
    ``training_step(batch, info) -> {"loss": ..., ...}`` (with an optional
    ``"signals"`` dict of detached tensors for the collapse sentinels:
    docs/monitoring.md),
    ``before_optimizer_step(info)``, ``after_optimizer_step(info) -> dict`` and
    ``eval_backbone()`` (the module ``biovfm eval`` and export use). Mixing in
    ``biovfm_core.protocols.ObjectiveBase`` gives no-op step hooks. An objective
    that needs labels sets ``views.needs_labels`` and raises
    ``biovfm_core.errors.ConfigError`` when ``task.num_classes`` is ``None``.
    """


@hookspec
def biovfm_register_augmentations(register: Register) -> None:
    """Register augmentation recipes.

    Factory signature: ``factory(views: ViewSpec, *, <options>) -> AugmentationRecipe``.
    The recipe makes the views an objective declared:
    ``sample_views(image, record, rng)`` in CPU workers (albumentations; must pickle),
    drawing every random choice from ``rng: numpy.random.Generator`` so a seeded
    sample is reproducible, and ``batch_transform(batch)`` on the device (kornia,
    torch's global generator). A recipe registered under a modality id
    (``biovfm_core.protocols.MODALITIES``: ``ct``, ``mr``, ``xray`` ...) is the one
    ``--augmentation auto`` applies to samples of that modality; ``default`` serves
    the rest. A recipe under its own name declares its modalities with
    ``register(..., modalities=["fundus"])`` (used where no recipe of that name
    claims the modality); a run maps any recipe to a modality with
    ``--opt augmentation.by_modality.<id>=<recipe>``, which wins.
    """


@hookspec
def biovfm_register_datasets(register: Register) -> None:
    """Register dataset readers, the ``KIND`` in ``--data KIND:PATH`` and in catalogs.

    Factory signature: ``factory(location: str, tags: SourceTags, *, <options>)
    -> DatasetReader``. ``location`` is the path the user gave; ``tags`` carries the
    source name, modality and anatomy from the catalog. The reader follows
    ``biovfm_core.protocols.DatasetReader``: ``scan()`` yields one ``SampleRecord``
    per image without decoding pixels (or a ``ScanProblem`` per unusable file), and
    ``load(record)`` decodes one image, raising ``BadImageError`` naming the file
    and the reason when it cannot. ``tags.modality`` may be one id, a comma list of
    ids or ``"auto"``; each record must carry exactly one id (see ``SourceTags``).
    Users set the reader's options per source (``--data KIND:PATH?key=value``, a
    catalog entry's ``options:``) or for every source (``--opt dataset.key=value``);
    the per-source value wins, and an option the reader lacks is an error.
    """


@hookspec
def biovfm_register_loggers(register: Register) -> None:
    """Register experiment loggers, the names in ``train.loggers`` and ``--logger``.

    Factory signature: ``factory(*, <options>) -> ExperimentLogger``. The user sets
    options per logger with ``--opt logger.<name>.<option>=VALUE`` (YAML:
    ``options: {logger: {<name>: {<option>: VALUE}}}``). Import the tracking library
    inside the factory, not at module level, and raise
    ``biovfm_core.errors.ConfigError`` naming the extra to install when it is missing
    (``pip install 'biovfm[mlflow]'``): the run then stops before its first step.

    The result follows ``biovfm_core.protocols.ExperimentLogger``: ``start(run)``,
    ``log_config(config)``, ``log_metrics(step, row)``, ``log_artifact(path, name)``
    and ``finish(status)``, called on rank 0 only. An exception from any of them
    after the factory is warned about once and switches that logger off; the run
    goes on. Check yours with ``biovfm_core.testing.check_logger``.

    Example::

        @hookimpl
        def biovfm_register_loggers(register):
            register("neptune", "my_pkg.logger:NeptuneLogger",
                     description="Neptune.ai runs")
    """
