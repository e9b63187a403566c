"""Light views: shipped by the workers unnormalised, finished on the device, bitwise
the views the recipes make in their workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from biovfm_augment.recipes import (
    ColourConstancyRecipe,
    CTRecipe,
    MicroscopyRecipe,
    MRRecipe,
    MultiCropRecipe,
    UltrasoundRecipe,
    XRayRecipe,
)

from biovfm_core.data.dataset import ImageDataset, collate
from biovfm_core.data.index import build_index
from biovfm_core.protocols import Batch, SampleRecord, ViewSpec

VIEWS = ViewSpec(global_crops=2, global_size=16, local_crops=2, local_size=8)
RNG = np.random.default_rng(5)
GRAY8 = RNG.integers(0, 256, (30, 34)).astype(np.uint8)
GRAY16 = RNG.integers(0, 4096, (30, 34)).astype(np.uint16)
HU = RNG.uniform(-1024, 2000, (30, 30)).astype(np.float32)
RGB = RNG.integers(0, 256, (30, 34, 3)).astype(np.uint8)

CASES = [
    (MultiCropRecipe, [GRAY8, GRAY16, RGB]),
    (CTRecipe, [HU, GRAY8]),
    (MRRecipe, [GRAY16, HU]),
    (XRayRecipe, [GRAY16, GRAY8]),
    (MicroscopyRecipe, [RGB, GRAY8]),
    (UltrasoundRecipe, [GRAY8, RGB]),
    (ColourConstancyRecipe, [RGB, GRAY8]),
]


def _samples(recipe, images, light: bool) -> list[dict]:
    record = SampleRecord("/x.png", "s", "other")
    return [
        {
            "views": recipe.sample_views(im, record, np.random.default_rng([k, 7]), light=light)
            if light
            else recipe.sample_views(im, record, np.random.default_rng([k, 7])),
            "label": None,
            "modality": "other",
        }
        for k, im in enumerate(images)
    ]


def _assert_bitwise(got: Batch, want: Batch) -> None:
    assert got.norm is None and want.norm is None
    got_views, want_views = got.global_views + got.local_views, want.global_views + want.local_views
    assert len(got_views) == len(want_views)
    for a, b in zip(got_views, want_views, strict=True):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit


@pytest.mark.parametrize(("cls", "images"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_finished_light_views_are_bitwise_todays_views(cls, images):
    recipe = cls(VIEWS, mean=(0.3, 0.5, 0.7), std=(0.2, 0.25, 0.3))
    want = collate(_samples(recipe, images, light=False))
    light = collate(_samples(recipe, images, light=True))
    f32 = lambda xs: tuple(float(np.float32(x)) for x in xs)  # noqa: E731
    assert light.norm == (f32((0.3, 0.5, 0.7)), f32((0.2, 0.25, 0.3)))
    _assert_bitwise(light.finish(), want)


def test_gray_images_ship_one_channel_a_third_of_the_bytes():
    recipe = MultiCropRecipe(VIEWS)
    light = collate(_samples(recipe, [GRAY8, GRAY16], light=True))
    full = collate(_samples(recipe, [GRAY8, GRAY16], light=False))
    assert [v.shape[1] for v in light.global_views + light.local_views] == [1] * 4
    size = sum(v.numel() * v.element_size() for v in light.global_views + light.local_views)
    full_size = sum(v.numel() * v.element_size() for v in full.global_views + full.local_views)
    assert size * 3 == full_size
    # pin_memory / to keep the batch light until finish.
    assert light.to("cpu").norm == light.norm and light.finish().finish().norm is None


def test_mixed_batches_are_finished_where_they_must_be():
    plain, other = MultiCropRecipe(VIEWS), MultiCropRecipe(VIEWS, mean=(0.5,) * 3, std=(0.5,) * 3)
    want = collate(_samples(plain, [GRAY8, RGB], light=False))
    # Gray with colour: still light, the gray views repeated to 3 channels in collate.
    light = collate(_samples(plain, [GRAY8, RGB], light=True))
    assert light.norm is not None and light.global_views[0].shape[1] == 3
    _assert_bitwise(light.finish(), want)
    # A finished sample, or another normalisation, in the batch: finished in the worker.
    mixed = _samples(plain, [GRAY8], light=True) + _samples(plain, [RGB], light=False)[1:]
    mixed += _samples(plain, [GRAY8, RGB], light=False)[1:]
    _assert_bitwise(collate(mixed), want)
    two = _samples(plain, [GRAY8], light=True) + _samples(other, [GRAY8, RGB], light=True)[1:]
    expect = _samples(plain, [GRAY8], light=False) + _samples(other, [GRAY8, RGB], light=False)[1:]
    _assert_bitwise(collate(two), collate(expect))


def test_the_dataset_ships_light_views_only_when_asked(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), GRAY8)
    index = build_index([SampleRecord(str(tmp_path / "a.png"), "s", "other")])
    readers = {"s": type("R", (), {"load": staticmethod(lambda r: GRAY8)})()}
    recipe = MultiCropRecipe(VIEWS)
    light = ImageDataset(index, recipe, lambda i, s: readers[s], light_views=True)[(0, 3)]
    full = ImageDataset(index, recipe, lambda i, s: readers[s])[(0, 3)]
    assert "norm" in light["views"] and "norm" not in full["views"]
    _assert_bitwise(collate([light]).finish(), collate([full]))
