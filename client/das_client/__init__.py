"""A typed Python client of the DAS continual pre-training service (REST API v1); it needs httpx only."""

from .client import Client
from .errors import (
    Conflict,
    DasClientError,
    DasError,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from .models import (
    Activation,
    AliasChange,
    Candidate,
    Completion,
    CorpusInfo,
    CurrentVersion,
    Embeddings,
    FillMask,
    FitInfo,
    Job,
    JobPage,
    JobProgress,
    Prediction,
    Predictions,
    ServedTaskModel,
    TaskAnswer,
    TaskData,
    TaskInfo,
    TaskModelInfo,
    Usage,
    Version,
)
from .progress import ProgressBar, progress_line
from .streams import GenerationStream

__version__ = "0.1.0"
__all__ = ["Activation", "AliasChange", "Candidate", "Client", "Completion", "Conflict", "CorpusInfo",
           "CurrentVersion", "DasClientError", "DasError", "Embeddings", "FillMask", "FitInfo", "Forbidden",
           "GenerationStream", "InvalidRequest", "Job", "JobFailed", "JobPage", "JobProgress", "NotFound",
           "PayloadTooLarge", "Prediction", "Predictions", "ProgressBar", "ServedTaskModel", "TaskAnswer", "TaskData",
           "TaskInfo", "TaskModelInfo", "Unauthorized", "Unavailable", "Unreachable", "Usage", "Version",
           "WaitTimeout", "progress_line"]
