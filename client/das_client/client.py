"""`Client`: the service's REST API (v1) as typed calls.

    with Client("http://127.0.0.1:8000", token="...") as das:
        job = das.wait(das.upload_corpus("legal.txt", domain="legal", steps=100))
        das.fill_mask(["the licence is [MASK] here"])

Every error answer raises a `DasError` subclass that carries the server's status and message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from .errors import ERRORS_BY_STATUS, DasError, JobFailed, Unavailable, Unreachable, WaitTimeout
from .models import (
    Activation,
    AliasChange,
    Completion,
    CurrentVersion,
    Embeddings,
    FillMask,
    Job,
    JobPage,
    Prediction,
    Predictions,
    TaskInfo,
    Usage,
    Version,
    from_json,
)
from .progress import PROGRESS_EVERY_S, ProgressBar
from .streams import GenerationStream

TOKEN_VARIABLE = "DAS_TOKEN"
MAX_PAGE = 1000  # the most items a list route gives in one page
Texts = Sequence[str] | str  # one text may be given as a plain string


class Client:
    """A connection to one server. `token` is sent as a bearer token (default: $DAS_TOKEN; none: no auth header);
    `timeout` bounds each request in seconds, `upload_timeout` each upload."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, *,
                 upload_timeout: float = 600.0) -> None:
        token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
        self.url = url.rstrip("/")
        self.upload_timeout = upload_timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -------------------------------------------------------------------------------------------- jobs
    def upload_corpus(self, path: str | Path, domain: str, *, force: bool = False, **settings: Any) -> Job:
        """Upload a corpus (UTF-8 text, one document per line, or JSONL with 'text') and queue its adaptation.

        `settings` are training settings, the upload's form fields (steps=100, lr=5e-4, softmask=True, ...);
        those not given take the server's upload defaults. `force` activates the new version even if the
        forgetting gate rejects it. Returns the queued job (an equal pending job, if the server already has one)."""
        path = Path(path)
        form = {"domain": domain, **_form(settings)} | ({"force": "true"} if force else {})
        with open(path, "rb") as file:
            accepted = self._request("POST", "/v1/corpora", data=form, files={"file": (path.name, file)},
                                     timeout=self.upload_timeout).json()
        return self.job(accepted["job_id"])

    def job(self, job: Job | str) -> Job:
        """A job's record now: state, progress (phase, step/total, losses, ETA), version, error. `job`: a Job, its id,
        or a unique prefix of at least 6 characters of it (the server resolves it; one that several jobs share is a
        409, Conflict, naming them)."""
        return from_json(Job, self._get(f"/v1/jobs/{_job_id(job)}"))

    def jobs(self, limit: int = 100, *, state: str | None = None, kind: str | None = None, domain: str | None = None,
             task: str | None = None) -> list[Job]:
        """The newest `limit` jobs that match (state: queued, running, succeeded, failed, cancelled, rejected; kind:
        adapt, fit, ...; domain: adapt jobs of a domain; task: fit jobs of an end task), newest first."""
        found: list[Job] = []
        for job in self.iter_jobs(state=state, kind=kind, domain=domain, task=task, page_size=min(limit, MAX_PAGE)):
            found.append(job)
            if len(found) == limit:
                break
        return found

    def iter_jobs(self, *, state: str | None = None, kind: str | None = None, domain: str | None = None,
                  task: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job that matches, newest first, a page at a time (jobs accepted meanwhile never shift the walk)."""
        filters = {"state": state, "kind": kind, "domain": domain, "task": task}
        for item in self._pages("/v1/jobs", {"limit": page_size, **filters}):
            yield from_json(Job, item)

    def job_page(self, limit: int = 100, cursor: str | None = None, *, state: str | None = None,
                 kind: str | None = None, domain: str | None = None, task: str | None = None) -> JobPage:
        """One page of jobs that match (filters as in `jobs`), newest first, and the cursor of the next page (None: it
        was the last); give that cursor to get the next one."""
        params = {"limit": limit, "cursor": cursor, "state": state, "kind": kind, "domain": domain, "task": task}
        response = self._request("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})
        return JobPage([from_json(Job, item) for item in response.json()],
                       response.headers.get("X-Next-Cursor") or None)

    def cancel_batch_prediction(self, job: Job | str) -> Job:
        """Cancel a batch prediction (a `predict` job) with the inference token: a queued one at once, a running one
        after its current batch of lines. 409 (Conflict) for another kind of job or one that already ended."""
        return from_json(Job, self._request("DELETE", f"/v1/batch-predictions/{_job_id(job)}").json())

    def cancel(self, job: Job | str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step. 409 (Conflict) if it already ended."""
        return from_json(Job, self._request("DELETE", f"/v1/jobs/{_job_id(job)}").json())

    def wait(self, job: Job | str, progress: bool = True, timeout: float | None = None, *,
             poll_s: float = 0.5, raise_on_failure: bool = True, serving: bool = False,
             progress_every_s: float = PROGRESS_EVERY_S) -> Job:
        """Poll the job until it ends and return its last record; with `progress`, show its phase and progress on
        stderr (redrawn in place on a terminal; elsewhere a line at each phase change and at least every
        `progress_every_s` seconds).

        With `serving`, an adaptation that succeeded is waited for until the server answers with its new version
        (the job ends when the version is active in the store; the server swaps it in a moment later, and an
        inference request in between is answered by the old version). A new version that did not become active
        (a candidate: another became active meanwhile) is not waited for. Behind a load balancer, `serving` sees
        the replica that answered its last poll.

        Raises JobFailed if it ends failed, rejected or cancelled (unless `raise_on_failure` is False), and
        WaitTimeout if it has not ended after `timeout` seconds (the job goes on)."""
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(every_s=progress_every_s) if progress else None
        try:
            while True:
                current = self.job(job_id)
                if bar is not None:
                    bar.update(current)
                if current.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(current, timeout or 0.0)
                time.sleep(poll_s)
            if serving and current.succeeded and current.kind == "adapt" and current.version:
                self._wait_serving(current, deadline, timeout, poll_s, bar)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and not current.succeeded:
            raise JobFailed(current)
        return current

    def _wait_serving(self, job: Job, deadline: float | None, timeout: float | None, poll_s: float,
                      bar: ProgressBar | None) -> None:
        """Until the server answers with `job.version`, or that version is not the active one (nothing to wait for)."""
        while True:
            try:
                served = self.readiness().get("version")
            except Unavailable:  # loading, or its store is away for a moment: ask again
                served = None
            if served == job.version:
                if bar is not None:
                    bar.serving(job, served)
                return
            if self.version(job.version).status != "active":
                return
            if bar is not None:
                bar.serving(job, served)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(poll_s)

    def readiness(self) -> dict[str, Any]:
        """GET /readyz: {"status": "ready", "version": the version this server answers with, ...}; a server that is
        not ready answers 503 with why (raised as Unavailable)."""
        return self._get("/readyz")

    # -------------------------------------------------------------------------------------------- inference
    # Each takes `version` (a version id or an alias; None: the active version answers) and `truncate` (cut a text
    # longer than the model's maximum sequence, the answer's `truncated` says which; False: such a text is a 422).
    def predict(self, task: str, texts: Texts, *, version: str | None = None, truncate: bool = False,
                top_k: int | None = None) -> Prediction:
        """One end task's label and scores for each text (any text, no domain id); `top_k`: only its best k labels'
        scores (None: every label's)."""
        fields = {"top_k": top_k} if top_k is not None else {}
        return from_json(Prediction, self._infer(f"/v1/tasks/{task}/predict", texts, version, truncate, **fields))

    def predict_all(self, texts: Texts, tasks: Sequence[str] | None = None, *, version: str | None = None,
                    truncate: bool = False, top_k: int | None = None) -> Predictions:
        """Several tasks from one backbone pass (`tasks` None: every task served now; `top_k` as in predict)."""
        named = ({"tasks": list(tasks)} if tasks is not None else {}) | ({"top_k": top_k} if top_k is not None else {})
        return from_json(Predictions, self._infer("/v1/predict", texts, version, truncate, **named))

    def fill_mask(self, texts: Texts, top_k: int = 5, *, version: str | None = None,
                  truncate: bool = False) -> FillMask:
        """The top_k tokens for every mask token in each text (the model's mask token: `current().mask_token`)."""
        return from_json(FillMask, self._infer("/v1/fill-mask", texts, version, truncate, top_k=top_k))

    def embed(self, texts: Texts, *, version: str | None = None, truncate: bool = False) -> Embeddings:
        """Mean-pooled, L2-normalised embeddings, one per text."""
        return from_json(Embeddings, self._infer("/v1/embeddings", texts, version, truncate))

    def _infer(self, path: str, texts: Texts, version: str | None, truncate: bool, **fields: Any) -> Any:
        body = {"texts": _texts(texts), **fields} | ({"truncate": True} if truncate else {})
        params = {"version": version} if version is not None else None
        return self._request("POST", path, json=body, params=params).json()

    # -------------------------------------------------------------------------------------------- generation
    # From a causal LM version (a masked one answers 409, Conflict), OpenAI's routes. Options: max_tokens (None: the
    # server's default), temperature (0: greedy), top_p, stop (a string or up to 4), seed (the same seed, the same
    # text), and `version` as above. Over a server bound (DAS_MAX_NEW_TOKENS, ...) is a 422 (InvalidRequest).
    def complete(self, prompt: str, *, version: str | None = None, **options: Any) -> Completion:
        """The text after `prompt` (POST /v1/completions)."""
        return _completion(self._generation("/v1/completions", {"prompt": prompt}, version, options), chat=False)

    def chat(self, messages: Sequence[dict[str, str]], *, version: str | None = None, **options: Any) -> Completion:
        """The assistant's next message after `messages` ([{"role": "user", "content": ...}, ...]), through the
        version's chat template (POST /v1/chat/completions; a tokenizer without one: 409, Conflict)."""
        body = {"messages": list(messages)}
        return _completion(self._generation("/v1/chat/completions", body, version, options), chat=True)

    def stream_complete(self, prompt: str, *, version: str | None = None, **options: Any) -> GenerationStream:
        """`complete`, streamed: iterate for the text as it is generated (GenerationStream)."""
        return self._stream("/v1/completions", {"prompt": prompt}, version, options, chat=False)

    def stream_chat(self, messages: Sequence[dict[str, str]], *, version: str | None = None,
                    **options: Any) -> GenerationStream:
        """`chat`, streamed: iterate for the message's text as it is generated (GenerationStream)."""
        return self._stream("/v1/chat/completions", {"messages": list(messages)}, version, options, chat=True)

    def _generation(self, path: str, body: dict[str, Any], version: str | None, options: dict[str, Any]) -> Any:
        return self._request("POST", path, json=body | _generation_options(options),
                             params={"version": version} if version is not None else None).json()

    def _stream(self, path: str, body: dict[str, Any], version: str | None, options: dict[str, Any],
                chat: bool) -> GenerationStream:
        body = body | _generation_options(options) | {"stream": True, "stream_options": {"include_usage": True}}
        opened = self._http.stream("POST", path, json=body, params={"version": version} if version else None)
        return GenerationStream(opened, chat, error_from)

    # -------------------------------------------------------------------------------------------- versions
    def versions(self, *, status: str | None = None, domain: str | None = None) -> list[Version]:
        """Every healthy version (of that status, adapted to that domain), oldest first, with parent and status."""
        pages = self._pages("/v1/models", {"limit": MAX_PAGE, "status": status, "domain": domain})
        return [from_json(Version, v) for v in pages]

    def version(self, version: str) -> Version:
        return from_json(Version, self._get(f"/v1/models/{version}"))

    def current(self) -> CurrentVersion:
        """The active version, and the one the answering process serves now. 503 (Unavailable) if none is active."""
        return from_json(CurrentVersion, self._get("/v1/models/current"))

    def activate(self, version: Version | str) -> Activation:
        """Make a version active (a rollback for an older one); every end task without a model on it gets a fit
        job (`fit_jobs`)."""
        version_id = version.id if isinstance(version, Version) else version
        return from_json(Activation, self._request("POST", f"/v1/models/{version_id}/activate").json())

    def importance(self, version: str, *, diff: str | None = None, units: bool = False) -> dict[str, Any]:
        """A version's per-layer importance summaries as `das importance --json` prints them: {"version", "cumulative",
        "added", "domain"?}, each {group: {"mean": [per layer], "share_above_half": [...], ...}}; with `diff`, also
        "diff": the change from that version's cumulative importance; with `units`, every unit's value ("units").
        404 (NotFound) for the base version, which has none."""
        params = {"diff": diff} if diff is not None else {}
        return dict(self._get(f"/v1/models/{version}/importance", params | ({"units": "true"} if units else {})))

    def importance_png(self, version: str) -> bytes:
        """The version's importance heatmaps (cumulative and added) as a PNG image."""
        return self._request("GET", f"/v1/models/{version}/importance", params={"format": "png"}).content

    def card(self, version: str) -> str:
        """The version's model card: the README.md of its folder (Markdown with YAML front matter)."""
        return self._request("GET", f"/v1/models/{version}/card").text

    def aliases(self) -> dict[str, str]:
        """Every alias with the version it names; `production` is the active version."""
        return dict(self._get("/v1/aliases"))

    def set_alias(self, name: str, version: Version | str) -> AliasChange:
        """Point an alias at a version; setting `production` activates the version (as `activate`)."""
        version_id = version.id if isinstance(version, Version) else version
        return from_json(AliasChange, self._request("PUT", f"/v1/aliases/{name}", json={"version": version_id}).json())

    def delete_alias(self, name: str) -> None:
        """Remove an alias (the version stays); `production` cannot be removed (409)."""
        self._request("DELETE", f"/v1/aliases/{name}")

    # -------------------------------------------------------------------------------------------- end tasks
    def tasks(self, *, kind: str | None = None) -> list[TaskInfo]:
        """Every registered end task (of that kind: probe or finetune), by name."""
        return [from_json(TaskInfo, t) for t in self._pages("/v1/tasks", {"limit": MAX_PAGE, "kind": kind})]

    def task(self, name: str) -> TaskInfo:
        return from_json(TaskInfo, self._get(f"/v1/tasks/{name}"))

    def register_task(self, name: str, train: str | Path, eval: str | Path | None = None, *, kind: str = "probe",
                      replace: bool = False, **settings: Any) -> Job:
        """Register an end task from JSONL files (one {"text", "label"} per line) and queue the job that fits it on
        the active version; `eval`, if given, is scored on every version and is the forgetting gate's evidence.
        `kind`: probe (a classifier on frozen features) or finetune; `settings`: task settings (epochs, lr, ...).
        409 (Conflict) if the name is taken and `replace` is False."""
        form = {"name": name, "kind": kind, **_form(settings)} | ({"replace": "true"} if replace else {})
        paths = {"train": Path(train)} | ({"eval": Path(eval)} if eval is not None else {})
        with ExitStack() as opened:  # streamed, not read into memory
            files = {field: (path.name, opened.enter_context(open(path, "rb"))) for field, path in paths.items()}
            accepted = self._request("POST", "/v1/tasks", data=form, files=files, timeout=self.upload_timeout).json()
        return self.job(accepted["job_id"])

    def delete_task(self, name: str) -> None:
        """Forget a task and all its models."""
        self._request("DELETE", f"/v1/tasks/{name}")

    # -------------------------------------------------------------------------------------------- HTTP
    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._request("GET", path, params=params).json()

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[Any]:
        """The items of a list route, page after page: each page's X-Next-Cursor asks for the next one."""
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            response = self._request("GET", path, params=params)
            yield from response.json()
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kwargs)
        except httpx.TransportError as err:
            raise Unreachable(f"cannot reach {self.url} ({type(err).__name__}: {err}); is the server running "
                              "there?") from err
        if response.is_error:
            raise error_from(response)
        return response


def error_from(response: httpx.Response) -> DasError:
    """The DasError subclass for the answer's status, with the server's message (FastAPI's `detail`)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # a request validation error: one entry per field
        detail = "; ".join(_validation_message(item) for item in detail)
    message = str(detail).strip() or response.reason_phrase or "no message"
    retry = response.headers.get("Retry-After")
    cls = ERRORS_BY_STATUS.get(response.status_code, DasError)
    return cls(response.status_code, message, retry_after=_seconds(retry), body=body)


def _validation_message(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", []))
    return f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not what this server sends


GENERATION_OPTIONS = ("max_tokens", "temperature", "top_p", "stop", "seed")


def _generation_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options given (None: the server's default), checked by name: a misspelt one is a TypeError here."""
    unknown = set(options) - set(GENERATION_OPTIONS)
    if unknown:
        raise TypeError(f"unknown generation option(s) {sorted(unknown)}; the options are {list(GENERATION_OPTIONS)}")
    return {name: value for name, value in options.items() if value is not None}


def _completion(answer: dict[str, Any], chat: bool) -> Completion:
    """The first choice of OpenAI's answer as a Completion."""
    choice = answer["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    return Completion(answer["version"], text, choice["finish_reason"], from_json(Usage, answer["usage"]),
                      raw=answer)


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job


def _texts(texts: Texts) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _form(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as form fields; a form cannot say None (a setting left out takes the server's default)."""
    nones = sorted(name for name, value in settings.items() if value is None)
    if nones:
        raise ValueError(f"settings {nones} are None: a form field cannot be None; leave a setting out to take "
                         "the server's default")
    return {name: _form_value(value) for name, value in settings.items()}


def _form_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
