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
    max_sequence_length: int = Field(
        1024, ge=1, description="Most time steps T of a recurrent model's input sequence."
    )
    max_hidden_size: int = Field(
        1024,
        ge=1,
        description="Largest hidden state of a recurrent model (m, or n for AttentionRNN).",
    )
    max_k: int = Field(256, ge=1, description="Largest window k of AttentionRNN(k).")
    loss_curve_max_values: int = Field(
        1_000_000, ge=1, description="Most batch losses one loss-curve diagnosis may hold."
    )
    experiment_max_epochs: int = Field(30, ge=1, description="Most epochs of one experiment.")
    experiment_max_batches: int = Field(
        100, ge=1, description="Most training batches per epoch, and test batches, of one run."
    )
    experiment_max_batch_size: int = Field(256, ge=1, description="Largest experiment batch.")
    experiment_max_length: int = Field(
        128, ge=4, description="Longest sequence of an experiment (the paper's task needs 110)."
    )
    experiment_max_hidden_size: int = Field(
        128, ge=1, description="Largest hidden state of an experiment's model."
    )
    experiment_max_seconds: float = Field(
        60.0,
        gt=0,
        description="Wall time of one experiment; training stops there and the answer says so.",
    )
    experiment_concurrency: int = Field(
        1, ge=1, description="Experiments one worker runs at once; more are answered 503."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    def limits(self) -> dict[str, int | float]:
        """Every budget and cap a request is checked against, by setting name."""
        return {
            name: value
            for name, value in self.model_dump().items()
            if name.startswith(LIMIT_PREFIXES) and isinstance(value, int | float)
        }


LIMIT_PREFIXES = ("max_", "experiment_", "loss_curve_")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
