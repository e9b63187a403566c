"""The collapse and instability sentinels: what each watches, where it alarms, and why.

One table, read by the training loop (which computes the values and warns or stops on a
crossing), by `biovfm report` (which draws each threshold under its curve) and by
docs/monitoring.md. Each value is a column of `metrics.csv` named `Sentinel.column`.

Rules:
- ``value``: alarm when the value itself crosses ``threshold``;
- ``of_best``: alarm when the value falls below ``threshold`` times the best value seen
  so far in this run (a ratio, for statistics whose healthy level depends on the model);
- ``held``: alarm when the value stays across ``threshold`` for ``HOLD_STEPS`` log steps
  in a row (a loss pinned at ln K is normal for a few hundred steps, not for thousands).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Log steps a `held` sentinel must stay across its threshold before it alarms.
HOLD_STEPS = 20


@dataclass(frozen=True)
class Sentinel:
    column: str
    label: str
    threshold: float
    direction: Literal["below", "above"]
    rule: Literal["value", "of_best", "held"]
    meaning: str
    cause: str


SENTINELS: tuple[Sentinel, ...] = (
    Sentinel(
        column="sentinel/rankme",
        label="effective rank of the batch embeddings (share of its maximum)",
        threshold=0.2,
        direction="below",
        rule="of_best",
        meaning="RankMe (Garrido et al. 2023) of the evaluation embeddings fell below "
        "a fifth of the best it reached: the features span ever fewer directions",
        cause="dimensional collapse: teacher temperature too low or centering off, "
        "learning rate too high, or too few distinct images",
    ),
    Sentinel(
        column="sentinel/feature_std",
        label="mean per-dimension std of the L2-normalised embeddings",
        threshold=0.1,
        direction="below",
        rule="of_best",
        meaning="per-dimension spread fell below a tenth of its best: every image maps "
        "to nearly the same point",
        cause="complete collapse: check centering (center_momentum), teacher "
        "temperature and the learning rate",
    ),
    Sentinel(
        column="sentinel/teacher_entropy",
        label="teacher output entropy / ln K",
        threshold=0.05,
        direction="below",
        rule="value",
        meaning="the teacher puts nearly all its mass on one prototype",
        cause="teacher temperature too low, or centering disabled",
    ),
    Sentinel(
        column="sentinel/prototypes_used",
        label="share of prototypes that are some image's argmax in the batch",
        threshold=0.01,
        direction="below",
        rule="value",
        meaning="fewer than 1% of the prototypes are ever chosen",
        cause="prototype collapse: teacher temperature, centering, or too small a batch",
    ),
    Sentinel(
        column="sentinel/koleo_max",
        label="largest per-sample KoLeo term",
        threshold=10.0,
        direction="above",
        rule="value",
        meaning="two images in a batch have (nearly) identical embeddings, "
        "so -log of their distance explodes",
        cause="duplicate images in the data (deduplicate), or koleo_loss_weight too high",
    ),
    Sentinel(
        column="sentinel/grad_spike",
        label="gradient norm / running median of the last 100 steps",
        threshold=10.0,
        direction="above",
        rule="value",
        meaning="the gradient norm jumped to over 10x its running median",
        cause="instability: lower the learning rate, lengthen warm-up, or clip gradients",
    ),
    Sentinel(
        column="sentinel/loss_at_lnk",
        label="DINO loss / ln K",
        threshold=0.98,
        direction="above",
        rule="held",
        meaning=f"the DINO loss stayed within 2% of ln K for {HOLD_STEPS} log steps: "
        "the student learns nothing from the teacher",
        cause="uniform teacher: teacher temperature too high, or the learning rate too "
        "low or still warming up",
    ),
)

BY_COLUMN: dict[str, Sentinel] = {s.column: s for s in SENTINELS}
COLUMNS: tuple[str, ...] = tuple(BY_COLUMN)
