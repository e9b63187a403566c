"""The collapse and instability sentinels: what each watches, where it alarms, and why.

One table, read by the training loop (which computes the values and warns or stops on a
crossing), by `biovfm report` (which draws each threshold under its curve) and by
docs/monitoring.md. Each value is a column of `metrics.csv` named `Sentinel.column`.

Rules:
- ``value``: alarm when the value itself crosses ``threshold``;
- ``of_best``: alarm when the value falls below ``threshold`` times the best value seen
  so far in this run (a ratio, for statistics whose healthy level depends on the model);
- ``held``: alarm when the value stays across ``threshold`` for ``HOLD_STEPS`` log steps
  in a row after the learning-rate warm-up (a loss pinned at ln K is normal while the
  learning rate warms up, not for thousands of steps after).

``kind`` says what a crossing does under ``train.stop_on``: ``collapse`` sentinels stop a
run with ``stop_on=collapse``; ``instability`` and ``stall`` ones only warn (a gradient
spike or one duplicate pair often passes; stopping on them would end healthy runs).
``after_warmup`` sentinels are logged but not judged during the learning-rate warm-up,
when their values mean nothing yet: LayerScale 1e-5 starts every CLS token nearly
equal, so KoLeo is large and, without Sinkhorn-Knopp, every crop picks one prototype.
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
    kind: Literal["collapse", "instability", "stall"] = "collapse"
    after_warmup: bool = False


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
        label="distinct argmax prototypes in the batch / min(batch crops, K)",
        # Relative to the batch, not to K: a 256-crop batch can pick at most 256 of
        # DINOv2's 65,536 prototypes (0.4%), so a share of K would alarm on every
        # healthy run. A tenth still flags one prototype for a whole 16-crop batch.
        threshold=0.1,
        direction="below",
        rule="value",
        meaning="the batch's crops pick fewer than a tenth as many distinct prototypes "
        "as they could",
        after_warmup=True,
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
        kind="instability",
        after_warmup=True,
    ),
    Sentinel(
        column="sentinel/grad_spike",
        label="gradient norm / running median of the last 100 steps",
        threshold=10.0,
        direction="above",
        rule="value",
        meaning="the gradient norm jumped to over 10x its running median",
        cause="instability: lower the learning rate, lengthen warm-up, or clip gradients",
        kind="instability",
        after_warmup=True,
    ),
    Sentinel(
        column="sentinel/loss_at_lnk",
        label="DINO loss / ln K",
        # At or above ln K, not "near" it: against a uniform teacher the loss is ln K plus
        # KL(uniform || student) >= ln K, while a learning run sits just below (the slow
        # CPU check in tests/test_pretraining_helps.py stays within 0.04 of ln K for 600
        # steps and still learns), so a band below ln K would alarm on healthy runs.
        threshold=1.0,
        direction="above",
        rule="held",
        meaning=f"the DINO loss stayed above ln K (a uniform guess's loss) for "
        f"{HOLD_STEPS} log steps after warm-up: the student learns nothing from the teacher",
        cause="uniform teacher: teacher temperature too high, or the learning rate too low",
        kind="stall",
        after_warmup=True,
    ),
)

BY_COLUMN: dict[str, Sentinel] = {s.column: s for s in SENTINELS}
COLUMNS: tuple[str, ...] = tuple(BY_COLUMN)


def markdown_table() -> str:
    """The table docs/monitoring.md shows (a test keeps the two equal)."""
    rules = {
        "value": "{side} {t:g}",
        "of_best": "{side} {t:g} x best so far",
        "held": "{side} {t:g} for {n} log steps",
    }
    lines = [
        "| column | statistic | alarm when | judged | stops with `stop_on=collapse` "
        "| meaning | likely cause and knob |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SENTINELS:
        side = "<" if s.direction == "below" else ">"
        alarm = rules[s.rule].format(side=side, t=s.threshold, n=HOLD_STEPS)
        judged = "after warm-up" if s.after_warmup else "from step 1"
        stops = "yes" if s.kind == "collapse" else f"no ({s.kind})"
        lines.append(
            f"| `{s.column}` | {s.label} | {alarm} | {judged} | {stops} | {s.meaning} | {s.cause} |"
        )
    return "\n".join(lines)
