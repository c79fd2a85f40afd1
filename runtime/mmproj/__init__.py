"""Multimodal projector (mmproj) GGUF files: reading, validating, and their encoder op lists."""
