"""How jobs run: `jobs.run_job` and the job kinds (`job_kinds`: adapt, fit, batch), Celery on Redis, the embedded
child process, leases and redelivery. What a job does is the pipeline's (`pipeline.adaptation`, `pipeline.endtasks`,
`pipeline.predict`)."""
