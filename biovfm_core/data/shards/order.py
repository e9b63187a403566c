"""The epoch order for shards: chunk-local reads, contiguous rank blocks, resumable.

Reads that jump between chunks cost ~70x a sequential read (2.2 ms against
0.03 ms per item, measured with litdata), so a shards epoch is a seeded
permutation of the chunks, each chunk's selected rows shuffled among themselves,
concatenated. Rank ``r`` takes the ``r``-th contiguous block of that sequence, so
ranks read disjoint runs of chunks. Within a rank, the DataLoader hands batch ``k``
to worker ``k mod W``; the block is cut into ``W`` contiguous pieces and the batches
are interleaved so that every worker's batches come from its own piece: workers read
disjoint runs of chunks too (sharing at most a chunk at each piece boundary). A
resumed loader starts its round robin elsewhere, which only renames the workers
(every batch keeps its piece), so this holds after ``--resume`` as well. The
interface is ``RunOrder``'s: ``(position, seed)`` pairs from ``(epoch, start_batch)``
on, so the loop resumes a run the same way; the order depends on the worker count.
"""

from __future__ import annotations

import numpy as np

from biovfm_core.data.order import RunOrder, sample_seeds

# Keeps the shards permutation stream apart from RunOrder's for the same seed.
_STREAM = 0x5348


class ShardOrder(RunOrder):
    """This rank's ``(position, seed)`` pairs over a subset of a shard set.

    ``rows`` are the litdata items of the subset's positions (ascending, as a
    subset view keeps them) and ``chunk_sizes`` the items per chunk. Positions are
    what the dataset is indexed by; augmentation seeds depend on ``(seed, epoch,
    position in the epoch)`` only, as in ``RunOrder``, whose resumable iteration this
    keeps: only an epoch's pairs differ.
    """

    def __init__(
        self, rows: np.ndarray, chunk_sizes: np.ndarray, *, workers: int = 0, **order: int
    ) -> None:
        """``order``: ``RunOrder``'s keywords (batch, seed, rank, world_size, epoch,
        start_batch); ``workers``: the loader's worker count, which shapes the order."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = np.cumsum(np.asarray(chunk_sizes, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= (ends[-1] if len(ends) else 0)):
            raise ValueError("shard rows out of the chunks' range")
        super().__init__(len(rows), **order)
        self.num_chunks = len(ends)
        # Chunk of each position; contiguous in rows, so per-chunk runs stay together.
        self.chunk_of = np.searchsorted(ends, rows, side="right")
        self.streams = max(1, workers)  # 0 workers: the main process reads everything
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every position of the subset in this epoch's order (all ranks together)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, _STREAM]))
        chunk_place = np.empty(self.num_chunks, dtype=np.int64)
        chunk_place[rng.permutation(self.num_chunks)] = np.arange(self.num_chunks)
        # One integer sort by (chunk's place, random 32-bit key): a permutation of the
        # chunks with each chunk's rows shuffled, without a Python loop over chunks.
        # Equal random keys keep position order (stable), so the result is exact.
        key = (chunk_place[self.chunk_of] << 32) | rng.integers(0, 1 << 32, self.size)
        order = np.argsort(key, kind="stable")
        self._cached = (epoch, order)
        return order

    def batch_pieces(self, epoch: int) -> np.ndarray:
        """For each batch slot of this epoch, the batch of the rank's block it takes.

        Slot ``k`` is the run's ``epoch * batches_per_epoch + k``-th batch, so the
        loader worker that fetches it is that number mod ``W`` (up to one rotation
        fixed by where the loader started). Worker ``j``'s slots take, in turn, the
        batches of the ``j``-th contiguous piece of the block: sorting the slots by
        worker (stably) lists them in exactly the block's order.
        """
        nb = self.batches_per_epoch
        worker = (epoch * nb + np.arange(nb, dtype=np.int64)) % self.streams
        taken = np.empty(nb, dtype=np.int64)
        taken[np.argsort(worker, kind="stable")] = np.arange(nb)
        return taken

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        used = self.batches_per_epoch * self.batch
        within = (self.batch_pieces(epoch)[:, None] * self.batch + np.arange(self.batch)).ravel()
        positions = self.rank * used + within
        return self.epoch_order(epoch)[positions], sample_seeds(self.seed, epoch, positions)
