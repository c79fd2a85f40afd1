#!/usr/bin/env python3
"""Markdown table of every fixture model vs its exact and llama.cpp references, for docs/STATUS.md.

usage: python scripts/parity_report.py [--backend cpu|numpy|vulkan|cuda] [--fixtures DIR]"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from g4rt.tools import parity
from g4rt.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    args = ap.parse_args()
    fx = Path(args.fixtures)
    print(f"| model | reference | top-1 vs exact | max\\|Δlogit\\| vs exact | bar (top-1 / Δ) | met | "
          f"top-1 vs llama.cpp | max\\|Δlogit\\| vs llama.cpp | greedy = llama.cpp (min over prompts) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in sorted((fx / "models").glob("*.gguf")):
        stem = model.name.removesuffix(".gguf")
        engine = Engine(model, backend=args.backend, ctx=4096)
        for exact in sorted((fx / "ref").glob(f"{stem}*.exact.npz")):
            ref_name = exact.name.removesuffix(".exact.npz")
            if ref_name not in (stem, stem + ".long"):
                continue
            ref = np.load(exact)
            ours = parity.run_reference(engine, ref)
            we = parity.worst(parity.compare(ref, ours))
            bar = parity.find_bar(model, exact)
            met = parity.meets(parity.compare(ref, ours), bar) if bar else None
            llama = fx / "ref" / f"{ref_name}.llama.npz"
            wl = parity.worst(parity.compare(np.load(llama), ours)) if llama.exists() else None
            print(f"| {stem} | {ref_name.removeprefix(stem) or 'prompts.json'} | {we['top1']:.4f} | {we['max_dlogit']:.5f} | "
                  f"{bar.min_top1} / {bar.max_dlogit} | {'yes' if met else 'NO'} | "
                  + (f"{wl['top1']:.4f} | {wl['max_dlogit']:.4f} | {wl['greedy']}/32 |" if wl else "- | - | - |"),
                  flush=True)


if __name__ == "__main__":
    main()
