from __future__ import annotations

import pickle

import numpy as np
import pytest
from biovfm_augment.recipes import (
    ColourConstancyRecipe,
    CTRecipe,
    MicroscopyRecipe,
    MRRecipe,
    MultiCropRecipe,
    UltrasoundRecipe,
    XRayRecipe,
    shades_of_gray,
    window,
)

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, SampleRecord, ViewSpec

VIEWS = ViewSpec(global_crops=2, global_size=64, local_crops=3, local_size=32)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _unnorm(v):
    return v * STD[:, None, None] + MEAN[:, None, None]


@pytest.mark.parametrize(
    ("cls", "image"),
    [
        (MultiCropRecipe, np.random.default_rng(0).integers(0, 255, (100, 120), dtype=np.uint8)),
        (XRayRecipe, np.random.default_rng(0).integers(0, 65535, (100, 120), dtype=np.uint16)),
        (MRRecipe, np.random.default_rng(0).normal(500, 100, (80, 90)).astype(np.int16)),
        (MicroscopyRecipe, np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)),
        (UltrasoundRecipe, np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)),
        (
            ColourConstancyRecipe,
            np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8),
        ),
        (CTRecipe, np.random.default_rng(0).uniform(-1024, 2000, (70, 70)).astype(np.float32)),
    ],
)
def test_views_shapes_channels_and_range(cls, image):
    recipe = pickle.loads(pickle.dumps(cls(VIEWS)))  # recipes must survive worker pickling
    out = recipe.sample_views(image, SampleRecord("x", "s", "ct"), np.random.default_rng(0))
    assert len(out["global"]) == 2 and len(out["local"]) == 3
    for v in out["global"]:
        assert v.shape == (3, 64, 64) and v.dtype == np.float32
    for v in out["local"]:
        assert v.shape == (3, 32, 32)
    x = _unnorm(out["global"][0])
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
    if image.ndim == 2:  # gray repeated into three identical channels
        np.testing.assert_allclose(x[0], x[1], atol=1e-5)


def test_ct_window_maps_hounsfield_to_unit_range():
    hu = np.array([-2000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    np.testing.assert_allclose(window(hu, 40, 400), [0, 0, 0.5, 1, 1])
    recipe = CTRecipe(
        ViewSpec(global_crops=1, global_size=16, local_crops=0),
        windows="40/400",
        jitter=0.0,
        flip=False,
    )
    img = np.full((40, 40), 40.0, np.float32)  # soft tissue at the window centre
    ct = SampleRecord("x", "s", "ct")
    (v,) = recipe.sample_views(img, ct, np.random.default_rng(0))["global"]
    np.testing.assert_allclose(_unnorm(v), 0.5, atol=1e-5)
    air = recipe.sample_views(np.full((40, 40), -1000.0, np.float32), ct, np.random.default_rng(1))
    np.testing.assert_allclose(_unnorm(air["global"][0]), 0.0, atol=1e-5)


def test_16bit_range_kept_until_recipe():
    # A 16-bit image whose values all sit above 255 must not saturate: it is mapped
    # by its own percentiles, so a dark and a bright half stay distinct.
    img = np.zeros((64, 64), np.uint16)
    img[:, :32], img[:, 32:] = 30000, 60000
    r = MultiCropRecipe(
        ViewSpec(global_crops=1, global_size=64, global_scale=(1.0, 1.0), local_crops=0), flip=False
    )
    (v,) = r.sample_views(img, SampleRecord("x", "s", "xray"), np.random.default_rng(0))["global"]
    x = _unnorm(v)[0]
    assert x[:, :20].mean() < 0.05 and x[:, -20:].mean() > 0.95


def test_shades_of_gray_removes_colour_cast():
    rgb = np.random.default_rng(0).uniform(0.2, 0.6, (32, 32, 3)).astype(np.float32)
    cast = rgb * np.array([1.0, 0.7, 0.5], np.float32)
    out = shades_of_gray(cast)
    means = out.reshape(-1, 3).mean(0)
    assert means.max() / means.min() < 1.1


def test_batch_transform_on_device_keeps_shapes():
    import torch

    r = MultiCropRecipe(VIEWS)
    b = Batch(
        [torch.zeros(2, 3, 64, 64) for _ in range(2)],
        [torch.zeros(2, 3, 32, 32)],
        modality=["ct", "mr"],
    )
    out = r.batch_transform(b)
    assert [v.shape for v in out.global_views] == [(2, 3, 64, 64)] * 2 and out.modality == [
        "ct",
        "mr",
    ]
    no_colour = MultiCropRecipe(ViewSpec(color_augment=False))
    assert no_colour.batch_transform(b) is b


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_finish_clips_repeats_gray_normalises_channel_first(shape):
    rng = np.random.default_rng(0)
    view = (rng.random(shape) * 1.4 - 0.2).astype(np.float32)
    out = MultiCropRecipe(VIEWS)._finish(view)
    rgb = np.clip(view, 0, 1)
    rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb
    expected = ((rgb - MEAN) / STD).transpose(2, 0, 1)
    assert out.shape == (3, 5, 7) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def _gray_views(levels, batch, size):
    """Views whose [0, 1] image is the uniform gray ``level``, normalised as recipes do."""
    import torch

    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return [((torch.full((batch, 3, size, size), lv) - mean) / std) for lv in levels]


def _levels(views):
    return [round(float(_unnorm(v[0].double().numpy()).mean()), 4) for v in views]


@pytest.mark.parametrize("fuse_limit", [None, 1])
def test_batch_transform_keeps_each_view_in_place_whether_fused_or_not(monkeypatch, fuse_limit):
    import biovfm_augment.recipes as recipes

    if fuse_limit is not None:  # every view on its own, as big CPU views are
        monkeypatch.setattr(recipes, "CPU_FUSE_ELEMENTS", fuse_limit)
    # No jitter, sure solarize: on uniform gray views every op left is exact
    # (grayscale and blur keep a uniform gray), so each output level is known:
    # only the second global view is solarized (x >= 0.5 -> 1 - x).
    r = MultiCropRecipe(VIEWS, jitter_p=0.0, solarize_p=1.0)
    batch = Batch(
        _gray_views([0.3, 0.7], 2, 64),
        _gray_views([0.1, 0.6, 0.9], 2, 32),
        modality=["ct", "ct"],
    )
    out = r.batch_transform(batch)
    assert _levels(out.global_views) == [0.3, 0.3]
    assert _levels(out.local_views) == [0.1, 0.6, 0.9]
    assert [tuple(v.shape) for v in out.local_views] == [(2, 3, 32, 32)] * 3


def test_batch_transform_draws_jitter_per_image_across_fused_views():
    import torch

    torch.manual_seed(0)
    r = MultiCropRecipe(VIEWS, jitter_p=1.0)
    local = _gray_views([0.5], 2, 32)[0]
    out = r.batch_transform(
        Batch(
            _gray_views([0.5, 0.5], 2, 64), [local.clone() for _ in range(3)], modality=["ct"] * 2
        )
    )
    images = torch.cat(out.local_views)  # 6 identical inputs, fused into one kornia call
    levels = {round(float(im.mean()), 4) for im in images}
    assert len(levels) == 6


def test_fusable_groups_views_up_to_the_cpu_limit(monkeypatch):
    import torch
    from biovfm_augment import recipes

    views = [torch.zeros(2, 3, 8, 8) for _ in range(5)]  # 384 elements each
    monkeypatch.setattr(recipes, "CPU_FUSE_ELEMENTS", 800)
    assert [len(g) for g in recipes._fusable(views)] == [2, 2, 1]
    monkeypatch.setattr(recipes, "CPU_FUSE_ELEMENTS", 10**9)
    assert [len(g) for g in recipes._fusable(views)] == [5]


def test_recipes_registered_under_modality_ids():
    from biovfm_core.registry import get_registry

    names = set(get_registry().names("augmentations"))
    assert {"default", "ct", "mr", "xray", "microscopy", "us", "fundus", "dermoscopy"} <= names
    recipe = get_registry().build("augmentations", "ct", VIEWS, options={"jitter": 0.05})
    assert isinstance(recipe, CTRecipe) and recipe.jitter == 0.05


# ------------------------------------------------------------ reproducibility
RECIPE_IMAGES = [
    (MultiCropRecipe, np.random.default_rng(0).integers(0, 255, (100, 120), dtype=np.uint8)),
    (CTRecipe, np.random.default_rng(0).uniform(-1024, 2000, (70, 70)).astype(np.float32)),
    (MRRecipe, np.random.default_rng(0).normal(500, 100, (80, 90)).astype(np.int16)),
    (XRayRecipe, np.random.default_rng(0).integers(0, 65535, (100, 120), dtype=np.uint16)),
    (MicroscopyRecipe, np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)),
    (UltrasoundRecipe, np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)),
    (ColourConstancyRecipe, np.random.default_rng(0).integers(0, 255, (90, 90, 3), np.uint8)),
]


def _views(recipe, image, seed):
    out = recipe.sample_views(image, SampleRecord("x", "s", "ct"), np.random.default_rng(seed))
    return out["global"] + out["local"]


@pytest.mark.parametrize(("cls", "image"), RECIPE_IMAGES)
def test_same_seed_same_views_bitwise_also_after_pickling(cls, image):
    recipe = cls(VIEWS)
    first = _views(recipe, image, 123)
    _views(recipe, image, 7)  # a call in between must not leak state into the next
    again = _views(recipe, image, 123)
    in_worker = _views(pickle.loads(pickle.dumps(recipe)), image, 123)
    assert len(first) == 5
    for a, b, c in zip(first, again, in_worker, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.parametrize(("cls", "image"), RECIPE_IMAGES)
def test_different_seeds_different_views(cls, image):
    recipe = cls(VIEWS)
    a, b = _views(recipe, image, 1), _views(recipe, image, 2)
    # Every view is a fresh random crop, so all of them differ, not just some.
    assert all(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_albumentations_draws_only_from_the_given_rng():
    import random

    recipe = MultiCropRecipe(VIEWS)
    image = RECIPE_IMAGES[0][1]
    np.random.seed(0)
    random.seed(0)
    a = _views(recipe, image, 5)
    np.random.seed(99)  # global generators moved: the views must not change
    random.seed(99)
    b = _views(recipe, image, 5)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ options
# One real recipe-specific option per registered name, with a string value as
# `--opt augmentation.k=v` delivers it and the typed value it must coerce to.
OWN_OPTION = {
    "default": ("solarize_p", "0.1", 0.1),
    "ct": ("windows", "40/400", "40/400"),
    "mr": ("gamma", "[0.8, 1.2]", (0.8, 1.2)),
    "xray": ("clip_limit", "3", 3.0),
    "microscopy": ("sigma", "0.1", 0.1),
    "us": ("strength", "0.2", 0.2),
    "fundus": ("power", "4", 4.0),
    "dermoscopy": ("power", "4", 4.0),
}


@pytest.mark.parametrize("name", sorted(OWN_OPTION))
def test_registry_validates_recipe_options(name):
    from biovfm_core.errors import ConfigError
    from biovfm_core.registry import get_registry

    registry = get_registry()
    key, raw, value = OWN_OPTION[name]
    checked = registry.validate(
        "augmentations", name, {key: raw, "flip": "false", "mean": [0.5, 0.5, 0.5]}
    )
    assert checked == {key: value, "flip": False, "mean": (0.5, 0.5, 0.5)}
    with pytest.raises(ConfigError, match=rf"unknown option augmentation\.{key}x.*did you mean"):
        registry.validate("augmentations", name, {key + "x": raw})
    with pytest.raises(ConfigError, match="expected tuple"):
        registry.validate("augmentations", name, {"std": [0.2, 0.2]})


def test_recipe_options_reach_the_recipe():
    from biovfm_core.registry import get_registry

    recipe = get_registry().build(
        "augmentations", "ct", VIEWS, options={"flip": "false", "windows": "-600/1500"}
    )
    assert recipe.flip is False and recipe.windows == [(-600.0, 1500.0)]
    assert len(recipe._global_crop.transforms) == 1  # the crop alone, no flip


def test_modality_recipes_take_the_multi_crop_options_through_kwargs():
    import inspect

    from biovfm_core.options import factory_options

    base = inspect.signature(MultiCropRecipe).parameters
    for cls in (
        CTRecipe,
        MRRecipe,
        XRayRecipe,
        MicroscopyRecipe,
        UltrasoundRecipe,
        ColourConstancyRecipe,
    ):
        specs = factory_options(cls)
        for name in ("flip", "mean", "std", "jitter_p", "blur_global", "solarize_p"):
            assert specs[name].default == base[name].default, (cls.__name__, name)
        recipe = cls(ViewSpec(global_size=32, local_crops=0), flip=False, solarize_p=0.0)
        assert recipe.flip is False and recipe.solarize_p == 0.0


def test_a_third_party_recipe_mapped_to_one_modality_serves_only_that_one():
    """A mixed fundus + MR run: the outsider's fundus recipe for fundus images only."""
    from biovfm_core import hookimpl
    from biovfm_core.config import RunConfig
    from biovfm_core.data.index import build_index
    from biovfm_core.protocols import SampleRecord, ViewSpec
    from biovfm_core.registry import Registry
    from biovfm_core.train.data import recipe_plan, training_data

    class FundusGreen:
        def __init__(self, views, *, strength: float = 1.0):
            self.views = views

    class Outsider:
        @hookimpl
        def biovfm_register_augmentations(self, register):
            register("fundus_green", FundusGreen)
            register("octa_plus", FundusGreen, modalities=["octa"])

    registry = Registry()
    registry.load_entry_points(builtin_only=True)
    registry.add_plugin(Outsider(), name="outsider")
    records = [
        SampleRecord("/d/a.png", "eyes", "fundus"),
        SampleRecord("/d/b.png", "brains", "mr"),
        SampleRecord("/d/c.png", "brains", "octa"),
    ]
    views = ViewSpec(global_size=32, local_size=16, local_crops=1)
    config = RunConfig()
    # Without a mapping the built-ins keep fundus and mr; octa has no built-in, so the
    # plugin's declaration serves it.
    recipes = training_data(build_index(records), views, config, registry).dataset.recipes
    assert type(recipes["fundus"]).__name__ == "ColourConstancyRecipe"
    assert type(recipes["octa"]) is FundusGreen

    config.apply_opts(["augmentation.by_modality.fundus=fundus_green"])
    recipes = training_data(build_index(records), views, config, registry).dataset.recipes
    assert type(recipes["fundus"]) is FundusGreen
    assert type(recipes["mr"]).__name__ == "MRRecipe"
    assert type(recipes["default"]).__name__ == "MultiCropRecipe"
    plan = recipe_plan(config, registry, ["fundus", "mr"])
    assert plan["fundus"] == ("fundus_green", "augmentation.by_modality")
    assert plan["mr"] == ("mr", "recipe of that name")

    config = RunConfig.from_dict({"options": {"augmentation": {"by_modality": {"fundsu": "x"}}}})
    with pytest.raises(ConfigError, match=r"augmentation.by_modality.fundsu: unknown modality"):
        recipe_plan(config, registry, ["fundus"])
