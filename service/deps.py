"""Shared FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.gate import ComputeGate
from service.settings import Settings


def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


def compute_gate(request: Request) -> ComputeGate:
    """The per-device concurrency gate of the app."""
    gate: ComputeGate = request.app.state.gate
    return gate


GateDep = Annotated[ComputeGate, Depends(compute_gate)]
