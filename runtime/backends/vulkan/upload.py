"""Getting weight bytes into Vulkan memory.

On CPU drivers (device memory is host memory) a weight arena is a kp `host` tensor filled in
place through its mapped memory; elsewhere it is a device-only `storage` tensor filled through one
reused host staging buffer and the copy kernel. Either way no host copy of a weight stays behind.
"""

from __future__ import annotations

import numpy as np

from .dispatch import PipelineCache, copy_dispatch

STAGING_WORDS = 8 << 20      # 32 MiB host staging for device-only uploads


class WeightUploader:
    def __init__(self, mgr, tensor_types, pipelines: PipelineCache, weight_memory: str):
        """weight_memory: "host" (fill mapped memory in place) or "device" (staged copies)."""
        self.mgr = mgr
        self.tensor_types = tensor_types
        self.pipelines = pipelines
        self.weight_memory = weight_memory
        self.staging_hint = 0        # words of the largest tensor of the current upload
        self._staging = None

    def new_arena(self, nbytes: int):
        words = -(-nbytes // 4)
        if self.weight_memory == "host":
            # filled in place through the mapped memory: the zero pages passed here are never
            # written, so no host copy of the arena exists besides the buffer itself
            return self.mgr.tensor_t(np.zeros(words, np.uint32), self.tensor_types.host)
        # the data of a storage tensor is never read by kp, and np.zeros pages are never touched
        return self.mgr.tensor_t(np.zeros(max(1, words), np.uint32), self.tensor_types.storage)

    def write(self, tensor, byte_off: int, data: np.ndarray) -> None:
        src = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        nbytes = src.nbytes
        if self.weight_memory == "host":
            tensor.data().view(np.uint8)[byte_off:byte_off + nbytes] = src
            return
        # device-only memory: through a reused host staging buffer and the copy kernel; the buffer
        # is min(32 MiB, the largest tensor) so that uploading never holds more than one tensor
        want = min(STAGING_WORDS, max(self.staging_hint, -(-nbytes // 4)))
        if self._staging is None or self._staging.size() < want:
            self._staging = None
            self._staging = self.mgr.tensor_t(np.zeros(want, np.uint32), self.tensor_types.host)
        step = self._staging.size() * 4
        seq = self.mgr.sequence()
        for a in range(0, nbytes, step):
            k = min(step, nbytes - a)
            view = self._staging.data().view(np.uint8)
            view[:k] = src[a:a + k]
            if k % 4:
                view[k:k + 4 - k % 4] = 0   # byte_off is word-aligned; the tail word is padding
            seq.eval(self.pipelines.op(copy_dispatch(self._staging, 0, tensor, (byte_off + a) // 4,
                                                     -(-k // 4))))

    def drop_staging(self) -> None:
        """Release the staging buffer (and the copy pipelines bound to it)."""
        if self._staging is not None:
            self.pipelines.forget_tensor(self._staging)
            self._staging = None

    def upload_words(self, words: np.ndarray):
        """A small standalone tensor (tables, dequantized vectors)."""
        words = np.ascontiguousarray(words, np.uint32).reshape(-1)
        t = self.new_arena(words.nbytes)
        self.write(t, 0, words)
        self.drop_staging()
        return t
