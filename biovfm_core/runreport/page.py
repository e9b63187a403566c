"""One self-contained HTML page of a run: every figure embedded as a base64 PNG, so
the page can be mailed or opened from a cluster's shared folder on its own."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from biovfm_core.files import write_atomic
from biovfm_core.runreport import plots
from biovfm_core.runreport.read import RunRecord, read_run

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; white-space: pre-wrap; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; } td { padding: 0.15em 1em 0.15em 0; }
"""

# (figure maker, heading, what the page says when the run logged none of it)
_SECTIONS = (
    (plots.losses, "Loss", "no loss columns in metrics.csv yet"),
    (plots.schedules, "Schedules", "no schedule columns (lr, weight_decay, ...) in metrics.csv"),
    (plots.monitor, "Monitor", "no monitor/... columns: this run had no train.monitor"),
    (plots.sentinels, "Sentinels", "no sentinel/... columns in metrics.csv"),
    (plots.throughput, "Throughput", "no images_per_s column in metrics.csv"),
)


def render(record: RunRecord) -> str:
    """The page's HTML."""
    esc = html.escape
    last = record.steps[-1] if record.steps else 0
    total = (record.config.get("train") or {}).get("max_steps")
    state = "finished" if record.finished else "still running, or stopped early"
    facts = [
        ("run folder", str(record.run_dir.resolve())),
        ("steps logged", f"{len(record.steps)} (last step {last}" + (f" of {total})" if total else ")")),
        ("state", state + (" (a half-written last line was skipped)" if record.skipped_partial_line else "")),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]  # fmt: skip
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>biovfm run {esc(record.run_dir.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>biovfm run {esc(record.run_dir.name)}</h1>",
        "<table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in facts),
        "</table>",
    ]
    for make, heading, absent in _SECTIONS:
        parts.append(f"<h2>{esc(heading)}</h2>")
        figure = make(record)
        if figure is None:
            parts.append(f'<p class="note">{esc(absent)}</p>')
            continue
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f'<img alt="{esc(figure.title)}" src="data:image/png;base64,{data}">')
        if figure.note:
            parts.append(f'<p class="note">{esc(figure.note)}</p>')
    parts.append("<h2>Resolved config</h2>")
    if record.config_text:
        parts.append(f"<pre>{esc(record.config_text)}</pre>")
    else:
        parts.append('<p class="note">no config.yaml in the run folder</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` (default ``RUN/report.html``) atomically."""
    record = read_run(run_dir)
    path = Path(output) if output else Path(run_dir) / "report.html"
    return write_atomic(path, render(record).encode("utf-8"))
