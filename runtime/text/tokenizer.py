"""Tokenizers built from GGUF metadata alone, id-for-id with llama.cpp.

Two vocabulary kinds (`tokenizer.ggml.model`):

* ``gemma4``: BPE with merge ranks over raw UTF-8 characters (llama.cpp's
  LLAMA_VOCAB_PRE_TYPE_GEMMA4): spaces become '▁', the text is pre-split only into runs of
  newlines and runs of everything else, a newline run that is itself a token stays whole, and a
  final symbol with no token falls back to its bytes as ``<0xXX>`` tokens.
* ``llama``: SentencePiece BPE by token score (llm_tokenizer_spm), used by Gemma 3.

In both, special tokens (control, user-defined, unknown) are first cut out of the text, longest
first, exactly as llama.cpp's ``tokenizer_st_partition`` does; with ``parse_special=False`` only
user-defined tokens are (llama.cpp matches those regardless).

Token attributes follow llama.cpp's loader, including its text-based fix-ups: tokens it treats
as end-of-generation or FIM markers become control tokens even when the file says "normal" (the
tiny fixture vocabulary's ``<turn|>`` is one), and ``</s>`` is demoted again when the vocabulary
has ``<|tool_response>`` (Gemma 4).
"""

from __future__ import annotations

import codecs
import os
import re
from typing import Iterable

from .bpe import SPACE, bpe_merge, spm_merge, word_splitter
from ..errors import G4rtError, MetadataError, UnsupportedModelError
from ..gguf.reader import GGUFFile

# llama_token_attr bits
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

# tokenizer.ggml.token_type values -> attributes
_TYPE_TO_ATTR = {0: ATTR_UNDEFINED, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL,
                 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
_HIDDEN_ATTRS = ATTR_CONTROL | ATTR_UNKNOWN  # what decode drops when skipping specials

# Texts llama.cpp's loader recognises (llama-vocab.cpp). EOT/FIM detection only fills ids the
# file leaves unset; every match is forced to a control token.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
              "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
              "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")

_SUPPORTED = ("gemma4", "llama")
_CACHE_LIMIT = 1 << 17  # cached pieces (words) before the cache is reset
_PREFIX = 4  # length of the special-token prefixes tested before whole tokens
_NEWLINE_RUNS = re.compile(r"[^\n]+|\n+")


class TokenizerError(G4rtError):
    """A tokenizer was asked for something its vocabulary does not have (e.g. an id out of range)."""


def _int_key(f: GGUFFile, key: str):
    if not f.has(key):
        return None
    v = f.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MetadataError(f"{key} must be an integer, got {type(v).__name__}")
    return v


def _bool_key(f: GGUFFile, key: str, default: bool) -> bool:
    if not f.has(key):
        return default
    v = f.get(key)
    if not isinstance(v, (bool, int)):
        raise MetadataError(f"{key} must be a boolean, got {type(v).__name__}")
    return bool(v)


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Build it with `load_tokenizer`."""

    def __init__(self, *, model: str, tokens: list[str], scores: list[float] | None,
                 token_types: list[int] | None, merges: list[str] | None,
                 special_ids: dict[str, int | None], add_bos: bool, add_eos: bool,
                 add_space_prefix: bool):
        if model not in _SUPPORTED:
            raise UnsupportedModelError(f"tokenizer.ggml.model {model!r} is not supported "
                                        f"(g4rt reads {', '.join(_SUPPORTED)})")
        n = len(tokens)
        if n == 0:
            raise MetadataError("tokenizer.ggml.tokens is empty")
        self.model = model
        self.n_vocab = n
        # llama.cpp renames empty tokens so that they can never match text
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            # llama.cpp refuses a vocabulary with duplicates; keep the first id rather than fail
            self.token_to_id.setdefault(t, i)
        self.scores = list(scores) if scores is not None else [0.0] * n
        self._attrs = ([_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in token_types]
                       if token_types is not None else [ATTR_NORMAL] * n)
        self.add_space_prefix = add_space_prefix
        self.add_eos = add_eos
        self.clean_spaces = model == "gemma4"  # llama.cpp sets it for every BPE vocabulary

        ids = dict(special_ids)
        for key, value in list(ids.items()):
            if value is not None and not 0 <= value < n:
                ids[key] = None  # llama.cpp: "bad special token ... using default"
        self._resolve_special_tokens(ids)
        self.bos_id: int | None = ids.get("bos")
        self.eos_id: int | None = ids.get("eos")
        self.eot_id: int | None = ids.get("eot")
        self.unk_id: int | None = ids.get("unk")
        self.pad_id: int | None = ids.get("pad")
        # llama.cpp forces BOS on for Gemma 4 (ggml-org/llama.cpp#21500)
        self.add_bos = True if model == "gemma4" else add_bos
        if self.add_bos and self.bos_id is None:
            raise MetadataError("tokenizer.ggml.add_bos_token is true but there is no valid "
                                "tokenizer.ggml.bos_token_id")

        # special tokens, longest (in UTF-8 bytes) first, as llama.cpp's cache_special_tokens
        special = [i for i, a in enumerate(self._attrs) if a & _SPECIAL_ATTRS]
        special.sort(key=lambda i: (-len(self.tokens[i].encode("utf-8")), i))
        self._special_all = [(self.tokens[i], i) for i in special]
        self._special_user = [(self.tokens[i], i) for i in special
                              if not self._attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]

        self._special_prefixes = {True: {s[:_PREFIX] for s, _ in self._special_all},
                                  False: {s[:_PREFIX] for s, _ in self._special_user}}
        self._byte_ids: list[int | None] = [self.token_to_id.get(f"<0x{b:02X}>") for b in range(256)]
        self._piece_cache: dict[tuple[int, bool], bytes] = {}
        self._cache: dict[str, tuple[int, ...]] = {}
        if model == "gemma4":
            if merges is None:
                raise MetadataError("tokenizer.ggml.merges is missing (a gemma4 vocabulary needs it)")
            # "left right" -> rank; the first occurrence wins, as with llama.cpp's emplace
            self._ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
            self._split = word_splitter(self._bpe_joining_chars(merges))
        else:
            self._split = word_splitter(self._spm_joining_chars())

    # --- loading helpers ------------------------------------------------------------------
    def _resolve_special_tokens(self, ids: dict[str, int | None]) -> None:
        """llama.cpp's text-based detection of EOT/EOM/FIM/EOG tokens, and the attribute fixes."""
        t2i, attrs = self.token_to_id, self._attrs

        def mark(tid: int) -> None:
            attrs[tid] |= ATTR_CONTROL

        for key, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()):
            if ids.get(key) is None:
                # llama.cpp walks an unordered map and keeps the first hit; no Gemma vocabulary
                # holds two texts of one list, so taking them in list order is the same.
                for text in texts:
                    if text in t2i:
                        ids[key] = t2i[text]
                        mark(t2i[text])
                        break
        eog: set[int] = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids.get(k) is not None}
        for text in _EOG_TEXTS:
            tid = t2i.get(text)
            if tid is not None:
                eog.add(tid)
                mark(tid)
        for key in ("eos", "eot", "eom"):
            if ids.get(key) is not None:
                eog.add(ids[key])
        # Gemma 4: '</s>' is ordinary text there, not an end of generation
        if "<|tool_response>" in t2i and "</s>" in t2i and t2i["</s>"] in eog:
            eog.discard(t2i["</s>"])
            attrs[t2i["</s>"]] = ATTR_NORMAL
        self.eog_ids: frozenset[int] = frozenset(eog)

    def _bpe_joining_chars(self, merges: list[str]) -> set[str]:
        chars = set()
        for m in merges:
            if " " + SPACE not in m:
                continue
            pos = m.find(" ", 1)
            if pos > 0 and m[pos + 1:pos + 2] == SPACE and m[pos - 1] != SPACE:
                chars.add(m[pos - 1])
        return chars

    def _spm_joining_chars(self) -> set[str]:
        joined = "\0".join(t for t in self.tokens if SPACE in t)
        return {m.group(1) for m in re.finditer("([^\0" + SPACE + "])" + SPACE, joined)}

    # --- queries --------------------------------------------------------------------------
    def _check_id(self, tid: int) -> None:
        if not 0 <= tid < self.n_vocab:
            raise TokenizerError(f"token id {tid} is outside the vocabulary (0..{self.n_vocab - 1})")

    def attr(self, tid: int) -> int:
        self._check_id(tid)
        return self._attrs[tid]

    def is_special(self, tid: int) -> bool:
        """A token matched whole in text (control, user-defined or unknown), never by merging."""
        return bool(self.attr(tid) & _SPECIAL_ATTRS)

    def is_control(self, tid: int) -> bool:
        """A token `decode(skip_special=True)` drops (control or unknown)."""
        return bool(self.attr(tid) & _HIDDEN_ATTRS)

    def is_eog(self, tid: int) -> bool:
        return tid in self.eog_ids

    def token_to_piece(self, tid: int, special: bool = True) -> bytes:
        """The bytes a token stands for. With special=False, control/unknown tokens give b''."""
        key = (tid, special)
        piece = self._piece_cache.get(key)
        if piece is not None:
            return piece
        attr = self.attr(tid)
        text = self.tokens[tid]
        if not special and attr & _HIDDEN_ATTRS:
            piece = b""
        elif attr & _SPECIAL_ATTRS:
            piece = text.encode("utf-8")
        elif attr & ATTR_NORMAL:
            piece = text.replace(SPACE, " ").encode("utf-8")
        elif attr & ATTR_BYTE:
            try:
                piece = bytes([int(text[3:5], 16)])
            except ValueError:
                raise MetadataError(f"byte token {tid} is {text!r}, not <0xXX>") from None
        else:
            piece = b""  # unused/undefined tokens print nothing, as in llama.cpp
        self._piece_cache[key] = piece
        return piece

    # --- encoding -------------------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the text: longest first, each over every text fragment."""
        frags: list[str | int] = [text]
        specials = self._special_all if parse_special else self._special_user
        # Gemma 3 has ~6,400 special tokens, most of them '<unusedN>': test the few distinct
        # 4-character prefixes first and skip every token whose prefix is absent.
        present = {p for p in self._special_prefixes[parse_special] if p in text}
        for s, tid in specials:
            if s[:_PREFIX] not in present or s not in text:
                continue
            out: list[str | int] = []
            for fr in frags:
                if isinstance(fr, int) or s not in fr:
                    out.append(fr)
                    continue
                parts = fr.split(s)
                for k, part in enumerate(parts):
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            frags = out
        return frags

    def _bytes_fallback(self, sym: str, out: list[int]) -> None:
        for b in sym.encode("utf-8"):
            tid = self._byte_ids[b]
            if tid is None and self.model == "llama":
                # llama.cpp's SPM byte_to_token tries the raw byte as a token next
                tid = self.token_to_id.get(chr(b)) if b < 0x80 else None
                if tid is None:
                    tid = self.unk_id
                if tid is None:
                    raise TokenizerError(f"no token for byte 0x{b:02X} and no unknown token")
            if tid is not None:  # gemma4: a byte without a token is dropped, as in llama.cpp
                out.append(tid)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        if self.model == "gemma4":
            syms = bpe_merge(piece, self._ranks)
        else:
            syms = spm_merge(piece, self.token_to_id, self.scores)
        out: list[int] = []
        get = self.token_to_id.get
        for s in syms:
            tid = get(s)
            if tid is None:
                self._bytes_fallback(s, out)
            else:
                out.append(tid)
        ids = tuple(out)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _encode_text(self, text: str, out: list[int]) -> None:
        text = text.replace(" ", SPACE)
        if self.model == "gemma4":
            chunks = _NEWLINE_RUNS.findall(text)
        else:
            chunks = [text]
        for chunk in chunks:
            if self.model == "gemma4" and chunk[0] == "\n":
                # gemma4: a run of newlines that is a token is emitted whole (llama.cpp#21343)
                tid = self.token_to_id.get(chunk)
                if tid is not None:
                    out.append(tid)
                    continue
            for piece in self._split(chunk):
                if piece:
                    out.extend(self._encode_piece(piece))

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text`, as llama_tokenize(text, add_special=add_bos, parse_special)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("this vocabulary has no BOS token")
            out.append(self.bos_id)
        prev_special = True
        for frag in (self._partition(text, parse_special) if text else []):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag  # SentencePiece's dummy prefix, after BOS and special tokens
            self._encode_text(frag, out)
            prev_special = False
        return out

    # --- decoding -------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special: bool = True, clean_spaces: bool = False) -> str:
        """Text of `ids`, as llama_detokenize(remove_special=skip_special,
        unparse_special=not skip_special). Invalid UTF-8 becomes U+FFFD.

        clean_spaces=True also applies llama.cpp's clean-up (" ," -> ",", " 's" -> "'s", ...) that
        llama_detokenize does for Gemma 4; it is off by default because it is lossy and is not what
        llama.cpp streams while generating (pieces, as StreamDecoder gives).
        """
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            ids = ids[1:]
            remove_space = False
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for tid in ids:
            piece = self.token_to_piece(tid, special=not skip_special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        data = b"".join(parts)
        if clean_spaces and self.clean_spaces:
            data = _clean_spaces(data)
        return data.decode("utf-8", errors="replace")


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's three clean-up passes of llama_vocab::impl::detokenize, byte for byte."""
    t = bytearray(text)
    if not t:
        return b""
    # 1: " ?", " !", " .", " ," lose the space
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        if t[i - 1] == 0x20 and t[i] in b"?!.,":
            out.pop()
        out.append(t[i])
    t = out
    # 2: a single apostrophe between spaces loses both spaces
    out = bytearray(t[:1])
    i = 1
    while i < len(t):
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            out.append(x)
            i += 2  # the next space is dropped
            continue
        out.append(x)
        i += 1
    t = out
    # 3: " 's", " 'm", " 're", " 've" lose the space (not " 't", " 'd", " 'll")
    out = bytearray(t[:1])
    n = len(t)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                out.pop()
            elif x1 not in b"td" and i + 2 < n:
                x2 = t[i + 2]
                if (x1, x2) in ((0x72, 0x65), (0x76, 0x65)):  # 're, 've
                    out.pop()
        out.append(x)
    return bytes(out)


class StreamDecoder:
    """Incremental detokenizer: `push(id)` returns only complete UTF-8 text.

    Bytes of a character split over byte-fallback tokens are held until the character is whole;
    bytes that can never form a character come out as U+FFFD. `flush()` returns what is left.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._remove_space = tokenizer.add_space_prefix

    def push(self, tid: int) -> str:
        tok = self.tokenizer
        if self._first:
            self._first = False
            if self.skip_special and tok.add_bos and tid == tok.bos_id:
                self._remove_space = False
                return ""
        piece = tok.token_to_piece(tid, special=not self.skip_special)
        if self._remove_space and piece[:1] == b" ":
            piece = piece[1:]
        self._remove_space = False
        return self._utf8.decode(piece)

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def load_tokenizer(f: GGUFFile | str | os.PathLike) -> Tokenizer:
    """Build the tokenizer a GGUF file describes (vocabulary-only files work too)."""
    if not isinstance(f, GGUFFile):
        f = GGUFFile(f)
    if not f.has("tokenizer.ggml.model"):
        raise MetadataError(f"{f.path.name}: no tokenizer (tokenizer.ggml.model is missing)")
    model = f.get("tokenizer.ggml.model")
    if model not in _SUPPORTED:
        raise UnsupportedModelError(f"{f.path.name}: tokenizer.ggml.model {model!r} is not supported "
                                    f"(g4rt reads {', '.join(_SUPPORTED)})")
    tokens = f.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise MetadataError(f"{f.path.name}: tokenizer.ggml.tokens must be an array of strings")
    n = len(tokens)

    def array(key: str, kinds: tuple[type, ...]) -> list | None:
        if not f.has(key):
            return None
        v = f.get(key)
        if not isinstance(v, list) or not all(isinstance(x, kinds) for x in v):
            raise MetadataError(f"{f.path.name}: {key} must be a numeric array")
        if len(v) < n:
            raise MetadataError(f"{f.path.name}: {key} has {len(v)} entries for {n} tokens")
        return v[:n]

    scores = array("tokenizer.ggml.scores", (int, float))
    types = array("tokenizer.ggml.token_type", (int,))
    merges = None
    if f.has("tokenizer.ggml.merges"):
        merges = f.get("tokenizer.ggml.merges")
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise MetadataError(f"{f.path.name}: tokenizer.ggml.merges must be an array of strings")

    # defaults as llama.cpp: SPM has <unk>=0, <s>=1, </s>=2; gemma4 reads everything from the file
    defaults = {"bos": 1, "eos": 2, "unk": 0} if model == "llama" else {}
    special: dict[str, int | None] = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"),
                      ("eom", "eom_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id"), ("fim_pre", "fim_pre_token_id"),
                      ("fim_suf", "fim_suf_token_id"), ("fim_mid", "fim_mid_token_id"),
                      ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"),
                      ("fim_sep", "fim_sep_token_id")):
        value = _int_key(f, "tokenizer.ggml." + key)
        if value is None or not 0 <= value < n:
            value = defaults.get(name)
            if value is not None and value >= n:
                value = None
        special[name] = value

    is_spm = model == "llama"
    return Tokenizer(
        model=model, tokens=tokens, scores=scores, token_types=types, merges=merges,
        special_ids=special,
        add_bos=_bool_key(f, "tokenizer.ggml.add_bos_token", is_spm),
        add_eos=_bool_key(f, "tokenizer.ggml.add_eos_token", False),
        add_space_prefix=_bool_key(f, "tokenizer.ggml.add_space_prefix", is_spm),
    )
