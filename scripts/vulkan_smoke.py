#!/usr/bin/env python3
"""Vulkan/Kompute smoke check (run by scripts/install_vulkan_deps.sh).

Creates a kp.Manager on device 0 (lavapipe on machines without a GPU), prints
the device properties kp exposes, compiles a vector-add compute shader with
glslangValidator and checks the result.  Exit status 0 on success.

    .venv/bin/python scripts/vulkan_smoke.py [DEVICE_INDEX]
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ADD_COMP = r"""
#version 450
layout(local_size_x = 64) in;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer C { float c[]; };
layout(push_constant) uniform P { uint n; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < p.n) c[i] = a[i] + b[i];
}
"""


def compile_glsl(src: str) -> bytes:
    glslang = shutil.which("glslangValidator")
    if glslang is None:
        raise SystemExit("glslangValidator not found (apt-get install glslang-tools)")
    with tempfile.TemporaryDirectory() as d:
        comp = os.path.join(d, "add.comp")
        spv = os.path.join(d, "add.spv")
        with open(comp, "w") as f:
            f.write(src)
        subprocess.run([glslang, "-V", "--target-env", "vulkan1.1", comp, "-o", spv],
                       check=True, stdout=subprocess.DEVNULL)
        with open(spv, "rb") as f:
            return f.read()


def main() -> int:
    import kp

    device_index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    mgr = kp.Manager(device_index)
    devices = mgr.list_devices()
    print(f"kp {kp.__version__}: {len(devices)} Vulkan device(s)")
    for i, d in enumerate(devices):
        print(f"  [{i}] {d['device_name']}")
    props = mgr.get_device_properties()
    print(f"using device {device_index}: {props['device_name']}")
    for k in sorted(props):
        if k != "device_name":
            print(f"  {k}: {props[k]}")

    n = 1000
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    ta = mgr.tensor(a)
    tb = mgr.tensor(b)
    tc = mgr.tensor(np.zeros(n, dtype=np.float32))
    algo = mgr.algorithm(
        [ta, tb, tc], compile_glsl(ADD_COMP), ((n + 63) // 64, 1, 1),
        np.array([], dtype=np.uint32), np.array([n], dtype=np.uint32))
    (mgr.sequence()
        .record(kp.OpTensorSyncDevice([ta, tb]))
        .record(kp.OpAlgoDispatch(algo))
        .record(kp.OpTensorSyncLocal([tc]))
        .eval())
    got = tc.data()
    ok = np.array_equal(got, a + b)
    print(f"vector add of {n} floats on '{props['device_name']}': {'OK' if ok else 'MISMATCH'}")
    if not ok:
        bad = np.flatnonzero(got != a + b)
        print(f"  {bad.size} mismatches, first at {bad[0]}: {got[bad[0]]} != {(a + b)[bad[0]]}")
        return 1
    # Release Vulkan objects before interpreter teardown.
    del algo, ta, tb, tc
    mgr.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
