"""GGUF files: the bounded reader, header validation, and the quant types' block geometry."""
