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
    max_output_elements: int = Field(
        16_000_000,
        ge=1,
        description="Most elements all outputs of a model may have, from the declared shapes.",
    )
    max_sequence_length: int = Field(
        4096, ge=1, description="Longest sequence (dimension `T`) a recurrent model accepts."
    )
    max_hidden_size: int = Field(
        1024, ge=1, description="Largest hidden or input size (dimensions `m`, `n`)."
    )
    max_k: int = Field(256, ge=1, description="Largest attention window `k` (config key `k`).")
    max_batch_checks: int = Field(
        256, ge=1, description="Most checks one `/v1/check/batch` request may hold."
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description=(
            "Largest request body in bytes; unset means max_request_elements * 25 + 4 MiB "
            "(25 bytes covers the longest float64 JSON number and its separator)."
        ),
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A request body not complete this long after the request began is a 408.",
    )
    max_requests_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Requests one worker holds at once; past that, 503 (probes exempt).",
    )
    max_concurrent_computations: int = Field(
        2, ge=1, le=1024, description="Computations running at once per device, per worker."
    )
    compute_queue_size: int = Field(
        16,
        ge=0,
        le=10_000,
        description="Computations that may wait for a device slot; past that the answer is 503.",
    )
    compute_queue_timeout_seconds: float = Field(
        5.0, ge=0, le=3600, description="Longest wait for a device slot before a 503."
    )
    compute_deadline_seconds: float = Field(
        20.0,
        gt=0,
        description="Requests whose estimated compute time is longer are refused before starting.",
    )
    cpu_flops_per_second: float = Field(
        5e9, gt=0, description="Throughput assumed for the compute-time estimate on the CPU."
    )
    cuda_flops_per_second: float = Field(
        1e12, gt=0, description="Throughput assumed for the compute-time estimate on a GPU."
    )
    graceful_shutdown_seconds: int = Field(
        30,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take to finish.",
    )
    malloc_arena_max: int = Field(
        2, ge=0, le=1024, description="glibc malloc arenas per worker; 0 keeps glibc's default."
    )
    malloc_mmap_threshold_bytes: int = Field(
        2**20,
        ge=0,
        le=2**25,
        description="Blocks this large or larger are returned to the system when freed; 0 keeps "
        "glibc's moving threshold.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @property
    def body_limit(self) -> int:
        """The request body limit in force: the setting, else derived from the element budget.

        A JSON number of a float64 takes at most 24 characters (``-1.2345678901234567e-308``)
        plus a separator, so a request at the element budget fits in 25 bytes an element; the
        extra 4 MiB leave room for the rest of the body (config, names, brackets).
        """
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_request_elements * 25 + 4 * 2**20


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
