"""Serving: loaded model versions, hot swap, micro-batching, following the active version."""
