"""Task properties: each number equals a direct computation with the reference tool."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from biovfm_core.analysis import properties as props
from biovfm_core.errors import ConfigError

# Synthetic stand-ins for the 12 MedMNIST flags: (flag, classes, train size, noise,
# rgb, multi-label) spread so that every property varies across benchmarks.
SPECS = [
    ("alphamnist", 2, 40, 10, False, False),
    ("betamnist", 3, 60, 40, True, False),
    ("gammamnist", 4, 50, 80, False, False),
    ("deltamnist", 5, 70, 20, True, False),
    ("epsilonmnist", 3, 45, 60, False, False),
    ("zetamnist", 6, 80, 30, False, False),
    ("etamnist", 4, 55, 100, True, False),
    ("thetamnist", 5, 65, 50, False, True),
]


def write_medmnist(
    root: Path,
    flag: str,
    classes: int,
    n: int,
    noise: float,
    rgb: bool = False,
    multilabel: bool = False,
    size: int = 28,
    seed: int = 0,
) -> Path:
    """A file in MedMNIST layout: class-dependent brightness plus seeded noise."""
    rng = np.random.default_rng(seed + len(flag))
    arrays = {}
    for split, count in (("train", n), ("val", max(4, n // 4)), ("test", max(4, n // 4))):
        y = np.arange(count) % classes
        base = 40 + 150 * y / max(1, classes - 1)
        shape = (count, size, size, 3) if rgb else (count, size, size)
        pix = base.reshape(-1, *([1] * (len(shape) - 1))) + rng.normal(0, noise, shape)
        arrays[f"{split}_images"] = np.clip(pix, 0, 255).astype(np.uint8)
        if multilabel:
            labels = np.zeros((count, classes), dtype=np.int64)
            labels[np.arange(count), y] = 1
            labels[::3] = 0  # some rows with no finding
            arrays[f"{split}_labels"] = labels
        else:
            arrays[f"{split}_labels"] = y.reshape(-1, 1).astype(np.int64)
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    path = root / name
    np.savez_compressed(path, **arrays)
    return path


def medmnist_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        write_medmnist(root, *spec)
    return root


def real_tiles(n: int = 12, side: int = 28) -> np.ndarray:
    """Tiles of a real photograph (scikit-image's camera man), not synthetic noise."""
    from skimage import data

    camera = data.camera()
    tiles = [
        camera[r : r + side, c : c + side]
        for r in range(0, 512 - side, 97)
        for c in range(0, 512 - side, 131)
    ]
    return np.stack(tiles[:n])


def test_compressibility_is_the_median_gzip_ratio_of_real_images():
    tiles = real_tiles()
    direct = np.median([t.nbytes / len(gzip.compress(t.tobytes())) for t in tiles])
    gz, png, used = props.compressibility(tiles, max_images=0)
    assert gz == pytest.approx(direct, rel=1e-12)
    assert png is None and used == len(tiles)


def test_png_ratio_of_noise_is_raw_bytes_over_a_hand_counted_png():
    """Random bytes do not compress: zlib stores them, so the PNG's size is counted by
    hand: signature 8 + IHDR 25 + IDAT (12 + zlib: 2 header, 5 stored-block header,
    64 rows x (1 filter byte + 64 pixels), 4 checksum) + IEND 12 = 4228 bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert props.png_ratio(noise) == pytest.approx(4096 / (8 + 25 + 12 + 2 + 5 + 64 * 65 + 4 + 12))
    flat = np.zeros((64, 64), np.uint8)  # one repeated byte: deflate's best case
    assert props.png_ratio(flat) > 40
    _, png, _ = props.compressibility(np.stack([noise, noise, flat]), max_images=0, png=True)
    assert png == pytest.approx(4096 / 4228)  # the median of the three


def test_subsample_is_seeded():
    tiles = real_tiles(12)
    a = props.compressibility(tiles, max_images=5, seed=3)
    b = props.compressibility(tiles, max_images=5, seed=3)
    assert a == b and a[2] == 5


def test_dbi_on_features_equals_scikit_learn():
    from sklearn.metrics import davies_bouldin_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6))
    y = np.arange(90) % 3
    x[:, 0] += 3 * y
    dbi, used = props.davies_bouldin(x, y, max_samples=0)
    assert dbi == pytest.approx(davies_bouldin_score(x, y), rel=1e-12)
    assert used == 90


def test_dbi_on_raw_pixels_equals_scikit_learn(tmp_path):
    from sklearn.metrics import davies_bouldin_score

    path = write_medmnist(tmp_path, "alphamnist", 3, 30, 25.0)
    with np.load(path) as npz:
        images, labels = npz["train_images"], npz["train_labels"][:, 0]
    expected = davies_bouldin_score(images.reshape(30, -1).astype(np.float64) / 255.0, labels)
    dbi, _ = props.davies_bouldin(images, labels, max_samples=0, pixel_side=28)
    assert dbi == pytest.approx(expected, rel=1e-6)


def test_downsample_block_averages():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    out = props.downsample(img, 2)
    expected = np.array([[[2.5, 4.5], [10.5, 12.5]]]) / 255.0
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_multilabel_rows_map_to_first_finding_or_none():
    labels = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 0]])
    assert props.single_labels(labels).tolist() == [0, 2, 1]
    assert props.single_labels(np.array([[2], [0]])).tolist() == [2, 0]


def test_benchmark_properties_from_a_medmnist_file_and_cache(tmp_path, monkeypatch):
    path = write_medmnist(tmp_path, "betamnist", 3, 60, 40.0, rgb=True)
    cache = tmp_path / "cache"
    p = props.benchmark_properties(path, cache_dir=cache, max_images=0, png=True)
    with np.load(path) as npz:
        train = npz["train_images"]
    direct = np.median([len(im.tobytes()) / len(gzip.compress(im.tobytes())) for im in train])
    assert (p.benchmark, p.n_classes, p.n_train, p.image_size) == ("betamnist", 3, 60, 28)
    assert p.compressibility == pytest.approx(direct)
    assert p.compressibility_png is not None and p.dbi > 0 and p.dbi_space == "pixels"
    assert len(list(cache.glob("*.json"))) == 1

    def boom(_path):
        raise AssertionError("cache not used")

    monkeypatch.setattr(props, "_read_medmnist_train", boom)
    again = props.benchmark_properties(path, cache_dir=cache, max_images=0, png=True)
    assert again == p
    with pytest.raises(AssertionError, match="cache not used"):
        props.benchmark_properties(path, cache_dir=cache, max_images=0, png=True, seed=1)


def test_multilabel_file_counts_labels_as_classes(tmp_path):
    path = write_medmnist(tmp_path, "thetamnist", 5, 40, 30.0, multilabel=True)
    p = props.benchmark_properties(path, use_cache=False)
    assert p.n_classes == 5 and p.n_train == 40


def test_dbi_from_a_feature_file(tmp_path):
    from sklearn.metrics import davies_bouldin_score

    path = write_medmnist(tmp_path, "alphamnist", 2, 40, 10.0)
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 8))
    labels = np.arange(40) % 2
    np.savez(tmp_path / "f.npz", features=feats, labels=labels)
    p = props.benchmark_properties(
        path, features=tmp_path / "f.npz", use_cache=False, dbi_samples=0
    )
    assert p.dbi_space == "features"
    assert p.dbi == pytest.approx(davies_bouldin_score(feats, labels))
    # A bare .npy (eval's feature cache) takes the benchmark's own train labels.
    np.save(tmp_path / "f.npy", feats)
    q = props.benchmark_properties(
        path, features=tmp_path / "f.npy", use_cache=False, dbi_samples=0
    )
    assert q.dbi == pytest.approx(davies_bouldin_score(feats, labels))


def test_bad_feature_file_names_the_missing_key(tmp_path):
    np.savez(tmp_path / "f.npz", feats=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match=r"lacks key.*features.*labels"):
        props.load_features(tmp_path / "f.npz")


def test_find_medmnist_by_size_and_properties_csv_roundtrip(tmp_path):
    write_medmnist(tmp_path, "alphamnist", 2, 20, 10.0)
    write_medmnist(tmp_path, "alphamnist", 2, 20, 10.0, size=64)
    assert [p.name for p in props.find_medmnist(tmp_path, 28)] == ["alphamnist.npz"]
    assert [p.name for p in props.find_medmnist(tmp_path, 64)] == ["alphamnist_64.npz"]
    with pytest.raises(ConfigError, match="no MedMNIST files of size 128"):
        props.find_medmnist(tmp_path, 128)
    rows = [props.benchmark_properties(tmp_path / "alphamnist.npz", use_cache=False)]
    props.write_properties(tmp_path / "p.csv", rows)
    assert props.read_properties(tmp_path / "p.csv") == rows


def test_properties_csv_without_a_property_is_a_clear_error(tmp_path):
    (tmp_path / "p.csv").write_text("benchmark,n_classes,n_train\npathmnist,9,89996\n")
    with pytest.raises(ConfigError, match=r"lacks column.*compressibility.*dbi"):
        props.read_properties(tmp_path / "p.csv")
