"""The top of the stack: the `das` command line (`das.cli` and one module per command group) and the
service's composition root (`das.app`). Nothing below imports this package; the work each command does
lives below it (`das_eval`, `das_data`, `worker`, `das_engine`, `model_store`)."""
