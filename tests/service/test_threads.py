"""torch intra-op threads: the setting, else OMP_NUM_THREADS, else cores divided by workers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app, torch_threads
from service.settings import Settings


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_setting_wins_over_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert torch_threads(Settings(torch_threads=2)) == 2


def test_omp_num_threads_is_respected_when_the_setting_is_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert torch_threads(Settings(torch_threads=0, workers=4)) == 5


def test_the_default_divides_the_cores_among_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert torch_threads(Settings(workers=4)) == 4
    assert torch_threads(Settings(workers=32)) == 1


@pytest.mark.usefixtures("restore_threads")
def test_start_up_sets_the_threads_and_info_reports_them() -> None:
    # The test client serves from a thread of its own, where the lifespan sets the count
    # (under uvicorn that is the main thread, whose count every new thread inherits).
    with TestClient(create_app(Settings(torch_threads=1))) as client:
        assert client.get("/v1/info").json()["torch_threads"] == 1
    with TestClient(create_app(Settings(torch_threads=2))) as client:
        assert client.get("/v1/info").json()["torch_threads"] == 2
