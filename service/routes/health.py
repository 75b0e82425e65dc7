"""Liveness, readiness and what this server offers."""

from __future__ import annotations

from typing import Any, Literal

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service import __version__
from service.deps import SettingsDep
from service.devices import available_devices
from service.problems import Problem, problem_responses
from service.routing import FastJSONRoute

# FastJSONRoute although no route here takes a body: it answers a query that is not UTF-8
# (service/routing.py), as every other route does.
router = APIRouter(tags=["health"], route_class=FastJSONRoute)


class Status(BaseModel):
    status: str = Field(description="`ok` from /healthz, `ready` from /readyz.")


class Info(BaseModel):
    version: str = Field(description="This service's version.")
    torch_version: str = Field(description="The version of torch it computes with.")
    devices: list[str] = Field(description="Devices this server computes on.")
    default_device: str = Field(description="What `device: auto` means here.")
    torch_threads: int = Field(
        description="Intra-op threads torch uses in each worker (`TENSORGRADE_TORCH_THREADS`, "
        "else the cores divided among the workers)."
    )
    limits: dict[str, Any] = Field(description="Every budget a request is checked against.")
    body_limits: dict[str, int] = Field(
        description="The routes that take smaller bodies than `limits.max_body_bytes`, by "
        '`"METHOD path"`: the largest body in bytes each takes (413 `body-too-large` past it).'
    )
    auth: Literal["open", "keys"] = Field(
        description="`open` when no API key is configured (every caller acts as an "
        "instructor), `keys` otherwise."
    )


@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> Status:
    """200 while the process serves."""
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 once torch is loaded and warmed up",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Status:
    """200 once torch is loaded and a warm-up computation ran; 503 before."""
    if not request.app.state.ready.is_set():
        raise Problem(503, "warming up: torch is loading", headers={"Retry-After": "1"})
    return Status(status="ready")


@router.get("/v1/info", summary="Version, devices and limits of this server")
async def info(request: Request, settings: SettingsDep) -> Info:
    """Version, torch version, devices, limits and auth mode."""
    devices = available_devices()
    return Info(
        version=__version__,
        torch_version=torch.__version__,
        devices=devices,
        default_device="cuda" if len(devices) > 1 else "cpu",
        torch_threads=torch.get_num_threads(),
        limits=settings.limits(),
        body_limits=settings.route_body_limits(),
        auth="open" if request.app.state.keyring.open else "keys",
    )
