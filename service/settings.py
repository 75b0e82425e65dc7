"""The one settings object, read from ``TENSORGRADE_*`` environment variables."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from limits import parse_many
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.roster import RosterEntry, RosterError, load_roster

ENV_PREFIX = "TENSORGRADE_"
CLIENT_VARIABLES = frozenset({"TENSORGRADE_URL", "TENSORGRADE_API_KEY"})
"""The ``TENSORGRADE_*`` variables that are no setting: the client commands read them
(``service/cli.py``), and the server leaves them alone."""

MIN_SECRET_LENGTH = 16
PLACEHOLDER = "REPLACE-ME"
"""What the example Secret's values hold until an operator sets them: never accepted."""


class Settings(BaseSettings):
    """Every knob of the service; each field is the environment variable ``TENSORGRADE_<NAME>``."""

    # hide_input_in_errors: a start-up error quotes no setting's value, since some are keys.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        hide_input_in_errors=True,
        allow_inf_nan=False,  # 1e999 seconds is no limit: refused, not read as infinity
    )

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
        4_000_000,
        ge=1,
        description=(
            "Most elements one tensor of a request may declare, and a conv's input with its "
            "padding may have."
        ),
    )
    max_conv_workspace_bytes: int = Field(
        512 * 2**20,
        ge=1,
        description=(
            "Most bytes of the matrix a convolution unfolds its input into on the CPU "
            "(C * prod(K) * prod(out) elements, counted at 8 bytes each)."
        ),
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
        description=(
            "Wall time of one experiment; training stops at the first batch after it and the "
            "answer says so."
        ),
    )
    experiment_concurrency: int = Field(
        1, ge=1, description="Experiments one worker runs at once; more are answered 503."
    )
    max_batch_checks: int = Field(
        5000, ge=1, description="Most checks one POST /v1/check/batch may hold."
    )
    max_output_elements: int = Field(
        16_000_000,
        ge=1,
        description="Most elements all outputs of a model may have, from the declared shapes.",
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
    max_body_bytes_in_flight: int = Field(
        64 << 20,
        ge=0,
        description="Bytes of large request bodies (1 MiB or more each) one worker holds at once; "
        "past that, 503 before reading (one body alone is taken whatever its size).",
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
        65,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take to finish (the "
        "default outlasts the longest request, an experiment of 60 s).",
    )
    malloc_arena_max: int = Field(
        2, ge=0, le=1024, description="glibc malloc arenas per worker; 0 keeps glibc's default."
    )
    malloc_mmap_threshold_bytes: int = Field(
        0,
        ge=0,
        le=2**25,
        description="Blocks this large or larger are returned to the system when freed; 0 keeps "
        "glibc's moving threshold.",
    )
    jacobian_buffer_bytes: int = Field(
        64 << 20,
        ge=0,
        le=2**34,
        description="Bytes of buffers a worker keeps to write the next large conv Jacobian "
        "of the same size into, so its zeros are not written again (0: none); each let go "
        "once not taken for a second.",
    )
    opentelemetry: bool = Field(
        False,
        description=(
            "FastAPI's native OpenTelemetry (traces, metrics and logs through the providers the "
            "process configures, e.g. with opentelemetry-instrument); off, no request looks "
            "for providers."
        ),
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Level of the service's and uvicorn's logs."
    )
    instructor_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys that may call everything (none: open mode).",
    )
    student_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys that may only read variants and check answers.",
    )
    student_key_file: Path | None = Field(
        None,
        description="A roster (CSV `student_id,key`) binding each student key to one student id.",
    )
    variant_secret: SecretStr | None = Field(
        None,
        description="The secret per-student variants are derived from (required with keys).",
    )
    assignments_dir: Path | None = Field(
        None, description="A folder of assignment files (*.toml) loaded beside the built-in ones."
    )
    builtin_assignments: bool = Field(True, description="Serve the built-in assignment cnn-rnn.")
    check_rate_limit: str = Field(
        "30/minute;300/hour",
        description=(
            "Checks per key on the assignment check endpoints, in the `limits` notation "
            "(`30/minute;300/hour`); empty for none. Instructor keys are not limited."
        ),
    )
    rate_limit_storage: SecretStr = Field(
        SecretStr("memory://"),
        description="Where rate-limit counters live: `memory://` (per process) or `redis://...`.",
    )
    # The roster's students, read once by ``_check_keys`` (never dumped or printed).
    _roster: tuple[RosterEntry, ...] = PrivateAttr(())

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        """``INFO`` as ``info``: operators write levels either way."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("check_rate_limit")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        if value.strip():
            parse_many(value)  # raises ValueError naming the string
        return value.strip()

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        instructors, students = self.api_keys("instructor"), self.api_keys("student")
        for name, keys in (("instructor_keys", instructors), ("student_keys", students)):
            if any(len(key) < MIN_SECRET_LENGTH for key in keys):
                raise ValueError(
                    f"every key of {name} needs at least {MIN_SECRET_LENGTH} characters"
                )
        if set(instructors) & set(students):
            raise ValueError("a key is both an instructor key and a student key")
        secret = self.variant_secret.get_secret_value() if self.variant_secret else None
        for name, values in (
            ("instructor_keys", instructors),
            ("student_keys", students),
            ("variant_secret", [secret] if secret else []),
        ):
            if any(PLACEHOLDER in value.upper() for value in values):
                raise ValueError(
                    f"{name} still holds a placeholder ({PLACEHOLDER}) of the example "
                    "manifests: replace it with a real value"
                )
        if self.student_key_file is not None:
            self._roster = self._load_roster(self.student_key_file, instructors, students)
        if secret is not None and len(secret.strip()) < MIN_SECRET_LENGTH:
            # Spaces count for nothing: a quoted blank value is no secret.
            raise ValueError(
                f"variant_secret needs at least {MIN_SECRET_LENGTH} characters other than spaces"
            )
        if secret is None and (instructors or students or self._roster):
            raise ValueError(
                "variant_secret is required when API keys are configured, so that every replica "
                "and every restart gives a student the same variant"
            )
        return self

    @staticmethod
    def _load_roster(
        path: Path, instructors: list[str], students: list[str]
    ) -> tuple[RosterEntry, ...]:
        """The roster's students; a ``ValueError`` naming the file and line when it is wrong or
        one of its keys is also in ``instructor_keys`` or ``student_keys``."""
        try:
            roster = load_roster(path, MIN_SECRET_LENGTH)
        except RosterError as error:
            raise ValueError(f"student_key_file {error}") from None
        for entry in roster:
            for name, keys in (("instructor_keys", instructors), ("student_keys", students)):
                if entry.key in keys:
                    raise ValueError(
                        f"student_key_file {path}:{entry.line}: the key is also in {name}; "
                        "a roster key must be a key of its own"
                    )
        return roster

    def api_keys(self, role: Literal["instructor", "student"]) -> list[str]:
        """The configured keys of a role (comma-separated in the setting)."""
        field = self.instructor_keys if role == "instructor" else self.student_keys
        return [key.strip() for key in field.get_secret_value().split(",") if key.strip()]

    def roster(self) -> tuple[RosterEntry, ...]:
        """The students of ``student_key_file`` with their keys (none without the file)."""
        return self._roster

    def limits(self) -> dict[str, int | float | str]:
        """Every budget and cap a request is checked against, by setting name."""
        limits: dict[str, int | float | str] = {
            name: value
            for name, value in self.model_dump().items()
            if name.startswith(LIMIT_PREFIXES) and isinstance(value, int | float)
        }
        limits["max_body_bytes"] = self.body_limit  # the derived default when unset
        limits["check_rate_limit"] = self.check_rate_limit or "none"
        return limits

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

    def route_body_limits(self) -> dict[str, int]:
        """The routes whose bodies cannot need ``body_limit``, by ``"METHOD path"``: the
        largest body each takes, where that is less than ``body_limit``.

        Every body is parsed at the edge before its route runs, so a route's own checks came
        too late for a body far too large: 60 MB of a shape request held a worker's event loop
        10 s before its 422. A shape or an experiment is a few numbers (``SMALL_BODY_BYTES``); a
        loss curve is at most ``loss_curve_max_values`` losses and as many accuracies.
        """
        curve = 2 * self.loss_curve_max_values * CURVE_BYTES_PER_VALUE + SMALL_BODY_BYTES
        limits = {
            "POST /v1/shapes/conv": SMALL_BODY_BYTES,
            "POST /v1/experiments/temporal-order": SMALL_BODY_BYTES,
            "POST /v1/diagnostics/loss-curve": curve,
        }
        return {route: limit for route, limit in limits.items() if limit < self.body_limit}


SMALL_BODY_BYTES = 64 * 1024
"""The body limit of a route whose request is a few numbers (a conv's shape, an experiment's
ranges): such a body takes well under 2 KiB, pretty-printed."""

CURVE_BYTES_PER_VALUE = 48
"""A loss curve's bytes per value: a float64's 24 characters, its separator and brackets,
and the indent of a pretty-printer that puts each value on a line of its own (12 spaces at
an indent of 4, and a CRLF: 32 bytes a value refused such a curve at the value cap)."""


LIMIT_PREFIXES = (
    "max_",
    "experiment_",
    "loss_curve_",
    "compute_",
    "body_timeout",
    "cpu_flops",
    "cuda_flops",
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()


class UnknownVariableError(ValueError):
    """A ``TENSORGRADE_*`` environment variable that is no setting (a misspelt one would
    otherwise be ignored: ``TENSORGRADE_INSTRUCTOR_KEY`` would leave the service open)."""


def setting_variables() -> frozenset[str]:
    """The environment variable of every setting (``TENSORGRADE_WORKERS``, ...)."""
    return frozenset(f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``TENSORGRADE_*`` variable that is neither a setting nor a client variable.

    Names are compared in capitals, as the settings read them. The message names the
    variables, never their values (one may hold a key), with the nearest known name.

    Raises:
        UnknownVariableError: one or more such variables are set.
    """
    environ = os.environ if environ is None else environ
    known = setting_variables() | CLIENT_VARIABLES
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
    if not unknown:
        return
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    reasons = []
    for name in unknown:
        if _SERVICE_LINK.search(name.upper()) or environ[name].startswith(_LINK_VALUES):
            reasons.append(
                f"{name} is not a setting (Kubernetes sets such variables in a pod for a Service "
                "named like the service: give the pod enableServiceLinks: false)"
            )
            continue
        suffix = name.upper().removeprefix(ENV_PREFIX)
        close = difflib.get_close_matches(suffix, sorted(suffixes), n=1)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        reasons.append(f"{name} is not a setting{hint}")
    raise UnknownVariableError(
        "; ".join(reasons) + "; every setting is listed in the README's Configuration section"
    )


_SERVICE_LINK = re.compile(
    r"_SERVICE_(HOST|PORT)(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$"
)
"""The names of a Kubernetes (or Docker) service link's variables."""
_LINK_VALUES = ("tcp://", "udp://", "sctp://")
"""How a service link's ``<NAME>_PORT`` variable starts."""
