"""ImageDataset seeding and collate's report of skipped images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from biovfm_augment.recipes import MultiCropRecipe

from biovfm_core.data.dataset import BadImageLog, EmptyBatch, ImageDataset, collate
from biovfm_core.data.index import build_index
from biovfm_core.errors import BadImageError, PluginError
from biovfm_core.protocols import Batch, SampleRecord, ViewSpec

VIEWS = ViewSpec(global_crops=2, global_size=32, local_crops=2, local_size=16)


class _Reader:
    """Gray gradients; uris containing "bad" fail like a truncated file."""

    def load(self, record: SampleRecord) -> np.ndarray:
        if "bad" in record.uri:
            raise BadImageError(record.uri, "truncated")
        n = int(record.uri.split("/")[-1].split(".")[0].strip("bad") or 0)
        return (np.add.outer(np.arange(60), np.arange(70)) * (n + 1) % 256).astype(np.uint8)


def _open_reader(index, source):
    return _Reader()


def _dataset(uris: list[str]) -> ImageDataset:
    records = [SampleRecord(u, "src", "xray", label=k % 3) for k, u in enumerate(uris)]
    return ImageDataset(build_index(records), MultiCropRecipe(VIEWS), open_reader=_open_reader)


def _flat(sample) -> list[bytes]:
    return [v.tobytes() for v in sample["views"]["global"] + sample["views"]["local"]]


def test_seeded_item_is_reproducible_across_copies_and_differs_by_seed():
    ds = _dataset(["/d/0.png", "/d/1.png"])
    a = ds[(1, 42)]
    assert a["label"] == 1 and a["modality"] == "xray" and len(_flat(a)) == 4
    assert _flat(ds[(1, 42)]) == _flat(a)
    # A worker gets a pickled copy of the dataset: same seed, same views.
    assert _flat(pickle.loads(pickle.dumps(ds))[(1, 42)]) == _flat(a)
    assert all(x != y for x, y in zip(_flat(ds[(1, 43)]), _flat(a), strict=True))
    # numpy integers (from a sampler) work as index and seed alike.
    assert _flat(ds[(np.int64(1), np.int64(42))]) == _flat(a)


def test_unseeded_items_differ():
    ds = _dataset(["/d/0.png"])
    assert _flat(ds[0]) != _flat(ds[0])


def test_collate_lists_skipped_on_the_batch_and_log_counts_them():
    ds = _dataset(["/d/0.png", "/d/bad1.png", "/d/2.png", "/d/bad3.png", "/d/bad4.png"])
    batches = [collate([ds[(k, k)] for k in ks]) for ks in ([0, 1, 2], [3, 4])]
    first, second = batches
    assert isinstance(first, Batch) and first.size == 2
    assert first.skipped == [("/d/bad1.png", "truncated")]
    assert first.labels.tolist() == [0, 2] and first.modality == ["xray", "xray"]
    # Nothing usable: not a Batch an objective could be handed, but it keeps the reasons.
    assert isinstance(second, EmptyBatch) and not isinstance(second, Batch)
    assert second.skipped == [("/d/bad3.png", "truncated"), ("/d/bad4.png", "truncated")]

    log = BadImageLog()
    assert [b.size for b in log.track(batches)] == [2]
    assert log.count == 3 and log.reasons() == {"truncated": 3}


def _collate_and_report_sharing(samples):
    batch = collate(samples)
    return batch, [v.is_shared() for v in batch.global_views + batch.local_views]


def test_collate_in_a_loader_worker_stacks_into_shared_memory():
    import torch

    ds = _dataset(["/d/0.png", "/d/1.png", "/d/2.png"])
    samples = [ds[(k, k)] for k in range(3)]
    in_main = collate(samples)
    assert not any(v.is_shared() for v in in_main.global_views)  # no shm outside workers
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=3,
        sampler=[(k, k) for k in range(3)],
        collate_fn=_collate_and_report_sharing,
        num_workers=1,
    )
    ((batch, shared_in_worker),) = list(loader)
    assert shared_in_worker == [True] * 4  # written once, straight into shared memory
    for ours, reference in zip(
        batch.global_views + batch.local_views,
        in_main.global_views + in_main.local_views,
        strict=True,
    ):
        assert torch.equal(ours, reference)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (lambda im: im[None], r"returned shape \(1, 60, 70\) \(channels first"),
        (lambda im: np.stack([im, im], axis=-1), r"returned shape \(60, 70, 2\)"),
        (lambda im: im.astype(object), r"returned an array of dtype object"),
    ],
)
def test_a_reader_breaking_the_image_contract_stops_training_naming_reader_and_file(bad, shown):
    class Wrong(_Reader):
        def load(self, record):
            return bad(super().load(record))

    records = [SampleRecord("/d/0.png", "src", "xray")]
    index = build_index(records)
    ds = ImageDataset(index, MultiCropRecipe(VIEWS), open_reader=lambda i, s: Wrong())
    with pytest.raises(PluginError, match=r"source 'src': load\(/d/0.png\) " + shown) as info:
        ds[(0, 1)]
    assert "(H, W), (H, W, 1) or (H, W, 3)" in str(info.value)
    assert "\n" not in str(info.value)
