"""Index build / save / load time and peak memory at 1M and 21M synthetic entries.

Each measurement runs in a fresh process so peak RSS is its own. Entries look like a
real BioVFM-21M scan: 61 sources, nested folders, 10 modalities, ~30-char names.

    python benchmarks/bench_index.py [--sizes 1000000 21000000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_build(n: int, path: str) -> dict[str, float]:
    from biovfm_core.data.index import IndexBuilder
    from biovfm_core.protocols import MODALITIES, SampleRecord

    t0 = time.perf_counter()
    b = IndexBuilder()
    for i in range(n):
        s = i % 61
        b.add(
            SampleRecord(
                uri=f"/data/biovfm21m/source_{s:02d}/series_{(i // 500) % 4000:04d}/img_{i:09d}.png",
                source=f"source_{s:02d}",
                modality=MODALITIES[s % 10],
                anatomy=("chest", "brain", "abdomen", "eye", "skin")[s % 5],
                label=None,
            )
        )
    index = b.build()
    t1 = time.perf_counter()
    index.save(path)
    t2 = time.perf_counter()
    return {
        "build_s": t1 - t0,
        "save_s": t2 - t1,
        "peak_mb": _peak_mb(),
        "file_mb": os.path.getsize(path) / 2**20,
        "index_mb": index.nbytes() / 2**20,
    }


def child_load(path: str) -> dict[str, float]:
    from biovfm_core.data.index import SampleIndex

    t0 = time.perf_counter()
    index = SampleIndex.load(path)
    t1 = time.perf_counter()
    index.counts("modality")
    _ = [index.record(i) for i in range(0, len(index), max(1, len(index) // 1000))]
    return {"load_s": t1 - t0, "peak_mb": _peak_mb(), "n": len(index)}


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 21_000_000])
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--child", nargs="+")
    a = p.parse_args()
    if a.child:
        if a.child[0] == "build":
            print(json.dumps(child_build(int(a.child[1]), a.child[2])))
        else:
            print(json.dumps(child_load(a.child[1])))
        return
    print(
        "| entries | build s | build peak RSS MB | save s | file MB | load s | load peak RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in a.sizes:
        path = os.path.join(a.dir, f"bench_index_{n}.npz")
        b = run_child("build", str(n), path)
        ld = run_child("load", path)
        print(
            f"| {n:,} | {b['build_s']:.1f} | {b['peak_mb']:.0f} | {b['save_s']:.1f} | "
            f"{b['file_mb']:.0f} | {ld['load_s']:.2f} | {ld['peak_mb']:.0f} |",
            flush=True,
        )
        os.unlink(path)


if __name__ == "__main__":
    main()
