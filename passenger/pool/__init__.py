"""The process pool: one process's lifecycle, least-busy routing, the group of an app."""
