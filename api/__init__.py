"""The REST API (FastAPI): routers per resource; no torch, no gradients here."""
