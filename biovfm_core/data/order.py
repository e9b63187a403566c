"""The epoch and sample order over image files: which image each rank reads at each
step, and the augmentation seed it gets, resumable at any (epoch, batch).

A sample's seed depends on ``(seed, epoch, position in the epoch)`` only, never on
the worker that loads it or on a global RNG, so a resumed run replays the very same
views. Shard sets have their own order, chunk-local for speed, built on this one
(``data/shards/order.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from biovfm_core.errors import ConfigError

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """A distinct 63-bit augmentation seed per (seed, epoch, position)."""
    with np.errstate(over="ignore"):
        mixed = (
            np.uint64(seed) * _MIX[0]
            + np.uint64(epoch + 1) * _MIX[1]
            + positions.astype(np.uint64) * _MIX[2]
        )
        mixed ^= mixed >> np.uint64(31)
    return (mixed >> np.uint64(1)).astype(np.int64)


class RunOrder(torch.utils.data.Sampler):
    """This rank's ``(index, seed)`` pairs, epoch after epoch, from a given position.

    Each epoch is a fresh seeded permutation; this rank takes every ``world_size``-th
    entry, cut to whole batches so no batch straddles two epochs. One sampler covers
    the whole run, so the loader's workers (and the readers they opened) live for the
    whole run instead of being restarted every epoch.
    """

    def __init__(
        self,
        size: int,
        *,
        batch: int,
        seed: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        self.size, self.batch, self.seed = size, batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = epoch, start_batch
        self.batches_per_epoch = (size // world_size) // batch

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.size)
        used = self.batches_per_epoch * self.batch
        positions = np.arange(self.rank, used * self.world_size, self.world_size)
        return order[positions], sample_seeds(self.seed, epoch, positions)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.start_batch * self.batch
        while True:
            indices, seeds = self.epoch_pairs(epoch)
            yield from zip(indices[skip:].tolist(), seeds[skip:].tolist(), strict=True)
            epoch, skip = epoch + 1, 0


def batches_per_epoch(num_images: int, micro_batch: int, world_size: int) -> int:
    return (num_images // world_size) // micro_batch


def check_order(
    path, held: dict | None, wanted: dict, batch_in_epoch: int, worlds: tuple[int, int]
) -> str | None:
    """Refuse to resume mid-epoch in an order this run does not reproduce; return a
    warning when the process count changed mid-epoch.

    At an epoch boundary anything goes (a run may move from files to their shards).
    Checkpoints from before the record was kept ran on files (``RunOrder``). A
    files run whose folders changed keeps going, as it always did; a shard set is
    frozen, so a different one, or another subset of it, is refused. Another
    process count splits the rest of the epoch differently: allowed (a requeued job
    may get fewer nodes), with a warning.
    """
    held = held or {"kind": "run"}
    if batch_in_epoch == 0:
        return None
    same_set = {k: v for k, v in held.items() if k != "workers"} == {
        k: v for k, v in wanted.items() if k != "workers"
    }
    if held.get("kind") != wanted["kind"] or (wanted["kind"] == "shards" and not same_set):

        def says(r: dict) -> str:
            kind = "a shard set" if r.get("kind") == "shards" else "image files"
            return f"{kind} ({r.get('images', '?')} images)"

        raise ConfigError(
            f"checkpoint {path} stopped mid-way through an epoch over {says(held)}; this run "
            f"reads {says(wanted)}, so its position would skip or repeat images. Resume with "
            "the same --data, fraction and modalities, or start a new run"
        )
    if worlds[0] != worlds[1]:
        return (
            f"checkpoint {path} stopped mid-epoch with {worlds[0]} processes; with {worlds[1]} "
            "the rest of that epoch is split anew, so some of its images may be seen twice or "
            "not at all (from the next epoch on, each once)"
        )
    if held.get("workers", wanted.get("workers")) != wanted.get("workers"):
        return (
            f"checkpoint {path} stopped mid-epoch with {held['workers']} loader worker(s) over "
            f"a shard set; with {wanted['workers']} the rest of that epoch is ordered anew, so "
            "some of its images may be seen twice or not at all (from the next epoch on, each "
            "once); set data.num_workers back to resume it exactly"
        )
    return None
