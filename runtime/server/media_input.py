"""Media in requests, for every API: an image or audio part (a `data:` URL or base64 field, a local
path or a remote URL) → its bytes, checked against the operator's policy before anything is
decoded. Local files are read only under `--media-dir`, remote URLs fetched only with
`--allow-remote-media` (as llama-server and vLLM gate them: a server must not read its own disk
or reach the network for whoever sends a request), and every item has a size limit.

Decoding the bytes (Pillow, soundfile) is g4rt.media's job; errors there are MediaErrors, which
the routes answer as 400s too."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from .protocol import APIError

DEFAULT_MAX_MEDIA_BYTES = 20 << 20
REMOTE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    media_dir: Optional[Path] = None       # local paths allowed under this folder only
    allow_remote: bool = False             # http(s) URLs fetched


@dataclass(frozen=True)
class MediaItem:
    kind: str                              # "image" or "audio"
    data: bytes
    where: str                             # the request field it came from, for error messages

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _bad(where: str, message: str, status: int = 400) -> APIError:
    return APIError(status, f"{where}: {message}", param=where.split("[")[0] or None)


def _checked_size(data: bytes, where: str, policy: MediaPolicy) -> bytes:
    if not data:
        raise _bad(where, "the media is empty (0 bytes)")
    if len(data) > policy.max_bytes:
        raise _bad(where, f"the media is {len(data)} bytes, over the server's limit of {policy.max_bytes}", 413)
    return data


def decode_base64(text: str, where: str, policy: MediaPolicy) -> bytes:
    """Base64 (standard or URL-safe alphabet, padding optional) with the size checked before decoding."""
    if not isinstance(text, str):
        raise _bad(where, "base64 media must be a string")
    text = "".join(text.split())
    size = len(text.rstrip("=")) * 3 // 4          # the decoded length, without decoding
    if size > policy.max_bytes:
        raise _bad(where, f"the media is {size} bytes, over the server's limit of "
                          f"{policy.max_bytes}", 413)
    alt = b"-_" if ("-" in text or "_" in text) else None
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "the media is not valid base64") from None
    return _checked_size(data, where, policy)


def _data_url(url: str, where: str, policy: MediaPolicy) -> bytes:
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise _bad(where, "a data: URL needs a comma before its payload")
    if head.endswith(";base64"):
        return decode_base64(payload, where, policy)
    return _checked_size(unquote(payload).encode("latin-1", "replace"), where, policy)


def _local(path: str, where: str, policy: MediaPolicy) -> bytes:
    if policy.media_dir is None:
        raise _bad(where, "local files are not allowed (the server was not started with --media-dir)", 403)
    root = policy.media_dir.resolve()
    full = (root / path).resolve() if not os.path.isabs(path) else Path(path).resolve()
    if full != root and root not in full.parents:
        raise _bad(where, f"{path!r} is outside the server's --media-dir", 403)
    try:
        size = full.stat().st_size
        if size > policy.max_bytes:
            raise _bad(where, f"{path!r} is {size} bytes, over the server's limit of {policy.max_bytes}", 413)
        return _checked_size(full.read_bytes(), where, policy)
    except FileNotFoundError:
        raise _bad(where, f"{path!r} does not exist under --media-dir", 404) from None
    except IsADirectoryError:
        raise _bad(where, f"{path!r} is a folder, not a file") from None
    except PermissionError:
        raise _bad(where, f"{path!r} cannot be read", 403) from None


def _remote(url: str, where: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise _bad(where, "remote media URLs are not allowed (start the server with --allow-remote-media, "
                          "or send the media inline as a data: URL)", 403)
    import httpx
    try:
        with httpx.stream("GET", url, timeout=REMOTE_TIMEOUT_S, follow_redirects=True) as r:
            if r.status_code != 200:
                raise _bad(where, f"fetching {url} gave HTTP {r.status_code}")
            chunks, n = [], 0
            for chunk in r.iter_bytes():
                n += len(chunk)
                if n > policy.max_bytes:
                    raise _bad(where, f"{url} is over the server's limit of {policy.max_bytes} bytes", 413)
                chunks.append(chunk)
    except httpx.HTTPError as e:
        raise _bad(where, f"fetching {url} failed: {type(e).__name__}: {e}") from None
    return _checked_size(b"".join(chunks), where, policy)


def media_from_url(url: str, kind: str, where: str, policy: MediaPolicy) -> MediaItem:
    """An `image_url`-style reference: `data:...;base64,...`, `file://PATH` or a bare path (under
    --media-dir), or `http(s)://...` (with --allow-remote-media)."""
    if not isinstance(url, str) or not url:
        raise _bad(where, "the media URL must be a non-empty string")
    scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        data = _data_url(url, where, policy)
    elif scheme in ("http", "https"):
        data = _remote(url, where, policy)
    elif scheme == "file":
        data = _local(unquote(urlparse(url).path), where, policy)
    elif scheme == "":
        data = _local(url, where, policy)
    else:
        raise _bad(where, f"URL scheme {scheme!r} is not supported (data:, http(s):, file:)")
    return MediaItem(kind, data, where)


def media_from_base64(text: str, kind: str, where: str, policy: MediaPolicy) -> MediaItem:
    return MediaItem(kind, decode_base64(text, where, policy), where)
