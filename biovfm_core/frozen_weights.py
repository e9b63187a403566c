"""Weights for a frozen copy of a plugin's own backbone (a Gram teacher from a path).

Plugins may not import ``biovfm_core.models`` (the import contract in pyproject.toml);
this is the public door to it: any ``--init`` spec (a biovfm run or export, a DINOv2
hub ``.pth``, a timm or Hugging Face folder, ``timm:NAME``) into a backbone the plugin
already built, checked and strict, with the same one-line errors ``--init`` gives.

The other door is ``TaskInfo.load_model``: a whole frozen model of the spec's own
architecture, with its heads (a distillation teacher). Use this one when the weights
must fit the architecture you built (DINOv3's ``gram.ckpt`` is the student's).
"""

from __future__ import annotations

from biovfm_core.protocols import Backbone


def load_backbone_weights(backbone: Backbone, spec: str, *, what: str) -> None:
    """Load ``spec``'s weights into ``backbone``; ``what`` names the option in errors
    (e.g. ``objective.gram_teacher``)."""
    from biovfm_core.models import published

    source = published.read_init(spec, what=what)
    published.load_init(source, backbone, f"{what} ({spec})")
