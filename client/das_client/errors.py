"""What can go wrong talking to the service: an HTTP error answer (with the server's own message), no answer at
all, and a job that ended without a version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Job


class DasClientError(Exception):
    """Every error this package raises."""


class DasError(DasClientError):
    """The server answered with an error status; `detail` is its message (FastAPI's `detail`)."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None, body: Any = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # seconds, from Retry-After (409 while fitting, 503)
        self.body = body  # the decoded answer as sent

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}"


class Unauthorized(DasError):
    """401: no token, or the wrong one (the client sends `token`, else $DAS_TOKEN)."""


class Forbidden(DasError):
    """403."""


class NotFound(DasError):
    """404: no such job, version or task."""


class Conflict(DasError):
    """409: the request cannot be done in the present state (a job that already ended, a task with no model yet...)."""


class PayloadTooLarge(DasError):
    """413: an upload or a body over the server's limit."""


class InvalidRequest(DasError):
    """422: the server refused the input and says what to fix."""


class Unavailable(DasError):
    """503: not ready, a queue away or full; `retry_after` says when to try again."""


ERRORS_BY_STATUS: dict[int, type[DasError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
                                               413: PayloadTooLarge, 422: InvalidRequest, 503: Unavailable}


class Unreachable(DasClientError):
    """No answer: the server is not running at that URL, or the connection broke."""


class JobFailed(DasClientError):
    """`Client.wait` saw the job end failed, rejected or cancelled; `job` is its last record."""

    def __init__(self, job: Job) -> None:
        reason = job.error or job.note or "no reason recorded"
        super().__init__(f"job {job.id} ended {job.state}: {reason}")
        self.job = job


class WaitTimeout(DasClientError, TimeoutError):
    """`Client.wait` gave up before the job ended; `job` is its last record."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.state} after {timeout:g} s")
        self.job = job
