"""Tests for g4rt.server.output_text: stop strings, Gemma 4 tool-call arguments, and the
streaming split of model output into content / reasoning / tool calls."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from g4rt.server.output_text import (Delta, Gemma4OutputParser, StopMatcher, ToolCall, ToolCallParseError,
                                     parse_complete, parse_tool_arguments)

Q = '<|"|>'


# --- StopMatcher ----------------------------------------------------------------------------
def run_stops(stops, chunks):
    """(emitted text incl. flush, stopped, matched, per-push outputs)."""
    m = StopMatcher(stops)
    out = []
    for c in chunks:
        text, stopped = m.push(c)
        out.append(text)
        assert stopped == m.stopped
    out.append(m.flush())
    return "".join(out), m.stopped, m.matched


def reference(text, stops):
    hits = [text.find(s) for s in stops if s and s in text]
    return text[:min(hits)] if hits else text


def test_stop_split_at_every_point():
    text = "Hello world. STOP here and more"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            got, stopped, matched = run_stops(["STOP"], [text[:i], text[i:j], text[j:]])
            assert got == "Hello world. " and stopped and matched == "STOP"


def test_stop_holds_back_only_a_possible_prefix():
    m = StopMatcher(["STOP"])
    assert m.push("abc ST") == ("abc ", False)
    assert m.push("x") == ("STx", False)
    assert m.push("STO") == ("", False)
    assert m.push("P tail") == ("", True)
    assert m.push("more") == ("", True)
    assert m.flush() == ""
    assert m.matched == "STOP"


def test_several_stops_earliest_wins():
    got, stopped, matched = run_stops(["END", "\n\n"], ["a\n", "\nb END"])
    assert (got, stopped, matched) == ("a", True, "\n\n")


def test_stop_that_is_prefix_of_another():
    for stops in (["ab", "abc"], ["abc", "ab"]):
        got, stopped, matched = run_stops(stops, ["xa", "bc"])
        assert got == "x" and stopped and matched in stops
        got, stopped, _ = run_stops(stops, ["xa", "bd"])
        assert got == "x" and stopped


def test_earlier_starting_stop_still_completing_wins():
    # "c" appears first as a whole, but "abcd" starts earlier: wait for it to settle.
    m = StopMatcher(["abcd", "c"])
    assert m.push("xabc") == ("x", False)
    assert m.push("d") == ("", True) and m.matched == "abcd"
    m = StopMatcher(["abcd", "c"])
    assert m.push("xabc") == ("x", False)
    assert m.push("e") == ("ab", True) and m.matched == "c"
    m = StopMatcher(["abcd", "c"])
    m.push("xabc")
    assert m.flush() == "ab" and m.stopped and m.matched == "c"


def test_no_stop_flush_returns_tail():
    m = StopMatcher(["</s>"])
    assert m.push("one two </") == ("one two ", False)
    assert m.flush() == "</"
    assert not m.stopped and m.matched is None


def test_overlapping_partial_match():
    m = StopMatcher(["aab"])
    assert m.push("aa") == ("", False)
    assert m.push("a") == ("a", False)
    assert m.push("b") == ("", True)
    assert run_stops(["aab"], ["aaab"])[0] == "a"


def test_empty_stops_ignored():
    assert run_stops(["", ""], ["ab", "c"]) == ("abc", False, None)
    assert StopMatcher([]).push("x") == ("x", False)


@st.composite
def chunked(draw, alphabet="ab<>|x"):
    text = draw(st.text(alphabet=alphabet, max_size=30))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None)
@given(chunked(), st.lists(st.text(alphabet="ab<>|x", max_size=4), max_size=4))
def test_stop_matcher_property(tc, stops):
    text, chunks = tc
    m = StopMatcher(stops)
    out = []
    for c in chunks:
        piece, stopped = m.push(c)
        out.append(piece)
        if stopped:
            assert m.push("ab") == ("", True)
            break
    out.append(m.flush())
    assert "".join(out) == reference(text, stops)
    assert m.stopped == any(s and s in text for s in stops)
    if m.stopped:
        assert text.find(m.matched) == len(reference(text, stops))


# --- parse_tool_arguments -------------------------------------------------------------------
def test_args_strings_with_syntax_inside():
    body = "{city:" + Q + "Paris, France" + Q + ", note:" + Q + 'a{b}:c "d"\n[e]' + Q + "}"
    assert parse_tool_arguments(body) == {"city": "Paris, France", "note": 'a{b}:c "d"\n[e]'}


def test_args_nested_and_scalars():
    body = ("{ a : { b:[1, -2, 3.5, -1e-3, 2E+2, true, false, null, " + Q + "x" + Q + ", [], {}] },"
            " " + Q + "quoted key" + Q + ":{" + Q + "in:ner" + Q + ":0} , n:-7 }")
    assert parse_tool_arguments(body) == {
        "a": {"b": [1, -2, 3.5, -0.001, 200.0, True, False, None, "x", [], {}]},
        "quoted key": {"in:ner": 0}, "n": -7}
    assert isinstance(parse_tool_arguments("{n:3}")["n"], int)
    assert isinstance(parse_tool_arguments("{n:3.0}")["n"], float)


def test_args_empty_and_whitespace():
    assert parse_tool_arguments("{}") == {}
    assert parse_tool_arguments("  {\n}\n ") == {}
    assert parse_tool_arguments("{\n  key-1.x : true\n}") == {"key-1.x": True}


@pytest.mark.parametrize("body", [
    "", "x", "{", "}", "{a}", "{a:}", "{:1}", "{a 1}", "{a:1,}", "{a:1 b:2}",
    "{a:" + Q + "open}", "{a:1}}", "{a:1} x", "{a:tru}", "{a:truex}", "{a:Paris}",
    "{a:[1,2}", "{a:[1,,2]}", "{a:{b:1}", "{a:1.}", "{a:-}", "[1]", "{a:3abc}",
    "{a:" + Q + "x" + Q + Q + "}",
])
def test_args_malformed(body):
    with pytest.raises(ToolCallParseError):
        parse_tool_arguments(body)


def test_args_depth_limit():
    ok = "{a:" + "[" * 62 + "]" * 62 + "}"
    parse_tool_arguments(ok)
    with pytest.raises(ToolCallParseError, match="deeper"):
        parse_tool_arguments("{a:" + "[" * 64 + "]" * 64 + "}")
    with pytest.raises(ToolCallParseError):
        parse_tool_arguments("{a:" + "[" * 100000)


def gemma_format(v) -> str:
    """Mirror of Gemma 4's chat-template macro that writes tool-call arguments."""
    if isinstance(v, str):
        return Q + v + Q
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{gemma_format(v[k])}" for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(gemma_format(x) for x in v) + "]"
    return str(v)


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC_0123456789-.", min_size=1, max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20).filter(lambda s: Q not in s))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=5))
def test_args_round_trip(d):
    assert parse_tool_arguments(gemma_format(d)) == d


# --- Gemma4OutputParser ---------------------------------------------------------------------
def run_parser(chunks, **kw):
    p = Gemma4OutputParser(**kw)
    deltas = []
    for c in chunks:
        deltas += p.push(c)
    deltas += p.finish()
    for d in deltas:
        assert (d.kind == "tool_call") == (d.tool_call is not None)
        assert d.kind in ("content", "reasoning", "tool_call") and (d.text or d.tool_call)
    return deltas


def summary(deltas):
    """(content, reasoning, [(index, name, args)]) — call ids are random, so left out."""
    return ("".join(d.text for d in deltas if d.kind == "content"),
            "".join(d.text for d in deltas if d.kind == "reasoning"),
            [(d.tool_call.index, d.tool_call.name, json.loads(d.tool_call.arguments))
             for d in deltas if d.kind == "tool_call"])


def test_thinking_then_content():
    out = summary(run_parser(["<|channel>thought\nStep 1.\nStep 2.<channel|>\n\nThe answer."]))
    assert out == ("The answer.", "Step 1.\nStep 2.", [])


def test_empty_thinking_block():
    assert summary(run_parser(["<|channel>thought\n<channel|>Hi"])) == ("Hi", "", [])
    assert summary(run_parser(["<|channel>thought<channel|>\nHi"])) == ("Hi", "", [])
    assert summary(run_parser(["<|channel><channel|>Hi"])) == ("Hi", "", [])


def test_unterminated_thinking():
    assert summary(run_parser(["<|channel>thought\nstill thinking"])) == ("", "still thinking", [])
    assert summary(run_parser(["Hi <|channel>thought"])) == ("Hi ", "", [])


def test_thinking_without_name_line_is_kept():
    # No name line: nothing may be dropped, it is all reasoning.
    out = summary(run_parser(["<|channel>Hmm, let me see<channel|>ok"]))
    assert out == ("ok", "Hmm, let me see", [])


def test_reasoning_streams_before_block_ends():
    p = Gemma4OutputParser()
    assert p.push("<|channel>thou") == []
    assert p.push("ght\nabc<chan") == [Delta("reasoning", "abc")]
    assert p.push("nel|>\nX") == [Delta("content", "X")]
    assert p.push("Y<|t") == [Delta("content", "Y")]
    assert p.push("oo") == []
    assert p.finish() == [Delta("content", "<|too")]


def test_content_whitespace_only_stripped_after_thinking():
    assert parse_complete("\n  Hello\n")[0] == "\n  Hello\n"
    assert parse_complete("<|channel>thought\nx<channel|>\n  Hello\n")[0] == "Hello\n"
    chunks = ["<|channel>thought\nx<channel|>", "\n", " ", "\n", " Hello", " there"]
    assert summary(run_parser(chunks)) == ("Hello there", "x", [])


def test_two_tool_calls():
    text = ("<|tool_call>call:get_weather{city:" + Q + "Paris" + Q + "}<tool_call|>"
            "<|tool_call>call:get_time{tz:" + Q + "Europe/Paris" + Q + ",fmt:{h24:true}}<tool_call|>")
    content, reasoning, calls = parse_complete(text)
    assert content == "" and reasoning == ""
    assert [c.index for c in calls] == [0, 1]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert json.loads(calls[1].arguments) == {"tz": "Europe/Paris", "fmt": {"h24": True}}
    for c in calls:
        assert isinstance(c, ToolCall) and re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id)
    assert calls[0].id != calls[1].id


def test_tool_call_string_with_braces_and_unicode():
    text = ("Sure.<|tool_call>call:ns.run-code{code:" + Q + "if x: {y}\n}" + Q + ",city:"
            + Q + "Zürich" + Q + "}<tool_call|>")
    content, _, calls = parse_complete(text)
    assert content == "Sure."
    assert calls[0].name == "ns.run-code"
    assert json.loads(calls[0].arguments) == {"code": "if x: {y}\n}", "city": "Zürich"}
    assert "Zürich" in calls[0].arguments  # ensure_ascii=False


def test_tool_call_tolerates_whitespace_and_empty_args():
    _, _, calls = parse_complete("<|tool_call> call:ping {} \n<tool_call|>")
    assert (calls[0].name, calls[0].arguments) == ("ping", "{}")


@pytest.mark.parametrize("raw", [
    "<|tool_call>get_weather{city:1}<tool_call|>",          # no "call:"
    "<|tool_call>call:get weather{city:1}<tool_call|>",     # bad name
    "<|tool_call>call:f{city:Paris}<tool_call|>",           # bare-word value
    "<|tool_call>call:f{a:1}junk<tool_call|>",              # trailing garbage
    "<|tool_call>call:f<tool_call|>",                        # no arguments
])
def test_malformed_tool_call_is_content(raw):
    content, _, calls = parse_complete("before " + raw + " after")
    assert calls == [] and content == "before " + raw + " after"


def test_malformed_call_does_not_consume_an_index():
    text = ("<|tool_call>call:bad{x}<tool_call|><|tool_call>call:good{}<tool_call|>")
    content, _, calls = parse_complete(text)
    assert content == "<|tool_call>call:bad{x}<tool_call|>"
    assert [(c.index, c.name) for c in calls] == [(0, "good")]


def test_unterminated_tool_call_is_content():
    text = "Let me check. <|tool_call>call:f{a:" + Q + "x"
    assert parse_complete(text) == (text, "", [])


def test_flags_off():
    text = "<|channel>thought\nhm<channel|>A<|tool_call>call:f{}<tool_call|>"
    assert parse_complete(text, parse_tools=False)[:2] == ("A<|tool_call>call:f{}<tool_call|>", "hm")
    content, reasoning, calls = parse_complete(text, parse_thinking=False)
    assert (content, reasoning) == ("<|channel>thought\nhm<channel|>A", "")
    assert [c.name for c in calls] == ["f"]
    assert parse_complete(text, parse_tools=False, parse_thinking=False) == (text, "", [])


REALISTIC = ("<|channel>thought\nLet me think.<channel|>\nThe answer is <|tool_call>call:get_weather"
             "{city:" + Q + "Paris" + Q + ",days:3}<tool_call|>")


def test_realistic_every_split():
    whole = summary(run_parser([REALISTIC]))
    assert whole == ("The answer is ", "Let me think.",
                     [(0, "get_weather", {"city": "Paris", "days": 3})])
    n = len(REALISTIC)
    for i in range(n + 1):
        assert summary(run_parser([REALISTIC[:i], REALISTIC[i:]])) == whole
        for j in range(i, n + 1, 3):
            assert summary(run_parser([REALISTIC[:i], REALISTIC[i:j], REALISTIC[j:]])) == whole


PIECES = ["<|channel>", "<channel|>", "thought\n", "<|tool_call>", "<tool_call|>", "call:f{a:1}",
          "call:g{}", "\n", " ", "x", "<", "|", ">", "hi there", Q, "{", "}"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join).flatmap(
    lambda t: st.tuples(st.just(t), st.lists(st.integers(0, len(t)), max_size=5))),
    st.booleans(), st.booleans())
def test_parser_split_invariance(tc, tools, thinking):
    text, cuts = tc
    bounds = [0, *sorted(cuts), len(text)]
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    kw = dict(parse_tools=tools, parse_thinking=thinking)
    whole = summary(run_parser([text], **kw))
    assert summary(run_parser(chunks, **kw)) == whole
    assert summary(run_parser(list(text), **kw)) == whole
    if not tools and not thinking:
        assert whole == (text, "", [])
