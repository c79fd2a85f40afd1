"""Model side: configuration from GGUF metadata and the graph builder. Knows nothing of backends."""
