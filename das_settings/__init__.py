"""One settings object for the whole project (environment variables with the prefix `DAS_`).

The bottom layer: every other package may import it, it imports none of them.
"""

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def package_version() -> str:
    """The installed version of this project (recorded in every manifest and shown by the API)."""
    try:
        return version("das-continual")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+source"


def _upper(value: object) -> object:
    """A log level in any case."""
    return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAS_", env_file=".env", extra="ignore")

    base_model: str = Field(
        "embedded",
        description="Base masked LM: 'embedded' (the packaged tiny BERT), a local model folder, "
        "or a Hugging Face model id such as 'roberta-base' (needs the network).",
    )
    models_dir: Path = Field(Path("models"), description="Where fetched base models are cached.")
    store: str = Field("store", description="The model store: a local folder, or s3://bucket/prefix.")
    store_options: dict = Field(default_factory=dict, description="fsspec options of an object store "
                                "(JSON), e.g. {\"client_kwargs\": {\"endpoint_url\": \"http://...\"}}.")
    redis_url: str | None = Field(None, description="Redis for the store's writer lock (needed for s3://).")
    work_dir: Path = Field(Path("runs/work"), description="Resumable working folders of adaptations.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")
    progress_every_s: float = Field(30.0, ge=1, le=3600, description="Off a terminal (a log file, a pipe, CI), "
                                    "how often `das adapt`, `das base build`, `das eval` and `das watch` write a "
                                    "progress line while nothing else changes (a phase change always writes one).")

    # --- the service ---
    host: str = Field("127.0.0.1", description="Address `das serve` binds (non-loopback needs both tokens).")
    port: int = Field(8000, ge=1, le=65535, description="Port `das serve` listens on.")
    broker_url: str | None = Field(None, description="Celery broker (Redis). None: embedded mode, in-process worker.")
    redis_prefix: str = Field("das:", description="Namespace of this deployment's keys, queue and channel in Redis.")
    management_token: str | None = Field(None, description="Bearer token for uploads, activation and cancel.")
    inference_token: str | None = Field(None, description="Bearer token for inference (the management one works too).")
    max_upload_bytes: int = Field(50 * 2**20, ge=1, description="Largest corpus or batch-prediction upload.")
    max_json_bytes: int = Field(2**20, ge=1, description="Largest JSON request body.")
    max_texts: int = Field(64, ge=1, le=4096, description="Most texts in one inference request.")
    max_text_chars: int = Field(4000, ge=1, description="Longest text in an inference request (and in a line of "
                                "a batch prediction).")
    max_queued_batch_jobs: int = Field(20, ge=1, le=10_000, description="Most batch predictions queued or running "
                                       "at once, every token together; one more is a 429.")
    max_queued_batch_jobs_per_token: int = Field(5, ge=1, le=10_000, description="Most batch predictions queued or "
                                                 "running at once that one token (inference or management) queued.")
    batch_retention_s: float = Field(7 * 86400, gt=0, le=10 * 365 * 86400, description="How long a finished batch "
                                     "prediction's input and answers stay in the store; then they are removed and "
                                     "its output answers 410.")
    max_batch_prediction_lines: int = Field(100_000, ge=1, le=10_000_000, description="Most lines of one batch "
                                            "prediction's JSONL (POST /v1/batch-predictions); each is one text.")
    max_batch_size: int = Field(32, ge=1, description="Most texts the micro-batcher runs in one forward pass.")
    batch_gather_ms: float = Field(3.0, ge=0, le=1000, description="Under load (the last batch held several "
                                   "requests), how long a batch waits for more once the queue is empty while it "
                                   "holds fewer requests than the last; a lone client never waits.")
    max_wait_ms: float = Field(0.0, ge=0, description="How long the micro-batcher waits to fill a batch; 0 takes "
                               "what is queued (under load, requests queue while the model runs).")
    inference_queue_size: int = Field(256, ge=1, description="Requests waiting for the model; more get 503.")
    max_loaded_versions: int = Field(2, ge=0, le=16, description="Versions other than the active one that an API "
                                     "process keeps loaded for requests that name a version or alias (least "
                                     "recently used evicted first); 0 refuses such requests for a non-active "
                                     "version (409).")
    max_request_tokens: int = Field(16384, ge=1, description="Most tokens in one inference request, all texts "
                                    "together, as the model sees them (specials included, after truncation).")
    version_check_timeout_s: float = Field(300.0, gt=0, le=86400, description="Longest a check of a version's files "
                                           "before a swap (fetch and sha256 of every file, in a child process) may "
                                           "take; one that hangs (a stalled NFS or S3 read) is stopped after it, "
                                           "the swap fails and /readyz says why. Other swaps, task-model reloads "
                                           "and pinned loads never wait for it.")
    max_predict_scores: int = Field(20000, ge=1, description="Most label scores one predict answer may hold: texts x "
                                    "tasks x labels shown (each task's labels, or the request's top_k); bounds the "
                                    "answer before any work starts.")
    max_masks_per_request: int = Field(256, ge=1, description="Most mask tokens in one fill-mask request, all "
                                       "texts together (the answer holds top_k candidates for each).")
    auto_truncate: bool = Field(False, description="Cut an inference text longer than the model's maximum "
                                "sequence to it, as if every request sent truncate=true (TEI's --auto-truncate); "
                                "false: such a text is a 422 unless its request sends truncate=true.")
    # --- generation from a causal LM (POST /v1/completions, /v1/chat/completions; serving/generation.py) ---
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Most tokens one generation request may ask for "
                                "(max_tokens); more is a 422. A chat request that names none gets this many, at most "
                                "what the model's context leaves.")
    max_prompt_tokens: int = Field(4096, ge=1, le=1_000_000, description="Most tokens of one prompt (a chat's "
                                   "messages through its template); more is a 422. The model's context bounds the "
                                   "prompt and max_tokens together too.")
    max_concurrent_sequences: int = Field(8, ge=1, le=256, description="Sequences decoded together at once (one per "
                                          "prompt); requests beyond them wait in the generation queue. Also the "
                                          "most prompts of one completions request.")
    generation_queue_size: int = Field(64, ge=1, le=10_000, description="Generation requests waiting for a free "
                                       "sequence; more get 503 with Retry-After.")
    generation_timeout_s: float = Field(300.0, gt=0, le=86400, description="Longest a generation request may take, "
                                        "waiting included: past it, each of its sequences ends with the text so far "
                                        "and finish_reason \"length\" (logged as generation_timeout).")
    # --- what one adaptation job may ask for (checked at upload, before anything is stored) ---
    max_steps: int = Field(100_000, ge=1, description="Most optimizer steps of one job (also the longest "
                           "checkpoint_every and log_every).")
    max_train_batch_size: int = Field(512, ge=1, description="Largest batch_size and importance_batch_size of a job.")
    max_train_length: int = Field(512, ge=8, description="Largest max_length of a job (the model's position "
                                  "embeddings may allow fewer).")
    max_train_tokens_per_batch: int = Field(65536, ge=8, description="Largest batch_size * max_length and "
                                            "importance_batch_size * max_length of a job (memory per forward pass).")
    max_importance_samples: int = Field(8192, ge=1, description="Largest importance_samples of a job.")
    job_time_limit_s: int = Field(6 * 3600, ge=60, description="Hard time limit of one adaptation job.")
    visibility_timeout_s: int = Field(7 * 3600, ge=5, description="Broker redelivery of unacked jobs; > time limit.")
    heartbeat_s: float = Field(5.0, gt=0, description="Job lock heartbeat; a lock lives 3 heartbeats.")
    redeliver_after_s: float = Field(30.0, ge=1, description="A pending job that no worker holds is sent to the "
                                     "queue again after this long (a worker killed mid-job resumes within about "
                                     "3 heartbeats + this, whatever the broker's visibility timeout).")
    job_isolation: Literal["process", "thread"] = Field(
        "process", description="Embedded mode: `process` runs each job in a child process (forked from a server "
        "that imported torch once), so training memory is returned when the job ends and a crash or an "
        "out-of-memory kill fails only the job; `thread` runs jobs inside the API process (no isolation).")
    train_procs: int = Field(1, ge=1, le=256, description="Processes an adaptation trains on (torch.distributed: "
                             "gloo on the CPU, nccl with one GPU per process): the worker is rank 0 and starts the "
                             "others. An upload's batch_size must divide by it.")
    max_attempts: int = Field(3, ge=1, description="Attempts of a job that fails (a resumed job counts one).")
    gate_max_drop: float = Field(1.0, ge=0, le=100, description="The forgetting gate: a new version is rejected "
                                 "if an end task's macro-F1 on its eval set falls by more than this many points "
                                 "below the best it reached on the candidate's lineage (since it was registered), "
                                 "and by more than the eval set's sampling noise.")
    max_task_examples: int = Field(20000, ge=4, description="Largest train or eval set of an end task (examples).")
    max_task_text_chars: int = Field(100_000, ge=1, description="Longest text in an end task's train or eval set "
                                     "(each is truncated to the task's max_length tokens when fitted).")
    max_fit_examples_seen: int = Field(100_000, ge=1, description="Most examples one finetune fit may pass "
                                       "through the model (epochs x train examples), checked at registration: jobs "
                                       "run one at a time, so one long fit holds every adaptation back.")
    max_task_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest train or eval file of an "
                                       "end task.")
    poll_interval_s: float = Field(2.0, gt=0, description="How often API processes poll the active pointer.")
    device: str = Field("cpu", description="Where workers train and the API serves: cpu, cuda, cuda:1, ...")
    serve_int8: bool = Field(False, description="Serve the encoder's Linear layers as dynamic int8 (CPU only): "
                             "faster inference, embeddings and task answers slightly changed (docs/performance.md); "
                             "training and the stored versions stay fp32.")
    serve_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="What runs the served encoder on the CPU: `onnx` (onnxruntime on a graph exported from "
        "the version's weights in the background at its first load, cached in DAS_ONNX_CACHE_DIR by their digest, "
        "served once its parity check passes; torch answers meanwhile) or `torch`. Other devices and "
        "DAS_SERVE_INT8 always serve on torch (docs/performance.md).")
    onnx_cache_dir: Path = Field(Path("runs/onnx"), description="Where the ONNX backend keeps exported graphs "
                                 "(one folder per weights digest, safe to delete).")
    # --- logs ---
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = Field(
        "INFO", description="Least level of the log lines `das serve` and `das worker` write (any case).")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text (time, level, logger, "
                                                "message) or as one JSON object per line (ts, level, logger, "
                                                "message and the event's fields).")
    access_log: bool = Field(False, description="One log line per HTTP request: method, path, status, milliseconds, "
                             "request id (api.access_log; uvicorn's own stays off); off by default: uvicorn's cost "
                             "~10% of the event loop under load, and /metrics counts requests.")
    # --- the /ui page ---
    eval_results: list[Path] = Field(default_factory=list, max_length=32, description="results.json files of "
                                     "`das eval` that the API lists at /v1/evaluations and the /ui page draws "
                                     "(a[T, i] matrices, Pareto plots); a JSON list in DAS_EVAL_RESULTS; each is "
                                     "read and checked at start-up.")

    @model_validator(mode="after")
    def _tokens_in_visible_ascii(self) -> "Settings":
        for name in ("management_token", "inference_token"):
            token = getattr(self, name)
            if token is not None and not (token and all("!" <= c <= "~" for c in token)):
                raise ValueError(f"DAS_{name.upper()} must be visible ASCII characters only (no spaces, no accents: "
                                 "browsers and curl send others differently); choose another token")
        return self

    @model_validator(mode="after")
    def _int8_on_the_cpu(self) -> "Settings":
        if self.serve_int8 and not self.device.startswith("cpu"):
            raise ValueError(f"DAS_SERVE_INT8 serves on the CPU only (DAS_DEVICE={self.device}): unset one of them")
        return self

    @property
    def serves_onnx(self) -> bool:
        """Whether the service runs encoders on onnxruntime: DAS_SERVE_BACKEND=onnx on the CPU, without int8."""
        return self.serve_backend == "onnx" and self.device.startswith("cpu") and not self.serve_int8

    @property
    def queue_name(self) -> str:
        """The Celery queue of this deployment's jobs."""
        return f"{self.redis_prefix}queue"  # (the job records use `{prefix}jobs`)

    @property
    def active_channel(self) -> str:
        """The Redis pub/sub channel on which a new active version is announced to every API replica."""
        return f"{self.redis_prefix}active-version"


class SettingsError(ValueError):
    """A DAS_ variable whose value no setting accepts; the message names the variables, one per line."""


def describe_invalid(err: ValidationError) -> str:
    """A pydantic error of Settings as the user wrote it: `DAS_LOG_FORMAT='xml': Input should be 'text' or 'json'`."""
    lines = []
    for problem in err.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            lines.append(f"DAS_{str(problem['loc'][0]).upper()}={problem.get('input')!r}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment (and .env); a SettingsError naming each bad DAS_ variable."""
    try:
        return Settings()
    except ValidationError as err:
        raise SettingsError(describe_invalid(err)) from None
