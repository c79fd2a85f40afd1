"""Media references in requests (runtime/server/media_input.py): what is read, what is refused and
how (the status and the field named), before any decoding."""

from __future__ import annotations

import base64

import pytest

from g4rt.server.media_input import MediaPolicy, media_from_base64, media_from_url
from g4rt.server.protocol import APIError

PNG_HEAD = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


def refused(fn, *args) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*args)
    return e.value


def test_data_urls_and_base64_decode_to_the_bytes_sent():
    b64 = base64.b64encode(PNG_HEAD).decode()
    item = media_from_url("data:image/png;base64," + b64, "image", "messages[0].content[1]", MediaPolicy())
    assert item.data == PNG_HEAD and item.kind == "image" and len(item.sha256) == 64
    # line breaks, missing padding and the URL-safe alphabet are all accepted, as clients send them
    spaced = "\n".join(b64[i:i + 10] for i in range(0, len(b64), 10)).rstrip("=")
    assert media_from_base64(spaced, "image", "images[0]", MediaPolicy()).data == PNG_HEAD
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 20).decode()
    assert media_from_base64(urlsafe, "audio", "x", MediaPolicy()).data == b"\xfb\xff" * 20


@pytest.mark.parametrize("text, words", [("@@@@", "not valid base64"), ("", "empty")])
def test_bad_base64_is_a_400_naming_the_field(text, words):
    e = refused(media_from_base64, text, "image", "images[2]", MediaPolicy())
    assert e.status == 400 and "images[2]" in e.message and words in e.message and e.param == "images"


def test_the_size_limit_is_checked_before_decoding():
    big = base64.b64encode(b"x" * 5000).decode()
    e = refused(media_from_url, "data:image/png;base64," + big, "image", "m", MediaPolicy(max_bytes=1000))
    assert e.status == 413 and "1000" in e.message
    assert media_from_url("data:image/png;base64," + big, "image", "m", MediaPolicy(max_bytes=5000)).data == b"x" * 5000


def test_local_paths_only_under_the_media_dir(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.png").write_bytes(PNG_HEAD)
    (tmp_path / "secret.txt").write_bytes(b"secret")
    e = refused(media_from_url, str(tmp_path / "media" / "a.png"), "image", "m", MediaPolicy())
    assert e.status == 403 and "--media-dir" in e.message
    policy = MediaPolicy(media_dir=tmp_path / "media")
    assert media_from_url("a.png", "image", "m", policy).data == PNG_HEAD
    assert media_from_url(f"file://{tmp_path / 'media' / 'a.png'}", "image", "m", policy).data == PNG_HEAD
    for escape in ("../secret.txt", str(tmp_path / "secret.txt"), f"file://{tmp_path}/media/../secret.txt"):
        e = refused(media_from_url, escape, "image", "m", policy)
        assert e.status == 403 and "outside" in e.message, escape
    assert refused(media_from_url, "missing.png", "image", "m", policy).status == 404


def test_remote_urls_need_the_operator_s_permission():
    e = refused(media_from_url, "https://example.com/cat.png", "image", "messages[0].content[0]", MediaPolicy())
    assert e.status == 403 and "--allow-remote-media" in e.message
    e = refused(media_from_url, "ftp://example.com/cat.png", "image", "m", MediaPolicy(allow_remote=True))
    assert e.status == 400 and "'ftp'" in e.message
