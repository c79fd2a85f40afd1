"""A numpy model of the native CPU backend's q8 matvec path (shaders/cpu/q8.h), written from the
header's description, not from the kernels: how an activation row is quantized (bit for bit),
the row layout g4_matvec_prepare writes, and the dot of GGUF weight rows with the quantized row
in float64 (tests/test_cpu_kernels_q8.py holds the C results to it).

The row's parts (q8.h): q[K] int8, d[K/32] float, sd[K/32] float, bias[K/32] int32, s16[K/16]
float, each 64-byte aligned (where they sit is q8_row_at's: the shim reports it).

Activation quantization per weight type (llama.cpp's vec_dot_type):
- Q4_0 / Q5_0 / Q8_0 (Q8_0 blocks of 32) and Q4_1 / Q5_1 (Q8_1): amax = max |x| (float32),
  id = 127 / amax (0 if amax == 0), q = nearest-even(x * id) in float32, d = f16(amax / 127);
  sd = f16(d_unrounded * S) (S = sum of the block's 32 q);
- Q4_K / Q5_K / Q6_K (Q8_K blocks of 256): max = the value of largest |x| (first on ties),
  iscale = -127 / max, q = min(127, nearest-even(iscale * x)), d = 1 / iscale (float32),
  repeated for the 8 blocks of 32; sd = d * S (float32);
- every type: bias = -S * mult (Q4_0: 1, Q5_0: 2, else 0), s16 = the sum of each 16 q; a block
  holding inf / NaN: d = NaN (its q unspecified, 0 on the portable build); a block whose
  largest |x| is below 1e-30 quantizes to q = 0;
- the i16 mode (every type alike, per 32 values): t = x * id (id as above), q = nearest-even(t),
  q2 = nearest-even(128 (t - q)), the codes c = 128 q + q2, d = (amax / 127) * (1 / 128) in
  float32, sd = d * S (S, s16 and bias from the codes c).

The dot: y = sum over 32-value (sub-)blocks of scale_w * d * sum(code * q) + min_w * sd, the codes
signed as the format defines them (Q4_0: nibble - 8, Q6_K: 6-bit - 32, ...), min_w the block's
additive term (Q4_1 / Q5_1: +m; Q4_K / Q5_K: -dmin * m_j; others none)."""

from __future__ import annotations

import numpy as np

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 12, 13, 14
Q8_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
K_TYPES = (Q4_K, Q5_K, Q6_K)
NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K",
         Q6_K: "Q6_K"}
#: (values, bytes) of one block
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34), Q4_K: (256, 144),
         Q5_K: (256, 176), Q6_K: (256, 210)}
F32_MAX = np.float32(3.4028235e38)


#: blocks whose largest |x| is below this quantize to 0 (q8.h's Q8_TINY)
TINY = np.float32(1e-30)


def bias_mult(qtype: int) -> int:
    """Q4_0's offset 8 and Q5_0's 16, an eighth per int32 lane; Q8_0 takes the sign trick on
    every build (so VNNI does not change it)."""
    return {Q4_0: 1, Q5_0: 2}.get(qtype, 0)


PARTS = ("q", "q2", "d", "sd", "bias", "s16")


def part_sizes(K: int) -> dict:
    """Bytes of each part of a quantized row of K values."""
    return {"q": K, "q2": K, "d": K // 32 * 4, "sd": K // 32 * 4, "bias": K // 32 * 4, "s16": K // 16 * 4}


def split_row(ws: np.ndarray, K: int, offsets: dict) -> dict:
    """The parts of one quantized row (uint8 bytes as g4_matvec_prepare wrote them), at the byte
    offsets q8.h's q8_row_at gives (offsets: part -> offset)."""
    ws = np.ascontiguousarray(ws, np.uint8)
    n = part_sizes(K)
    dt = {"q": np.int8, "q2": np.int8, "d": np.float32, "sd": np.float32, "bias": np.int32, "s16": np.float32}
    return {p: ws[offsets[p]:offsets[p] + n[p]].view(dt[p]) for p in PARTS}


def quantize_i16(x: np.ndarray, qtype: int) -> dict:
    """The i16 mode's quantized row (see the module doc); "codes": 128 q + q2 (int64)."""
    x = np.asarray(x, np.float32)
    K = x.size
    with np.errstate(all="ignore"):
        xb = x.reshape(-1, 32)
        ax = np.abs(xb)
        fin = np.all(ax <= F32_MAX, axis=1)
        amax = ax.max(axis=1)
        live = amax >= TINY
        idv = np.where(live, np.float32(127) / np.where(live, amax, 1), 0).astype(np.float32)
        t = np.where(fin[:, None], xb * idv[:, None], 0).astype(np.float32)
        h = np.rint(t).astype(np.float32)
        q2 = np.rint(((t - h) * np.float32(128)).astype(np.float32))
        d = ((amax / np.float32(127)).astype(np.float32) * np.float32(1 / 128)).astype(np.float32)
        d[~fin] = np.nan
    q, q2 = h.astype(np.int8).reshape(K), q2.astype(np.int8).reshape(K)
    codes = 128 * q.astype(np.int64) + q2
    c16 = codes.reshape(-1, 16).sum(axis=1)
    S = c16.reshape(-1, 2).sum(axis=1)
    with np.errstate(all="ignore"):
        sd = (d * S.astype(np.float32)).astype(np.float32)
    return {"q": q, "q2": q2, "codes": codes, "d": d, "sd": sd,
            "bias": (-S * bias_mult(qtype)).astype(np.int32), "s16": c16.astype(np.float32), "bad": ~fin}


def quantize(x: np.ndarray, qtype: int, half_away: bool = False) -> dict:
    """The quantized row of x (float32 [K]) for `qtype` weights: q int8 [K], d / sd float32
    [K/32], bias int32 [K/32], s16 float32 [K/16], bad bool [K/32] (a non-finite block: q there
    is not modelled). half_away: round ties away from zero instead of to even (a wrong model,
    for the tests that show the bit-exact comparison has teeth)."""
    x = np.asarray(x, np.float32)
    K = x.size
    rnd = (lambda v: np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))) if half_away else np.rint
    with np.errstate(all="ignore"):
        if qtype in K_TYPES:
            xb = x.reshape(-1, 256)
            ax = np.abs(xb)
            fin = np.all(ax <= F32_MAX, axis=1)
            amax = ax.max(axis=1)
            mx = xb[np.arange(xb.shape[0]), np.argmax(ax, axis=1)]          # first on ties
            live = fin & (amax >= TINY)
            iscale = np.where(live, np.float32(-127) / np.where(live, mx, 1), 0).astype(np.float32)
            q = np.minimum(np.float32(127), rnd(iscale[:, None] * xb)).astype(np.float32)
            q = np.where(live[:, None], q, 0).astype(np.int8)
            dd = np.where(live, np.float32(1) / np.where(live, iscale, 1), 0).astype(np.float32)
            dd[~fin] = np.nan
            d_unr = np.repeat(dd, 8)
            bad = np.repeat(~fin, 8)
        else:
            xb = x.reshape(-1, 32)
            ax = np.abs(xb)
            fin = np.all(ax <= F32_MAX, axis=1)
            amax = ax.max(axis=1)
            idv = np.where(amax >= TINY, np.float32(127) / np.where(amax >= TINY, amax, 1), 0).astype(np.float32)
            d_unr = (amax / np.float32(127)).astype(np.float32)
            d_unr[~fin] = np.nan
            q = rnd(xb * idv[:, None]).astype(np.float32)
            q = np.where(fin[:, None], q, 0).astype(np.int8)
            bad = ~fin
    q = q.reshape(K)
    q16 = q.astype(np.int64).reshape(-1, 16).sum(axis=1)
    S = q16.reshape(-1, 2).sum(axis=1)
    with np.errstate(all="ignore"):
        if qtype in K_TYPES:
            d = d_unr
            sd = (d_unr * S.astype(np.float32)).astype(np.float32)
        else:
            d = d_unr.astype(np.float16).astype(np.float32)
            sd = (d_unr * S.astype(np.float32)).astype(np.float32).astype(np.float16).astype(np.float32)
    return {"q": q, "d": d, "sd": sd, "bias": (-S * bias_mult(qtype)).astype(np.int32),
            "s16": q16.astype(np.float32), "bad": bad}


# ---- the weights: codes, scales and mins of each 32-value block ------------------------------------
def _f16(raw: np.ndarray, off: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, off:off + 2]).view(np.float16)[:, 0].astype(np.float64)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] codes: low nibbles (values 0..15), then high."""
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)


def _bits(qh: np.ndarray) -> np.ndarray:
    """[n, 4] bytes (a little-endian u32) -> [n, 32] bits."""
    return np.unpackbits(qh, axis=1, bitorder="little").astype(np.int64)


def _k4_scales(s: np.ndarray):
    """llama.cpp's get_scale_min_k4 over [n, 12] scale bytes: sc, m [n, 8]."""
    s = s.astype(np.int64)
    sc, mn = np.zeros((s.shape[0], 8), np.int64), np.zeros((s.shape[0], 8), np.int64)
    for j in range(8):
        if j < 4:
            sc[:, j], mn[:, j] = s[:, j] & 63, s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def decode(raw: np.ndarray, qtype: int, K: int):
    """GGUF rows (uint8 [rows, row_bytes]) -> (codes int64 [rows, K] signed as the format defines
    them, scale float64 [rows, K] per value, mins float64 [rows, K/32] per block, offset int: what
    the kernels add to a code before their unsigned integer dot, for the error bound).
    value = scale * code, plus mins[b] per value of block b."""
    rows = raw.shape[0]
    bv, bs = BLOCK[qtype]
    blk = np.ascontiguousarray(raw).reshape(rows * (K // bv), bs)
    n = blk.shape[0]
    mins = np.zeros((rows, K // 32))
    if qtype in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
        d = _f16(blk, 0)
        if qtype == Q8_0:
            codes, off = blk[:, 2:34].view(np.int8).astype(np.int64), 128
        else:
            qo = {Q4_0: 2, Q4_1: 4, Q5_0: 6, Q5_1: 8}[qtype]
            codes, off = _nibbles(blk[:, qo:qo + 16]), 0
            if qtype in (Q5_0, Q5_1):
                codes |= _bits(blk[:, qo - 4:qo]) << 4
            if qtype == Q4_0:
                codes -= 8
            if qtype == Q5_0:
                codes -= 16
            if qtype in (Q4_1, Q5_1):
                mins = _f16(blk, 2).reshape(rows, K // 32)
        scale = np.repeat(d, 32)
    elif qtype in (Q4_K, Q5_K):
        d, dmin = _f16(blk, 0), _f16(blk, 2)
        sc, mn = _k4_scales(blk[:, 4:16])
        qo = 48 if qtype == Q5_K else 16
        qs = blk[:, qo:qo + 128].reshape(n, 4, 32).astype(np.int64)
        codes = np.stack([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32)        # sub-block 2j: low, 2j+1: high
        if qtype == Q5_K:
            qh = blk[:, 16:48].astype(np.int64)
            codes = codes | (((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1) << 4)
        scale = np.repeat((d[:, None] * sc).reshape(-1), 32)
        mins = (-(dmin[:, None] * mn)).reshape(rows, K // 32)
        off = 0
    elif qtype == Q6_K:
        ql, qh = blk[:, :128].astype(np.int64), blk[:, 128:192].astype(np.int64)
        sc = blk[:, 192:208].view(np.int8).astype(np.float64)
        d = _f16(blk, 208)
        codes = np.zeros((n, 256), np.int64)
        for h in range(2):
            l0, l1, hh = ql[:, 64 * h:64 * h + 32], ql[:, 64 * h + 32:64 * h + 64], qh[:, 32 * h:32 * h + 32]
            base = 128 * h
            codes[:, base:base + 32] = (l0 & 15) | ((hh & 3) << 4)
            codes[:, base + 32:base + 64] = (l1 & 15) | (((hh >> 2) & 3) << 4)
            codes[:, base + 64:base + 96] = (l0 >> 4) | (((hh >> 4) & 3) << 4)
            codes[:, base + 96:base + 128] = (l1 >> 4) | (((hh >> 6) & 3) << 4)
        codes -= 32
        scale = np.repeat((d[:, None] * sc).reshape(-1), 16)                  # a scale per 16 values
        off = 32
    else:
        raise ValueError(qtype)
    return codes.reshape(rows, K), scale.reshape(rows, K), mins, off


def dequantize(raw: np.ndarray, qtype: int, K: int) -> np.ndarray:
    """The exact weights (float64) from decode(): to check the decoder against gguf.quants."""
    codes, scale, mins, _ = decode(raw, qtype, K)
    return scale * codes + np.repeat(mins, 32, axis=1)


def dot(raw: np.ndarray, qtype: int, K: int, xq: dict):
    """The q8 matvec of GGUF rows with one quantized row `xq` (quantize()'s dict, or the C's own
    parts): (y float64 [rows], bound float64 [rows]). bound: the sum of the magnitudes of every
    term the kernels add (codes with the offset they carry in their integer dots, and the mins
    terms): float32 accumulation errs by a small multiple of eps * bound."""
    codes, scale, mins, off = decode(raw, qtype, K)
    q = xq["codes"] if "codes" in xq else xq["q"].astype(np.int64)     # i16: 128 q + q2
    dx = np.repeat(np.asarray(xq["d"], np.float64), 32)
    sd = np.asarray(xq["sd"], np.float64)
    has_mins = qtype in (Q4_1, Q5_1, Q4_K, Q5_K)
    with np.errstate(all="ignore"):
        f = scale * dx                         # the float scale of each value's block
        y = (f * (codes * q)).sum(axis=1)
        bound = (np.abs(f) * ((np.abs(codes) + off) * np.abs(q))).sum(axis=1)
        if has_mins:
            y = y + (mins * sd).sum(axis=1)
            bound = bound + np.abs(mins * sd).sum(axis=1)
    return y, bound
