"""Liveness, readiness and what this server offers."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service import __version__
from service.budgets import limits
from service.deps import SettingsDep
from service.devices import available_devices
from service.problems import Problem, problem_responses

router = APIRouter(tags=["health"])


class Status(BaseModel):
    status: str


class Info(BaseModel):
    version: str
    torch_version: str
    devices: list[str] = Field(description="Devices this server computes on.")
    default_device: str = Field(description="What `device: auto` means here.")
    torch_threads: int
    limits: dict[str, Any] = Field(description="Every budget a request is checked against.")
    auth: str = Field(description="`open` when no API key is configured.")


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
async def info(settings: SettingsDep) -> Info:
    """Version, torch version, devices, limits and auth mode."""
    devices = available_devices()
    return Info(
        version=__version__,
        torch_version=torch.__version__,
        devices=devices,
        default_device="cuda" if len(devices) > 1 else "cpu",
        torch_threads=torch.get_num_threads(),
        limits=limits(settings),
        auth="open",
    )
