"""The same-run comparison of `g4rt bench` with llama.cpp: runs llama.cpp's own benchmark tool
(`llama-bench`, where it is installed) on the same model file with the same prompt and
generation lengths, and reads its JSON report (one entry per test: `n_prompt`/`n_gen`, `avg_ts`
tokens/s, `stddev_ts`, `backends`, `build_commit`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional


def find_llama_bench(choice: str = "auto") -> Optional[str]:
    """The llama-bench executable: an explicit path, or (auto) $G4RT_LLAMA_BENCH, then PATH, then
    the build of scripts/build_llama_bench.sh in this checkout; None when absent or "off"."""
    if choice == "off":
        return None
    if choice != "auto":
        return choice
    env = os.environ.get("G4RT_LLAMA_BENCH")
    if env:
        return env
    found = shutil.which("llama-bench")
    if found:
        return found
    local = Path(__file__).resolve().parents[2] / ".cache" / "llama-bench" / "bin" / "llama-bench"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def run_llama_bench(exe: str, model: str, n_prompt: int, n_gen: int, gpu: bool, reps: int = 3,
                    timeout: float = 3600, threads: Optional[int] = None, depth: int = 0) -> dict:
    """llama.cpp's prefill and decode tokens/s for `model`; on any failure a dict with "error"
    (the comparison is extra information: it never fails the g4rt benchmark)."""
    cmd = [exe, "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps),
           "-o", "json", "-ngl", "99" if gpu else "0"] + (["-t", str(threads)] if threads else []) \
        + (["-d", str(depth)] if depth else [])
    out: dict = {"command": " ".join(cmd)}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        out["error"] = f"could not run {exe}: {e}"
        return out
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        out["error"] = f"llama-bench exited with {r.returncode}: " + " | ".join(tail)
        return out
    try:
        tests = json.loads(r.stdout)
        for t in tests:
            if int(t.get("n_prompt", 0)) > 0 and int(t.get("n_gen", 0)) == 0:
                out["prefill_tok_s"] = round(float(t["avg_ts"]), 2)
                out["prefill_stddev"] = round(float(t.get("stddev_ts", 0.0)), 2)
            elif int(t.get("n_gen", 0)) > 0 and int(t.get("n_prompt", 0)) == 0:
                out["decode_tok_s"] = round(float(t["avg_ts"]), 3)
                out["decode_stddev"] = round(float(t.get("stddev_ts", 0.0)), 3)
            out.setdefault("backends", t.get("backends"))
            out.setdefault("build", t.get("build_commit"))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        out["error"] = f"could not read llama-bench's JSON: {e}"
        return out
    if "prefill_tok_s" not in out and "decode_tok_s" not in out:
        out["error"] = "llama-bench reported no prompt or generation test"
    return out


def summary_lines(ours: dict, theirs: dict) -> list[str]:
    """Human-readable comparison lines (g4rt / llama.cpp ratios)."""
    if "error" in theirs:
        return [f"  llama.cpp: {theirs['error']}"]
    where = ", ".join(str(x) for x in (theirs.get("backends"), theirs.get("build")) if x)
    lines = [f"  llama.cpp ({where or 'llama-bench'}), same model and lengths:"]
    for key, what in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
        if key in theirs and key in ours and theirs[key]:
            lines.append(f"    {what}: llama.cpp {theirs[key]:g} tokens/s, g4rt {ours[key]:g} "
                         f"= {ours[key] / theirs[key]:.2f}x")
    return lines
