"""DAS: continual domain-adaptive pre-training of masked LMs with soft-masking (see SPEC-DAS).

The package itself imports nothing, so `das_engine.config` and `das_engine.corpus` stay
torch-free for the API and the CLI; import the trainer from `das_engine.trainer`.
"""
