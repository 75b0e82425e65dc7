"""The application factory and the module-level ``app`` that uvicorn serves."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from starlette.routing import BaseRoute

from models import zeroed_buffers
from service import __version__, memory
from service.auth import INSTRUCTORS, STUDENTS, KeyRing, startup_warnings
from service.gate import ComputeGate
from service.grading.catalogue import catalogue_from_settings
from service.grading.checker import VariantScreen, spec_validator
from service.logs import ensure_logging
from service.middleware import EdgeMiddleware
from service.openapi import declare_edge_statuses, declare_roles, prefill_path_parameters
from service.problems import install_problem_handlers, problem_schemas
from service.ratelimit import CheckLimiter, rate_limited
from service.routes import assignments, check, diagnostics, health, metrics, models, shapes
from service.routing import include_flat
from service.settings import Settings, check_environment, get_settings

logger = logging.getLogger("tensorgrade")

DESCRIPTION = """\
Reference computations and answer checking for a homework on convolutional and recurrent
networks: convolution output shapes with worked steps, forward and backward passes and
Jacobians of reference models, on CPU or GPU, in float64 by default; checking answers with
a diagnosis of common mistakes; grading assignments with per-student variants (Gradescope's
results.json among the outputs); loss-curve diagnostics.

{keys}

Errors are RFC 9457 problem details (`application/problem+json`).
"""

KEYS = {
    "open": """\
**This server runs without keys** (`auth` is `open` in `/v1/info`): every caller may call \
every operation, as an instructor would, with no need to Authorize. Answer checks are \
rate-limited per client address (the limits are in `/v1/info`).""",
    "keys": """\
Authorize with an `X-API-Key`. An instructor key may call every operation, and its answer \
checks are not rate-limited; a student key reads problem variants and checks answers \
(`/v1/assignments/...`), its checks limited per key (the limits are in `/v1/info`).""",
}
"""What the docs say first of keys, by the server's `auth` (``KeyRing.open``)."""


SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    # An API key entered with "Authorize" survives a reload of the page.
    "persistAuthorization": True,
    # No badge fetched from the public validator: the page makes no request off this server.
    "validatorUrl": None,
}


OPENTELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""FastAPI's native telemetry switched off (``TENSORGRADE_OPENTELEMETRY`` unset)."""


def torch_threads(settings: Settings) -> int:
    """Intra-op threads per worker: the setting, else cores divided among the workers."""
    if settings.torch_threads:
        return settings.torch_threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // settings.workers)


def warm_up() -> None:
    """One small computation so the first request does not pay for lazy initialisation."""
    weight = torch.ones(1, 1, 3, dtype=torch.float64)
    torch.nn.functional.conv1d(torch.ones(1, 5, dtype=torch.float64), weight)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service with the given settings (read from the environment when omitted).

    Raises:
        UnknownVariableError: read from the environment, which holds a ``TENSORGRADE_*``
            variable that is no setting (a misspelt key must not leave the service open).
    """
    if settings is None:
        check_environment()
        settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(torch_threads(settings))
        memory.tune_allocator(settings.malloc_arena_max, settings.malloc_mmap_threshold_bytes)
        zeroed_buffers.BUFFERS.max_bytes = settings.jacobian_buffer_bytes
        for message in startup_warnings(settings):
            logger.warning(message)

        async def warm() -> None:
            await asyncio.to_thread(warm_up)
            memory.freeze_startup_objects()
            app.state.ready.set()

        task = asyncio.create_task(warm())
        trimmer = asyncio.create_task(memory.trim_when_idle())
        yield
        task.cancel()
        trimmer.cancel()

    ensure_logging(settings.log_level)
    # /docs and /redoc with Swagger UI and ReDoc served from the installed package, not a CDN:
    # the course's network often has no internet.
    keyring = KeyRing.from_settings(settings)
    app = FastAPIOffline(
        title="tensorgrade",
        version=__version__,
        # replace, not format: a brace in the text (a JSON example) stays text.
        description=DESCRIPTION.replace("{keys}", KEYS["open" if keyring.open else "keys"]),
        lifespan=lifespan,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        # Off unless asked for: FastAPI otherwise looks up the global OpenTelemetry providers
        # on every request (about 3 us, as much as a shape answer's arithmetic); the service's
        # own metrics and logs do not depend on it.
        telemetry=None if settings.opentelemetry else OPENTELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.ready = threading.Event()
    app.state.keyring = keyring
    app.state.check_limiter = CheckLimiter.from_settings(settings)
    app.state.catalogue = catalogue_from_settings(
        settings, spec_validator(settings), VariantScreen(settings)
    )
    app.state.gate = ComputeGate.from_settings(settings)
    install_problem_handlers(app)
    # Routes match in order: the busiest (/v1/shapes/conv, thousands per grading run) first,
    # and added to the app itself, without the layer of an included router (see routing.py).
    include_flat(app, shapes.router, **INSTRUCTORS)
    app.include_router(health.router)
    for router in (models.router, check.router, diagnostics.router):
        app.include_router(router, **INSTRUCTORS)
    app.include_router(assignments.router, **STUDENTS)
    # For the edge, which refuses a student key there before reading the body (middleware.py).
    app.state.instructor_routes = tuple(
        route
        for router in (shapes.router, models.router, check.router, diagnostics.router)
        for route in router.routes
    )
    app.include_router(metrics.router)
    # And the routes whose checks it counts against the rate limit before reading the body
    # (the included routers' own routes: the app holds them behind a layer of its own).
    every_router: tuple[APIRouter, ...] = (shapes.router, health.router, models.router)
    every_router += (check.router, diagnostics.router, assignments.router, metrics.router)
    app.state.rate_limited_routes = tuple(
        route for router in every_router for route in router.routes if rate_limited(route)
    )
    # And the routes that take smaller bodies than the service's limit, with theirs.
    app.state.body_limits = route_body_limits(every_router, settings.route_body_limits())
    app.state.rate_limited_prefixes = tuple(
        {route.path.split("{", 1)[0] for route in app.state.rate_limited_routes}
    )
    # The one middleware: request ids, telemetry and the guards at the edge, before routing,
    # so it sees every answer (see middleware.py).
    app.add_middleware(
        EdgeMiddleware,
        max_bytes=settings.body_limit,
        timeout=settings.body_timeout_seconds,
        max_in_flight=settings.max_requests_in_flight,
        max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(problem_schemas())
            declare_edge_statuses(schema)
            declare_roles(schema, open_server=keyring.open)
            prefill_path_parameters(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def route_body_limits(
    routers: Iterable[APIRouter], limits: Mapping[str, int]
) -> tuple[tuple[BaseRoute, str, int], ...]:
    """Each route named in ``limits`` (``"METHOD path"``) with its name and limit, for the
    edge. A name that no route has stops the start-up: a route renamed must not silently
    take bodies of any size again."""
    found = tuple(
        (route, name, limits[name])
        for router in routers
        for route in router.routes
        for method in sorted(getattr(route, "methods", None) or ())
        if (name := f"{method} {getattr(route, 'path', '')}") in limits
    )
    missing = set(limits) - {name for _, name, _ in found}
    if missing:
        raise RuntimeError(f"body limits for routes that do not exist: {sorted(missing)}")
    return found


app = create_app()
