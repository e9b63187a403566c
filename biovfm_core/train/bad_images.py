"""Images the loader skipped because they could not be decoded.

One unreadable file should not stop a long run, so the loader skips it and the
run keeps count (in metrics.csv and its checkpoints) and lists them all in
``bad_images.csv`` at the end. A source where nothing decodes any more is a
different matter: the run would wait forever for a usable batch, so it stops.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from biovfm_core.errors import BiovfmError
from biovfm_core.files import write_atomic

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

    def __init__(self, say: Callable[[str], None] = lambda _: None) -> None:
        self.count = 0  # every skip, across resumes: a checkpoint carries it on
        self.entries: list[tuple[str, str]] = []  # (uri, reason), by this process
        self.failed_in_a_row: list[tuple[str, str]] = []
        self.say = say

    def add(self, skipped: list[tuple[str, str]]) -> None:
        if skipped and not self.entries:
            # Said once, as it happens: a skipped image is easy to miss in a long run,
            # and a reader that rejects every image of one kind looks just like it.
            uri, reason = skipped[0]
            self.say(
                f"warning: skipped an image that could not be used: {uri}: {reason} "
                "(further skips are counted in metrics.csv and listed in bad_images.csv)"
            )
        self.count += len(skipped)
        self.entries.extend(skipped)

    def summary(self, run_dir: Path) -> str | None:
        """The end-of-run line about skipped images, or None when there were none."""
        if not self.count:
            return None
        distinct = len(set(self.entries))
        return (
            f"skipped {self.count} unusable image reads ({distinct} distinct images in this "
            f"process; each is met once per epoch): see {run_dir / 'bad_images.csv'}"
        )

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
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["uri", "reason", "times_skipped"])
        writer.writerows((uri, reason, n) for (uri, reason), n in sorted(counts.items()))
        write_atomic(run_dir / "bad_images.csv", text.getvalue().encode("utf-8"))
