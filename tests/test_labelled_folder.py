"""A labelled image folder (PATH/{train,val,test}/<class>/) as a benchmark: the arrays
it builds, its cache, its errors, `biovfm eval --benchmark folder:PATH` and the
in-training monitor `train.monitor=folder:PATH:N`."""

from __future__ import annotations

import csv
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from biovfm_readers import labelled_folder as LF
from biovfm_readers.folder import FolderReader
from click.testing import CliRunner
from PIL import Image
from tiny_runs import tiny_dinov2

from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError
from biovfm_core.eval.data import load_benchmark
from biovfm_core.eval.monitor import build_monitor
from biovfm_core.protocols import SourceTags
from biovfm_core.registry import get_registry
from biovfm_core.train.loop import train

CLASSES = ("benign", "malignant", "normal")
COUNTS = {"train": 4, "val": 2, "test": 2}  # images per class and split


def _png(path: Path, size: tuple[int, int], rgb: bool, value: int, bits16: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    base = np.full((h, w), value, np.float32) + rng.normal(0, 8, (h, w))
    if bits16:
        Image.fromarray(np.clip(base * 16, 0, 4095).astype(np.uint16)).save(path)
    elif rgb:
        arr = np.clip(np.stack([base, base * 0.8, base * 0.6], -1), 0, 255).astype(np.uint8)
        Image.fromarray(arr, "RGB").save(path)
    else:
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "L").save(path)


def make_folder(root: Path, rgb: bool = True, classes=CLASSES, counts=COUNTS) -> Path:
    """Images of different sizes; the class sets its brightness, one image is RGB."""
    for split, n in counts.items():
        for c, name in enumerate(classes):
            for i in range(n):
                size = (20 + 4 * i, 28 + 2 * c)  # mixed sizes and aspect ratios
                color = rgb and split == "train" and c == 1 and i == 0
                _png(root / split / name / f"{i}.png", size, color, 40 + 80 * c)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "cache"
    monkeypatch.setenv("BIOVFM_CACHE", str(where))
    return where / "folder"


def reader(path: Path, **options) -> FolderReader:
    return get_registry().build(
        "datasets", "folder", str(path), SourceTags("x", "auto"), options=options
    )


def test_split_arrays_are_medmnist_shaped_with_sorted_class_ids(tmp_path, cache):
    root = make_folder(tmp_path / "lesions")
    r = reader(root)
    assert r.benchmark_name == "lesions"
    for split, n in COUNTS.items():
        images, labels = r.split_arrays(split)
        # Median short side of the images is 24 (20, 24, 28 high; 28-32 wide); one RGB
        # image makes every image RGB.
        assert images.shape == (3 * n, 24, 24, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.tolist() == sorted([0, 1, 2] * n)
        # Class c is brightness 40 + 80c: labels follow sorted class names.
        means = [images[labels == c].mean() for c in range(3)]
        assert means == sorted(means) and means[0] < 70 < means[1] < 150 < means[2]
    with np.load(r.benchmark_file) as npz:
        assert npz["classes"].tolist() == list(CLASSES)
        assert npz["train_labels"].shape == (12, 1)
    assert Path(r.benchmark_file).parent == cache


def test_load_benchmark_passes_reader_options_and_names_the_built_file(tmp_path, cache):
    root = make_folder(tmp_path / "lesions")
    bench = load_benchmark("folder", f"{root}?benchmark_side=16", get_registry())
    assert (bench.name, bench.task, bench.num_classes, bench.size) == (
        "lesions", "multi-class", 3, 16)  # fmt: skip
    assert Path(bench.location).parent == cache and bench.location in bench.fingerprint
    assert bench.splits["test"][0].shape == (6, 16, 16, 3)


def test_gray_folder_stays_gray_and_16_bit_is_windowed_to_uint8(tmp_path, cache):
    root = make_folder(tmp_path / "gray", rgb=False, classes=("a", "b"), counts={
        "train": 2, "val": 1, "test": 1})  # fmt: skip
    _png(root / "train" / "a" / "deep.png", (16, 16), False, 100, bits16=True)  # not resized
    r = reader(root, benchmark_side=16)
    images, labels = r.split_arrays("train")
    assert images.shape == (5, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1]
    deep = images[2]  # deep.png sorts after 0.png and 1.png in class a
    assert deep.min() < 10 and deep.max() > 245  # the 12-bit range spread over 0-255


def test_the_built_file_is_reused_and_rebuilt_when_the_folder_changes(tmp_path, cache):
    root = make_folder(tmp_path / "data", rgb=False)
    first = Path(reader(root).benchmark_file)
    stamp = first.stat().st_mtime_ns
    again = Path(reader(root).benchmark_file)
    assert again == first and again.stat().st_mtime_ns == stamp  # not rebuilt
    # An edited image (new size and time) is a new listing: a new file, the old removed.
    img = root / "test" / "normal" / "0.png"
    _png(img, (40, 40), False, 0)
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    rebuilt = Path(reader(root).benchmark_file)
    assert rebuilt != first and not first.exists()
    assert sorted(p.name for p in cache.iterdir()) == [rebuilt.name]  # no temp files left
    images, labels = reader(root).split_arrays("test")
    assert images[labels == 2][0].mean() < 20  # the edited image, now dark


def test_missing_split_and_unknown_class_are_errors_naming_the_folder(tmp_path, cache):
    plain = tmp_path / "plain"
    make_folder(plain, counts={"train": 1, "test": 1})  # no val/
    r = reader(plain)  # pretraining use: built and scanned as before
    assert sum(1 for _ in r.scan()) == 6
    with pytest.raises(ConfigError, match=r"plain/val is missing; a labelled folder needs"):
        r.split_arrays("train")
    root = make_folder(tmp_path / "d", rgb=False, counts={"train": 1, "val": 1, "test": 1})
    _png(root / "test" / "cyst" / "0.png", (20, 20), False, 10)
    with pytest.raises(ConfigError, match=r"d/test/cyst: class 'cyst' has no folder in"):
        reader(root).split_arrays("test")
    (root / "test" / "cyst" / "0.png").unlink()
    (root / "test" / "cyst").rmdir()
    (root / "val" / "normal" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"val/normal/0\.png: cannot read image: .*remove or fix"):
        reader(root).split_arrays("val")
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-built


def test_eval_on_a_folder_writes_a_results_table(tmp_path, cache):
    root = make_folder(tmp_path / "lesions")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "eval", "random:vit_tiny", "--opt", "backbone.image_size=32", "--image-size", "32",
        "--benchmark", f"folder:{root}", "--protocol", "knn", "--bootstrap", "50",
        "--output", str(out), "--cache", "none",
    ], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["benchmark"] for r in rows} == {"lesions"}
    assert "| random:vit_tiny |" in (out / "results.md").read_text()


def test_a_folder_monitors_a_two_step_run(tmp_path, cache):
    root = make_folder(tmp_path / "lesions")
    config = tiny_dinov2(
        tmp_path / "runs",
        "mon",
        **{
            "data.sources": [f"folder:{root / 'train'}"],
            "train.max_steps": 2,
            "train.monitor": f"folder:{root}:4",
            "train.monitor_every": 2,
        },
    )
    monitor = build_monitor(config, get_registry(), torch.device("cpu"), 32)
    assert [len(y) for y in monitor.labels.values()] == [4, 4, 4]
    assert monitor.bench.name == "lesions" and monitor.bench.num_classes == 3
    run = train(config, get_registry(), progress=False, monitor_factory=build_monitor)
    with open(run.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [bool(r["monitor/knn_auc"]) for r in rows] == [False, True]
    assert 0.0 <= float(rows[-1]["monitor/knn_auc"]) <= 1.0


def test_cache_root_follows_biovfm_cache(cache):
    assert LF.cache_root() == cache
