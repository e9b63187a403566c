"""The offline demo benchmark (`--benchmark demo`): MedMNIST layout, seeded splits that
share no pixels (patches) or no slice (planes), documented class counts, a hard task
that raw pixels cannot solve, brain slices shown the right way up, and `biovfm eval`
on it end to end."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from biovfm_readers import demo_benchmark as D
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError
from biovfm_core.eval.data import DEMO_TASKS, expand_benchmarks, load_benchmark
from biovfm_core.registry import get_registry

# The documented sizes (module docstring and docs/evaluation.md): per class 60 / 20 / 40.
DOCUMENTED = {
    "modality": {"classes": 6, "train": 360, "val": 120, "test": 240},
    "texture": {"classes": 4, "train": 240, "val": 80, "test": 160},
    "plane": {"classes": 3, "train": 180, "val": 60, "test": 120},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("biovfm-cache")


@pytest.fixture(scope="module")
def built(cache):
    """Each task's file, built once for the module under the test's own cache."""
    return {task: D.benchmark_file(task, 64, cache / "demo") for task in D.TASKS}


def arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_core_names_the_plugins_tasks():
    assert set(DEMO_TASKS) == set(D.TASKS) == set(DOCUMENTED)


@pytest.mark.parametrize("task", sorted(DOCUMENTED))
def test_files_have_the_medmnist_layout_and_the_documented_class_counts(built, task):
    a = arrays(built[task])
    assert sorted(a) == sorted(f"{s}_{k}" for s in D.SPLITS for k in ("images", "labels"))
    doc = DOCUMENTED[task]
    for split in D.SPLITS:
        images, labels = a[f"{split}_images"], a[f"{split}_labels"]
        assert images.dtype == np.uint8 and images.shape == (doc[split], 64, 64)
        assert np.issubdtype(labels.dtype, np.integer) and labels.shape == (doc[split], 1)
        counts = np.bincount(labels[:, 0], minlength=doc["classes"])
        assert counts.tolist() == [doc[split] // doc["classes"]] * doc["classes"]
        # Real images, not blanks: every image has structure.
        assert (images.reshape(len(images), -1).std(axis=1) > 2).all()


def test_a_build_is_deterministic_and_the_cached_file_is_reused(built, cache, monkeypatch):
    first = arrays(built["texture"])
    again = D.build_arrays("texture", 64)
    for key, value in first.items():
        np.testing.assert_array_equal(value, again[key])
    mtime = built["texture"].stat().st_mtime_ns
    assert D.benchmark_file("texture", 64, cache / "demo") == built["texture"]
    assert built["texture"].stat().st_mtime_ns == mtime
    assert [p.name for p in (cache / "demo").iterdir() if p.name.startswith(".")] == []
    # Another build of the module (a changed task) never reads this file.
    monkeypatch.setattr(D, "build_version", lambda: "other")
    assert D.benchmark_file("texture", 64, cache / "demo") != built["texture"]


def _overlaps(a, b) -> bool:
    (ka, ya, xa, sa), (kb, yb, xb, sb) = a, b
    return ka == kb and ya < yb + sb and yb < ya + sa and xa < xb + sb and xb < xa + sa


@pytest.mark.parametrize("task", sorted(D.TASKS))
def test_splits_are_cut_from_disjoint_regions(task):
    spec = D.TASKS[task]
    for sources in spec.sources.values():
        for source in sources:
            planes = source.load()
            rng = np.random.default_rng([0, D._stable(source.name)])
            boxes = D._regions(source, planes, spec.min_foreground, rng).boxes
            assert all(boxes[s] for s in D.SPLITS), (source.name, {s: len(boxes[s]) for s in boxes})
            for s, t in (("train", "val"), ("train", "test"), ("val", "test")):
                if source.volume:  # whole slices: the slab split shares no slice
                    assert not {b[0] for b in boxes[s]} & {b[0] for b in boxes[t]}
                else:
                    assert not any(_overlaps(a, b) for a in boxes[s] for b in boxes[t])


def _raw_pixel_logreg(a):
    # Pixels averaged 4 x 4 (16 x 16 inputs) keep the fit well under a second; the
    # full 64 x 64 fit gives the same picture (docs/evaluation.md: texture 0.24, modality 0.49).
    flat = {
        s: a[f"{s}_images"].reshape(-1, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(-1, 256) / 255.0
        for s in D.SPLITS
    }
    y = {s: a[f"{s}_labels"][:, 0] for s in D.SPLITS}
    scale = StandardScaler().fit(flat["train"])
    model = LogisticRegression(C=0.01, max_iter=2000).fit(
        scale.transform(flat["train"]), y["train"]
    )
    proba = model.predict_proba(scale.transform(flat["test"]))
    acc = accuracy_score(y["test"], proba.argmax(1))
    return acc, roc_auc_score(y["test"], proba, multi_class="ovr")


def test_raw_pixels_solve_modality_and_plane_but_not_texture(built):
    # Texture: brightness, contrast, position and orientation are removed, so a linear
    # model of pixels sits at chance (4 classes: acc 0.25, AUC 0.5; measured 0.31 / 0.55
    # with 160 test images, whose binomial sd at chance is 0.034).
    acc, auc = _raw_pixel_logreg(arrays(built["texture"]))
    assert 0.15 <= acc <= 0.38 and 0.40 <= auc <= 0.62, (acc, auc)
    # Modality keeps them: the same model is well above chance (6 classes: 0.17; measured
    # 0.35 / 0.72, sd at chance 0.024 with 240 test images).
    acc, auc = _raw_pixel_logreg(arrays(built["modality"]))
    assert acc >= 0.28 and auc >= 0.65, (acc, auc)
    # Plane: a slice's outline tells its plane (3 classes: 0.33; measured 0.71 / 0.84).
    acc, auc = _raw_pixel_logreg(arrays(built["plane"]))
    assert acc >= 0.55 and auc >= 0.75, (acc, auc)


def test_benchmark_specs_expand_and_load_through_the_reader(built, cache):
    assert expand_benchmarks(["demo"], None, 28) == [
        ("demo_benchmark", "modality"),
        ("demo_benchmark", "texture"),
        ("demo_benchmark", "plane"),
    ]
    assert expand_benchmarks(["demo:texture"], None, 28) == [("demo_benchmark", "texture")]
    bench = load_benchmark("demo_benchmark", "texture", _registry_with_root(cache))
    assert bench.name == "demo_texture" and bench.location == str(built["texture"])
    assert (bench.task, bench.num_classes, bench.size) == ("multi-class", 4, 64)
    images, labels = bench.splits["test"]
    assert images.shape == (160, 64, 64) and labels.shape == (160,)
    assert labels.dtype == np.int64


def _registry_with_root(cache):
    class WithRoot:
        """The real registry, the reader pointed at the test's cache folder."""

        def build(self, kind, name, *args, options=None):
            return get_registry().build(kind, name, *args, options={"root": str(cache / "demo")})

    return WithRoot()


def test_an_unreadable_source_is_an_error_naming_it(monkeypatch):
    def broken():
        raise OSError("no JPEG 2000 decoder")

    head_ct = D.Source("pydicom:J2K_pixelrep_mismatch.dcm", broken)
    task = D.TASKS["texture"]
    sources = {**task.sources, "head ct": (head_ct,)}
    monkeypatch.setitem(D.TASKS, "texture", D.Task(task.classes, sources, True, 0.9))
    with pytest.raises(ConfigError, match=r"texture: cannot read pydicom:J2K_pixelrep.*decoder"):
        D.build_arrays("texture")


def test_a_missing_pydicom_data_file_is_an_error_naming_it_not_a_download():
    source = D.Source("pydicom-data:NOPE.dcm", D._pydicom_data("NOPE.dcm"))
    with pytest.raises(ConfigError, match=r"modality: cannot read pydicom-data:NOPE\.dcm.*pip"):
        D._load(source, "modality")


def test_unknown_demo_task_is_a_config_error_naming_the_tasks():
    with pytest.raises(
        ConfigError, match=r"demo:level: the demo tasks are modality, texture, plane"
    ):
        expand_benchmarks(["demo:level"], None, 28)
    with pytest.raises(ConfigError, match="unknown demo task"):
        D.DemoBenchmarkReader("level")


@pytest.mark.parametrize("affine_x", [1.0, -1.0])  # RAS and LAS files give the same slices
def test_brain_slices_are_shown_superior_and_anterior_up_and_padded_square(tmp_path, affine_x):
    # A 2 (x) x 3 (y) x 4 (z) volume whose voxel values name their RAS position.
    ras = (np.arange(24, dtype=np.float32) + 1).reshape(2, 3, 4)
    stored = ras if affine_x > 0 else ras[::-1]  # an LAS file stores x reversed
    nib.save(nib.Nifti1Image(stored, np.diag([affine_x, 1.0, 1.0, 1.0])), tmp_path / "v.nii")
    where = lambda: str(tmp_path)  # noqa: E731
    axial = D._brain(where, "v.nii", 2)()  # 4 slices, (y, x) = 3 x 2, padded to 3 x 3
    assert len(axial) == 4
    np.testing.assert_array_equal(axial[1], [[ras[0, 2, 1], ras[1, 2, 1], 1.0],
                                             [ras[0, 1, 1], ras[1, 1, 1], 1.0],
                                             [ras[0, 0, 1], ras[1, 0, 1], 1.0]])  # fmt: skip
    coronal = D._brain(where, "v.nii", 1)()  # 3 slices, (z, x) = 4 x 2, padded to 4 x 4
    assert len(coronal) == 3 and coronal[0].shape == (4, 4)
    np.testing.assert_array_equal(coronal[0][:, 1:3], ras[:, 0, ::-1].T)  # top row: z = 3
    assert (coronal[0][:, [0, 3]] == 1.0).all()  # the padding is the volume's minimum
    sagittal = D._brain(where, "v.nii", 0)()  # 2 slices, (z, y) = 4 x 3
    assert len(sagittal) == 2 and sagittal[1].shape == (4, 4)
    np.testing.assert_array_equal(sagittal[1][:, 0:3], ras[1, :, ::-1].T)


def _eval(cache, tmp_path, monkeypatch, benchmark):
    monkeypatch.setenv("BIOVFM_CACHE", str(cache))
    result = CliRunner().invoke(
        cli,
        ["eval", "random:vit_tiny", "--opt", "backbone.image_size=32",
         "--benchmark", benchmark, "--protocol", "linear", "--protocol", "knn",
         "--epochs", "3", "--bootstrap", "100", "--batch-size", "256",
         "--output", str(tmp_path / "eval"), "--cache", "none"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_random_floor_on_the_hard_task_prints_intervals(built, cache, tmp_path, monkeypatch):
    out = _eval(cache, tmp_path, monkeypatch, "demo:texture")
    lines = [ln for ln in out.splitlines() if ln.startswith("random:vit_tiny | demo_texture |")]
    assert len(lines) == 2, out
    for line in lines:  # "AUC 0.64 [0.58, 0.71]": a point inside its bootstrap interval
        auc, low, high = (float(v) for v in _numbers_after(line, "AUC ")[:3])
        assert 0 <= low <= auc <= high <= 1
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "| random:vit_tiny |" in md and "demo_texture" in md


def _numbers_after(line: str, marker: str) -> list[str]:
    import re

    return re.findall(r"\d+\.\d+", line.split(marker, 1)[1])


@pytest.mark.slow
def test_eval_of_the_whole_demo_benchmark(built, cache, tmp_path, monkeypatch):
    out = _eval(cache, tmp_path, monkeypatch, "demo")
    for task in DEMO_TASKS:
        assert out.count(f"random:vit_tiny | demo_{task} |") == 2, out
