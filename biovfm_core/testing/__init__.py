"""The plugin conformance kit: call these from your plugin's own pytest.

In the manner of scikit-learn's ``check_estimator`` and gymnasium's ``check_env``,
each check builds your plugin the way ``biovfm train`` would on a CPU (its ``"cpu"``
preset, a ``vit_tiny`` of 32 px and 2 blocks, views of the built-in demo images) and exercises the
protocol of ``biovfm_core.protocols`` with real values::

    from biovfm_core.testing import check_objective

    def test_my_objective_conforms():
        check_objective("my_objective")          # a registered name ...
        check_objective(MyObjective, preset={"projection_dim": 64})  # ... or the factory

A failed check raises ``ConformanceError`` (an ``AssertionError``) whose message
names the plugin, what was observed, and what to change. Each check takes a few
seconds on a CPU.

The checks, one per extension point (each also runs ``check_options``):

- ``check_objective(name_or_factory)``: a real training step on demo views (a finite
  scalar loss with gradients on the backbone), the same next loss after a
  ``state_dict`` round trip (resumption), and ``eval_backbone()`` features of
  ``embed_dim``.
- ``check_backbone(name_or_factory)``: attributes, tokens at its own and a smaller
  size, masking, gradients, ``num_parameters`` and a ``state_dict`` round trip.
- ``check_augmentation(name_or_factory)``: view shapes on demo images, pickling,
  seeded reproducibility (no global generators) and ``batch_transform``.
- ``check_reader(name_or_factory, location)``: scan, the modality contract, load,
  pickling, and ``BadImageError`` on a broken file.
- ``check_logger(name_or_factory, folder, read_back=...)``: a short run's config,
  rows (sentinel and monitor columns, blanks, NaN), artifacts, finish and a resume;
  with ``read_back``, every number sent is found stored at its step.
- ``check_options(plugin)``: every option has a default and a type hint, and its
  default survives ``--opt kind.name=VALUE`` and a saved-and-reloaded config.

``KIT_VIEWS``, ``BATCH`` and ``KIT_BACKBONE_SIZE`` are the small sizes the checks use.
The kit imports only biovfm_core's lower layers (protocols, errors, options,
registry, config, data), never train, eval, inspect, cli or sweep.
"""

from __future__ import annotations

from biovfm_core.testing.augmentation import check_augmentation
from biovfm_core.testing.backbone import check_backbone
from biovfm_core.testing.errors import ConformanceError
from biovfm_core.testing.logger import check_logger
from biovfm_core.testing.objective import check_objective
from biovfm_core.testing.options import check_options
from biovfm_core.testing.reader import check_reader
from biovfm_core.testing.samples import BATCH as BATCH
from biovfm_core.testing.samples import KIT_BACKBONE_SIZE as KIT_BACKBONE_SIZE
from biovfm_core.testing.samples import KIT_VIEWS as KIT_VIEWS

__all__ = [
    "ConformanceError",
    "check_augmentation",
    "check_backbone",
    "check_logger",
    "check_objective",
    "check_options",
    "check_reader",
]
