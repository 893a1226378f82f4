#!/usr/bin/env python3
"""Side by side, several accuracy profiles of one model measured with different ranges
(`dyno profile accuracy --per-channel / --clip mse`), as in docs/PACKING.md: per split,
the drop at 1 and 2 bits, and the fewest bits within a budget with the reduction against
fp32 there (best codec, header included); then the largest reduction of any entry within
the budget.
Usage: scripts/profile_compare.py [--budget POINTS] PROFILE.json..."""
import json
import sys

args = sys.argv[1:]
budget = 1.0
if args[:1] == ["--budget"]:
    budget, args = float(args[1]), args[2:]
profiles = [json.load(open(a)) for a in args]


def label(p):
    return f"{p.get('clip', 'minmax')}, {p.get('granularity', 'per-tensor')}"


def reduction(s, e):
    return s["fp32_bytes"] / min(e["bytes"].values())


def cells(s):
    one, two = s["entries"][0], s["entries"][1]
    ok = [e for e in s["entries"] if e["drop_points"] <= budget]
    fewest = (f"{ok[0]['precision']} ({ok[0]['drop_points']:.2f}, {reduction(s, ok[0]):.1f}x)"
              if ok else "none")
    return f"{one['drop_points']:.1f} | {two['drop_points']:.1f} | {fewest}"


print(f"`{profiles[0]['model']}`, {profiles[0]['inputs']} inputs; drops in points of "
      f"{profiles[0]['metric']}; budget {budget:g} point(s)\n")
print("| split | " + " | ".join(f"{label(p)}: 1 bit | 2 bits | fewest bits (drop, reduction)"
                                 for p in profiles) + " |")
print("|---|" + "---|---|---|" * len(profiles))
for i, s in enumerate(profiles[0]["splits"]):
    print(f"| {s['split']} | " + " | ".join(cells(p["splits"][i]) for p in profiles) + " |")
print()
for p in profiles:
    best = max(((reduction(s, e), s["split"], e["precision"], e["drop_points"])
                for s in p["splits"] for e in s["entries"] if e["drop_points"] <= budget),
               default=None)
    if best:
        print(f"- {label(p)}: largest reduction within {budget:g} point(s): {best[0]:.1f}x "
              f"(split {best[1]}, {best[2]} bits, drop {best[3]:.2f})")
