"""The workflows between the entry points and the engine: what an upload, a task or a batch goes through.

- `corpus_intake`, `task_intake`: every check, limit and digest of what a user hands in, before anything is stored
  or queued (torch-free: the API calls them, and so do `das adapt --store` and `das task add`);
- `adaptation`: a stored corpus and a verified parent to a published, gated, activated version;
- `endtasks`: fitting a registered task on a version, and the forgetting gate;
- `predict`: texts answered by a version as the service answers them;
- `outcomes`: how a workflow can end short of its result.

The HTTP routes, the CLI, the worker's jobs and `das eval --served` call the same functions. Nothing here knows
HTTP, queues, job records or serving; `worker/` keeps how jobs run (the queue, Celery, the child process, leases,
redelivery) and `worker.job_kinds` turns a job's record into these calls.
"""
