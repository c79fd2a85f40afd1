"""What `g4rt info MODEL --plan` says about activation precision: for each weight type of the
model's matrices, whether its matmuls would take integer (i16, q8) or float32 (exact)
activations on the planned backend, and the RAM of the CPU's repacked weights. Worked out from the rules the backends themselves apply (the CPU backend's
activation_path, CUDA's int8_matvec_for), so no device is opened and no kernel built."""

from __future__ import annotations

from typing import Callable

from ..backends.registry import check_precision, hybrid_precision
from ..gguf.quant_types import QT, row_bytes
from ..model.config import layer_index
from ..ops import WeightSpec


def _rule(backend: str, precision: str, specs) -> tuple[Callable[[int, int], str], str]:
    """((weight type, inputs) -> "i16", "q8 ..." or "exact", what decided it) for a backend that
    is not a hybrid."""
    if backend == "cpu":
        from ..backends.cpu.backend import activation_path, is_wide, path_name
        from ..backends.cpu.compiler import resolve_isa
        isa = resolve_isa()          # the build this host would load ($G4RT_CPU_ISA honoured)
        wide = is_wide(specs.values())
        return (lambda q, cols: path_name(activation_path(precision, isa, q, wide))), \
            f"{isa} build{'' if wide else ', a narrow model'}"
    if backend == "cuda":
        from ..backends.cuda.backend import int8_matvec_for
        from ..backends.cuda.kernels import family_types
        on, int8 = int8_matvec_for(precision), set(family_types("matvec8"))
        return (lambda q, cols: "q8 (decode matvecs; prefill exact)" if on and q in int8 else "exact"), \
            f"int8 decode path {'on' if on else 'off'}"
    return (lambda q, cols: "exact"), "float32 activations only"


def _matrices(specs: dict[str, WeightSpec]) -> list[tuple[str, WeightSpec]]:
    """The weights a matmul reads (vectors such as norm weights take no activation path)."""
    return [(n, s) for n, s in specs.items() if s.rows > 1 and s.cols > 1]


def precision_markdown(specs: dict[str, WeightSpec], backend: str, precision: str, cpu_moe_layers: int = 0) -> str:
    """A Markdown section: one row per (where, weight type) with its matrix count and path.

    cpu_moe_layers: the expert tensors of layers below this run on the native CPU (a hybrid;
    each half gets what registry.hybrid_precision gives it)."""
    if cpu_moe_layers:
        halves = {backend: _rule(backend, hybrid_precision(backend, precision), specs),
                  "cpu": _rule("cpu", hybrid_precision("cpu", precision), specs)}
    else:
        halves = {backend: _rule(backend, check_precision(backend, precision), specs)}
    # one row per (side, weight type, path): auto can differ by a matrix's width
    counts: dict[tuple[str, str, str], int] = {}
    for name, s in _matrices(specs):
        layer = layer_index(name)
        side = "cpu" if cpu_moe_layers and s.experts and layer is not None and layer < cpu_moe_layers else backend
        key = (side, QT(s.qtype).name, halves[side][0](QT(s.qtype), s.cols))
        counts[key] = counts.get(key, 0) + 1
    how = "; ".join(f"{side}: {why}" for side, (_, why) in halves.items())
    lines = [f"## Activation precision: --precision {precision} ({how})", "",
             "| runs on | weight type | matrices | activations |", "|---|---|---|---|"]
    for (side, qname, path), n in sorted(counts.items()):
        lines.append(f"| {side} | {qname} | {n} | {path} |")
    repacked, mapped = _repacked_bytes(specs, halves, backend, cpu_moe_layers)
    if repacked:
        lines += ["", f"Repacked weights (the integer kernels' 8-row layout, shaders/cpu/repack.c): "
                      f"{repacked / 2**20:.1f} MiB, made in place of {mapped / 2**20:.1f} MiB of memory-mapped "
                      f"rows (their pages are released once copied): {(repacked - mapped) / 2**20:+.1f} MiB of "
                      "RAM beyond the weights above (G4RT_CPU_REPACK=0: no copies)."]
    return "\n".join(lines) + "\n"


def _repacked_bytes(specs, halves, backend: str, cpu_moe_layers: int = 0) -> tuple[int, int]:
    """RAM the native CPU backend's repacked copies would take, and the GGUF bytes of the rows
    they replace: every integer-path matrix on a CPU run, the host-side experts of a hybrid."""
    from ..backends.cpu.backend import repack_enabled, repackable_experts, repacked_size
    if "cpu" not in halves or not repack_enabled():
        return 0, 0
    rule = halves["cpu"][0]

    def on_cpu(name, s):
        if backend == "cpu":
            return True
        layer = layer_index(name)
        return bool(s.experts) and layer is not None and layer < cpu_moe_layers

    copied = [s for name, s in _matrices(specs) if on_cpu(name, s) and rule(QT(s.qtype), s.cols) != "exact"
              and repackable_experts(s) and repacked_size(s.qtype, s.rows, s.cols)]
    return (sum(repacked_size(s.qtype, s.rows, s.cols) for s in copied),
            sum(s.rows * row_bytes(s.qtype, s.cols) for s in copied))
