#!/usr/bin/env python3
"""Compile every Vulkan compute shader variant to SPIR-V (cached by content hash).

    python build_shaders.py [--force] [--out DIR] [--list] [-q]

The logic lives in g4rt.backends.vulkan.shader_build (runtime/backends/vulkan/shader_build.py) so that the installed backend can
build shaders lazily; this file is only its command line.
"""
import sys
from pathlib import Path

try:
    from g4rt.backends.vulkan.shader_build import main
except ImportError:   # not installed: use the source tree next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runtime.backends.vulkan.shader_build import main

if __name__ == "__main__":
    sys.exit(main())
