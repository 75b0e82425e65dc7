"""Choosing the device and dtype a request computes on."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch

from service.problems import Problem

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["float64", "float32"]

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    return torch.cuda.is_available()


def available_devices() -> list[str]:
    """The devices this process can compute on, CPU first."""
    devices = ["cpu"]
    if cuda_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def resolve_device(name: DeviceName) -> torch.device:
    """``auto`` is the GPU when there is one; ``cuda`` without a GPU is refused, never faked."""
    if name == "cuda" and not cuda_available():
        raise Problem(
            422,
            "device 'cuda' was requested but this server has no CUDA device; "
            "ask for 'cpu' or 'auto' (see /v1/info for the devices available)",
            kind="device-unavailable",
            title="Device not available",
            errors=[{"loc": ["body", "device"], "msg": "no CUDA device", "type": "device"}],
        )
    if name == "cpu" or not cuda_available():
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_dtype(name: DtypeName) -> torch.dtype:
    return DTYPES[name]
