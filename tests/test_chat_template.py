"""Chat templates: the real Gemma 4 template against transformers' output, the built-in formats,
the thinking channel, and hostile templates.

The expected strings were produced once with transformers 5.24's `render_jinja_template` (what
`apply_chat_template` calls) on tokenizer/gemma4-chat-template.jinja with bos_token="<bos>", and
checked by reading the template: BOS, then an optional system turn (holding <|think|> when
thinking is on), then `<|turn>{role}\\n{content}<turn|>\\n` per message (assistant -> model,
thinking stripped from model turns, user text trimmed), then `<|turn>model\\n` and, with thinking
off, an empty thought channel `<|channel>thought\\n<channel|>`.
"""

from __future__ import annotations

import copy
import time

import pytest
from gguf import GGUFWriter

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.text.chat_template import (GEMMA3_TEMPLATE, GEMMA4_TEMPLATE, ChatTemplate, ChatTemplateError,
                                     load_chat_template, split_thinking, strip_thinking)
from g4rt.errors import G4rtError
from g4rt.gguf.reader import GGUFFile

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}]

CALL = {"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "metric": True}}}

# name -> (messages, options, expected)
CASES = {
    "user_only": (
        [{"role": "user", "content": "What is 2+2?"}], {},
        "<bos><|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"),
    "system": (
        [{"role": "system", "content": "  You are terse.  "}, {"role": "user", "content": "Hi"}], {},
        "<bos><|turn>system\nYou are terse.<turn|>\n<|turn>user\nHi<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"),
    "multi_turn": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
         {"role": "assistant", "content": "<|channel>thought\nplanning<channel|>Hi there!"},
         {"role": "user", "content": " And now? "}], {},
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\nHi there!<turn|>\n"
        "<|turn>user\nAnd now?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"),
    "no_generation_prompt": (
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}],
        {"add_generation_prompt": False},
        "<bos><|turn>user\nHello<turn|>\n<|turn>model\nHi<turn|>\n"),
    "thinking": (
        [{"role": "user", "content": "Solve it"}], {"enable_thinking": True},
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nSolve it<turn|>\n<|turn>model\n"),
    "thinking_system": (
        [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Q"}], {"enable_thinking": True},
        "<bos><|turn>system\n<|think|>\nSys<turn|>\n<|turn>user\nQ<turn|>\n<|turn>model\n"),
    "content_parts": (
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe "}]}], {},
        "<bos><|turn>user\n<|image|>Describe<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"),
    "consecutive_assistant": (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "assistant", "content": "c"}], {},
        "<bos><|turn>user\na<turn|>\n<|turn>model\nb<turn|>\nc<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"),
    "tools": (
        [{"role": "user", "content": "Weather in Paris?"}], {"tools": TOOLS},
        '<bos><|turn>system\n<|tool>declaration:get_weather{description:<|"|>Get the weather<|"|>,'
        'parameters:{properties:{city:{description:<|"|>City name<|"|>,type:<|"|>STRING<|"|>},'
        'unit:{enum:[<|"|>c<|"|>,<|"|>f<|"|>],type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],'
        'type:<|"|>OBJECT<|"|>}}<tool|><turn|>\n<|turn>user\nWeather in Paris?<turn|>\n'
        "<|turn>model\n<|channel>thought\n<channel|>"),
    "tool_round_trip": (
        [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "c1", "content": "sunny, 20C"},
         {"role": "assistant", "content": "It is sunny."}], {},
        '<bos><|turn>user\nWeather in Paris?<turn|>\n<|turn>model\n<|tool_call>call:get_weather'
        '{city:<|"|>Paris<|"|>,days:2,metric:true}<tool_call|><|tool_response>response:get_weather'
        '{value:<|"|>sunny, 20C<|"|>}<tool_response|>It is sunny.<turn|>\n'
        "<|turn>model\n<|channel>thought\n<channel|>"),
    "tool_response_pending": (
        # OpenAI-style content=None is dropped, as transformers does, instead of rendering "None"
        [{"role": "user", "content": "Weather?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], {},
        '<bos><|turn>user\nWeather?<turn|>\n<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}'
        '<tool_call|><|tool_response>response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>'),
}
TEXT_ONLY = [k for k in CASES if not k.startswith("tool")]


@pytest.fixture(scope="module")
def gemma4_template() -> ChatTemplate:
    if not HAVE_FIXTURES:
        pytest.skip(SKIP_NO_FIXTURES)
    source = (FIXTURES / "tokenizer" / "gemma4-chat-template.jinja").read_text(encoding="utf-8")
    return ChatTemplate(source, bos_token="<bos>", eos_token="<eos>")


def _render(template: ChatTemplate, name: str) -> str:
    messages, opts, _ = CASES[name]
    opts = dict(opts)
    agp = opts.pop("add_generation_prompt", True)
    return template.render(messages, agp, **opts)


@pytest.mark.parametrize("name", list(CASES))
def test_real_gemma4_template(gemma4_template, name):
    assert _render(gemma4_template, name) == CASES[name][2]


@pytest.mark.parametrize("name", TEXT_ONLY)
def test_builtin_gemma4_matches_real_template(name):
    builtin = ChatTemplate(GEMMA4_TEMPLATE, bos_token="<bos>", eos_token="<eos>")
    assert _render(builtin, name) == CASES[name][2]


def test_builtin_gemma4_refuses_tools():
    builtin = ChatTemplate(GEMMA4_TEMPLATE, bos_token="<bos>")
    with pytest.raises(ChatTemplateError, match="tool"):
        builtin.render([{"role": "user", "content": "x"}], tools=TOOLS)


def test_builtin_gemma3():
    t = ChatTemplate(GEMMA3_TEMPLATE, bos_token="<bos>", eos_token="<eos>")
    assert t.render([{"role": "user", "content": " Hi "}]) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    # Gemma 3 has no system role: the system prompt opens the first user turn
    assert t.render([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
                    add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n")
    with pytest.raises(ChatTemplateError, match="alternate"):
        t.render([{"role": "assistant", "content": "first"}])


def test_render_prompt_avoids_double_bos(gemma4_template):
    text, add_bos = gemma4_template.render_prompt([{"role": "user", "content": "Hi"}])
    assert text.startswith("<bos>") and add_bos is False
    no_bos = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", bos_token="<bos>")
    assert no_bos.render_prompt([{"role": "user", "content": "Hi"}]) == ("Hi", True)


def test_render_does_not_touch_the_callers_messages(gemma4_template):
    messages = [{"role": "assistant", "content": "<|channel>thought\nx<channel|>y", "reasoning": "r"},
                {"role": "user", "content": "q", "extra": None}]
    before = copy.deepcopy(messages)
    gemma4_template.render(messages)
    assert messages == before


@pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)
def test_load_from_model_file():
    from g4rt.text.tokenizer import load_tokenizer
    f = GGUFFile(FIXTURES / "models" / "g4-dense-F32.gguf")
    tok = load_tokenizer(f)
    template = load_chat_template(f, tok)
    assert template.source == (FIXTURES / "tokenizer" / "gemma4-chat-template.jinja").read_text(encoding="utf-8")
    text, add_bos = template.render_prompt([{"role": "user", "content": "Hi"}])
    ids = tok.encode(text, add_bos=add_bos)
    # exactly one BOS, parsed from the template's own "<bos>"
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert tok.decode(ids, skip_special=False) == text


def _vocab_only(path, arch, template=None):
    w = GGUFWriter(str(path), arch)
    w.add_tokenizer_model("gemma4")
    w.add_token_list(["<pad>", "<eos>", "<bos>", "a"])
    w.add_token_types([3, 3, 3, 1])
    w.add_token_merges([])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFFile(path)


def test_builtin_chosen_by_architecture(tmp_path):
    t = load_chat_template(_vocab_only(tmp_path / "g4.gguf", "gemma4"))
    assert t.source == GEMMA4_TEMPLATE
    assert t.render([{"role": "user", "content": "Hi"}]) == CASES["user_only"][2].replace("What is 2+2?", "Hi")
    t = load_chat_template(_vocab_only(tmp_path / "g3.gguf", "gemma3"))
    assert t.render([{"role": "user", "content": "Hi"}]).startswith("<bos><start_of_turn>user\nHi")
    with pytest.raises(ChatTemplateError, match="no built-in"):
        load_chat_template(_vocab_only(tmp_path / "other.gguf", "llama"))
    # a template in the file always wins over the built-in format
    t = load_chat_template(_vocab_only(tmp_path / "own.gguf", "gemma4", "[{{ messages[0].content }}]"))
    assert t.render([{"role": "user", "content": "Hi"}]) == "[Hi]"


# --- thinking channel --------------------------------------------------------------------------
def test_strip_and_split_thinking():
    out = "<|channel>thought\nLet me think.\nStep 2.<channel|>The answer is 4."
    assert strip_thinking(out) == "The answer is 4."
    assert split_thinking(out) == ("Let me think.\nStep 2.", "The answer is 4.")
    # generation stopped inside the channel: everything after the opening marker is thinking
    assert strip_thinking("<|channel>thought\nhalf a tho") == ""
    assert split_thinking("<|channel>thought\nhalf a tho") == ("half a tho", "")
    assert strip_thinking("no thinking here ") == "no thinking here"
    assert split_thinking("a<|channel>thought\nx<channel|>b<|channel>thought\ny<channel|>c") == ("xy", "abc")


def test_strip_thinking_matches_the_template_macro(gemma4_template):
    text = " A<|channel>thought\nx<channel|>B<|channel>y<channel|> C "
    rendered = gemma4_template.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
                                      add_generation_prompt=False)
    assert rendered.endswith("<|turn>model\n" + strip_thinking(text) + "<turn|>\n")


# --- hostile templates -------------------------------------------------------------------------
HOSTILE = {
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "huge_output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "string_repeat": "{{ 'a' * 10**10 }}",
    "power": "{{ 10 ** 100000000 }}",
    "doubling_concat": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling_plus": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "doubling_replace": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}",
    "filter_width": "{{ 'a' | center(1000000000) }}",
    "method_width": "{{ 'a'.ljust(1000000000) }}",
    "printf_width": "{{ '%1000000000s' % 'a' }}",
    "format_width": "{{ '{:>1000000000}'.format('a') }}",
    "format_filter_width": "{{ '%1000000000s' | format('a') }}",
    "python_internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "namespace_dunder": "{% set ns = namespace(__class__=1) %}",
    "mutate_messages": "{% set _ = messages.append(1) %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "raise_exception": "{{ raise_exception('roles must alternate') }}",
    "type_error": "{{ 'a' + 1 }}",
    "undefined": "{{ messages[5].content.upper() }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_stopped(name):
    t = ChatTemplate(HOSTILE[name], timeout_s=0.5, max_output=1 << 20)
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError) as err:
        t.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 3.0
    assert isinstance(err.value, G4rtError)
    if name == "raise_exception":
        assert "roles must alternate" in str(err.value)
    if name == "nested_loops":
        assert "longer than" in str(err.value)


def test_plain_calls_with_big_numbers_are_fine():
    t = ChatTemplate("{% set ns = namespace(n=10000000) %}{{ ns.n + 1 }} {{ dict(a=123456789).a }} "
                     "{{ '%d'|format(123456789) }}")
    assert t.render([]) == "10000001 123456789 123456789"


def test_bad_templates_fail_at_load():
    with pytest.raises(ChatTemplateError, match="compile"):
        ChatTemplate("{% for %}")
    with pytest.raises(ChatTemplateError):
        ChatTemplate("x" * (2 << 20))


def test_limits_leave_normal_work_alone(gemma4_template):
    # a long but legitimate conversation renders untouched under the default limits
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 50}
                for i in range(200)]
    text = gemma4_template.render(messages)
    assert text.count("<|turn>") == 201
    assert len(text) > 100_000


def test_bad_messages():
    t = ChatTemplate("{{ messages | length }}")
    with pytest.raises(ChatTemplateError):
        t.render("hello")
    with pytest.raises(ChatTemplateError):
        t.render([{"content": "no role"}])
    with pytest.raises(ChatTemplateError):
        t.render([{"role": "user", "content": object()}])
