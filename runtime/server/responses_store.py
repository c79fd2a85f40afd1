"""The few recent responses `/v1/responses` keeps for `previous_response_id` (and GET / DELETE):
in memory, least recently used dropped first, bounded in count and in size, lost on restart."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Optional

MAX_RESPONSES = 256
MAX_CHARS = 32 << 20        # the stored JSON text of every kept response together


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_chars: int = MAX_CHARS):
        self.max_responses, self.max_chars = max_responses, max_chars
        self._kept: OrderedDict[str, tuple[dict, list, int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, body: dict, items: list) -> None:
        """Keep a response's body and its conversation's items (input + output) for the next turn."""
        size = len(json.dumps(body)) + len(json.dumps([i.model_dump() for i in items]))
        with self._lock:
            self._drop(body["id"])
            self._kept[body["id"]] = (body, items, size)
            self._chars += size
            while self._kept and (len(self._kept) > self.max_responses or self._chars > self.max_chars):
                self._drop(next(iter(self._kept)))

    def get(self, rid: str) -> Optional[tuple[dict, list]]:
        with self._lock:
            kept = self._kept.get(rid)
            if kept is None:
                return None
            self._kept.move_to_end(rid)
            return kept[0], kept[1]

    def delete(self, rid: str) -> bool:
        with self._lock:
            return self._drop(rid)

    def _drop(self, rid: str) -> bool:
        kept = self._kept.pop(rid, None)
        if kept is not None:
            self._chars -= kept[2]
        return kept is not None
