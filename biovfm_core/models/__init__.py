"""Models and weights: everything that turns bytes into a backbone and back.

Below both ``train`` and ``eval`` (and ``inspect``, ``sweep``), which all call it; it
imports none of them.

- ``specs``: a model spec (run, export, hub ``.pth``, timm/HF folder, ``random:``,
  ``timm:``) to a ``LoadedModel`` in eval mode (``load_model``).
- ``runs``: biovfm's own files (an export, a run, a checkpoint folder) as a backbone.
- ``published``: published weights (DINOv2 / MAE ``.pth``, timm/HF folders, ``timm:``)
  converted to the biovfm ViT, position tables resampled; ``--init``'s reader.
- ``weights``: safetensors reads and strict loads with one-line errors.
- ``checkpoint``: the checkpoint folder format (atomic write, read, confirm, prune).
- ``export``: the export folder (one weights file + ``backbone.json``, timm
  folder, model card).
- ``normalisation``: the input normalisation a backbone was trained with.
- ``loaded``: ``LoadedModel``, what identifies a loaded backbone for caches and tables.
- ``frozen``: ``FrozenTeacher``, a model an objective learns from but never trains;
  ``specs.frozen_loader`` is the ``TaskInfo.load_model`` the engine hands to objectives.
"""
