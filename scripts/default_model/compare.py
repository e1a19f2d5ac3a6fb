#!/usr/bin/env python3
"""DSpark vs DFlash from two `dspark eval --json` reports over the same datasets and prompts
(same seeds): per dataset tau with its 95% CI, speedup, and the paired difference of tau with
its 95% CI (samples are the independent units; delta method for the two ratio estimators).

usage: compare.py DSPARK.json DFLASH.json [--markdown]
"""
import json
import math
import sys


def lin(a, b):
    """tau = sum(a)/sum(b) and each sample's linearised contribution (a_i - tau b_i)/mean(b)"""
    tau = sum(a) / sum(b)
    mb = sum(b) / len(b)
    return tau, [(x - tau * y) / mb for x, y in zip(a, b)]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__.strip())
    A, B = (json.load(open(p)) for p in args)
    rows = []
    for da in A["datasets"]:
        db = next((d for d in B["datasets"] if d["name"] == da["name"]), None)
        if db is None or da["samples"] != db["samples"]:
            sys.exit(f"compare.py: dataset {da['name']} differs between the two reports")
        ta, za = lin(da["sample_tau_sum"], da["sample_rounds"])
        tb, zb = lin(db["sample_tau_sum"], db["sample_rounds"])
        d = [x - y for x, y in zip(za, zb)]
        n = len(d)
        se = math.sqrt(sum(x * x for x in d) / (n * (n - 1))) if n > 1 else 0.0
        rows.append((da, db, ta - tb, ta - tb - 1.96 * se, ta - tb + 1.96 * se))
    print("| dataset | samples | DSpark tau (95% CI) | DFlash tau (95% CI) | difference (95% CI) | DSpark speedup | DFlash speedup |")
    print("|---|---|---|---|---|---|---|")
    for da, db, diff, lo, hi in rows:
        def tau(d):
            return f"{d['tau']:.2f} ({d['tau_ci95'][0]:.2f}-{d['tau_ci95'][1]:.2f})"
        def sp(d):
            return f"{d['speedup']:.2f}x" if d.get("speedup") else "-"
        print(f"| {da['name']} | {da['samples']} | {tau(da)} | {tau(db)} | {diff:+.2f} ({lo:+.2f} to {hi:+.2f}) | {sp(da)} | {sp(db)} |")


if __name__ == "__main__":
    main()
