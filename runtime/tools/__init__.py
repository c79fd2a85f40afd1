"""Tools beside inference: benchmarks, llama.cpp comparison, synthetic models, parity and conformance."""
