#!/usr/bin/env python3
"""llama.cpp's draft-mtp proposals for the fixture assistants (issue 26), recorded as
tests/data/assistant/<target>-assistant.llama.json for tests/test_assistant_llama.py.

Phase `llama` (needs the harness: `scripts/build_llama_mtp.sh`, offline, from the llama.cpp of the
llama-cpp-python 0.3.36 sdist): for each fixture target + assistant, runs
scripts/llama_mtp_proposals.cpp (llama.cpp's own speculative loop: common_speculative_init /
process / draft / accept, arch gemma4-assistant, spec type draft-mtp, p_min 0, K = 4, greedy
target, F32 KV, flash attention off) on the prompts below, taking `steps` drafts per prompt (one
per verification, so drafts at every position from the prompt's end on, past the window), with
each step's top logits of llama.cpp's assistant (a replay of the same inputs) and the target
hidden state the draft started from.

  scripts/build_llama_mtp.sh && .venv/bin/python scripts/make_assistant_llama_ref.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "assistant"
FIXTURES = Path(os.environ.get("G4RT_FIXTURES", ROOT.parent / "shared" / "fixtures"))
BIN = ROOT / ".cache" / "llama-bench" / "bin"
#: output suffix -> harness: stock llama.cpp, and the same with ggml-cpu's GELU computed exactly
#: (LLAMA_MTP_EXACT_GELU=1 scripts/build_llama_mtp.sh; stock ggml looks GELU up in an fp16 table)
BUILDS = {"llama": BIN / "llama_mtp_proposals", "llama-exact-gelu": BIN / "llama_mtp_proposals-exact-gelu"}
BUILD_INFO = ROOT / ".cache" / "llama-bench" / "build" / "0.3.36" / "common" / "build-info.cpp"
TARGETS = ["g4-dense-untied-F32", "g4-edge-F32"]
K = 4
#: (fixtures ref prompt index, tokens kept, drafts taken)
PROMPTS = [(0, None, 30), (2, 40, 12)]
ARGS = ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(K), "--spec-draft-n-min", "0",
        "--spec-draft-p-min", "0", "-c", "256", "-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off",
        "--temp", "0", "--top", "8"]


def commit() -> str:
    for line in BUILD_INFO.read_text().splitlines():
        if "LLAMA_COMMIT" in line and '"' in line:
            return line.split('"')[1]
    return "unknown"


def main() -> None:
    for suffix, harness in BUILDS.items():
        if not harness.is_file():
            sys.exit(f"no {harness}: run LLAMA_MTP_EXACT_GELU=1 scripts/build_llama_mtp.sh first")
        for stem in TARGETS:
            record(stem, suffix, harness)


def record(stem: str, suffix: str, harness: Path) -> None:
    if True:
        ref = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
        prompts = [[int(t) for t in ref[f"ids_{i}"][:n]] for i, n, _ in PROMPTS]
        cases, generated = [], []
        for p, (_, _, steps) in zip(prompts, PROMPTS):
            ids = OUT / f".{stem}.ids.json"
            ids.write_text(json.dumps([p]))
            cmd = [str(harness), "--ids", str(ids), "--steps", str(steps),
                   "-m", str(FIXTURES / "models" / f"{stem}.gguf"),
                   "-md", str(OUT / f"{stem}-assistant-F32.gguf"), *ARGS]
            r = subprocess.run(cmd, check=True, capture_output=True, text=True)
            ids.unlink()
            d = json.loads(r.stdout.strip().splitlines()[-1])
            for c in d["cases"]:
                c["prompt"] = len(generated)
                c["hidden"] = [float(f"{x:.7g}") for x in c["hidden"]]
                for t in c["top"]:
                    t["logits"] = [float(f"{x:.7g}") for x in t["logits"]]
            cases += d["cases"]
            generated += d["generated"]
        out = {
            "llama_cpp": {"commit": commit(), "source": "llama-cpp-python 0.3.36 sdist (vendor/llama.cpp)",
                          "ggml_cpu_gelu": "exact (GGML_GELU_FP16 off)" if "exact" in suffix
                          else "stock (GGML_GELU_FP16: fp16 table)"},
            "command": f"{harness.name} --ids PROMPT.json --steps N -m TARGET.gguf "
                       "-md ASSISTANT.gguf " + " ".join(ARGS),
            "target": f"{stem}.gguf",
            "assistant": f"{stem}-assistant-F32.gguf",
            "k": K,
            "prompts": prompts,
            "prompt_source": [f"fixtures ref/{stem}.exact.npz ids_{i}" + (f"[:{n}]" if n else "")
                              for i, n, _ in PROMPTS],
            "generated": generated,
            "cases": cases,
        }
        path = OUT / f"{stem}-assistant.{suffix}.json"
        path.write_text(json.dumps(out) + "\n")
        print(path, len(cases), "drafts")


if __name__ == "__main__":
    main()
