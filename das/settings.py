"""One settings object for the whole project (environment variables with the prefix `DAS_`)."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAS_", env_file=".env", extra="ignore")

    base_model: str = Field(
        "embedded",
        description="Base masked LM: 'embedded' (the packaged tiny BERT), a local model folder, "
        "or a Hugging Face model id such as 'roberta-base' (needs the network).",
    )
    models_dir: Path = Field(Path("models"), description="Where fetched base models are cached.")
    runs_dir: Path = Field(Path("runs"), description="Where `das adapt` writes runs by default.")
    store: str = Field("store", description="The model store: a local folder, or s3://bucket/prefix.")
    store_options: dict = Field(default_factory=dict, description="fsspec options of an object store "
                                "(JSON), e.g. {\"client_kwargs\": {\"endpoint_url\": \"http://...\"}}.")
    redis_url: str | None = Field(None, description="Redis for the store's writer lock (needed for s3://).")
    work_dir: Path = Field(Path("runs/work"), description="Resumable working folders of adaptations.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
