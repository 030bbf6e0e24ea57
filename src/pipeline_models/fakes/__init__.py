"""Deterministic fake parser and embeddings services, with fault injection."""
