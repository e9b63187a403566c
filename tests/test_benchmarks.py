"""Benchmark scripts run on a tiny setting; their speed is never asserted here."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_runs_and_counts_flops(capsys):
    bench = _load("bench_train_step")
    results = bench.main(["--steps", "1", "--warmup", "1", "--batch-size", "2"])
    assert [(r.objective, r.backbone) for r in results] == [
        ("dinov2", "vit_tiny"),
        ("mae", "vit_tiny"),
    ]
    for r in results:
        assert r.images_s > 0 and r.gflop_step > 0 and r.mfu is None
    # DINOv2 runs 2 global + 4 local crops through student and teacher; MAE one crop
    # with 75% of patches dropped: DINOv2 must cost more per image.
    assert results[0].gflop_step > results[1].gflop_step
    out = capsys.readouterr().out
    assert "| dinov2 | vit_tiny |" in out and "| mae | vit_tiny |" in out


def test_loader_benchmark_runs_and_reports_positive_rates(capsys):
    bench = _load("bench_loader")
    results = bench.main(
        [
            "--images", "6", "--batch-size", "2", "--workers", "1",
            "--global-size", "32", "--local-size", "16", "--local-crops", "2",
            "--steps", "1", "--warmup", "0",
        ]
    )  # fmt: skip
    rows = [(r.recipe, r.stage, r.setting) for r in results]
    assert rows == [
        ("default", "loader", "0 workers"),
        ("default", "loader", "1 workers"),
        ("default", "batch_transform", "cpu"),
        ("ct", "loader", "0 workers"),
        ("ct", "loader", "1 workers"),
        ("ct", "batch_transform", "cpu"),
    ]
    # The first batch is not timed (worker start-up): 2 of the 3 batches are.
    assert [r.images for r in results if r.stage == "loader"] == [4, 4, 4, 4]
    assert all(r.images_s > 0 for r in results)
    assert "| ct | loader | 1 workers | 2 | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["matched", "plain"])
def test_reference_comparison_runs_both_sides(reference):
    bench = _load("bench_vs_reference")
    rows = bench.main(
        ["--rounds", "1", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--size", "48",
         "--local-size", "16", "--local-crops", "1", "--prototypes", "64", "--hidden", "32",
         "--reference", reference]
    )  # fmt: skip
    assert [r["objective"] for r in rows] == ["dinov2", "mae"]
    assert all(r["ours"] > 0 and r["ref"] > 0 and r["ratio"] > 0 for r in rows)


def test_eval_extraction_benchmark_runs_on_the_twelve_shapes(capsys):
    bench = _load("bench_eval")
    results = bench.main(
        ["--backbone", "vit_tiny", "--input-size", "32", "--images", "3", "--batch-size", "2"]
    )
    assert len(results) == 12
    assert [r.channels for r in results][:3] == [3, 1, 3]  # pathmnist RGB, chestmnist gray
    assert all(r.images == 3 and r.images_s > 0 for r in results)
    # Projected wall time scales each rate to the benchmark's real size (MedMNIST v2).
    assert results[0].full_seconds == 107_180 / results[0].images_s
    out = capsys.readouterr().out
    assert "| organsmnist | 1 | 3 |" in out and "| all | | 36 |" in out and "707,962" in out


def test_step_profile_splits_the_step_into_phases(capsys):
    bench = _load("profile_step")
    rows = bench.main(["--batch-size", "2", "--steps", "1", "--warmup", "1", "--top", "3"])
    assert [r.name for r in rows] == list(bench.PHASES)
    by_name = {r.name: r for r in rows}
    # kornia's colour augmentation and the ViT forward are each hundreds of ops;
    # backward is one autograd call from Python.
    assert by_name["augment"].ops > 100 and by_name["forward"].ops > 100
    assert by_name["backward"].ops == 1
    assert all(r.host_ms > 0 and r.device_ms is None for r in rows)
    out = capsys.readouterr().out
    assert "| **step** |" in out
    # The op table has exactly --top rows; which ops fill them depends on the machine's
    # load (the optimizer step enters it on a busy host), so only the shape is checked.
    lines = out.splitlines()
    start = lines.index("| op | calls/step | self host ms/step |")
    assert lines[start + 1] == "|---|---:|---:|"
    op_rows = list(itertools.takewhile(lambda line: line.startswith("| "), lines[start + 2 :]))
    assert len(op_rows) == 3
    for row in op_rows:
        name, calls, ms = (cell.strip() for cell in row.strip("|").split("|"))
        assert name and int(calls) >= 1 and float(ms) >= 0


def test_shard_counts_follow_sizes_ratios_chunks_and_parts():
    bench = _load("bench_shards")
    ratios = {"xray8": bench.Ratio("xray8", "", native=2.0, capped=4.0)}
    sources = [bench.Source("ChestXray-14", 1000, ("xray",))]  # 1024x1024 8-bit, 1 channel
    rows = bench.estimate(ratios, 512, 1_000_000, sources, part_size=4096)
    row, total = rows
    per_image = 1024 * 1024 / 2.0 + bench.ITEM_OVERHEAD_BYTES
    per_image_cap = 512 * 512 / 4.0 + bench.ITEM_OVERHEAD_BYTES
    assert row.raw_gb == 1000 * 1024 * 1024 / 1e9
    assert row.png_gb == 1000 * per_image / 1e9 and row.png_gb_cap == 1000 * per_image_cap / 1e9
    assert (row.chunks, row.chunks_cap) == (525, 66)  # ceil(524.448 MB), ceil(65.696 MB)
    assert total.images == 1000 and total.chunks == 525
    # Each part of 3 images ends its own chunk: 1000 images = 333 parts + 1 image.
    assert bench._chunks(1000, 100.0, 250, part_size=3) == 333 * 2 + 1
    # Every source of the study has an assumed size whose kind has measured images.
    from biovfm_core.data.catalog import load_catalog, shipped_catalog_path

    catalog = load_catalog(shipped_catalog_path("biovfm21m"), check_paths=False)
    names = {s.name for s in catalog.sources}
    assert names == set(bench.SIZES)
    assert {s.kind for s in bench.SIZES.values()} <= set(bench.KIND_SAMPLES)


def test_shard_png_ratio_is_measured_on_real_ct():
    bench = _load("bench_shards")
    ct = bench.measure_ratios(512, kinds=["ct16"])["ct16"]
    # 16-bit CT compresses losslessly by ~2-3x; its slices are 512 px or less, so the
    # cap changes nothing.
    assert 1.5 < ct.native < 5 and ct.capped == ct.native


def test_shard_open_simulation_builds_the_mix_and_subsets_it(tmp_path):
    bench = _load("bench_shards")
    sources = [
        bench.Source("HCP", 300, ("mr",)),  # NIfTI volumes of 260 slices, one per case
        bench.Source("RadImageNet", 700, ("ct", "mr", "us")),  # shares 0.5 / 0.35 / 0.15
    ]
    index = bench.synthetic_index(1000, sources)
    assert len(index) == 1000
    assert index.counts("modality") == {"mr": 300 + 245, "ct": 350, "us": 105}
    assert index.uri(0) == "/data/biovfm21m/HCP/case_000000/vol_0000000.nii.gz#axis=2&slice=000"
    assert index.uri(261) == "/data/biovfm21m/HCP/case_000001/vol_0000001.nii.gz#axis=2&slice=001"
    assert index.uri(300) == "/data/biovfm21m/RadImageNet/images_00000/00000000_000.png"
    assert index.uri(999) == "/data/biovfm21m/RadImageNet/images_00000/00000699_000.png"
    bench.write_metadata_set(str(tmp_path), index, chunks=7, chunk_bytes=1 << 20)
    out = bench.child_open(str(tmp_path), 0.1, "ct", order=False)
    assert out["n"] == 1000 and out["subset_n"] == 35  # round(0.1 * 350)
    with open(tmp_path / "index.json", encoding="utf-8") as f:
        chunks = json.load(f)["chunks"]
    assert [c["chunk_size"] for c in chunks] == [143] * 6 + [142]


@pytest.mark.slow
def test_shard_pack_and_loader_parts_run_on_tiny_sources(tmp_path, capsys):
    bench = _load("bench_shards")
    common = ["--dir", str(tmp_path), "--images", "4", "--sources", "dicom", "nifti"]
    packed = bench.main(["pack", *common, "--pack-workers", "1", "2"])
    assert [(r.source, r.workers, r.images) for r in packed] == [
        ("dicom", 1, 4), ("dicom", 2, 4), ("dicom (raw)", 2, 4), ("nifti", 1, 4), ("nifti", 2, 4),
    ]  # fmt: skip
    rows = bench.main(
        ["loader", *common, "--loader-images", "6", "--batch-size", "2", "--workers", "0", "1",
         "--global-size", "32", "--local-size", "16", "--local-crops", "2",
         "--decode-seconds", "0.01"]
    )  # fmt: skip
    assert {(r.source, r.read_from, r.stage, r.workers) for r in rows} >= {
        ("dicom", "original", "loader", 1), ("dicom", "shards", "loader", 1),
        ("dicom", "shards (raw)", "loader", 0), ("nifti", "shards", "decode", 0),
    }  # fmt: skip
    assert all(r.images_s > 0 for r in rows)
    assert [r.images for r in rows if r.stage == "loader"] == [4] * 10


def test_data_path_ceiling_counts_workers_per_gpu(capsys):
    bench = _load("bench_data_path")
    rows = bench.main(
        ["ceiling", "--recipes", "default", "ct", "--seconds", "0", "--batch-size", "2",
         "--global-size", "32", "--local-size", "16", "--local-crops", "2"]
    )  # fmt: skip
    assert [r.recipe for r in rows] == ["default", "ct"] and all(r.per_worker > 0 for r in rows)
    table = capsys.readouterr().out
    # workers needed = ceil(GPU images/s / images/s per worker), per published rate
    need = [int(-(-rate // rows[0].per_worker)) for rate in bench.GPU_RATES.values()]
    assert f"| default | uint8 gray 512² | {rows[0].per_worker:.1f} | " in table
    assert all(str(n) in table for n in need)


def test_data_path_evict_drops_files_from_the_page_cache(tmp_path):
    bench = _load("bench_data_path")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\1" * 5000)
    (tmp_path / "y.bin").write_bytes(b"\2" * 300)
    bench.warm(str(tmp_path))
    assert bench.evict(str(tmp_path)) == 5300
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"\1" * 5000  # files are untouched


@pytest.mark.slow
def test_data_path_parts_run_on_tiny_sources(tmp_path, capsys):
    bench = _load("bench_data_path")
    common = ["--dir", str(tmp_path), "--images", "4", "--sources", "dicom", "png",
              "--batch-size", "2", "--global-size", "32", "--local-size", "16",
              "--local-crops", "2", "--repeat", "1"]  # fmt: skip
    rows = bench.main(["encodings", *common, "--decode-seconds", "0.01"])
    assert {(r.source, r.encoding) for r in rows} == {
        ("dicom", "zstd"), ("dicom", "png"), ("png", "zstd"), ("png", "png"),
    }  # fmt: skip
    assert all(r.decode_s > 0 and r.shards_mb > 0 for r in rows)
    rows = bench.main(["loader", *common, "--workers", "1"])
    assert {(r.source, r.read_from, r.cache) for r in rows} >= {
        ("dicom", "files", "cold"), ("png", "shards (zstd)", "warm"),
    }  # fmt: skip
    assert all(x > 0 for r in rows for x in r.rates)
    rows = bench.main(["light", *common, "--workers", "1"])
    assert [r.batch_mb for r in rows][::2] == pytest.approx(
        [3 * m for m in [r.batch_mb for r in rows][1::2]]
    )


def test_monitor_benchmark_times_one_evaluation_against_the_steps(capsys):
    bench = _load("bench_monitor")
    rows = bench.main(["--samples", "8", "--batch-size", "2", "--steps", "1", "--every", "10"])
    assert len(rows) == 1 and rows[0].monitor_s > 0 and rows[0].step_s > 0
    assert rows[0].share == rows[0].monitor_s / (10 * rows[0].step_s)
    assert "| cost share |" in capsys.readouterr().out
