"""The numpy twins of the media encoders' CUDA kernels (shaders/cuda/media.cu, conformer.cu) for
the emulated driver's kernels="numpy" mode: EmulatedDriver mixes this class in. Each follows its
kernel's contract (the .cu comments), with numpy_ref's functions where the arithmetic is the
reference's; `self.view(ptr, count)` is the driver's bounds-checked view of device memory."""

from __future__ import annotations

import numpy as np

from ...backends.cuda.kernels import FA_ROWS
from ...backends.numpy_ref.audio_ops import chunked_attention, conv2d_norm_relu, depthwise_conv1d, glu, silu
from ...backends.numpy_ref.backend import full_attention, layer_norm, pool_rows, rope2d


class EmulatedFault(AssertionError):
    """A launch whose geometry does not cover its work (a host-side bug)."""


class MediaKernels:
    def _rows_cols(self, ptr, rows, cols):
        return self.view(ptr, rows * cols).reshape(rows, cols)

    def _k_layernorm(self, grid, x, out, w, b, cols, eps):
        rows = grid[0]
        weight = self.view(w, cols) if w else None
        bias = self.view(b, cols) if b else None
        self._rows_cols(out, rows, cols)[...] = layer_norm(self._rows_cols(x, rows, cols), weight, bias, eps)

    def _k_add_vector(self, grid, x, w, out, rows, cols):
        self._rows_cols(out, rows, cols)[...] = self._rows_cols(x, rows, cols) + self.view(w, cols)[None]

    def _k_gather_add(self, grid, x, table, index, out, rows, cols, J, table_rows):
        idx = self._rows_cols(index, rows, J).astype(np.int64)
        T = self._rows_cols(table, table_rows, cols)
        y = self._rows_cols(x, rows, cols).copy()
        for j in range(J):
            ok = (idx[:, j] >= 0) & (idx[:, j] < table_rows)
            y[ok] = y[ok] + T[idx[ok, j]]
        self._rows_cols(out, rows, cols)[...] = y

    def _k_clamp(self, grid, x, out, n, lo, hi):
        self.view(out, n)[...] = np.minimum(np.maximum(self.view(x, n), np.float32(lo)), np.float32(hi))

    def _k_standardize(self, grid, x, bias, w, out, rows, cols):
        self._rows_cols(out, rows, cols)[...] = (self._rows_cols(x, rows, cols) - self.view(bias, cols)[None]) * \
            self.view(w, cols)[None]

    def _k_pool_rows(self, grid, x, out, rows, cols, group, scale):
        self._rows_cols(out, rows, cols)[...] = pool_rows(self._rows_cols(x, rows * group, cols), group, scale)

    def _k_rope2d(self, grid, x, pos, out, rows, cols, head_dim, base):
        P = self._rows_cols(pos, rows, 2).astype(np.int64)
        self._rows_cols(out, rows, cols)[...] = rope2d(self._rows_cols(x, rows, cols), P, head_dim, base)

    def _k_full_attention(self, grid, q, k, v, out, n, H, Hkv, D, scale):
        if grid[0] * FA_ROWS < n or grid[1] != H:
            raise EmulatedFault(f"full_attention grid {grid} for {n} rows and {H} heads")
        Q, K, V = self._rows_cols(q, n, H * D), self._rows_cols(k, n, Hkv * D), self._rows_cols(v, n, Hkv * D)
        self._rows_cols(out, n, H * D)[...] = full_attention(Q, K, V, H, Hkv, D, scale)

    def _k_silu(self, grid, x, out, n):
        self.view(out, n)[...] = silu(self.view(x, n))

    def _k_glu(self, grid, x, out, rows, cols):
        self._rows_cols(out, rows, cols)[...] = glu(self._rows_cols(x, rows, 2 * cols))

    def _k_depthwise_conv1d(self, grid, x, w, out, rows, cols, K):
        self._rows_cols(out, rows, cols)[...] = depthwise_conv1d(self._rows_cols(x, rows, cols),
                                                                 self._rows_cols(w, cols, K))

    def _k_conv2d_norm_relu(self, grid, x, mask, w, norm, out, T, F, ci, co, mask_cols, eps):
        Fo, To = grid[0], grid[1]
        M = self._rows_cols(mask, T, mask_cols)[:, :1] if mask else None
        W = self._rows_cols(w, co * ci * 3, 3)
        self._rows_cols(out, To, Fo * co)[...] = conv2d_norm_relu(self._rows_cols(x, T, F * ci), M, W,
                                                                  self.view(norm, co), ci, co, eps, To)

    def _k_chunked_rel(self, grid, w, rel, HD, width, window, c):
        half = width // 2
        inv = np.exp(np.arange(half, dtype=np.float32) * np.float32(c))
        pos = np.arange(window, -1, -1, dtype=np.float32)[:, None] * inv[None, :]
        table = np.concatenate([np.sin(pos), np.cos(pos)], axis=1).astype(np.float64)
        W = self._rows_cols(w, HD, width).astype(np.float64)
        self._rows_cols(rel, window + 1, HD)[...] = (table @ W.T).astype(np.float32)

    def _k_chunked_attention(self, grid, q, k, v, rel, by, out, rows, H, D, q_scale, k_scale, cap, window, valid):
        HD = H * D
        Q, K, V = (self._rows_cols(p, rows, HD) for p in (q, k, v))
        R = self._rows_cols(rel, window + 1, HD)
        scale = self.view(by, D) if by else None
        self._rows_cols(out, rows, HD)[...] = chunked_attention(Q, K, V, R, scale, H, D, q_scale, k_scale, cap,
                                                                window, valid)
