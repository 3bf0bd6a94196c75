"""Serving: loaded model versions and their end-task models, hot swap, micro-batching, following the active
version."""
