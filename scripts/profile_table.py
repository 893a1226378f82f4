#!/usr/bin/env python3
"""Markdown tables of an accuracy profile (`dyno profile accuracy` output), as in
docs/PACKING.md: per split, the fewest bits within a drop budget and the bytes saved.
Usage: scripts/profile_table.py PROFILE.json [BUDGET_POINTS]"""
import json
import sys

p = json.load(open(sys.argv[1]))
budget = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
metric = p["metric"]
base = p["baseline_accuracy"]
print(f"`{p['model']}`, {p['inputs']} inputs ({p['data']}); metric: {metric}"
      + (f"; fp32 top-1 accuracy {100 * base:.2f} %" if base is not None else "") + "\n")
print(f"| split | after | fp32 bytes | fewest bits within {budget:g} pt | drop (pt) | best codec | packed bytes | reduction | 8-bit lz4 bytes |")
print("|---|---|---|---|---|---|---|---|---|")
best = None
for s in p["splits"]:
    ok = [e for e in s["entries"] if e["drop_points"] <= budget]
    b8 = next(e for e in s["entries"] if e["precision"] == "8")
    if not ok:
        print(f"| {s['split']} | {s['after_block'] or 'input'} | {s['fp32_bytes']} | none | | | | | {b8['bytes']['lz4']:.0f} |")
        continue
    e = ok[0]
    codec, nbytes = min(e["bytes"].items(), key=lambda kv: kv[1])
    red = s["fp32_bytes"] / nbytes
    if best is None or red > best[0]:
        best = (red, s["split"], e["precision"], codec, nbytes, e["drop_points"])
    print(f"| {s['split']} | {s['after_block'] or 'input'} | {s['fp32_bytes']} | {e['precision']} | {e['drop_points']:.2f} | {codec} | {nbytes:.0f} | {red:.1f}x | {b8['bytes']['lz4']:.0f} |")
if best:
    print(f"\nLargest reduction within {budget:g} point(s): split {best[1]} at {best[2]} bits with {best[3]}: "
          f"{best[4]:.0f} bytes, {best[0]:.1f}x smaller than fp32 (drop {best[5]:.2f} points).")
