"""The one settings object, read from ``TENSORGRADE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; each field is the environment variable ``TENSORGRADE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TENSORGRADE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address `tensorgrade serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `tensorgrade serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="torch intra-op threads per worker; 0 means cores divided by workers.",
    )
    max_tensor_elements: int = Field(
        4_000_000, ge=1, description="Most elements one tensor of a request may declare."
    )
    max_request_elements: int = Field(
        8_000_000, ge=1, description="Most elements all tensors of one request may declare."
    )
    max_jacobian_elements: int = Field(
        16_000_000,
        ge=1,
        description="Most entries of a Jacobian (output size times input size).",
    )
    max_rank: int = Field(8, ge=1, le=32, description="Highest tensor rank accepted.")
    max_batch_checks: int = Field(
        5000, ge=1, description="Most checks one POST /v1/check/batch may hold."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
