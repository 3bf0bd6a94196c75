"""The torch-free formats every layer reads: adaptation settings (config), corpora (corpus), task data (task_data),
batch-prediction input (batch_input), texts (texts), JSON from outside (jsonl), the files of a version folder
(layout) and fingerprints (fingerprint). Pure Python: the API checks an upload with these before anything is
stored or queued, the store names its files with them, and the engine reads and writes them.
"""
