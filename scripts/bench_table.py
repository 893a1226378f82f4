#!/usr/bin/env python3
"""Print criterion results of `cargo bench --bench pack` as a markdown table of GB/s of
fp32 input, with each figure's ratio to the plain copy measured in the same run.
Usage: scripts/bench_table.py [target/criterion]"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"


def gbps(path):
    bench = json.load(open(os.path.join(path, "new", "benchmark.json")))
    est = json.load(open(os.path.join(path, "new", "estimates.json")))
    nbytes = bench["throughput"]["Bytes"]
    return nbytes / est["median"]["point_estimate"]  # bytes per ns = GB/s


for phase in ("pack", "unpack"):
    splits = sorted(d for d in os.listdir(root) if d.startswith(f"{phase}_split"))
    for s in sorted(splits, key=lambda d: int(d.split("split")[1])):
        base = os.path.join(root, s)
        copy = gbps(os.path.join(base, "copy"))
        print(f"\n{phase}, {s.split('_')[1]}: copy {copy:.2f} GB/s\n")
        # Packing with clipped ranges (Clip::Mse), where the run measured it.
        mse = os.path.isdir(os.path.join(base, "b8-mse"))
        print("| bits | none | lz4 | zstd |" + (" lz4, mse clip |" if mse else ""))
        print("|---|---|---|---|" + ("---|" if mse else ""))
        for bits in (2, 4, 8, 16):
            cells = []
            for run in [f"b{bits}/none", f"b{bits}/lz4", f"b{bits}/zstd"] + (
                [f"b{bits}-mse/lz4"] if mse else []
            ):
                g = gbps(os.path.join(base, run))
                cells.append(f"{g:.2f} ({100 * g / copy:.0f} %)")
            print(f"| {bits} | " + " | ".join(cells) + " |")
