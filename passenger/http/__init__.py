"""The HTTP front end: a lean byte relay parsed by httptools (architecture.md, decision 1)."""
