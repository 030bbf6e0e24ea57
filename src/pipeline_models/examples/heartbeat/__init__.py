"""A worker that keeps a heartbeat (no lease) and deletes the jobs it finishes."""
