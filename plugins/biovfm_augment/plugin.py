"""Hook implementation of the built-in augmentation recipes (lazy strings only)."""

from __future__ import annotations

from biovfm_core import hookimpl

_RECIPES = {
    "default": (
        "MultiCropRecipe",
        "multi-crop (global + local random-resized crops, flip), colour jitter/blur/solarize on device",
    ),
    "ct": (
        "CTRecipe",
        "multi-crop with random Hounsfield windowing (soft tissue, lung, bone, brain)",
    ),
    "mr": ("MRRecipe", "multi-crop with percentile normalisation, smooth bias field and gamma"),
    "xray": ("XRayRecipe", "multi-crop with CLAHE and contrast/brightness jitter"),
    "microscopy": ("MicroscopyRecipe", "multi-crop with HED stain jitter for H&E/IHC"),
    "us": ("UltrasoundRecipe", "multi-crop with multiplicative speckle noise"),
    "fundus": ("ColourConstancyRecipe", "multi-crop with shades-of-gray colour constancy"),
    "dermoscopy": ("ColourConstancyRecipe", "multi-crop with shades-of-gray colour constancy"),
}


@hookimpl
def biovfm_register_augmentations(register) -> None:  # type: ignore[no-untyped-def]
    for name, (cls, description) in _RECIPES.items():
        register(name, f"biovfm_augment.recipes:{cls}", description=description)
