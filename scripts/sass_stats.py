#!/usr/bin/env python3
"""Static instruction cost of the CUDA matvec's inner step, per weight type (no GPU needed).

Decode is a matrix-vector product: each weight byte is read once, so the kernel is memory-bound
only if the SMs can issue the decode + dot instructions faster than DRAM delivers the bytes.
This compiles a probe kernel around `qb_dot32<T>` (quant_blocks.cuh: decode one 32-value group
and dot it with 32 activations, exactly what each matvec lane does per group) with NVRTC for a
real GPU (SASS), disassembles it with nvdisasm and counts machine instructions, minus a baseline
probe with the same loads and stores but no decode (the mean of an even and an odd sub-block:
K-quant decoders branch on it). From that:

    bytes per warp-instruction = 32 lanes * bytes per group / instructions per group
    issue ceiling (GB/s)       = SMs * 4 schedulers * clock * bytes per warp-instruction

and compares the ceiling with the card's DRAM bandwidth. A ceiling well above the bandwidth means
the kernel can be memory-bound; near or below it, the kernel is issue-bound (one warp-instruction
per scheduler per clock; integer ops issue at half rate on sm_80+, counted separately).

Needs cuda-python + NVRTC (the `cuda` extra) and nvdisasm (`pip install nvidia-cuda-nvdisasm`,
or on PATH, or $NVDISASM). Usage: python scripts/sass_stats.py [--arch sm_90] [--types q4_0,q4_k]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (SMs, boost clock GHz, DRAM GB/s) - public spec sheets
CARDS = {
    "H100 SXM": (132, 1.755, 3350),
    "RTX 4070 12GB": (46, 2.475, 504),
    "RTX 3060 12GB": (28, 1.777, 360),
}

PROBE = r'''
#include "quant_blocks.cuh"
#define VALS QB<G4RT_QTYPE_ID>::VALS
#define BYTES QB<G4RT_QTYPE_ID>::BYTES
// even and odd sub-blocks separately: decoders branch on j & 1 (K-quants), and counting both
// paths of a branch in one function would charge a group for code it does not run
extern "C" __global__ void probe_even(const u8* W, const float* x, float* y, int j) {
    const int t = threadIdx.x;
    y[t] = qb_dot32<G4RT_QTYPE_ID>(W + (size_t)t * BYTES, j & (VALS / 32 - 1) & ~1, x + 32 * t);
}
extern "C" __global__ void probe_odd(const u8* W, const float* x, float* y, int j) {
    const int t = threadIdx.x;
    y[t] = qb_dot32<G4RT_QTYPE_ID>(W + (size_t)t * BYTES, (j & (VALS / 32 - 1)) | (VALS > 32 ? 1 : 0), x + 32 * t);
}
extern "C" __global__ void baseline(const u8* W, const float* x, float* y, int j) {
    const int t = threadIdx.x;
    y[t] = x[32 * t + (j & 31)] + (float)W[(size_t)t * BYTES];
}
'''
# the opt-in int8 path (matvec8.cu): the same group with 8 words of int8 activations (two
# 16-byte loads, as the kernel does) and dp4a
PROBE8 = r'''
#include "matvec8.cu"
#define VALS8 QB<G4RT_QTYPE_ID>::VALS
#define BYTES8 QB<G4RT_QTYPE_ID>::BYTES
__device__ __forceinline__ float probe8(const u8* W, const uint4* xq, const float2* xd, int j) {
    const int t = threadIdx.x;
    const uint4 a = xq[2 * t], b = xq[2 * t + 1];
    const int xw[8] = {(int)a.x, (int)a.y, (int)a.z, (int)a.w, (int)b.x, (int)b.y, (int)b.z, (int)b.w};
    return qb_dot8<G4RT_QTYPE_ID>(W + (size_t)t * BYTES8, j, xw, xd[t]);
}
extern "C" __global__ void probe_even(const u8* W, const uint4* xq, const float2* xd, float* y, int j) {
    y[threadIdx.x] = probe8(W, xq, xd, j & (VALS8 / 32 - 1) & ~1);
}
extern "C" __global__ void probe_odd(const u8* W, const uint4* xq, const float2* xd, float* y, int j) {
    y[threadIdx.x] = probe8(W, xq, xd, (j & (VALS8 / 32 - 1)) | (VALS8 > 32 ? 1 : 0));
}
extern "C" __global__ void baseline(const u8* W, const uint4* xq, const float2* xd, float* y, int j) {
    const int t = threadIdx.x;
    const uint4 a = xq[2 * t], b = xq[2 * t + 1];
    y[t] = (float)(int)(a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ W[(size_t)t * BYTES8]) * xd[t].x;
}
'''
INT_OPS = {"SHF", "LOP3", "IADD3", "IMAD", "PRMT", "ISETP", "LEA", "SEL", "IMNMX", "BMSK", "POPC", "FLO",
           "BREV", "SGXT", "IABS", "IDP", "IDP4A", "VIADD", "VIMNMX"}



def nvdisasm() -> str:
    env = os.environ.get("NVDISASM")
    if env:
        return env
    found = shutil.which("nvdisasm")
    if found:
        return found
    site = Path(sysconfig.get_paths()["purelib"])
    for cand in site.glob("nvidia/cu*/bin/nvdisasm"):
        return str(cand)
    sys.exit("nvdisasm not found: pip install nvidia-cuda-nvdisasm, or set NVDISASM")


def count(cubin: bytes, tool: str) -> dict[str, Counter]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, f.name], capture_output=True, text=True, check=True).stdout
    funcs: dict[str, Counter] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"\s*\.text\.(\w+):", line)
        if m:
            cur = funcs.setdefault(m.group(1), Counter())
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if cur is not None and m and m.group(1) not in ("NOP", "EXIT", "BRA", "RET"):
            cur[m.group(1)] += 1
    return funcs


def measure(probe: str, qt, td: str, arch: str, tool: str) -> tuple[int, int, Counter]:
    """(instructions, integer instructions, mix) of one group: mean of the even and odd probes
    minus the baseline."""
    from g4rt.backends.cuda import kernels as K
    from g4rt.backends.cuda.driver import compile_file, shader_dir
    img = compile_file(probe, arch, K.module_defines(qt), src_dir=Path(td),
                       extra_options=[f"--include-path={shader_dir()}"], use_cache=False)
    f = count(img, tool)
    base = f["baseline"]
    mean = Counter({k: (f["probe_even"][k] + f["probe_odd"][k]) / 2
                    for k in f["probe_even"].keys() | f["probe_odd"].keys()})
    n = round(sum(mean.values()) - sum(base.values()))
    n_int = max(0, round(sum(v for k, v in mean.items() if k in INT_OPS) -
                         sum(v for k, v in base.items() if k in INT_OPS)))
    mean.subtract(base)
    return n, n_int, mean


def row(sfx: str, m: tuple[int, int, Counter], detail: bool) -> str:
    from gguf import GGML_QUANT_SIZES
    from g4rt.backends.cuda import kernels as K
    n, n_int, mix = m
    qt = next(q for q, x in K.QTYPE_SUFFIX.items() if x == sfx)
    vals, nbytes = GGML_QUANT_SIZES[qt]            # values and bytes per block
    if vals == 1:                                  # float types: per value
        vals, nbytes = 32, 32 * nbytes
    bpg = nbytes * 32 / vals
    cycles = max(n, 2 * n_int)                     # integer ops: half rate (sm_80+)
    bpi = 32 * bpg / cycles
    cells = []
    for sms, ghz, bw in CARDS.values():
        ceil = sms * 4 * ghz * bpi                 # GB/s
        cells.append(f"{ceil:,.0f} GB/s ({ceil / bw:.2f}x of {bw:,})")
    out = f"| {sfx} | {bpg:g} | {n} | {n_int} | {bpi:.2f} | " + " | ".join(cells) + " |"
    if detail:
        out += "\n|  | " + ", ".join(f"{k} {v:g}" for k, v in mix.most_common() if v > 0) + " |" + " |" * (3 + len(CARDS))
    return out


def main() -> int:
    from g4rt.backends.cuda import kernels as K
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_1,q5_0,q4_k,q5_k,q6_k")
    ap.add_argument("--detail", action="store_true", help="print the instruction mix per type")
    a = ap.parse_args()
    tool = nvdisasm()
    by_suffix = {v: k for k, v in K.QTYPE_SUFFIX.items()}
    print(f"# qb_dot32 cost per 32-value group, {a.arch} SASS (NVRTC), per lane\n")
    hdr = "| type | bytes/group | instructions | of which integer | bytes/warp-instr | " + \
          " | ".join(f"ceiling {c} (DRAM)" for c in CARDS) + " |"
    print(hdr)
    print("|" + "---|" * (5 + len(CARDS)))
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / "probe.cu").write_text(PROBE)
        (Path(td) / "probe8.cu").write_text(PROBE8)
        rows8 = []
        for sfx in a.types.split(","):
            qt = by_suffix[sfx]
            print(row(sfx, measure("probe.cu", qt, td, a.arch, tool), a.detail))
            if qt in K.family_types("matvec8"):
                rows8.append(row(sfx, measure("probe8.cu", qt, td, a.arch, tool), a.detail))
        if rows8:
            print(f"\n# the opt-in int8 path (matvec8.cu qb_dot8: 8-bit activations, dp4a), {a.arch}\n")
            print(hdr)
            print("|" + "---|" * (5 + len(CARDS)))
            print("\n".join(rows8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
