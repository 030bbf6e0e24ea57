"""The guide's worker (docs/own-worker.md): a small asyncpg worker a team might write,
its spec and its adapter; ``fixed.py`` is the same worker once the checker was heard."""
