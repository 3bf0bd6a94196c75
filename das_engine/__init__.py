"""DAS: continual domain-adaptive pre-training of masked LMs with soft-masking (see SPEC-DAS).

The package itself imports nothing; import the trainer from `das_engine.trainer`. The formats it reads and writes
(settings, corpora, task data, a version folder's file names) are das_formats'; it imports nothing of the store.
"""
