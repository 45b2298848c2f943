"""Seeing and steering a running server: the instance directory, the admin API, metrics, hooks, the dashboard."""
