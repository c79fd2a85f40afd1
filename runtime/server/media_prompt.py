"""Images and audio in a chat request, for every API: each API's converter leaves a pending media
part where the content had an image or audio item (`pending_part`); before rendering, `take_media`
fetches them under the server's MediaPolicy (runtime/server/media_input.py) and leaves the plain
{"type": "image"} / {"type": "audio"} parts the Gemma 4 template renders as <|image|> / <|audio|>;
`with_media` then expands those markers and encodes the media (Model.media_prompt) into the
prompt's MediaRows, which the job carries to its slot."""

from __future__ import annotations

from typing import Optional

from ..errors import G4rtError
from .media_input import MediaItem, media_from_base64, media_from_url
from .protocol import APIError

_PENDING = "g4rt_pending_media"


def pending_part(kind: str, where: str, *, url: Optional[str] = None, base64: Optional[str] = None) -> dict:
    """A content part for an image / audio given by URL (data:, path, http) or as base64."""
    return {"type": kind, _PENDING: (url, base64, where)}


def take_media(messages: list[dict], policy) -> list[MediaItem]:
    """The media of `messages` in the order the template renders them (messages in order, parts in
    order), each fetched and size-checked; their parts become plain template parts."""
    items = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and _PENDING in part:
                url, b64, where = part.pop(_PENDING)
                kind = part["type"]
                items.append(media_from_url(url, kind, where, policy) if url is not None
                             else media_from_base64(b64, kind, where, policy))
    return items


def with_media(state, model, ids: list[int], items: list[MediaItem]):
    """(prompt ids with the media markers expanded, their MediaRows or None): a 400 naming the
    problem when the server has no projector, a medium cannot be decoded, or the prompt with its
    media does not fit the context."""
    if not items:
        return ids, None
    if getattr(model, "media", None) is None:
        raise APIError(400, f"{items[0].where}: this server has no projector for images / audio "
                            f"(start g4rt serve with --mmproj MMPROJ.gguf)", param=items[0].where.split(".")[0])
    images = [it.data for it in items if it.kind == "image"]
    audio = [it.data for it in items if it.kind == "audio"]
    try:
        with state.media_lock:           # one encoder per model: media requests encode in turn
            ids, rows, _ = model.media_prompt(ids, images, audio)
    except G4rtError as e:
        raise APIError(400, f"the request's media: {e}") from None
    if len(ids) >= model.engine.ctx:
        raise APIError(400, f"the prompt has {len(ids)} tokens with its media, more than the context of "
                            f"{model.engine.ctx} allows; send fewer or smaller media, or start the server with a "
                            f"larger --ctx", code="exceed_context_size_error")
    return ids, rows
