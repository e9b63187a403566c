"""Linear probe, kNN, fine-tuning, feature cache and benchmark checks on real arrays
and tiny real backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biovfm_core.errors import ConfigError
from biovfm_core.eval import protocols as P
from biovfm_core.eval.data import load_benchmark, preprocess
from biovfm_core.eval.features import FeatureCache, split_features
from biovfm_core.eval.metrics import compute_metrics
from biovfm_core.eval.synthetic import write_medmnist_npz
from biovfm_core.models.specs import load_model
from biovfm_core.registry import get_registry


def _blobs(n, c, dim=16, sep=4.0, seed=0):
    centres = np.random.default_rng(123).normal(size=(c, dim)) * sep
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_linear_probe_on_separable_features_is_near_perfect():
    feats, labels = {}, {}
    for i, split in enumerate(("train", "val", "test")):
        feats[split], labels[split] = _blobs(300 if split == "train" else 120, 5, seed=i)
        feats[split] += 100.0  # an offset the affine-free BatchNorm removes
    out = P.linear_probe(feats, labels, "multi-class", 5, epochs=30, seed=0)
    m = compute_metrics("multi-class", labels["test"], out.test_scores)
    assert m["acc"] >= 0.97 and m["auc"] >= 0.99
    # The kept epoch is the one with the lowest validation loss.
    assert out.info["best_val_loss"] == min(out.info["val_losses"])


def test_linear_probe_multilabel_learns_each_label():
    rng = np.random.default_rng(0)
    feats, labels = {}, {}
    for split in ("train", "val", "test"):
        y = (rng.random((200, 3)) < 0.5).astype(np.int64)
        feats[split] = (y * 3.0 + rng.normal(size=(200, 3))).astype(np.float32)
        labels[split] = y
    out = P.linear_probe(feats, labels, "multi-label", 3, epochs=100)
    assert out.test_scores.shape == (200, 3)
    assert compute_metrics("multi-label", labels["test"], out.test_scores)["auc"] > 0.95


def test_knn_equals_a_hand_computation():
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    y = np.array([0, 1, 1, 2])
    query = np.array([[2.0, 0.0]], np.float32)  # cosine: 1.0, 0.8, 0.0, -1.0
    got = P.knn_scores(train, y, query, "multi-class", 3, k=3, temperature=0.5)
    w = np.exp(np.array([1.0, 0.8, 0.0]) / 0.5)
    want = np.array([w[0], w[1] + w[2], 0.0]) / w.sum()
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    # Binary tasks score the positive class; multi-label tasks vote per label.
    got = P.knn_scores(train, np.array([0, 1, 1, 0]), query, "binary", 2, k=2, temperature=0.5)
    np.testing.assert_allclose(got, [w[1] / (w[0] + w[1])], rtol=1e-6)
    multi = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    got = P.knn_scores(train, multi, query, "multi-label", 2, k=2, temperature=0.5)
    np.testing.assert_allclose(got[0], [1.0, w[1] / (w[0] + w[1])], rtol=1e-6)


def test_layer_ids_follow_the_blocks():
    vit = get_registry().build("backbones", "vit_tiny", options={"image_size": 32})
    ids, last = P.layer_ids(vit)
    assert last == 13
    assert ids["encoder.vit.patch_embed.proj.weight"] == 0
    assert ids["encoder.vit.cls_token"] == 0
    assert ids["encoder.vit.blocks.0.attn.qkv.weight"] == 1
    assert ids["encoder.vit.blocks.11.mlp.fc2.bias"] == 12
    assert ids["encoder.vit.norm.weight"] == 13


class CountingBackbone(torch.nn.Module):
    """Wraps a real backbone and counts forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.embed_dim, self.image_size = inner.embed_dim, inner.image_size

    def forward_tokens(self, x, **kw):
        self.calls += 1
        return self.inner.forward_tokens(x, **kw)


def test_feature_cache_hit_skips_the_backbone(tmp_path):
    path = write_medmnist_npz(tmp_path / "toy.npz", sizes=(20, 10, 10))
    bench = load_benchmark("medmnist", str(path), get_registry())
    model = load_model("random:vit_tiny", get_registry(), options={"image_size": 32})
    counting = CountingBackbone(model.backbone)
    cache = FeatureCache(tmp_path / "cache")
    kw = {"size": 32, "batch_size": 16}
    first = split_features(model.identity, counting, bench, "mean", cache, **kw)
    assert counting.calls == 4  # train 20 = 2 batches, val 1, test 1
    again = split_features(
        model.identity, counting, bench, "mean", FeatureCache(tmp_path / "cache"), **kw
    )
    cls = split_features(model.identity, counting, bench, "cls", cache, **kw)
    both = split_features(model.identity, counting, bench, "both", cache, **kw)
    assert counting.calls == 4  # every later kind came from the cache
    np.testing.assert_array_equal(first["test"], again["test"])
    np.testing.assert_array_equal(both["val"], np.concatenate([cls["val"], first["val"]], 1))
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
    # Another model (identity) misses the cache.
    split_features("other", counting, bench, "mean", cache, **kw)
    assert counting.calls == 8


def test_preprocess_gray_to_three_channels_resized_and_normalised():
    gray = np.array([[[0, 255], [255, 0]]], np.uint8)
    x = preprocess(gray, 4, "cpu")
    assert x.shape == (1, 3, 4, 4)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


def test_finetune_trains_backbone_and_head_with_layer_decay(tmp_path):
    path = write_medmnist_npz(tmp_path / "toy.npz", sizes=(48, 24, 24), signal=0.3)
    bench = load_benchmark("medmnist", str(path), get_registry())
    model = load_model("random:vit_tiny", get_registry(), options={"image_size": 32})
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    out = P.finetune(model.backbone, bench, size=32, epochs=3, lr=1e-3, batch_size=16)
    assert out.test_scores.shape == (24, 3)
    assert compute_metrics("multi-class", bench.splits["test"][1], out.test_scores)["auc"] > 0.8
    # The caller's frozen backbone is untouched: fine-tuning works on a copy.
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("val_labels"), "missing key 'val_labels'"),
        (lambda a: a.update(test_images=a["test_images"][:, :, :20]), "key 'test_images' has shape"),
        (lambda a: a.update(train_images=a["train_images"].astype(np.float32)), "key 'train_images' has dtype float32"),
        (lambda a: a.update(val_labels=a["val_labels"].astype(np.float32)), "key 'val_labels' has dtype float32"),
        (lambda a: a["test_labels"].__setitem__((0, 0), 9), "key 'test_labels' holds label 9 out of range [0, 1]"),
        (lambda a: a.update(train_labels=a["train_labels"][:5]), "key 'train_images' has 20 images but train_labels has 5"),
    ],
)  # fmt: skip
def test_bad_npz_errors_name_the_file_and_key(tmp_path, mutate, message):
    good = write_medmnist_npz(tmp_path / "breastmnist.npz", num_classes=2, sizes=(20, 10, 10))
    arrays = dict(np.load(good))
    mutate(arrays)
    bad = tmp_path / "bad" / "breastmnist.npz"
    bad.parent.mkdir()
    np.savez(bad, **arrays)
    with pytest.raises(ConfigError) as err:
        load_benchmark("medmnist", str(bad), get_registry())
    assert str(bad) in str(err.value) and message in str(err.value)


def test_known_flags_keep_their_task_and_unknown_ones_are_inferred(tmp_path):
    reg = get_registry()
    chest = load_benchmark("medmnist", str(write_medmnist_npz(tmp_path / "chestmnist.npz", num_classes=14, multilabel=True, sizes=(20, 10, 10))), reg)  # fmt: skip
    assert (chest.task, chest.num_classes, chest.name) == ("multi-label", 14, "chestmnist")
    retina = load_benchmark("medmnist", str(write_medmnist_npz(tmp_path / "retinamnist_64.npz", num_classes=5, side=64, rgb=True, sizes=(20, 10, 10))), reg)  # fmt: skip
    assert (retina.task, retina.scoring, retina.size) == ("ordinal", "multi-class", 64)
    toy = load_benchmark("medmnist", str(write_medmnist_npz(tmp_path / "toy.npz", num_classes=2, sizes=(20, 10, 10))), reg)  # fmt: skip
    assert (toy.task, toy.num_classes) == ("binary", 2)


def test_timm_pretrained_offline_fails_clearly_and_random_init_works(monkeypatch):
    import huggingface_hub.constants

    # As on a machine without network, minus the minute of download retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"backbone\.pretrained=false"):
        load_model("timm:vit_tiny_patch16_224", get_registry(), options={"image_size": "32"})
    model = load_model(
        "timm:vit_tiny_patch16_224",
        get_registry(),
        options={"pretrained": "false", "image_size": "32"},
    )
    assert model.objective == "random" and model.params_m > 5


def test_probe_augment_is_the_studys_rotation_and_padded_crop():
    import math

    from biovfm_core.eval.data import probe_augment

    x = torch.rand(6, 3, 28, 28)
    a = probe_augment(x, torch.Generator().manual_seed(1))
    b = probe_augment(x, torch.Generator().manual_seed(1))
    c = probe_augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    # No rotation and no shift is the identity.
    assert torch.allclose(probe_augment(x, torch.Generator(), degrees=0.0, padding=0), x, atol=1e-5)
    # A pure integer shift moves pixels by that many and fills with 0, like a padded crop.
    shifted = probe_augment(x, torch.Generator().manual_seed(0), degrees=0.0, padding=4)
    zero_cols = (shifted.abs().sum(dim=(1, 2)) < 1e-6).sum(dim=1)  # per image
    zero_rows = (shifted.abs().sum(dim=(1, 3)) < 1e-6).sum(dim=1)
    assert int((zero_cols + zero_rows).max()) <= 8 and math.isfinite(float(shifted.sum()))


def test_linear_probe_reextracts_train_features_every_epoch():
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 2, n) for s, n in (("train", 40), ("val", 10), ("test", 10))}
    feats = {
        s: rng.normal(size=(len(y), 8)).astype(np.float32) + y[:, None] for s, y in labels.items()
    }
    calls = []

    def per_epoch(epoch):
        calls.append(epoch)
        return feats["train"] + rng.normal(scale=0.01, size=feats["train"].shape).astype(np.float32)

    P.linear_probe(feats, labels, "binary", 2, epochs=4, train_features=per_epoch)
    assert calls == [0, 1, 2, 3]
