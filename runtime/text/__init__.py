"""Text: the Gemma tokenizers (BPE and SentencePiece) and the sandboxed chat template."""
