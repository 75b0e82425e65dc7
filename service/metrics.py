"""Prometheus metrics of the service, correct across several uvicorn workers.

With one worker the metrics live in this process. With several, each worker is its own
process and a scrape reaches only one of them, so the counts must be shared: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty writable directory before the server starts (the
container image and the Kubernetes manifests do), and every worker writes its values to
files there that ``/metrics`` adds up. ``tensorgrade serve`` empties the directory at start-up,
so a restarted server does not count the previous one's requests.

Light on purpose (no torch): the supervisor of ``tensorgrade serve`` imports it for
``prepare_multiprocess_dir``, and has no use for torch's few hundred megabytes.

Labels are bounded by design: routes are templates (``/v1/models/{model}/forward``, never the
raw path), models are registered names, statuses are numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    import torch

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# From a health check (~1 ms) to a large Jacobian (tens of seconds).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "tensorgrade_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "tensorgrade_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method, route and status.",
    ["method", "route", "status"],
    buckets=_BUCKETS,
)
COMPUTE = Histogram(
    "tensorgrade_compute_duration_seconds",
    "Time spent computing a reference, by model, operation and device.",
    ["model", "operation", "device"],
    buckets=_BUCKETS,
)
BUDGET_REJECTIONS = Counter(
    "tensorgrade_budget_rejections",
    "Requests refused with 413 for declaring more elements or bytes than the budget.",
    ["route"],
)
RATE_LIMITED = Counter(
    "tensorgrade_rate_limited",
    "Requests refused with 429 by the rate limit.",
    ["route"],
)


def prepare_multiprocess_dir() -> None:
    """Create ``PROMETHEUS_MULTIPROC_DIR`` if set, and remove the values of an earlier run.

    Call once before the workers start (``tensorgrade serve`` does); never from a worker, which
    would delete its siblings' counts.

    Raises:
        ValueError: the folder cannot be made or emptied (a read-only file system); the
            message names the variable and why.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    except OSError as error:
        raise ValueError(
            f"{MULTIPROC_ENV}={directory}: cannot make or empty it ({error.strerror or error}); "
            "point it at a writable folder (in a container, a tmpfs or an emptyDir)"
        ) from None


# The labelled children of REQUESTS and LATENCY by (method, route, status): looking them up
# through ``labels()`` costs more than counting, on requests that take ~100 us in all. The
# labels are bounded (see the module), and so is this.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency; 413 and 429 are also counted apart."""
    children = _children.get((method, route, status))
    if children is None:
        code = str(status)
        children = REQUESTS.labels(method, route, code), LATENCY.labels(method, route, code)
        _children[(method, route, status)] = children
    children[0].inc()
    children[1].observe(seconds)
    if status == 413:
        BUDGET_REJECTIONS.labels(route).inc()
    elif status == 429:
        RATE_LIMITED.labels(route).inc()


_RECORDED: ContextVar[bool] = ContextVar("tensorgrade_compute_recorded", default=True)


@contextmanager
def unrecorded() -> Iterator[None]:
    """Computations inside the block are not counted in ``COMPUTE``: the start-up check of the
    assignments' keys is no traffic, and would show every worker computing before any request."""
    token = _RECORDED.set(False)
    try:
        yield
    finally:
        _RECORDED.reset(token)


@contextmanager
def compute_timer(model: str, operation: str, device: torch.device) -> Iterator[None]:
    """Time the computation inside the ``with`` block (successful ones only).

    Args:
        model: the registered model name.
        operation: ``forward``, ``backward``, ``jacobian``...
        device: where it ran; CUDA work is waited for, so the time is the kernels' and not
            only their launch.
    """
    start = time.perf_counter()
    yield
    if not _RECORDED.get():
        return
    if device.type == "cuda":
        import torch  # loaded already: the computation used it

        torch.cuda.synchronize(device)
    COMPUTE.labels(model, operation, device.type).observe(time.perf_counter() - start)


def render() -> tuple[bytes, str]:
    """The metrics in Prometheus text format: every worker's when in multiprocess mode.

    Returns:
        The body and its media type.
    """
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
