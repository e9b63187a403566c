"""`biovfm report RUN`: read a run folder (also one still being written), draw its
curves, sentinels with their alarm levels and monitor intervals, write one page."""

from __future__ import annotations

import base64
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError
from biovfm_core.runreport import plots
from biovfm_core.runreport.page import render, write_report
from biovfm_core.runreport.read import read_run
from biovfm_core.train.sentinels import BY_COLUMN

HEADER = (
    "step,epoch,dino_loss,ibot_loss,loss,lr,weight_decay,teacher_momentum,teacher_temp,"
    "images_per_s,data_wait_s,sentinel/rankme,sentinel/koleo_max,sentinel/loss_at_lnk,"
    "monitor/knn_acc,monitor/knn_acc_low,monitor/knn_acc_high,monitor/knn_auc,monitor/seconds"
)
ROWS = [
    "1,0.1,6.0,2.0,8.0,1e-4,0.04,0.992,0.04,4,0.5,10,2,0.99,,,,,",
    "2,0.2,5.5,1.9,7.4,2e-4,0.05,0.993,0.05,8,0.5,20,3,0.99,0.50,0.40,0.60,0.70,8.5",
    "3,0.3,5.2,1.8,7.0,3e-4,0.06,0.994,0.06,8,0.25,15,4,0.97,,,,,",
    "4,0.4,5.0,1.7,6.7,3e-4,0.07,0.995,0.07,8,0,,5,0.95,0.62,0.55,0.69,0.80,4.5",
    "5,0.5,4.9,1.6,6.5,2e-4,0.08,0.996,0.07,4,1.0,30,6,0.90,,,,,",
]


def make_run(tmp_path: Path, *, partial: bool = True) -> Path:
    """A run folder as a DINOv2 run with the monitor on leaves it mid-way: a resumed
    stretch (step 3 twice, a repeated header) and a half-written last line."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        HEADER,
        *ROWS[:3],
        HEADER,
        "3,0.3,5.2,1.8,7.0,3e-4,0.06,0.994,0.06,8,0.25,15,4,0.97,,,,,",
    ]
    text = "\n".join([*lines, *ROWS[3:]]) + "\n"
    if partial:
        text += "6,0.6,4.8,1.5"  # the loop is writing step 6 right now
    (run / "metrics.csv").write_text(text)
    (run / "config.yaml").write_text(
        "objective: dinov2\nbackbone: vit_tiny\ntrain:\n  batch_size: 8\n  max_steps: 10\n"
    )
    return run


def test_a_run_still_being_written_is_read_up_to_its_last_whole_line(tmp_path):
    record = read_run(make_run(tmp_path))
    assert record.steps == [1, 2, 3, 4, 5]
    assert record.skipped_partial_line and not record.finished
    assert record.columns["loss"] == [8.0, 7.4, 7.0, 6.7, 6.5]
    assert math.isnan(record.columns["monitor/knn_acc"][0])
    assert record.config["train"]["batch_size"] == 8


def test_of_best_alarm_level_follows_the_best_value_so_far():
    rankme = BY_COLUMN["sentinel/rankme"]  # below 0.2 x best
    line = plots.threshold_line(rankme, [10.0, 20.0, 15.0, math.nan, 30.0])
    assert line == pytest.approx([2.0, 4.0, 4.0, 4.0, 6.0])
    koleo = BY_COLUMN["sentinel/koleo_max"]  # a fixed level
    assert plots.threshold_line(koleo, [1.0, 50.0]) == [10.0, 10.0]


def test_data_wait_share_is_wait_over_step_time(tmp_path):
    record = read_run(make_run(tmp_path))
    steps, share = plots._data_wait_share(record)
    # step time = batch 8 / images_per_s: 2 s, 1 s, 1 s, 1 s, 2 s
    assert steps == [1, 2, 3, 4, 5]
    assert share == pytest.approx([0.25, 0.5, 0.25, 0.0, 0.5])


def test_monitor_values_are_paired_with_their_interval_columns(tmp_path):
    record = read_run(make_run(tmp_path))
    assert plots.monitor_columns(record) == {
        "monitor/knn_acc": ("monitor/knn_acc_low", "monitor/knn_acc_high"),
        "monitor/knn_auc": None,
    }  # monitor/seconds is not a score: it has its own axis


def _pngs(page: str) -> list[tuple[str, int, int]]:
    """(alt text, width, height) of every embedded PNG."""
    found = []
    for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page):
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", raw[16:24])
        found.append((alt, width, height))
    return found


def test_the_page_holds_every_section_and_the_config(tmp_path):
    page = render(read_run(make_run(tmp_path)))
    titles = [alt for alt, width, height in _pngs(page) if width > 200 and height > 100]
    assert titles == [
        "Loss and its parts",
        "Schedules: lr, weight decay, teacher momentum and temperature",
        "Monitor (features of the evaluation backbone, with intervals)",
        "Sentinels and their alarm levels",
        "Throughput and data wait",
    ]
    assert "sentinel/rankme: effective rank" in page and "0.2 x its best so far" in page
    assert "for 20 log steps in a row" in page  # the held loss-at-ln-K sentinel
    assert "still running" in page and "a half-written last line was skipped" in page
    assert "<pre>objective: dinov2\nbackbone: vit_tiny" in page


def test_a_run_without_monitor_or_sentinels_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss,lr\n1,8.0,1e-4\n2,7.5,2e-4\n")
    page = render(read_run(run))
    assert len(_pngs(page)) == 2
    assert "this run had no train.monitor" in page and "no sentinel/... columns" in page
    assert "no config.yaml in the run folder" in page


def test_report_command_writes_the_page_atomically(tmp_path):
    run = make_run(tmp_path, partial=False)
    out = tmp_path / "pages" / "run.html"
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report written to {out}" in result.output
    assert out.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.html"]  # no temp file left
    assert write_report(run) == run / "report.html"


def test_report_of_a_folder_without_metrics_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"no metrics.csv there"):
        read_run(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: biovfm report")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_page_renders_in_a_real_browser(tmp_path):
    """Headless Chromium loads the page and paints its figures (a screenshot with
    many colours, not a blank or broken-image page)."""
    from matplotlib import image

    page = write_report(make_run(tmp_path), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = image.imread(shot)
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1200
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50  # curves, legends, text: not a blank page
