"""Why litdata: the same items through litdata and webdataset, written and read back.

    python benchmarks/bench_streaming_libs.py [--items 1000] [--dir /tmp]

Each item is what ``biovfm data pack`` stores: a 16-bit 512² CT-like slice as PNG
bytes plus its metadata. Measured per library: write rate, sequential read rate, a
random read (``dataset[i]``) where the library has one, and whether a loader stopped
mid-epoch resumes to exactly the items the uninterrupted epoch would have given.
mosaicml-streaming is not measured: installing it here pulls transformers, the
Azure, Google Cloud and OCI SDKs and downgrades numpy (2.4.6 → 2.1.3; `pip install
--dry-run mosaicml-streaming`, 2026-11-30), which rules it out as a core dependency.
A library that is not installed is reported as such.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def _items(n: int):
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) ** 2 + (xx - 256) ** 2 < 200**2) * 1040
    for i in range(n):
        img = (body + rng.normal(0, 20, (512, 512)) + 24 + i % 7).clip(0, 4095).astype(np.uint16)
        png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
        yield i, {"image": png, "uri": f"/data/ct/series_{i // 100:04d}/IM-{i:05d}.dcm",
                  "source": "ct", "label": -1}  # fmt: skip


def bench_litdata(folder: str, items: list) -> dict:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    from biovfm_core.data.shards.format import writer_serializers

    t = time.perf_counter()
    w = BinaryWriter(folder, chunk_bytes=64 << 20, serializers=writer_serializers())
    for i, item in items:
        w[i] = item
    w.done()
    w.merge()
    write = len(items) / (time.perf_counter() - t)
    ds = StreamingDataset(folder, batch_decode=False)
    ds[0]
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    seq = len(ds) / (time.perf_counter() - t)
    order = np.random.default_rng(1).permutation(len(ds))
    t = time.perf_counter()
    for i in order:
        ds[int(i)]
    rand = len(ds) / (time.perf_counter() - t)

    def loader():
        data = StreamingDataset(folder, shuffle=True, seed=3)
        return StreamingDataLoader(data, batch_size=10, num_workers=2, collate_fn=_uris)

    whole = [u for b in loader() for u in b]
    first, cut = [], loader()
    for k, b in enumerate(cut):
        first += b
        if k == 20:
            state = cut.state_dict()
            break
    rest = loader()
    rest.load_state_dict(state)
    resumed = first + [u for b in rest for u in b]
    return {"write": write, "seq": seq, "rand": rand, "resume": resumed == whole}


def _uris(batch):
    return [s["uri"] for s in batch]


def bench_webdataset(folder: str, items: list) -> dict:
    import webdataset as wds

    os.makedirs(folder)
    t = time.perf_counter()
    shards = os.path.join(folder, "shard-%06d.tar")
    with wds.ShardWriter(shards, maxsize=64 << 20, verbose=0) as sink:
        for i, item in items:
            sink.write({"__key__": f"{i:09d}", "png": item["image"], "json": {
                "uri": item["uri"], "source": item["source"], "label": item["label"]}})  # fmt: skip
    write = len(items) / (time.perf_counter() - t)
    urls = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    t = time.perf_counter()
    n = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
    seq = n / (time.perf_counter() - t)
    # No random access and no loader state: a resumed loader starts its epoch over.
    return {"write": write, "seq": seq, "rand": None, "resume": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    items = list(_items(args.items))
    mb = sum(len(x["image"]) for _, x in items) / 1e6
    root = tempfile.mkdtemp(prefix="bench-libs-", dir=args.dir)
    print(f"{args.items} items, {mb:.0f} MB of PNG; load average {os.getloadavg()[0]:.2f}")
    print("| library | version | write items/s | sequential read items/s | random read items/s "
          "| mid-epoch resume exact |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|")
    try:
        for name, fn in (("litdata", bench_litdata), ("webdataset", bench_webdataset)):
            try:
                mod = __import__(name)
            except ImportError:
                print(f"| {name} | not installed | | | | |")
                continue
            r = fn(os.path.join(root, name), items)
            rand = f"{r['rand']:.0f}" if r["rand"] else "no random access"
            resume = {True: "yes", False: "NO", None: "no loader state"}[r["resume"]]
            version = getattr(mod, "__version__", "?")
            print(f"| {name} | {version} | {r['write']:.0f} | {r['seq']:.0f} | {rand} | {resume} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
