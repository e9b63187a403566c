"""Collapse and instability sentinels: their statistics by hand, their alarms, stop_on."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_dinov2

from biovfm_core import hookimpl
from biovfm_core.config import RunConfig
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.protocols import ObjectiveBase, ViewSpec
from biovfm_core.registry import get_registry
from biovfm_core.train import signals as S
from biovfm_core.train.loop import train
from biovfm_core.train.sentinels import BY_COLUMN, COLUMNS, HOLD_STEPS, SENTINELS, markdown_table
from biovfm_core.train.watch import SentinelWatch, TrainingCollapsed

DOCS = Path(__file__).resolve().parents[1] / "docs" / "monitoring.md"


def rows_of(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ statistics


def test_rankme_counts_equal_directions_and_sees_one_line_as_one():
    assert S.rankme(torch.eye(8)).item() == pytest.approx(8.0, rel=1e-5)
    # Two singular values 3 and 1: p = (3/4, 1/4), exp(entropy) = 4 / 3^(3/4).
    two = torch.diag(torch.tensor([3.0, 1.0]))
    assert S.rankme(two).item() == pytest.approx(4 / 3**0.75, rel=1e-5)
    line = torch.outer(torch.arange(1.0, 7.0), torch.randn(5))
    assert S.rankme(line).item() == pytest.approx(1.0, abs=1e-3)


def test_feature_std_entropy_prototypes_and_koleo_by_hand():
    # Rows +e0 and -e0: dim 0 has values (1, -1), unbiased std sqrt(2); dim 1 has 0.
    assert S.feature_std(torch.tensor([[2.0, 0.0], [-3.0, 0.0]])).item() == pytest.approx(
        math.sqrt(2) / 2
    )
    assert S.feature_std(torch.ones(4, 3)).item() == 0.0
    assert S.teacher_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(1.0)
    assert S.teacher_entropy(torch.eye(4)).item() == 0.0
    # 4 crops choose prototypes 0, 0, 2, 2 of K=8: 2 distinct of at most min(4, 8).
    probs = torch.eye(8)[[0, 0, 2, 2]]
    assert S.prototypes_used(probs).item() == 0.5
    # Unit vectors at 0, 90 and 180 degrees: nearest distances sqrt(2) for all three.
    crop = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    assert S.koleo_max(crop).item() == pytest.approx(-math.log(math.sqrt(2) + 1e-8))
    duplicate = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    assert S.koleo_max(duplicate).item() == pytest.approx(-math.log(1e-8), rel=1e-4)


def test_signals_become_sentinel_columns_and_scalars_pass_through():
    values = S.sentinel_values(
        {
            "embeddings": torch.eye(4),
            "teacher_probs": torch.full((2, 4), 0.25),
            "my_stat": torch.tensor(0.5),
        }
    )
    assert set(values) == {
        "sentinel/rankme",
        "sentinel/feature_std",
        "sentinel/teacher_entropy",
        "sentinel/prototypes_used",
        "sentinel/my_stat",
    }
    assert values["sentinel/my_stat"].item() == 0.5


# ----------------------------------------------------------------------- watch


def test_of_best_alarms_once_per_crossing_and_again_after_recovery():
    watch = SentinelWatch()
    seen = [watch.check({"sentinel/rankme": v}, step) for step, v in enumerate([10, 5, 1.9, 1.5])]
    assert [len(a) for a in seen] == [0, 0, 1, 0]  # 1.9 < 0.2 x 10; 1.5 is the same crossing
    assert seen[2][0].reference == pytest.approx(2.0)
    assert "RankMe" in seen[2][0].line() and "Likely cause" in seen[2][0].line()
    assert watch.check({"sentinel/rankme": 5}, 4) == []
    assert len(watch.check({"sentinel/rankme": 1}, 5)) == 1


def test_held_and_warmup_sentinels_wait_for_the_end_of_warmup():
    watch = SentinelWatch(warmup_steps=10)
    # During warm-up: a loss at ln K and a huge KoLeo term are logged, not judged.
    for step in range(1, 11):
        assert watch.check({"sentinel/loss_at_lnk": 1.0, "sentinel/koleo_max": 18.0}, step) == []
    assert len(watch.check({"sentinel/koleo_max": 18.0}, 11)) == 1
    alarms = [watch.check({"sentinel/loss_at_lnk": 1.01}, 10 + i) for i in range(1, HOLD_STEPS + 1)]
    assert [len(a) for a in alarms] == [0] * (HOLD_STEPS - 1) + [1]


def test_grad_spike_is_against_the_median_and_the_watch_state_round_trips():
    watch = SentinelWatch()
    for _ in range(19):
        assert watch.grad_spike(1.0) is None  # too little history to judge
    assert watch.grad_spike(3.0) is None
    assert watch.grad_spike(11.0) == pytest.approx(11.0)  # median of 19 ones and a 3
    again = SentinelWatch()
    again.load_state_dict(watch.state_dict())
    assert again.grad_spike(2.0) == watch.grad_spike(2.0)


def test_docs_show_the_sentinel_table_as_the_code_has_it():
    assert markdown_table() in DOCS.read_text(encoding="utf-8")
    assert set(COLUMNS) == {s.column for s in SENTINELS} == set(BY_COLUMN)


# ------------------------------------------------------------------- in a run


def _tiny(tmp_path: Path, name: str, **sets) -> RunConfig:
    return tiny_dinov2(tmp_path, name, **{"train.batch_size": 8, "train.log_every": 1, **sets})


def test_a_collapsing_dinov2_is_flagged_and_stopped_keeping_the_last_good_checkpoint(
    tmp_path, capsys
):
    # DINOv2 issue 272's failure: no centering (a running centre that never moves) and a
    # teacher temperature falling to 1e-4 by step 3; 120 demo images, 15 steps an epoch.
    config = _tiny(
        tmp_path,
        "collapse",
        **{
            "train.max_steps": 6,
            "train.checkpoint_every": 1,
            "train.stop_on": "collapse",
            "optim.warmup_epochs": 0.14,  # 2 steps
            "options.objective.centering": "centering",
            "options.objective.center_momentum": 1.0,
            "options.objective.warmup_teacher_temp": 0.1,
            "options.objective.teacher_temp": 1e-4,
            "options.objective.warmup_teacher_temp_epochs": 0.2,  # 3 steps
        },
    )
    with pytest.raises(TrainingCollapsed) as caught:
        train(config, get_registry())
    run = tmp_path / "collapse"
    message = str(caught.value)
    good = run / "checkpoints" / "step_00000001"
    assert "stopped at step 3" in message and "sentinel/teacher_entropy" in message
    assert f"Last good checkpoint: {good}" in message and "teacher temperature" in message
    assert [r["step"] for r in rows_of(run)] == ["1", "2", "3"]  # the crossing is logged
    assert float(rows_of(run)[-1]["sentinel/teacher_entropy"]) < 0.05
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000001", "step_00000002"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "step 3: sentinel/teacher_entropy" in warnings[0]


class _NaNAt(ObjectiveBase, torch.nn.Module):
    """A tiny third-party objective: NaN loss at one step, and a signal of its own."""

    def __init__(self, backbone, task, *, nan_at: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.nan_at = nan_at
        self.views = ViewSpec(global_crops=1, global_size=32, local_crops=0)

    def training_step(self, batch, info):
        cls = self.backbone.forward_tokens(batch.global_views[0]).cls
        loss = cls.pow(2).mean()
        if info.step == self.nan_at:
            loss = loss * float("nan")
        signals = {"embeddings": cls.detach(), "my_stat": cls.detach().abs().max()}
        return {"loss": loss, "signals": signals}

    def eval_backbone(self):
        return self.backbone


class _NaNPlugin:
    @hookimpl
    def biovfm_register_objectives(self, register):
        register("nan_at", _NaNAt)


def test_stop_on_never_skips_a_non_finite_step_and_third_party_signals_are_logged(tmp_path, capsys):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_at_plugin")
    config = RunConfig(objective="nan_at", backbone="vit_tiny", output=str(tmp_path), name="r")
    for key, value in {
        "train.batch_size": 4,
        "train.max_steps": 3,
        "train.log_every": 1,
        "train.stop_on": "never",
        "data.num_workers": 0,
    }.items():
        config.set(key, value)
    result = train(config, registry)
    rows = rows_of(tmp_path / "r")
    assert result.steps == 3 and [r["loss"] for r in rows][1] == "nan"
    assert "skipped this step's update (train.stop_on=never)" in capsys.readouterr().err
    assert all(float(r["sentinel/my_stat"]) > 0 for r in rows)
    assert all(float(r["sentinel/rankme"]) >= 1 for r in rows)
    weights, _ = ckpt.load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(t).all() for t in weights.values())  # the NaN step changed none
