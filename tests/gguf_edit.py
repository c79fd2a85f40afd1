"""Write a modified copy of a GGUF file (tests own their copies; shared/ is never edited)."""

from __future__ import annotations

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def rewrite_gguf(src, dst, arch: str | None = None, drop_keys=(), set_keys=None, drop_tensors=()):
    r = GGUFReader(src)
    old_arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    new_arch = arch or old_arch
    w = GGUFWriter(str(dst), new_arch)
    set_keys = dict(set_keys or {})
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop_keys:
            continue
        nk = new_arch + k[len(old_arch):] if k.startswith(old_arch + ".") else k
        if nk in set_keys:
            continue
        t = f.types[0]
        v = f.contents()
        if t == GGUFValueType.ARRAY:
            w.add_key_value(nk, v, t, sub_type=f.types[1])
        else:
            w.add_key_value(nk, v, t)
    for k, (v, t, *sub) in set_keys.items():
        w.add_key_value(k, v, t, sub_type=sub[0] if sub else None)
    for t in r.tensors:
        if t.name in drop_tensors:
            continue
        w.add_tensor(t.name, t.data, raw_shape=list(reversed([int(d) for d in t.shape])) if t.data.dtype == "uint8" else None,
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
