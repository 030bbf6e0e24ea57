"""Workers nobody on this project would write for the checker, and their adapters."""
