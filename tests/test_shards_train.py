"""Training from shards (issue 17, deliverable 2): order, subsets, reads, resume, ranks.

Shard folders are written by ``shards_fixture`` (litdata's own writer, the format of
``biovfm_core.data.shards.format``); trainings use the 2-block micro ViT of
``test_train_faults`` for a few CPU steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from shards_fixture import synthetic_items, write_shards
from test_train_engine import assert_same_tensors, final_state, read_metrics
from test_train_faults import _micro_config, _registry

from biovfm_core.data.shards.order import ShardOrder
from biovfm_core.data.shards.reader import ShardReader, open_shards
from biovfm_core.errors import BadImageError, ConfigError
from biovfm_core.protocols import SampleRecord
from biovfm_core.registry import get_registry
from biovfm_core.train import loop

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 images of two sources in 5 chunks of 8."""
    return write_shards(tmp_path_factory.mktemp("shards") / "set", synthetic_items(40))


# ------------------------------------------------------------------ the order


def _chunk_runs(chunks: np.ndarray) -> list[int]:
    """The chunk of each run of equal neighbours, in order."""
    return [int(c) for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]


def test_shard_order_gives_ranks_contiguous_blocks_covering_each_selected_row_once():
    sizes = np.array([7, 9, 8, 3, 11, 6])  # 44 rows, uneven chunks
    rows = np.array([r for r in range(44) if r % 5 != 2])  # a subset: 35 rows
    world, batch = 3, 4
    orders = [
        ShardOrder(rows, sizes, batch=batch, seed=7, rank=r, world_size=world) for r in range(3)
    ]
    assert all(o.batches_per_epoch == (35 // 3) // 4 == 2 for o in orders)
    for epoch in (0, 1):
        full = orders[0].epoch_order(epoch)
        assert sorted(full.tolist()) == list(range(35))  # a permutation of the subset
        # Chunk-local: every chunk's selected rows form one run of the epoch.
        runs = _chunk_runs(orders[0].chunk_of[full])
        assert sorted(runs) == list(range(6))
        blocks = [o.epoch_pairs(epoch)[0] for o in orders]
        used = 2 * batch
        for r, block in enumerate(blocks):
            assert block.tolist() == full[r * used : (r + 1) * used].tolist()
        seen = np.concatenate(blocks)
        assert len(set(seen.tolist())) == len(seen) == world * used
        # Seeds are RunOrder's: one per (seed, epoch, position in the epoch).
        from biovfm_core.data.order import sample_seeds

        assert (
            orders[2].epoch_pairs(epoch)[1].tolist()
            == sample_seeds(7, epoch, np.arange(2 * used, 3 * used)).tolist()
        )
    assert orders[0].epoch_order(0).tolist() != orders[0].epoch_order(1).tolist()
    again = ShardOrder(rows, sizes, batch=batch, seed=7, rank=0, world_size=world)
    assert again.epoch_order(1).tolist() == orders[0].epoch_order(1).tolist()
    other_seed = ShardOrder(rows, sizes, batch=batch, seed=8, rank=0, world_size=world)
    assert other_seed.epoch_order(0).tolist() != orders[0].epoch_order(0).tolist()


def test_shard_order_resumes_at_epoch_and_batch():
    sizes, rows = np.full(6, 8), np.arange(3, 45)
    for workers in (0, 2, 3):
        kw = dict(batch=3, seed=2, rank=1, world_size=2, workers=workers)
        full = iter(ShardOrder(rows, sizes, **kw))
        per_epoch = ShardOrder(rows, sizes, **kw).batches_per_epoch * 3
        stream = [next(full) for _ in range(per_epoch + 2 * 3 + 12)]
        resumed = iter(ShardOrder(rows, sizes, epoch=1, start_batch=2, **kw))
        assert [next(resumed) for _ in range(12)] == stream[per_epoch + 6 :]


class _Keys(torch.utils.data.Dataset):
    """Each position with the id of the loader worker that fetched it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return torch.tensor([key[0], torch.utils.data.get_worker_info().id])


def test_loader_workers_read_disjoint_runs_of_chunks_also_after_a_resume():
    sizes = np.full(12, 6)  # 72 rows in 12 chunks
    rows = np.arange(72)
    kw = dict(batch=3, seed=4, rank=0, world_size=1, workers=2)
    per_epoch = (72 // 3) * 3

    def fetched(epoch: int, start_batch: int, n: int) -> np.ndarray:
        order = ShardOrder(rows, sizes, epoch=epoch, start_batch=start_batch, **kw)
        loader = torch.utils.data.DataLoader(_Keys(72), batch_size=3, sampler=order, num_workers=2)
        got = []
        for b in loader:
            got.append(b)
            if len(got) * 3 >= n:
                return torch.cat(got)[:n].numpy()

    whole = fetched(0, 0, 2 * per_epoch)
    chunk = ShardOrder(rows, sizes, **kw).chunk_of
    for epoch in (0, 1):
        part = whole[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert sorted(part[:, 0].tolist()) == list(range(72))  # every row once per epoch
        mine = [set(chunk[part[part[:, 1] == w, 0]].tolist()) for w in (0, 1)]
        # Each worker its own chunks; the two pieces meet inside at most one chunk.
        assert len(mine[0] & mine[1]) <= 1 and len(mine[0] | mine[1]) == 12
    # Resumed at batch 5 of epoch 1: the loader's round robin starts elsewhere, so the
    # workers swap roles, but the positions are the same and each worker's still form
    # its own run of chunks.
    resumed = fetched(1, 5, per_epoch - 15)
    assert resumed[:, 0].tolist() == whole[per_epoch + 15 :, 0].tolist()
    mine = [set(chunk[resumed[resumed[:, 1] == w, 0]].tolist()) for w in (0, 1)]
    assert len(mine[0] & mine[1]) <= 1


# ---------------------------------------------------------------------- reads


def test_load_row_returns_the_stored_values_in_both_encodings(tmp_path):
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (9, 7, 3)).astype(np.uint8),
        rng.integers(0, 65536, (6, 5)).astype(np.uint16),
        rng.integers(-1024, 3000, (8, 8)).astype(np.int16),  # CT: shifted, exact
        rng.random((5, 6)).astype(np.float32) * 100 - 20,  # MR: rescaled to 16 bits
    ]
    items = [
        (SampleRecord(f"/o/{i}.x", "s", "ct", "chest", None), im) for i, im in enumerate(images)
    ]
    for encoding in ("png", "raw"):
        reader = ShardReader(str(write_shards(tmp_path / encoding, items, encoding=encoding)))
        for i, image in enumerate(images[:3]):
            got = reader.load_row(i)
            assert got.shape == image.shape and np.array_equal(got, image), (encoding, i)
        got = reader.load_row(3)
        span = float(images[3].max() - images[3].min())
        assert got.dtype == np.float32 and np.abs(got - images[3]).max() <= span / 65535
        # The record path (for an index built by `biovfm data scan`) reads the same.
        assert np.array_equal(reader.load(items[1][0]), images[1])


def test_a_damaged_item_is_a_bad_image_naming_its_original_file(tmp_path):
    items = synthetic_items(4)
    folder = write_shards(tmp_path / "s", items, chunk_size=4)
    chunk = next(folder.glob("chunk-*.bin"))
    data = bytearray(chunk.read_bytes())
    second_png = data.find(b"\x89PNG", data.find(b"\x89PNG") + 1)
    data[second_png : second_png + 40] = b"\0" * 40
    chunk.write_bytes(bytes(data))
    reader = ShardReader(str(folder))
    with pytest.raises(BadImageError) as excinfo:
        reader.load_row(1)
    assert items[1][0].uri in str(excinfo.value)
    assert np.array_equal(reader.load_row(2), items[2][1])
    with pytest.raises(BadImageError, match="not among the images packed"):
        reader.load(SampleRecord("/elsewhere.png", "alpha", "ct", "skin", None))


def test_an_unfinished_or_inconsistent_shard_set_is_refused(tmp_path, shards):
    half = tmp_path / "half"
    half.mkdir()
    (half / ".pack").mkdir()
    with pytest.raises(ConfigError, match="a pack that has not finished"):
        open_shards(str(half))
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    manifest = json.loads((damaged / "biovfm-shards.json").read_text())
    manifest["images"] = 41
    (damaged / "biovfm-shards.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"says 41 images.*holds 40.*chunks 40"):
        open_shards(str(damaged))


def test_a_shard_set_at_a_url_streams_through_litdata(tmp_path, shards):
    """``local:`` is litdata's own remote-style scheme (download into a cache), so
    this runs the object-store path (s3://, gs://, ...) offline."""
    items = synthetic_items(40)
    url = f"local:{shards}"
    index, report = _open([f"shards:{url}"])
    assert len(index) == 40 and report["shards"] == [url]
    assert index.sources_meta["alpha"]["path"] == url
    reader = ShardReader(url)
    for row in (0, 17, 39):
        assert np.array_equal(reader.load_row(row), items[row][1])
    # Training's data side finds the chunk layout in the cached metadata, not at the URL.
    from biovfm_core.config import RunConfig
    from biovfm_core.protocols import ViewSpec
    from biovfm_core.train.data import training_data

    views = ViewSpec(global_crops=1, global_size=16, local_crops=0)
    data = training_data(index, views, RunConfig(), get_registry())
    assert data.shard_chunks.tolist() == [8] * 5
    with pytest.raises(ConfigError, match=r"cannot read its biovfm-shards\.json"):
        open_shards(f"local:{tmp_path / 'nothing'}")


# ------------------------------------------------------------------- subsets


def _open(sources: list[str], **data) -> tuple:
    from biovfm_core.config import RunConfig
    from biovfm_core.train.data import open_index

    config = RunConfig()
    config.data.sources = sources
    for key, value in data.items():
        setattr(config.data, key, value)
    config.train.seed = 5
    return open_index(config)


def test_fraction_and_modality_subsets_of_shards_equal_those_of_the_scanned_files(tmp_path):
    """Real PNG folders scanned by the folder reader, packed in scan order: every
    subset picks the same original files from the shards as from the folders."""
    import cv2

    rng = np.random.default_rng(3)
    for name, n in (("derm", 23), ("micro", 17)):
        for i in range(n):
            folder = tmp_path / name / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (6, 6), dtype=np.uint8))
    raw = [
        f"folder:{tmp_path / 'derm'}?modality=dermoscopy",
        f"folder:{tmp_path / 'micro'}?modality=microscopy",
    ]
    scanned, _ = _open(raw)
    from biovfm_core.data.scan import open_reader

    readers = {s: open_reader(scanned, s) for s in scanned.sources}
    items = [(r, readers[r.source].load(r)) for r in scanned]
    write_shards(tmp_path / "shards", items, chunk_size=5, sources_meta=scanned.sources_meta)
    shards = [f"shards:{tmp_path / 'shards'}"]

    for subset in (
        {"fraction": 0.5},
        {"modalities": ["microscopy"]},
        {"fraction": 0.3, "modalities": ["dermoscopy", "microscopy"]},
    ):
        from_files, files_report = _open(raw, **subset)
        from_shards, shards_report = _open(shards, **subset)
        assert [r.uri for r in from_shards] == [r.uri for r in from_files], subset
        assert shards_report["by_source"] == files_report["by_source"]
        assert shards_report["by_modality"] == files_report["by_modality"]
    assert shards_report["shards"] == [str(tmp_path / "shards")]
    assert from_shards.sources_meta["derm"]["packed_from"]["reader"] == "folder"
    # Nested: the 10% subset is inside the 50% one, as for files.
    small, _ = _open(shards, fraction=0.1)
    half, _ = _open(shards, fraction=0.5)
    assert {r.uri for r in small} < {r.uri for r in half}


def test_shards_mixed_with_other_sources_are_refused(tmp_path, shards):
    (tmp_path / "f").mkdir()
    with pytest.raises(ConfigError, match=r"cannot be mixed with other sources \(folder:"):
        _open([f"shards:{shards}", f"folder:{tmp_path / 'f'}"])
    # A source packed into two sets would be read twice.
    twin = write_shards(tmp_path / "twin", synthetic_items(4, sources=("alpha",)))
    with pytest.raises(ConfigError, match=r"'alpha' is in shards:.* and in shards:"):
        _open([f"shards:{shards}", f"shards:{twin}"])


def test_several_shard_sets_train_as_one_each_image_once_per_epoch(tmp_path, shards, monkeypatch):
    from biovfm_core.data.dataset import ImageDataset

    other_items = synthetic_items(12, sources=("gamma",))
    other = write_shards(tmp_path / "other", other_items, chunk_size=5)
    index, report = _open([f"shards:{shards}", f"shards:{other}"])
    assert len(index) == 52 and report["shards"] == [str(shards), str(other)]
    assert report["by_source"] == {"alpha": 20, "beta": 20, "gamma": 12}
    registry = get_registry()
    config = _shards_config(tmp_path, shards)
    config.data.sources = [f"shards:{shards}", f"shards:{other}"]
    from biovfm_core.protocols import ViewSpec
    from biovfm_core.train.data import make_order, training_data

    data = training_data(
        index, ViewSpec(global_crops=1, global_size=16, local_crops=0), config, registry
    )
    assert data.shard_chunks.tolist() == [8] * 5 + [5, 5, 2]  # the sets' chunks in row order
    read: list[tuple[str, int]] = []
    real = ShardReader.load_row
    monkeypatch.setattr(
        ShardReader,
        "load_row",
        lambda self, row, uri=None: read.append((self.folder, row)) or real(self, row, uri),
    )
    order = make_order(data, batch=4, seed=1, rank=0, world_size=1)
    dataset: ImageDataset = data.dataset
    epoch = [pair for pair, _ in zip(order, range(52), strict=False)]
    for key in epoch:
        sample = dataset[key]
        assert not hasattr(sample, "reason"), sample
    # Every image of both sets once, each read from its own folder at its own row.
    assert sorted(read) == sorted(
        [(str(shards), r) for r in range(40)] + [(str(other), r) for r in range(12)]
    )
    # ... and the pixels are that image's: the last set's rows are not shifted.
    position = next(p for p, _ in epoch if index.record(p).source == "gamma")
    row = index.base_row(position) - 40
    want = other_items[row][1]
    assert np.array_equal(ShardReader(str(other)).load_row(row), want)


# ------------------------------------------------------------------ training


def _shards_config(tmp_path, shards, **changes):
    config = _micro_config(tmp_path, **changes)
    config.data.sources = [f"shards:{shards}"]
    return config


def test_biovfm_train_on_shards_reads_each_image_once_per_epoch(tmp_path, shards, monkeypatch):
    from biovfm_core.cli.main import cli

    _registry()  # the micro ViT and the tiny objective, in the process-wide registry
    seen: list[int] = []
    real = ShardReader.load_row
    monkeypatch.setattr(
        ShardReader,
        "load_row",
        lambda self, row, uri=None: seen.append(row) or real(self, row, uri),
    )
    args = [
        "train", "--data", f"shards:{shards}", "--objective", "nan_after",
        "--backbone", "micro_vit", "--batch-size", "8", "--max-steps", "5",
        "--opt", "objective.nan_at=100", "--set", "data.num_workers=0",
        "--output", str(tmp_path), "--name", "cli",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(seen) == list(range(40))  # 5 steps of 8 = one epoch, every image once
    report = json.loads((tmp_path / "cli" / "data_report.json").read_text())
    assert report["data"]["by_source"] == {"alpha": 20, "beta": 20}
    assert report["data"]["shards"] == [str(shards)]
    _, state = final_state(tmp_path / "cli")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 0)
    assert state["data_order"]["kind"] == "shards" and state["data_order"]["images"] == 40
    # The export of a shards-trained run is an ordinary one: evaluation loads it, with
    # the weights the run ended with.
    from biovfm_core.models.runs import load_export

    loaded = load_export(tmp_path / "cli" / "export", get_registry())
    assert loaded.extra["step"] == 5
    weights, _ = final_state(tmp_path / "cli")
    exported = loaded.backbone.state_dict()
    for part in ("patch_embed.proj.weight", "blocks.1.mlp.fc2.weight"):
        (ours,) = [v for k, v in exported.items() if k.endswith(part)]
        (theirs,) = [v for k, v in weights.items() if k.endswith(part)]
        assert torch.equal(ours, theirs), part


class _Stop(Exception):
    pass


def test_a_run_resumed_mid_epoch_on_shards_equals_the_uninterrupted_one(
    tmp_path, shards, monkeypatch
):
    # 32 of 40 images, batches of 4: 8 steps an epoch; stop at step 4, end in epoch 2.
    changes = {
        "train.max_steps": 10,
        "train.checkpoint_every": 4,
        "train.keep_last": 10,
        "data.fraction": 0.8,
    }
    registry = _registry()
    whole = loop.train(
        _shards_config(tmp_path, shards, name="whole", **changes), registry, progress=False
    )
    assert whole.steps == 10

    real_save = loop._Trainer._save

    def save_then_die(self, step, p):
        real_save(self, step, p)
        if step == 4:
            raise _Stop

    monkeypatch.setattr(loop._Trainer, "_save", save_then_die)
    with pytest.raises(_Stop):
        loop.train(
            _shards_config(tmp_path, shards, name="cut", **changes), registry, progress=False
        )
    monkeypatch.undo()
    _, cut_state = final_state(tmp_path / "cut")
    assert (cut_state["step"], cut_state["epoch"], cut_state["batch_in_epoch"]) == (4, 0, 4)

    resumed = _shards_config(tmp_path, shards, name="cut", **changes)
    resumed.resume = str(tmp_path / "cut")
    assert loop.train(resumed, registry, progress=False).steps == 10

    whole_w, whole_s = final_state(tmp_path / "whole")
    cut_w, cut_s = final_state(tmp_path / "cut")
    assert (cut_s["epoch"], cut_s["batch_in_epoch"]) == (
        whole_s["epoch"],
        whole_s["batch_in_epoch"],
    )
    assert_same_tensors(cut_w, whole_w, "weights")
    losses = [float(r["loss"]) for r in read_metrics(tmp_path / "whole")]
    assert [float(r["loss"]) for r in read_metrics(tmp_path / "cut")] == pytest.approx(losses)

    # Mid-epoch, another subset of the shards is another order: refused, not re-cut.
    other = _shards_config(tmp_path, shards, name="cut", **{**changes, "data.fraction": 0.5})
    other.resume = str(tmp_path / "cut" / "checkpoints" / "step_00000004")
    with pytest.raises(ConfigError, match="stopped mid-way through an epoch over a shard set"):
        loop.train(other, registry, progress=False)


def test_resuming_mid_epoch_checks_the_order_the_position_refers_to():
    from biovfm_core.data.order import check_order

    shards = {"kind": "shards", "images": 40, "chunks": 5, "rows_crc32": 1}
    subset = {**shards, "images": 20, "rows_crc32": 2}
    assert check_order("ck", shards, shards, 3, (2, 2)) is None
    assert check_order("ck", None, {"kind": "run", "images": 9}, 3, (1, 1)) is None  # old files run
    assert (
        check_order("ck", {"kind": "run", "images": 5}, {"kind": "run", "images": 9}, 3, (1, 1))
        is None
    )
    for held, wanted in ((shards, subset), (None, shards), (shards, {"kind": "run", "images": 40})):
        with pytest.raises(ConfigError, match="mid-way through an epoch"):
            check_order("ck", held, wanted, 3, (1, 1))
        assert check_order("ck", held, wanted, 0, (1, 1)) is None  # at an epoch boundary
    assert "split anew" in check_order("ck", shards, shards, 3, (4, 2))
    # Another loader worker count reorders the rest of the epoch: a warning, not a refusal.
    two, three = {**shards, "workers": 2}, {**shards, "workers": 3}
    assert "data.num_workers back" in check_order("ck", two, three, 3, (1, 1))
    assert check_order("ck", two, three, 0, (1, 1)) is None
    assert check_order("ck", two, two, 3, (1, 1)) is None


# ----------------------------------------------------------------- two ranks

_WITNESS = '''
import os

import torch

from biovfm_core import hookimpl
from biovfm_core.protocols import ObjectiveBase, ViewSpec


class Witness:
    """The default recipe, writing down every image it is handed (one file per process)."""

    def __init__(self, views):
        from biovfm_core.registry import get_registry

        self.inner = get_registry().build("augmentations", "default", views)

    def sample_views(self, image, record, rng):
        path = os.path.join(os.environ["WITNESS_DIR"], f"{os.getpid()}.txt")
        with open(path, "a") as f:
            f.write(record.uri + "\\n")
        return self.inner.sample_views(image, record, rng)

    def batch_transform(self, batch):
        return self.inner.batch_transform(batch)


class Tiny(ObjectiveBase, torch.nn.Module):
    def __init__(self, backbone, task):
        super().__init__()
        self.backbone = backbone
        self.views = ViewSpec(global_crops=1, global_size=32, local_crops=0)

    def training_step(self, batch, info):
        return {"loss": self.backbone.forward_tokens(batch.global_views[0]).cls.pow(2).mean()}

    def eval_backbone(self):
        return self.backbone


def micro_vit():
    from biovfm_timm.vit import ViTBackbone
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0, dynamic_img_size=True)
    return ViTBackbone(vit, name="micro_vit")


@hookimpl
def biovfm_register_augmentations(register):
    register("witness", Witness)


@hookimpl
def biovfm_register_objectives(register):
    register("tiny", Tiny)


@hookimpl
def biovfm_register_backbones(register):
    register("micro_vit", micro_vit)
'''


# ~11 s on 2 cores (torchrun starts 3 Python processes that import torch); kept in the
# default suite: it is the check that ranks split the shards.
def test_two_gloo_ranks_see_every_shard_image_exactly_once_per_epoch(tmp_path, shards):
    from plugin_dists import write_distribution

    site = write_distribution(
        tmp_path / "site", "witness-plugin", "1.0", {"witness_plugin": _WITNESS},
        {"witness": "witness_plugin"},
    )  # fmt: skip
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    path = os.pathsep.join(
        [str(site), str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", WITNESS_DIR=str(seen_dir), PYTHONPATH=path)
    port = 29500 + (os.getpid() + 7) % 1000
    # 40 images, 2 ranks x 4 per step: 5 steps are one epoch, 7 go 2 batches into the next.
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), "-m", "biovfm_core.cli.main", "train",
            "--data", f"shards:{shards}", "--objective", "tiny", "--backbone", "micro_vit",
            "--augmentation", "witness", "--batch-size", "8", "--max-steps", "7",
            "--device", "cpu", "--set", "data.num_workers=1", "--set", "train.checkpoint_every=7",
            "--output", str(tmp_path), "--name", "ddp",
        ],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(seen_dir.glob("*.txt"))
    assert len(files) == 2  # one loader worker per rank
    # One worker reads its rank's batches in order (and may prefetch beyond step 7).
    per_rank = [f.read_text().splitlines() for f in files]
    assert all(len(r) >= 28 for r in per_rank)
    first_epoch = [uri for r in per_rank for uri in r[:20]]
    everything = {r.uri for r in open_shards(str(shards)).index}
    assert sorted(first_epoch) == sorted(everything)  # each image once, by one rank
    second = [uri for r in per_rank for uri in r[20:28]]
    assert len(set(second)) == len(second) == 16


def test_dry_run_reads_the_shard_manifest_and_says_when_a_folder_is_not_a_set(tmp_path, shards):
    from biovfm_core.cli.main import cli

    (tmp_path / "empty").mkdir()
    for folder, note in ((shards, "[shard set: 40 images, png]"), (tmp_path / "empty", "no biovfm-shards.json"), ("s3://bucket/set", "[a URL: its manifest is read when")):  # fmt: skip
        result = CliRunner().invoke(cli, ["train", "--data", f"shards:{folder}", "--dry-run"])
        assert result.exit_code == 0, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("# data:")]
        assert note in line


# ------------------------------------------------------ issue 24: the item's uri check


def test_an_item_that_is_not_its_rows_image_is_skipped_naming_the_set_and_the_row(tmp_path):
    """A set whose index came from another pack (rows 3-5 name other files) reads
    rows 0-2 and refuses rows 3-5, through the reader and through the training dataset."""
    import shutil

    from biovfm_augment.recipes import MultiCropRecipe

    from biovfm_core.data.dataset import ImageDataset, Skipped
    from biovfm_core.protocols import ViewSpec

    items = synthetic_items(6)
    folder = write_shards(tmp_path / "s", items, chunk_size=4)
    other = [
        (SampleRecord(f"/other/{i}.png", r.source, r.modality, r.anatomy), im)
        if i >= 3
        else (r, im)
        for i, (r, im) in enumerate(items)
    ]
    shutil.copy(write_shards(tmp_path / "o", other) / "biovfm-index.npz", folder)

    reader = ShardReader(str(folder))
    assert np.array_equal(reader.load_row(2, items[2][0].uri), items[2][1])
    with pytest.raises(BadImageError) as excinfo:
        reader.load_row(4, "/other/4.png")
    assert excinfo.value.path == "/other/4.png"
    assert excinfo.value.reason.startswith(
        f"shards:{folder} row 4 holds {items[4][0].uri}, not this image"
    )

    index = open_shards(str(folder)).index
    ds = ImageDataset(index, MultiCropRecipe(ViewSpec(global_size=16, local_size=8, local_crops=1)))
    got = [ds[(i, 0)] for i in range(6)]
    assert [isinstance(g, Skipped) for g in got] == [False] * 3 + [True] * 3
    assert [g.uri for g in got[3:]] == ["/other/3.png", "/other/4.png", "/other/5.png"]
    assert all(f"row {i} holds /orig/" in g.reason for i, g in zip((3, 4, 5), got[3:], strict=True))


def test_items_without_a_uri_are_read_unchecked_and_it_is_said_once(tmp_path, capsys):
    import shutil

    from litdata.streaming.writer import BinaryWriter

    from biovfm_core.data.shards import format as fmt

    items = synthetic_items(3)
    packed = write_shards(tmp_path / "s", items)
    # The same images, written as items without the uri field, beside that set's index.
    folder = tmp_path / "no_uri"
    folder.mkdir()
    for name in (fmt.INDEX, fmt.MANIFEST):
        shutil.copy(packed / name, folder)
    writer = BinaryWriter(str(folder), chunk_size=8, serializers=fmt.writer_serializers())
    for i, (record, image) in enumerate(items):
        item = fmt.make_item(record, -1, image, "png")
        del item["uri"]
        writer.add_item(i, item)
    writer.done()
    writer.merge()
    reader = ShardReader(str(folder))
    for i, (record, image) in enumerate(items):
        assert np.array_equal(reader.load_row(i, record.uri), image)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"warning: shards:{folder}: its items carry no uri, so they are read without checking"
    )


def test_a_truncated_shard_index_is_one_line_naming_it_and_what_to_do(tmp_path, shards):
    import shutil

    from biovfm_core.cli.main import cli

    cut = tmp_path / "cut"
    shutil.copytree(shards, cut)
    index = cut / "biovfm-index.npz"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    with pytest.raises(ConfigError) as excinfo:
        open_shards(str(cut))
    message = str(excinfo.value)
    assert message.startswith(f"shards:{cut}: {index}: not a biovfm index (")
    assert "restore the folder from a copy, or repack it" in message
    result = CliRunner().invoke(
        cli, ["train", "--data", f"shards:{cut}", "--output", str(tmp_path / "runs"), "--name", "r"]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == result.output.count("# ") + 1, result.output
    assert f"error: shards:{cut}: {index}: not a biovfm index" in result.output
    assert "Traceback" not in result.output and "BadZipFile" not in result.output.split(":")[0]
