"""The CUDA kernel registry: which file defines each kernel and its parameter list (pure Python).

Signatures use one letter per parameter: 'P' a device pointer (64-bit), 'i' int32, 'f' float32,
'd' float64. They must match the `extern "C" __global__` declarations in shaders/cuda; the CI test
(tests/test_cuda_compile.py) reads every kernel's parameter types back from the compiled PTX and
compares them with this table, so host and kernels cannot silently disagree.

Launch geometry constants mirror the #defines of the kernels.
"""

from __future__ import annotations

from typing import Optional

from gguf import GGMLQuantizationType

QT = GGMLQuantizationType

#: kernel-name suffix and the macro of its GGML type id (quant_blocks.cuh) per weight type
QTYPE_SUFFIX: dict[QT, str] = {
    QT.F32: "f32", QT.F16: "f16", QT.BF16: "bf16", QT.Q8_0: "q8_0", QT.Q4_0: "q4_0",
    QT.Q4_1: "q4_1", QT.Q5_0: "q5_0", QT.Q5_1: "q5_1", QT.Q4_K: "q4_k", QT.Q5_K: "q5_k",
    QT.Q6_K: "q6_k",
}
QTYPE_MACRO: dict[QT, str] = {
    QT.F32: "GGML_F32", QT.F16: "GGML_F16", QT.BF16: "GGML_BF16", QT.Q8_0: "GGML_Q8_0",
    QT.Q4_0: "GGML_Q4_0", QT.Q4_1: "GGML_Q4_1", QT.Q5_0: "GGML_Q5_0", QT.Q5_1: "GGML_Q5_1",
    QT.Q4_K: "GGML_Q4_K", QT.Q5_K: "GGML_Q5_K", QT.Q6_K: "GGML_Q6_K",
}

# Kernels defined once per weight type ("<family>_<suffix>"), each family in its own file.
TYPED_FAMILIES: dict[str, tuple[str, str]] = {
    "matvec": ("matvec.cu", "PiPPiii"),      # W, row_bytes, x, y, rows, K, n
    "matmul": ("matmul.cu", "PiPPiii"),      # W, row_bytes, x, y, rows, K, n
    "embed": ("embed.cu", "PiiPPif"),        # table, row_bytes, n_table, params, out, K, scale
    "matvec8": ("matvec8.cu", "PiPPPiii"),   # W, row_bytes, xq, xds, y, rows, K, n (int8 path)
    "moe_matvec": ("matvec.cu", "PiPPPiiii"),  # W, row_bytes, x, route, y, N, K, k, per_sel (grid.y: selections)
}
# Families defined for some weight types only (the rest: every type of QTYPE_SUFFIX).
FAMILY_TYPES: dict[str, tuple[QT, ...]] = {"matvec8": (QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q6_K)}


def family_types(family: str) -> tuple[QT, ...]:
    return FAMILY_TYPES.get(family, tuple(QTYPE_SUFFIX))

ATTN_HEAD_DIMS = (64, 128, 256, 512)         # attn_partial_<kv>_d<D>: largest head dim served

# Kernels defined once: name -> (file, signature).
PLAIN_KERNELS: dict[str, tuple[str, str]] = {
    "attn_combine": ("attention.cu", "PPiii"),          # part, out, n_head, D, n_split
    "quantize_q8": ("matvec8.cu", "PPPii"),             # x, q, ds, K, n (int8 path)
    "kv_store_f16": ("kv_store.cu", "PPPPPiii"),        # k, v, ck, cv, params, n, cols, ring
    "kv_store_f32": ("kv_store.cu", "PPPPPiii"),
    "rmsnorm": ("norm_rope.cu", "PPPiid"),              # x, out, w, cols, group, eps
    "rope": ("norm_rope.cu", "PPPiiiid"),               # x, ff, params, rows, cols, head_dim, n_rot, base
    "add": ("elementwise.cu", "PPPi"),
    "mul": ("elementwise.cu", "PPPi"),
    "take_rows": ("elementwise.cu", "PPPPii"),          # x, src, take, out, rows, cols
    "gelu_mul": ("elementwise.cu", "PPPi"),
    "gelu": ("elementwise.cu", "PPi"),
    "scale": ("elementwise.cu", "PPifP"),               # x, out, n, s, by
    "softcap": ("elementwise.cu", "PPif"),
    "slice": ("elementwise.cu", "PPiiiii"),             # x, out, rows, cols, xcols, row0, col0
    "moe_route": ("moe.cu", "PPPiii"),                  # logits, out, scale, rows, n_exp, k
    "moe_sum": ("moe.cu", "PPPiii"),                    # y, route, out, rows, cols, k
    # the media encoders (media.cu: gemma4uv / gemma4v; conformer.cu: gemma4a)
    "layernorm": ("media.cu", "PPPPid"),                # x, out, w, b, cols, eps (grid: rows)
    "add_vector": ("media.cu", "PPPii"),                # x, w, out, rows, cols
    "gather_add": ("media.cu", "PPPPiiii"),             # x, table, index, out, rows, cols, J, table_rows
    "clamp": ("media.cu", "PPiff"),                     # x, out, n, lo, hi
    "standardize": ("media.cu", "PPPPii"),              # x, bias, w, out, rows, cols
    "pool_rows": ("media.cu", "PPiiif"),                # x, out, rows, cols, group, scale
    "rope2d": ("media.cu", "PPPiiid"),                  # x, pos, out, rows, cols, head_dim, base
    "full_attention": ("media.cu", "PPPPiiiif"),        # q, k, v, out, n, H, Hkv, D, scale
    "silu": ("conformer.cu", "PPi"),                    # x, out, n
    "glu": ("conformer.cu", "PPii"),                    # x, out, rows, cols
    "depthwise_conv1d": ("conformer.cu", "PPPiii"),     # x, w, out, rows, cols, K
    # x, mask, w, norm, out, T, F, ci, co, mask_cols, eps (grid: Fo, out rows)
    "conv2d_norm_relu": ("conformer.cu", "PPPPPiiiiid"),
    "chunked_rel": ("conformer.cu", "PPiiif"),          # w, rel, HD, width, window, c
    # q, k, v, rel, by, out, rows, H, D, q_scale, k_scale, cap, window, valid
    "chunked_attention": ("conformer.cu", "PPPPPPiiifffii"),
}
for _kv in ("f16", "f32"):
    for _d in ATTN_HEAD_DIMS:
        # q, k, v, ck, cv, part, params, n_head, n_kv_head, D, window, ring, scale, n_split,
        # round_batch, ahead
        PLAIN_KERNELS[f"attn_partial_{_kv}_d{_d}"] = ("attention.cu", "PPPPPPPiiiiifiiP")

# Geometry (must match the kernels' #defines)
MV_WARPS = 4          # matvec.cu: rows per block (one warp each)
MV_MAXN = 4           # matvec.cu: largest batch served by the matvec kernels
MM_BO, MM_BT, MM_THREADS = 64, 64, 256      # matmul.cu tile
ATT_THREADS = 128     # attention.cu: 4 warps
Q8_GROUPS_PER_BLOCK = 4   # matvec8.cu quantize_q8: one warp per 32-value group
EMBED_THREADS = 128
EW_THREADS = 256
EW_MAX_BLOCKS = 16384  # element-wise kernels are grid-stride loops
FA_ROWS, FA_THREADS, FA_DMAX = 16, 128, 128   # media.cu full_attention: query rows a block, head dims
CV_MAX_CI, CV_MAX_CO = 512, 1024              # conformer.cu conv2d_norm_relu: channels
CA_WARPS, CA_DMAX, CA_MAXW = 4, 512, 64       # conformer.cu chunked_attention: warps, head dim, window


def kernel_file(name: str) -> tuple[str, Optional[QT]]:
    """(file, weight type or None) of a kernel name."""
    if name in PLAIN_KERNELS:
        return PLAIN_KERNELS[name][0], None
    fam = typed_family(name)
    if fam is not None:
        sfx = name[len(fam) + 1:]
        for qt in family_types(fam):
            if QTYPE_SUFFIX[qt] == sfx:
                return TYPED_FAMILIES[fam][0], qt
    raise KeyError(f"unknown CUDA kernel {name!r}")


def typed_family(name: str) -> Optional[str]:
    """The typed family a kernel name belongs to ("moe_matvec_q4_0" -> "moe_matvec"), or None."""
    best = None
    for fam in TYPED_FAMILIES:
        if name.startswith(fam + "_") and (best is None or len(fam) > len(best)):
            best = fam
    return best


def signature(name: str) -> str:
    if name in PLAIN_KERNELS:
        return PLAIN_KERNELS[name][1]
    kernel_file(name)   # validates the suffix
    return TYPED_FAMILIES[typed_family(name)][1]


def typed_kernel(family: str, qtype: QT) -> str:
    return f"{family}_{QTYPE_SUFFIX[qtype]}"


def all_kernels() -> dict[str, str]:
    """Every kernel name -> signature."""
    out = {k: v[1] for k, v in PLAIN_KERNELS.items()}
    for fam, (_, sig) in TYPED_FAMILIES.items():
        for qt in family_types(fam):
            out[f"{fam}_{QTYPE_SUFFIX[qt]}"] = sig
    return out


def module_defines(qtype: Optional[QT]) -> dict[str, str]:
    """NVRTC -D options of a per-type compile of a typed file (empty for plain files)."""
    if qtype is None:
        return {}
    return {"G4RT_QTYPE_NAME": QTYPE_SUFFIX[qtype], "G4RT_QTYPE_ID": QTYPE_MACRO[qtype]}


def attn_variant(head_dim: int, kv_f16: bool) -> str:
    for d in ATTN_HEAD_DIMS:
        if head_dim <= d:
            return f"attn_partial_{'f16' if kv_f16 else 'f32'}_d{d}"
    raise ValueError(f"head dimension {head_dim} is larger than the CUDA attention kernel's "
                     f"{ATTN_HEAD_DIMS[-1]}")


def attn_splits(max_keys: int, n_rows: int, n_head: int, sm_count: int = 132) -> int:
    """How many key chunks (split-K) each query head's attention is cut into: enough blocks for
    about two waves of the device, at least ~256 keys a chunk, at most 64 chunks."""
    by_keys = -(-max(1, max_keys) // 256)
    by_occupancy = -(-2 * max(1, sm_count) // max(1, n_head * n_rows))
    return max(1, min(by_keys, by_occupancy, 64))


def ew_grid(n: int) -> int:
    return max(1, min(-(-n // EW_THREADS), EW_MAX_BLOCKS))


def rmsnorm_block(group: int) -> int:
    """Threads per RMSNorm block: a multiple of 32, about 4 values a thread, at most 256."""
    t = -(-group // 4)
    t = -(-t // 32) * 32
    return max(32, min(256, t))
