"""The versioned model store: immutable versions and their atomic activation (`store`), content-addressed corpora
and task data (`blobs`), aliases, model cards, end-task definitions and models (`tasks`), the importance history,
and maintenance (`maintenance`: gc, repair)."""
