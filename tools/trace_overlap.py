#!/usr/bin/env python3
"""How much of a data-parallel run's all-reduce time overlaps its backward pass, from the Chrome
traces `voxgrad --trace` writes (rank 0's FILE.json, rank K's FILE.rankK.json):

    mpirun -np 2 voxgrad train ... --distributed --trace run.json
    tools/trace_overlap.py run.json run.rank1.json

The collectives run on the trace's "communication" track (tid 2), the backward ops ("*_backward")
on the CPU track (tid 0); "allreduce_wait" is what the step waited after its backward pass."""
import json
import sys


def overlap(path):
    events = [e for e in json.load(open(path))["traceEvents"] if e.get("ph") == "X"]
    reductions = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["tid"] == 2 and e["name"] == "allreduce"]
    backward = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["tid"] == 0 and e["name"].endswith("_backward"))
    waited = sum(e["dur"] for e in events if e["name"] == "allreduce_wait")
    total = sum(b - a for a, b in reductions)
    hidden = sum(max(0.0, min(b, t) - max(a, s)) for a, b in reductions for s, t in backward)
    return len(reductions), total, hidden, waited


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        n, total, hidden, waited = overlap(path)
        share = hidden / total if total > 0 else 0.0
        print(f"{path}: {n} all-reduces, {total / 1e3:.1f} ms, {hidden / 1e3:.1f} ms of it during backward ops "
              f"({100 * share:.0f}%), {waited / 1e3:.1f} ms waited after the backward passes")


if __name__ == "__main__":
    main()
