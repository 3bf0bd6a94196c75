"""Jobs: what a worker runs (`jobs.run_job`: `adaptation` for adapt jobs, `endtasks` for fit jobs), the
forgetting gate, Celery on Redis, and the embedded in-process worker. Base models and data live in `das_data`."""
