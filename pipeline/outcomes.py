"""How a workflow of the pipeline can end short of its result (torch-free: the worker and the CLI catch them)."""

from __future__ import annotations


class JobStopped(Exception):
    """The work stopped at a step (cancel or shutdown) before it finished; an adaptation keeps its checkpoint."""


class Yielded(JobStopped):
    """A batch prediction stopped between two chunks of lines because an adaptation or a fit is waiting: it goes
    back to the queue behind it and resumes from the lines it answered."""


class Superseded(Exception):
    """The request no longer stands (its task was registered again, or deleted): a job ends `cancelled`."""


class GateRejected(Exception):
    """The forgetting gate rejected the candidate: it is published with status `rejected`, not activated."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"the forgetting gate rejected {version}: {reason}; the active version stays "
                         f"(inspect it with GET /v1/models/{version}, activate it by hand, or upload with force=true)")
        self.version = version
