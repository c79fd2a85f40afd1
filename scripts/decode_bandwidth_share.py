#!/usr/bin/env python3
"""Decode's share of this host's read bandwidth, measured interleaved (issue 23's "≥ 85 % of
measure_bandwidth.sh" figure): REPS times, scripts/measure_bandwidth.sh with the bench's thread
count, then `g4rt bench MODEL --json` (decode weight GB/s), so that both see the same state of a
host whose bandwidth drifts by a third within minutes; prints each pair and the median share.

    .venv/bin/python scripts/decode_bandwidth_share.py MODEL [--reps 5] [--threads N]
        [--gen 64] [--precision auto] [--json]

Run it on a quiet machine (no test suite, no compile): a second process halves both figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bandwidth(threads: int) -> float:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "measure_bandwidth.sh"), "--threads", str(threads),
                          "--json"], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["results"][0]["read_GBps_median"])


def decode_gbps(model: str, threads: int, gen: int, precision: str) -> dict:
    g4rt = Path(sys.executable).with_name("g4rt")
    cmd = [str(g4rt) if g4rt.exists() else "g4rt", "bench", model, "--backend", "cpu", "--threads", str(threads),
           "--prompt", "16", "--gen", str(gen), "--precision", precision, "--llama-bench", "off", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"g4rt bench failed:\n{r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for i in range(a.reps):
        bw = bandwidth(a.threads)
        res = decode_gbps(a.model, a.threads, a.gen, a.precision)
        rows.append(dict(bandwidth_GBps=bw, decode_GBps=res["decode_weight_gb_s"], decode_tok_s=res["decode_tok_s"],
                         share=res["decode_weight_gb_s"] / bw, precision=res.get("precision")))
        if not a.json:
            r = rows[-1]
            print(f"{i + 1}: bandwidth {bw:.2f} GB/s, decode {r['decode_GBps']:.2f} GB/s "
                  f"({r['decode_tok_s']:.2f} tok/s, {r['precision']}) = {100 * r['share']:.1f} %", flush=True)
    med = statistics.median(r["share"] for r in rows)
    if a.json:
        print(json.dumps(dict(model=a.model, threads=a.threads, runs=rows, median_share=round(med, 4))))
    else:
        print(f"median share of the read bandwidth: {100 * med:.1f} % ({a.reps} interleaved pairs, "
              f"{a.threads} threads)")


if __name__ == "__main__":
    main()
