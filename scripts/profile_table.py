#!/usr/bin/env python3
"""Markdown tables of an accuracy profile (`dyno profile accuracy` output), as in
docs/PACKING.md: per split, the fewest bits the scheduler keeps within a drop budget
and the bytes saved. A profile with intervals (`drop_ci95`) is held to the upper end
of each drop's 95 % interval, as the scheduler holds it (`Entry::planning_drop`); the
fewest bits whose drop alone fits are shown beside it.
Usage: scripts/profile_table.py PROFILE.json [BUDGET_POINTS]"""
import json
import sys

p = json.load(open(sys.argv[1]))
budget = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
metric = p["metric"]
base = p["baseline_accuracy"]
print(f"`{p['model']}`, {p['inputs']} inputs ({p['data']}); metric: {metric}"
      + (f"; fp32 top-1 accuracy {100 * base:.2f} %" if base is not None else "") + "\n")


def planning(e):
    ci = e.get("drop_ci95")
    return ci[1] if ci else e["drop_points"]


def drop(e):
    ci = e.get("drop_ci95")
    return f"{e['drop_points']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


print(f"| split | after | fp32 bytes | fewest bits, drop <= {budget:g} | fewest bits planned (upper end <= {budget:g}) | its drop [95 % CI] (pt) | best codec | packed bytes | reduction | 8-bit lz4 bytes |")
print("|---|---|---|---|---|---|---|---|---|---|")
best = None
for s in p["splits"]:
    fits = [e for e in s["entries"] if e["drop_points"] <= budget]
    ok = [e for e in s["entries"] if planning(e) <= budget]
    b8 = next(e for e in s["entries"] if e["precision"] == "8")
    alone = fits[0]["precision"] if fits else "none"
    if not ok:
        print(f"| {s['split']} | {s['after_block'] or 'input'} | {s['fp32_bytes']} | {alone} | none | | | | | {b8['bytes']['lz4']:.0f} |")
        continue
    e = ok[0]
    codec, nbytes = min(e["bytes"].items(), key=lambda kv: kv[1])
    red = s["fp32_bytes"] / nbytes
    if best is None or red > best[0]:
        best = (red, s["split"], e["precision"], codec, nbytes, drop(e))
    print(f"| {s['split']} | {s['after_block'] or 'input'} | {s['fp32_bytes']} | {alone} | {e['precision']} | {drop(e)} | {codec} | {nbytes:.0f} | {red:.1f}x | {b8['bytes']['lz4']:.0f} |")
if best:
    print(f"\nLargest reduction within {budget:g} point(s): split {best[1]} at {best[2]} bits with {best[3]}: "
          f"{best[4]:.0f} bytes, {best[0]:.1f}x smaller than fp32 (drop {best[5]} points).")
