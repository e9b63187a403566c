"""Images the loader skipped because they could not be decoded.

One unreadable file should not stop a long run, so the loader skips it and the
run keeps count (in metrics.csv and its checkpoints) and lists them all in
``bad_images.csv`` at the end. A source where nothing decodes any more is a
different matter: the run would wait forever for a usable batch, so it stops.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from biovfm_core.errors import BiovfmError

if TYPE_CHECKING:
    from biovfm_core.train.data import TrainData

# Images that failed to decode in a row (no usable image in between) before the run
# stops: a run whose every image is unreadable would otherwise wait forever for a
# usable batch. Capped by the data size, so a small broken source stops within an epoch.
MAX_FAILED_IN_A_ROW = 1000


class BadDataError(BiovfmError):
    """The data stream yields no usable images."""


class BadImages:
    """The skipped images of a run: how many, which, and how many since a usable one."""

    def __init__(self) -> None:
        self.count = 0  # every skip, across resumes: a checkpoint carries it on
        self.entries: list[tuple[str, str]] = []  # (uri, reason), by this process
        self.failed_in_a_row: list[tuple[str, str]] = []

    def add(self, skipped: list[tuple[str, str]]) -> None:
        self.count += len(skipped)
        self.entries.extend(skipped)

    def usable(self) -> None:
        """A usable batch arrived: the images that failed before it were not in a row."""
        self.failed_in_a_row = []

    def check_in_a_row(self, skipped: list[tuple[str, str]], data: TrainData) -> None:
        """Stop when images keep failing with no usable one in between."""
        self.failed_in_a_row.extend(skipped)
        limit = min(MAX_FAILED_IN_A_ROW, data.num_images)
        if len(self.failed_in_a_row) < limit:
            return
        sources = getattr(getattr(data.dataset, "index", None), "sources", None) or ["?"]
        examples = "; ".join(f"{uri}: {reason}" for uri, reason in self.failed_in_a_row[:3])
        raise BadDataError(
            f"{len(self.failed_in_a_row)} images in a row could not be decoded, with no usable "
            f"image in between (sources: {', '.join(sources)}). Examples: {examples}. "
            "Check the sources' reader options and files (biovfm data scan lists problems)"
        )

    def write(self, run_dir: Path) -> None:
        """One row per unusable image, with how often the run met it (once per epoch)."""
        counts = Counter(self.entries)
        with open(run_dir / "bad_images.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["uri", "reason", "times_skipped"])
            writer.writerows((uri, reason, n) for (uri, reason), n in sorted(counts.items()))
