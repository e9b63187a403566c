"""``biovfm data``: scan sources into an index, print statistics.

numpy, the readers and the catalog code are imported inside the commands, so
``biovfm --help`` does not pay for them.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

import click

DATA_HELP = (
    "Catalog YAML, the shipped catalog 'biovfm21m', or one source KIND:PATH "
    "(folder:, dicom:, nifti:, medmnist:, demo), tags/options after '?': "
    "folder:/data/cxr?modality=xray&anatomy=chest&verify=false. Repeatable. Omitted: the "
    "built-in demo data."
)
OPT_HELP = (
    "Reader option for every --data source, e.g. --opt dataset.verify=false (repeatable); "
    "a source's own ?key=value wins. `biovfm plugins --options folder` lists them."
)


def _dataset_options(opts: tuple[str, ...]) -> dict[str, Any]:
    """``--opt dataset.KEY=VALUE`` values; any other kind is refused, not ignored."""
    from biovfm_core.errors import ConfigError
    from biovfm_core.options import parse_assignment

    options: dict[str, Any] = {}
    for text in opts:
        key, value = parse_assignment(text)
        kind, dot, name = key.partition(".")
        if kind != "dataset" or not dot or not name:
            raise ConfigError(f"--opt {text}: biovfm data takes only dataset.KEY=VALUE options")
        options[name] = value
    return options


@click.group("data")
def data() -> None:
    """Index and inspect pretraining data (catalogs, folders, DICOM, NIfTI, MedMNIST)."""


def _packed_sources(index: Any, lo: int, hi: int) -> list[str]:
    """Rows ``lo:hi`` of a shard set's scan by the source they were packed from, with
    their modalities: the set's one row in the table holds many sources."""
    import numpy as np

    rows = index.select(np.arange(lo, hi))
    lines = []
    for name, n in sorted(rows.counts("source").items()):
        mods = rows.select(np.flatnonzero(rows.source_ids == index.sources.index(name)))
        kinds = ", ".join(f"{m} {k}" for m, k in mods.counts("modality").items())
        lines.append(f"    packed from {name[:24]:<24} {n:>10} images ({kinds})")
    return lines


def _status_table(report: Any, index: Any = None) -> list[str]:
    lines = [
        f"{'source':<24} {'reader':<8} {'status':<8} {'found':>10} {'expected':>10} {'problems':>8}"
    ]
    start = 0  # a source's rows follow the rows of the sources before it
    for s in report.sources:
        exp = "" if s.expected is None else str(s.expected)
        lines.append(
            f"{s.name[:24]:<24} {s.reader:<8} {s.status:<8} {s.found:>10} {exp:>10} {s.problems:>8}"
        )
        if s.error:
            lines.append(f"    error: {s.error}")
        if s.status == "missing" and s.url:
            lines.append(f"    download: {s.url}")
        lines.extend(f"    note: {n}" for n in s.notes)
        if index is not None and s.reader == "shards" and s.found:
            lines.extend(_packed_sources(index, start, start + s.found))
        start += s.found
    return lines


@data.command("scan")
@click.option("--data", "data_specs", multiple=True, metavar="SPEC", help=DATA_HELP)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Index file to write (.npz). Omitted: only report what is present, missing or short.",
)
@click.option(
    "--root", type=click.Path(file_okay=False), help="Override the catalog's root folder."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="CSV of files that could not be used (default with -o: INDEX.problems.csv).",
)
@click.option(
    "--allow-missing-sources",
    is_flag=True,
    help="Write the index even when a source fails to scan (it is left out and reported).",
)
@click.option("--opt", "opts", multiple=True, metavar="dataset.KEY=VALUE", help=OPT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the scan report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No per-source progress lines.")
def scan(
    data_specs: tuple[str, ...],
    opts: tuple[str, ...],
    output: str | None,
    root: str | None,
    report_path: str | None,
    allow_missing_sources: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Report present / missing / short sources and bad files of --data; with -o, also
    build its sample index.

    Missing sources are reported with their download page; a source that fails to
    scan (e.g. a bad reader option) is an error naming it, unless --allow-missing-sources.
    """
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.scan import default_problem_path, scan_sources

    sources, _ = resolve_data(data_specs, root=root, options=_dataset_options(opts))
    progress = None if (quiet or as_json) else (lambda m: click.echo(m, err=True))
    index, report = scan_sources(
        sources, progress=progress, stop_on_error=not allow_missing_sources
    )
    path = index.save(output) if output else None
    problems = report_path or (default_problem_path(path) if path else None)
    if problems:
        report.write_problems(problems)
    if as_json:
        out = report.as_dict()
        out.update(index=path, problems_file=problems, problem_count=len(report.problems))
        out.pop("problems")
        click.echo(json.dumps(out, indent=2))
        return
    for line in _status_table(report, index):
        click.echo(line)
    counts = {
        st: len(report.by_status(st)) for st in ("present", "short", "missing", "empty", "error")
    }
    listed = f"listed in {problems}" if problems else "(give -o or --report to list them)"
    click.echo(
        f"{report.total} images from {len(report.sources)} sources "
        f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
        f"{len(report.problems)} unusable files {listed}"
    )
    if path:
        click.echo(f"index written to {path}")


@data.command("stats")
@click.option(
    "--index",
    "index_path",
    type=click.Path(exists=True, dir_okay=False),
    help="An index from `biovfm data scan`.",
)
@click.option(
    "--data",
    "data_specs",
    multiple=True,
    metavar="SPEC",
    help="Scan these sources instead of reading an index. " + DATA_HELP,
)
@click.option(
    "--root", type=click.Path(file_okay=False), help="Override the catalog's root folder."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    help="Also write the counts to this CSV file (columns: by, name, images).",
)
def stats(
    index_path: str | None,
    data_specs: tuple[str, ...],
    root: str | None,
    as_json: bool,
    csv_path: str | None,
) -> None:
    """Counts by source / modality / anatomy (of --index, or of --data scanned now)."""
    from biovfm_core.errors import ConfigError

    report = None
    if index_path and data_specs:
        raise ConfigError("give --index or --data, not both")
    if index_path:
        from biovfm_core.data.index import SampleIndex

        index = SampleIndex.load(index_path)
    else:
        from biovfm_core.data.catalog import resolve_data
        from biovfm_core.data.scan import scan_sources

        sources, _ = resolve_data(data_specs, root=root)
        index, report = scan_sources(sources, stop_on_error=True)
    counts = {by: index.counts(by) for by in ("source", "modality", "anatomy")}
    result: dict[str, Any] = {"total": len(index), **counts}
    if report is not None:
        result["sources_status"] = {s.name: s.status for s in report.sources}
        result["problems"] = len(report.problems)
    else:
        expected = {k: v.get("expected_count") for k, v in index.sources_meta.items()}
        result["expected"] = {k: v for k, v in expected.items() if v}
    if csv_path:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["by", "name", "images"])
            for by, table in counts.items():
                for name, n in table.items():
                    w.writerow([by, name, n])
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{len(index)} images")
    for by, table in counts.items():
        click.echo(f"\nby {by}:")
        for name, n in table.items():
            share = 100.0 * n / max(1, len(index))
            click.echo(f"  {name:<28} {n:>10}  {share:5.1f}%")
    if report is not None and report.problems:
        click.echo(f"\n{len(report.problems)} unusable files (run `biovfm data scan` for the list)")
    if csv_path:
        click.echo(f"\ncounts written to {os.path.abspath(csv_path)}", file=sys.stderr)


PLANES_HELP = (
    "Planes volumes are cut into, comma list of axial, coronal, sagittal. "
    "Applies to readers with an 'axis' option (nifti: axis 2 axial, 1 coronal, 0 sagittal "
    "for RAS data), scanned once per plane; a source that sets its own axis keeps it, and "
    "readers without the option (dicom, folder, demo) are packed as they scan. How the "
    "BioVFM-21M study sliced its volumes is not stated in what it published (its source "
    "table gives image counts only)."
)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


@data.command("pack")
@click.option("--data", "data_specs", multiple=True, metavar="SPEC", help=DATA_HELP)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(file_okay=False),
    help="Shard folder to write (a litdata dataset plus biovfm-index.npz); created if new.",
)
@click.option("--planes", default="axial", show_default=True, help=PLANES_HELP)
@click.option(
    "--max-side",
    type=click.IntRange(min=1),
    help="Shrink images whose longer side exceeds this many pixels (area averaging, depth "
    "kept). Default: native size.",
)
@click.option(
    "--encoding",
    type=click.Choice(["zstd", "png", "raw"]),
    default="zstd",
    show_default=True,
    help="zstd: lossless arrays, fast to read (within ~1.5x of PNG's bytes); png: "
    "lossless, smallest, slowest to read; raw: uncompressed arrays.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Decoding processes (default: min(8, CPU count)).",
)
@click.option(
    "--chunk-mb",
    type=click.FloatRange(min=0.001),
    default=64.0,
    show_default=True,
    help="Target size of one litdata chunk file, in MB.",
)
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Images per part: the unit one worker writes and a resumed pack skips when done.",
)
@click.option(
    "--root", type=click.Path(file_okay=False), help="Override the catalog's root folder."
)
@click.option("--opt", "opts", multiple=True, metavar="dataset.KEY=VALUE", help=OPT_HELP)
@click.option(
    "--allow-missing-sources",
    is_flag=True,
    help="Go on when a source fails to scan (missing sources are always reported and skipped).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace a shard set or unfinished pack already in -o."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def pack_cmd(
    data_specs: tuple[str, ...],
    output: str,
    planes: str,
    max_side: int | None,
    encoding: str,
    workers: int | None,
    chunk_mb: float,
    part_size: int,
    root: str | None,
    opts: tuple[str, ...],
    allow_missing_sources: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Decode --data once into shards for fast training (`--data shards:FOLDER`).

    Every image is decoded by its source's reader and stored at its native depth
    (uint8, or 16-bit for CT/MR/X-ray) with its source, modality, anatomy, label and
    original file and slice. Bad files are skipped and listed in
    FOLDER/pack_problems.csv; missing sources are reported. A killed pack resumes
    when the same command is run again.
    """
    from biovfm_core.data.shards.pack import pack

    tty = sys.stderr.isatty()
    pending = [False]

    def say(line: str) -> None:
        # On a terminal the progress line rewrites itself; elsewhere (logs) each
        # update is its own line.
        if tty and line.startswith("packed "):
            click.echo("\r\033[K" + line, nl=False, err=True)
            pending[0] = True
            return
        if pending[0]:
            click.echo("", err=True)
            pending[0] = False
        click.echo(line, err=True)

    report = pack(
        list(data_specs),
        output,
        workers=workers,
        encoding=encoding,
        max_side=max_side,
        planes=planes,
        chunk_bytes=max(1, int(chunk_mb * 1_000_000)),
        part_size=part_size,
        dataset_options=_dataset_options(opts),
        root=root,
        overwrite=overwrite,
        allow_failed_sources=allow_missing_sources,
        progress=None if quiet else say,
        progress_every=1.0 if tty else 10.0,
    )
    if pending[0]:
        click.echo("", err=True)
    if report.already_complete:
        click.echo(f"{report.out} is already a complete shard set ({report.images} images)")
        return
    for s in report.sources:
        if s["status"] != "present":
            why = f": {s['error']}" if s["error"] else ""
            url = f" (download: {s['url']})" if s["status"] == "missing" and s["url"] else ""
            click.echo(f"source {s['name']}: {s['status']}{why}{url}")
    resumed = (
        f", {report.parts_resumed} of {report.parts} parts from an earlier run"
        if (report.parts_resumed)
        else ""
    )
    click.echo(
        f"packed {report.images} images ({report.problems} problems, listed in "
        f"{report.problems_file}) into {report.chunks} chunks, {_size(report.bytes)}, "
        f"in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s{resumed})"
    )
    click.echo(f"train on it with --data shards:{report.out}")
