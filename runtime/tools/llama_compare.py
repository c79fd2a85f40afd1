"""The same-run comparison of `g4rt bench` with llama.cpp: runs llama.cpp's own benchmark tool
(`llama-bench`, where it is installed) on the same model file with the same prompt and
generation lengths, and reads its JSON report (one entry per test: `n_prompt`/`n_gen`, `avg_ts`
tokens/s, `stddev_ts`, `backends`, `build_commit`); and, for `g4rt bench --mmproj`, llama.cpp's
`llama-mtmd-cli` on the same model, projector and media, whose log lines give each item's
encode time and the media prompt's prefill speed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional


def find_llama_tool(name: str, env_var: str, choice: str = "auto") -> Optional[str]:
    """A llama.cpp executable: an explicit path, or (auto) $env_var, then PATH, then the build of
    scripts/build_<tool>.sh in this checkout (.cache/llama-bench/bin); None when absent or "off"."""
    if choice == "off":
        return None
    if choice != "auto":
        return choice
    env = os.environ.get(env_var)
    if env:
        return env
    found = shutil.which(name)
    if found:
        return found
    local = Path(__file__).resolve().parents[2] / ".cache" / "llama-bench" / "bin" / name
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def find_llama_bench(choice: str = "auto") -> Optional[str]:
    """llama-bench ($G4RT_LLAMA_BENCH; scripts/build_llama_bench.sh)."""
    return find_llama_tool("llama-bench", "G4RT_LLAMA_BENCH", choice)


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


# ---- llama-mtmd-cli: image / audio encode and media prefill ------------------------------------
# llama-mtmd-cli has no report format; with --perf and -lv 4 (libmtmd and libllama log "info" at
# common's trace verbosity, 4, above the default threshold: -v shows them too) it prints, per
# media chunk (tools/mtmd/mtmd-cli.cpp, mtmd-helper.cpp, 0.3.36):
#   I encoding mtmd batch, n_chunks = 1 (done = 1, total = 5)
#   I mtmd batch encoding done in 163 ms
#   I decoding image batch 1/1, n_tokens_batch = 266
#   I image decoded (batch 1/1) in 3386 ms
# (older builds: "encoding image slice..." / "image slice encoded in N ms"), then at exit
#   llama_perf_context_print: prompt eval time =  7377.30 ms /  537 tokens (... 72.79 tokens per second)
# Lines may carry a "M.SS.mmm.uuu I " timestamp prefix; when both ends of an encode or decode
# have one, their difference (microseconds) replaces the whole-millisecond figure.

_TS = r"^(?:(?P<ts>\d+\.\d{2}\.\d{3}\.\d{3})\s+)?(?:[A-Z]\s+)?"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MTMD_LINES = {
    "enc_start": re.compile(_TS + r".*?encoding mtmd batch, n_chunks = (?P<n>\d+)"),
    "enc_done": re.compile(_TS + r".*?mtmd batch encoding done in (?P<ms>\d+(?:\.\d+)?) ms"),
    "slice_start": re.compile(_TS + r".*?encoding (?P<kind>image|audio) slice\.\.\."),
    "slice_done": re.compile(_TS + r".*?(?P<kind>image|audio) slice encoded in (?P<ms>\d+(?:\.\d+)?) ms"),
    "dec_start": re.compile(_TS + r".*?decoding (?P<kind>image|audio) batch (?P<i>\d+)/(?P<n>\d+), "
                            r"n_tokens_batch = (?P<tok>\d+)"),
    "dec_done": re.compile(_TS + r".*?(?P<kind>image|audio) decoded \(batch (?P<i>\d+)/(?P<n>\d+)\) in "
                           r"(?P<ms>\d+(?:\.\d+)?) ms"),
    "prompt": re.compile(r"prompt eval time\s*=\s*(?P<ms>\d+(?:\.\d+)?) ms /\s*(?P<tok>\d+) tokens"),
    "eval": re.compile(r"(?<!prompt )eval time\s*=\s*(?P<ms>\d+(?:\.\d+)?) ms /\s*(?P<runs>\d+) runs"),
}


class LlamaOutputError(ValueError):
    """llama-mtmd-cli's output lacks the timing lines the comparison needs."""


def _ts_ms(ts: Optional[str]) -> Optional[float]:
    if not ts:
        return None
    m, s, ms, us = (int(x) for x in ts.split("."))
    return (m * 60 + s) * 1e3 + ms + us / 1e3


def parse_llama_mtmd_output(text: str) -> dict:
    """The timings in llama-mtmd-cli's log (stderr, or stdout and stderr together): "media" in
    prompt order, each {"kind", "tokens", "encode_ms", "decode_ms", "encode_shared"} (the number
    of chunks encoded in the same mtmd batch; its encode_ms is that batch's time divided by it),
    and the prompt ("prompt_ms", "prompt_tokens", "prefill_tok_s", encoders excluded: libllama's
    own count of every prompt token decoded in batches, text and media). Raises LlamaOutputError
    when the lines are missing."""
    media: list[dict] = []
    pending: list[tuple[float, int]] = []       # encode times waiting for their media's decode lines
    enc_t0 = dec_t0 = None
    enc_n = 1
    out: dict = {}
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip()
        if not line:
            continue
        m = _MTMD_LINES["enc_start"].search(line) or _MTMD_LINES["slice_start"].search(line)
        if m:
            enc_t0 = _ts_ms(m.group("ts"))
            enc_n = int(m.groupdict().get("n") or 1)
            continue
        m = _MTMD_LINES["enc_done"].search(line) or _MTMD_LINES["slice_done"].search(line)
        if m:
            t1, ms = _ts_ms(m.group("ts")), float(m.group("ms"))
            if enc_t0 is not None and t1 is not None and t1 >= enc_t0:
                ms = t1 - enc_t0
            n = max(1, enc_n)
            pending.extend([(ms / n, n)] * n)
            enc_t0, enc_n = None, 1
            continue
        m = _MTMD_LINES["dec_start"].search(line)
        if m:
            if int(m.group("i")) == 1:
                enc = pending.pop(0) if pending else (None, 0)
                media.append({"kind": m.group("kind"), "tokens": 0, "encode_ms": enc[0], "encode_shared": enc[1],
                              "decode_ms": 0.0})
            if media:
                media[-1]["tokens"] += int(m.group("tok"))
            dec_t0 = _ts_ms(m.group("ts"))
            continue
        m = _MTMD_LINES["dec_done"].search(line)
        if m and media:
            t1, ms = _ts_ms(m.group("ts")), float(m.group("ms"))
            if dec_t0 is not None and t1 is not None and t1 >= dec_t0:
                ms = t1 - dec_t0
            media[-1]["decode_ms"] += ms
            dec_t0 = None
            continue
        m = _MTMD_LINES["prompt"].search(line)
        if m:
            out["prompt_ms"], out["prompt_tokens"] = float(m.group("ms")), int(m.group("tok"))
            continue
        m = _MTMD_LINES["eval"].search(line)
        if m:
            out["eval_ms"], out["eval_runs"] = float(m.group("ms")), int(m.group("runs"))
    if "prompt_ms" not in out:
        raise LlamaOutputError("no 'prompt eval time' line (llama_perf_context_print) in llama-mtmd-cli's output: "
                               "it prints one only when it finishes, with --perf")
    if not media:
        raise LlamaOutputError("no media timing lines ('mtmd batch encoding done in N ms', 'image decoded (batch "
                               "1/1) in N ms') in llama-mtmd-cli's output: they are logged only with -lv 4 (or -v)")
    missing = [f"{x['kind']} {1 + sum(y['kind'] == x['kind'] for y in media[:k])}"
               for k, x in enumerate(media) if x["encode_ms"] is None]
    if missing:
        raise LlamaOutputError(f"llama-mtmd-cli's output has no encode time for {', '.join(missing)}")
    for x in media:
        x["encode_ms"] = round(x["encode_ms"], 3)
        x["decode_ms"] = round(x["decode_ms"], 3)
        x["decode_tok_s"] = round(x["tokens"] / x["decode_ms"] * 1e3, 2) if x["decode_ms"] > 0 else None
    out["media"] = media
    if out["prompt_ms"] > 0:
        out["prefill_tok_s"] = round(out["prompt_tokens"] / out["prompt_ms"] * 1e3, 2)
    return out


def find_llama_mtmd(choice: str = "auto") -> Optional[str]:
    """llama-mtmd-cli ($G4RT_LLAMA_MTMD; scripts/build_llama_mtmd.sh)."""
    return find_llama_tool("llama-mtmd-cli", "G4RT_LLAMA_MTMD", choice)


def llama_mtmd_command(exe: str, model, mmproj, images=(), audio=(), threads: Optional[int] = None,
                       image_max_tokens: Optional[int] = None, gpu: bool = False) -> list[str]:
    """One single-turn llama-mtmd-cli run: the media (images first, then audio, as g4rt's bench
    places them), a one-word question, one greedy token."""
    cmd = [exe, "-m", str(model), "--mmproj", str(mmproj)]
    for f in images:
        cmd += ["--image", str(f)]
    for f in audio:
        cmd += ["--audio", str(f)]
    cmd += ["-p", "Describe.", "-n", "1", "--temp", "0", "--jinja", "--perf", "-lv", "4", "--log-timestamps",
            "--log-colors", "off", "-ngl", "99" if gpu else "0"]
    if threads:
        cmd += ["-t", str(threads)]
    if image_max_tokens and images:
        cmd += ["--image-max-tokens", str(image_max_tokens)]
    return cmd


def run_llama_mtmd(exe: str, model, mmproj, images=(), audio=(), threads: Optional[int] = None,
                   image_max_tokens: Optional[int] = None, gpu: bool = False, timeout: float = 3600) -> dict:
    """llama.cpp's encode time per media item and media-prompt prefill speed on the same files;
    on any failure a dict with "error" (as run_llama_bench: never fatal to the g4rt benchmark)."""
    cmd = llama_mtmd_command(exe, model, mmproj, images, audio, threads, image_max_tokens, gpu)
    out: dict = {"command": " ".join(cmd)}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        out["error"] = f"could not run {exe}: {e}"
        return out
    if r.returncode != 0:
        lines = [x for x in (r.stderr or r.stdout).strip().splitlines() if x.strip()]
        errs = [x for x in lines if re.search(r"\b(error|failed|E )|GGML_ASSERT|what\(\)", x)][-3:]
        out["error"] = f"llama-mtmd-cli exited with {r.returncode}: " + " | ".join(errs or lines[-3:])
        return out
    try:
        out.update(parse_llama_mtmd_output(r.stderr + "\n" + r.stdout))
    except LlamaOutputError as e:
        out["error"] = str(e)
    return out


def mtmd_summary_lines(ours: dict, theirs: dict) -> list[str]:
    """Comparison lines for `g4rt bench --mmproj`: each item's encode time and the prefill speed,
    as g4rt / llama.cpp speed ratios (above 1: g4rt is faster)."""
    if "error" in theirs:
        return [f"  llama.cpp: {theirs['error']}"]
    lines = ["  llama.cpp (llama-mtmd-cli, one run), same model, projector and media:"]
    mine = {"image": list(ours.get("images", [])), "audio": list(ours.get("audio", []))}
    seen = {"image": 0, "audio": 0}
    for x in theirs["media"]:
        k = seen[x["kind"]]
        seen[x["kind"]] += 1
        g = mine[x["kind"]][k] if k < len(mine[x["kind"]]) else None
        what = f"{x['kind']} {k + 1}" + (f" ({Path(g['file']).name})" if g else "")
        shared = f", batch of {x['encode_shared']}" if x.get("encode_shared", 1) > 1 else ""
        if g is None:
            lines.append(f"    {what}: llama.cpp encode {x['encode_ms']:.1f} ms ({x['tokens']} tokens), "
                         "not in g4rt's run")
            continue
        g_ms = g["encode_s"] * 1e3
        ratio = f" = {x['encode_ms'] / g_ms:.2f}x" if g_ms > 0 and x["encode_ms"] > 0 else ""
        note = "" if g["tokens"] == x["tokens"] else " (different soft-token counts)"
        lines.append(f"    {what} encode: llama.cpp {x['encode_ms']:.1f} ms ({x['tokens']} tokens{shared}), "
                     f"g4rt {g_ms:.1f} ms ({g['tokens']} tokens){ratio}{note}")
    p = ours.get("prefill")
    if p and theirs.get("prefill_tok_s"):
        lines.append(f"    prefill (encoders excluded): llama.cpp {theirs['prefill_tok_s']:g} tok/s "
                     f"({theirs['prompt_tokens']} tokens), g4rt {p['tokens_per_s']:.1f} tok/s ({p['tokens']} tokens)"
                     f" = {p['tokens_per_s'] / theirs['prefill_tok_s']:.2f}x")
    return lines
