"""The REST API (FastAPI): routers per resource (thin: parse, call the pipeline or the service, answer), what routes
share in modules of their own (`paging`, `queueing`, `texts`, `uploads`, `versions`), schemas, auth, limits, metrics
and the `Service`; no torch, no gradients."""
