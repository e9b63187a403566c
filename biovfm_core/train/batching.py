"""How the data is cut into optimizer steps, and the stream of batches that feeds them.

An optimizer step of ``train.batch_size`` images (the global batch) is split over the
processes and then into ``optim.accumulate`` micro-batches; a pass over the data is as
many whole steps as the data fills. Schedules count epochs of ``train.epoch_length``
steps, by default one pass (DINOv2 counts 1,250-step epochs whatever the data). The
stream remembers how far into a pass it got, which is what a checkpoint needs to resume
the same order where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

from biovfm_core.config import RunConfig
from biovfm_core.data.order import batches_per_epoch
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch
from biovfm_core.train import distributed as D
from biovfm_core.train.bad_images import BadImages
from biovfm_core.train.data import TrainData, make_loader, make_order

DEFAULT_EPOCHS = 100  # DINOv2's and a common MAE schedule length, when none is given


def step_shape(config: RunConfig, world_size: int, num_images: int) -> tuple[int, int, int]:
    """``(micro-batch per process, steps per scheduling epoch, total steps)`` of a run.

    A scheduling epoch is ``train.epoch_length`` steps when set (DINOv2's
    ``OFFICIAL_EPOCH_LENGTH``: its schedules are ``epochs * OFFICIAL_EPOCH_LENGTH``
    iterations long, dinov2/train/train.py build_schedulers), else one pass over the
    data; ``train.epochs`` counts the same epochs.
    """
    train = config.train
    per_rank, rest = divmod(train.batch_size, world_size)
    if rest:
        raise ConfigError(
            f"train.batch_size {train.batch_size} is not divisible by the {world_size} processes"
        )
    micro, rest = divmod(per_rank, config.optim.accumulate)
    if rest or micro == 0:
        raise ConfigError(
            f"the per-process batch {per_rank} is not divisible into optim.accumulate="
            f"{config.optim.accumulate} micro-batches"
        )
    loader_batches = batches_per_epoch(num_images, micro, world_size)
    steps_per_epoch = loader_batches // config.optim.accumulate
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{num_images} images are fewer than one batch of {train.batch_size}; "
            "lower --batch-size or add data"
        )
    if train.epoch_length is not None:
        steps_per_epoch = train.epoch_length
    if train.max_steps is not None:
        total = train.max_steps
    else:
        total = (train.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    return micro, steps_per_epoch, total


class BatchStream:
    """Usable batches forever, epoch after epoch, from ``(epoch, batch_in_epoch)`` on.

    The loader starts on the first ``next``, so its workers' start-up counts as
    waiting for data. Images the loader skipped go to ``bad``.
    """

    def __init__(
        self,
        data: TrainData,
        config: RunConfig,
        rt: D.Runtime,
        *,
        micro: int,
        epoch: int,
        batch_in_epoch: int,
        bad: BadImages,
    ) -> None:
        self.position = [epoch, batch_in_epoch]  # (epoch, loader batches consumed in it)
        self.bad = bad
        self._items = self._batches(data, config, rt, micro, epoch, batch_in_epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return next(self._items)

    def _batches(
        self, data: TrainData, config: RunConfig, rt: D.Runtime, micro, epoch, batch_in_epoch
    ) -> Iterator[Batch]:
        workers = config.data.num_workers
        order = make_order(
            data,
            batch=micro,
            seed=config.train.seed,
            rank=rt.rank,
            world_size=rt.world_size,
            epoch=epoch,
            start_batch=batch_in_epoch,
            workers=workers,
        )
        # Light views (a third of the bytes for gray images) where the device finishes
        # them for free; on a CPU the finishing would move into the main process.
        data.dataset.light_views = rt.device.type != "cpu"
        loader = make_loader(data, order, num_workers=workers, pin_memory=rt.device.type == "cuda")
        for item in loader:
            now_in, consumed = self.position[0], self.position[1] + 1
            epoch_done = consumed == order.batches_per_epoch
            self.position = [now_in + 1, 0] if epoch_done else [now_in, consumed]
            skipped = getattr(item, "skipped", [])
            self.bad.add(skipped)
            if isinstance(item, Batch):
                self.bad.usable()
                yield item
            else:
                self.bad.check_in_a_row(skipped, data)


def batch_text(batch_size: int, world_size: int, accumulate: int = 1) -> str:
    """``train.batch_size`` as the global number it is, with what each process gets."""
    per_rank = batch_size // max(1, world_size)
    text = (
        f"batch {batch_size} in total (train.batch_size is global) = {per_rank} per GPU "
        f"x {world_size} process{'es' if world_size != 1 else ''}"
    )
    if accumulate > 1:
        text += f", in {accumulate} micro-batches of {per_rank // accumulate}"
    return text
