"""Application glue for the DAS service: settings, the embedded base model and the `das` CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("das-continual")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
