"""`g4rt info`: a GGUF file's header as Markdown — what the model is, layer by layer."""

from __future__ import annotations

from collections import Counter, defaultdict

from ..errors import G4rtError
from ..gguf.reader import GGUFFile
from ..model.config import load_config

_MULTIMODAL_PREFIXES = ("v.", "a.", "mm.", "vision", "audio", "multi_modal", "mm_")


def _fmt_value(v) -> str:
    if isinstance(v, list):
        if len(v) > 16:
            return f"[{len(v)} values: {', '.join(map(str, v[:6]))}, …]"
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, str) and len(v) > 80:
        return f"({len(v)} characters)"
    return str(v)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def describe(path) -> str:
    f = GGUFFile(path)
    arch = f.architecture
    out = [f"# {f.path.name}", "", f"- architecture: `{arch}`",
           f"- name: {f.get('general.name', '(none)')}",
           f"- file size: {_human(f.file_size)}, {len(f.tensors)} tensors, {len(f.keys)} metadata keys", ""]

    out += [f"## `{arch}.*` metadata", "", "| key | type | value |", "|---|---|---|"]
    for k in f.keys:
        if k.startswith(arch + "."):
            out.append(f"| `{k}` | {f.value_type(k)} | {_fmt_value(f.get(k))} |")
    tok_model = f.get("tokenizer.ggml.model", None)
    if tok_model is not None:
        n_tok = len(f.get("tokenizer.ggml.tokens", []))
        out += ["", f"Tokenizer: `{tok_model}`, {n_tok} tokens, chat template "
                f"{'present' if f.has('tokenizer.chat_template') else 'absent'}."]

    from ..mmproj.reader import describe_lines, is_projector
    if is_projector(f):      # a projector: what it runs and its tensors, no model sections
        return "\n".join(out + [""] + describe_lines(path)) + "\n"

    names = set(f.tensors)
    mm = sorted(n for n in names if n.startswith(_MULTIMODAL_PREFIXES))
    out += ["", "## Features", ""]
    try:
        cfg = load_config(f)
    except G4rtError as e:
        cfg = None
        out.append(f"- not runnable as a model: {e}")
    if cfg is not None:
        out.append(f"- per-layer embeddings (PLE): " + (f"present, {cfg.per_layer_dim} per layer" if cfg.per_layer_dim else "absent"))
        n_scale = sum(1 for n in names if n.endswith("layer_output_scale.weight"))
        out.append(f"- layer_output_scale: " + (f"present ({n_scale} layers)" if n_scale else "absent"))
        rf = f.tensors.get("rope_freqs.weight")
        out.append(f"- rope_freqs: " + (f"{rf.n_cols} entries (proportional RoPE on global layers)" if rf else "absent"))
        out.append(f"- output: " + ("tied to token_embd" if cfg.tied_output else "separate output.weight"))
        out.append(f"- final logit softcap: {cfg.final_softcap or 'none'}; attention scale {cfg.attn_scale:g}; "
                   f"RMS eps {cfg.rms_eps:g}; vocabulary {cfg.n_vocab}")
        out.append(f"- shared-KV layers: {cfg.shared_kv_layers}")
        moe = [L for L in cfg.layers if L.moe]
        if moe:
            L0 = moe[0]
            out.append(f"- mixture of experts: {len(moe)} of {cfg.n_layer} layers (layers "
                       f"{', '.join(str(L.index) for L in moe)}), {L0.n_expert} experts, top-{L0.n_expert_used}, "
                       f"expert FFN {L0.expert_ffn}, gate/up {'fused' if L0.fused_gate_up else 'split'}; "
                       f"the dense MLP runs beside the experts")
        else:
            out.append("- mixture of experts: absent")
    out.append(f"- multimodal tensors: " + (f"present ({len(mm)}, e.g. `{mm[0]}`)" if mm else "absent"))

    if cfg is not None:
        out += ["", "## Layers", "",
                "| layer | attention | window | head dim | heads | KV heads | rope base | rope dims | FFN | experts | KV from |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for L in cfg.layers:
            out.append(f"| {L.index} | {'sliding' if L.sliding else 'global'} | {L.window or '-'} | {L.head_dim} | "
                       f"{L.n_head} | {L.n_kv_head} | {L.rope_base:g}{' ×freqs' if L.rope_freq_factors else ''} | "
                       f"{L.rope_dims} | {L.ffn_dim} | "
                       f"{f'{L.n_expert_used} of {L.n_expert} × {L.expert_ffn}' if L.moe else '-'} | "
                       f"{L.kv_source if not L.owns_kv else 'own'} |")

    by_type: dict[str, list] = defaultdict(list)
    for t in f.tensors.values():
        by_type[t.qtype.name].append(t)
    out += ["", "## Tensors by type", "", "| type | tensors | bytes |", "|---|---|---|"]
    for tname, ts in sorted(by_type.items(), key=lambda kv: -sum(t.nbytes for t in kv[1])):
        out.append(f"| {tname} | {len(ts)} | {_human(sum(t.nbytes for t in ts))} |")
    groups = Counter()
    for n in names:
        parts = n.split(".")
        groups[(parts[2] if parts[0] == "blk" else parts[0], f.tensors[n].qtype.name)] += 1
    out += ["", "| tensor | type | count |", "|---|---|---|"]
    for (role, tname), c in sorted(groups.items()):
        out.append(f"| `{role}` | {tname} | {c} |")
    return "\n".join(out) + "\n"
