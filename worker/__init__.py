"""Workers: the adaptation task, Celery on Redis, and the embedded in-process worker."""
