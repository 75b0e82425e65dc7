"""Request ids, JSON access logs and Prometheus metrics."""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.logs import ACCESS_LOGGER, JsonFormatter, ensure_logging, log_config
from service.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from service.problems import Problem
from service.settings import Settings

# On the CPU even where a GPU is present ("auto" would pick it): the compute metrics below
# are read with device="cpu".
SEED_BODY = {
    "device": "cpu",
    "config": {"stride": 2},
    "params": {"weight": SEED_W_1x5x3},
    "inputs": {"x": SEED_X_5x7},
}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def app() -> FastAPI:
    app = create_app(Settings(max_jacobian_elements=10))

    # Stand-ins for answers that other parts of the service give (rate limit, a bug).
    @app.get("/test/limited", include_in_schema=False)
    def limited() -> None:
        raise Problem(429, "too many requests for this key", headers={"Retry-After": "1"})

    @app.get("/test/broken", include_in_schema=False)
    def broken() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture(scope="module")
def tc(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield tc


def test_request_id_is_generated_echoed_and_in_problem_details(tc: TestClient) -> None:
    ok = tc.get("/healthz")
    generated = ok.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert tc.get("/healthz").headers["x-request-id"] != generated

    missing = tc.get("/v1/nothing", headers={"X-Request-ID": "grader-7:run-2"})
    assert missing.headers["x-request-id"] == "grader-7:run-2"
    assert missing.json()["request_id"] == "grader-7:run-2"

    invalid = tc.post("/v1/shapes/conv", json={"input_size": [3]}, headers={"X-Request-ID": "v-1"})
    assert invalid.status_code == 422 and invalid.json()["request_id"] == "v-1"
    assert invalid.headers.get_list("x-request-id") == ["v-1"]  # once, not twice


def test_request_id_of_an_unexpected_error_is_in_the_500(tc: TestClient) -> None:
    response = tc.get("/test/broken", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json()["request_id"] == "bug-1" == response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-store"  # answered outside the edge


@pytest.mark.parametrize("unsafe", ["a b", "x" * 129, "line\nbreak", "<script>", ""])
def test_unsafe_request_ids_are_replaced(tc: TestClient, unsafe: str) -> None:
    response = tc.get("/healthz", headers={"X-Request-ID": unsafe.replace("\n", "%0A")})
    assert response.headers["x-request-id"] != unsafe
    assert len(response.headers["x-request-id"]) == 32


def test_requests_are_counted_by_route_template_and_status(tc: TestClient) -> None:
    route = "/v1/models/{model}/forward"
    before = sample("tensorgrade_http_requests_total", method="POST", route=route, status="200")
    before_404 = sample("tensorgrade_http_requests_total", method="POST", route=route, status="404")
    compute = sample(
        "tensorgrade_compute_duration_seconds_count",
        model="conv1d",
        operation="forward",
        device="cpu",
    )
    assert tc.post("/v1/models/conv1d/forward", json=SEED_BODY).status_code == 200
    assert tc.post("/v1/models/conv1d/forward", json=SEED_BODY).status_code == 200
    assert tc.post("/v1/models/nope/forward", json=SEED_BODY).status_code == 404
    labels = {"method": "POST", "route": route}
    assert sample("tensorgrade_http_requests_total", **labels, status="200") == before + 2
    assert sample("tensorgrade_http_requests_total", **labels, status="404") == before_404 + 1
    assert sample("tensorgrade_http_request_duration_seconds_count", **labels, status="200") >= 2
    assert (
        sample(
            "tensorgrade_compute_duration_seconds_count",
            model="conv1d",
            operation="forward",
            device="cpu",
        )
        == compute + 2  # the 404 computed nothing
    )
    text = tc.get("/metrics").text
    assert 'route="/v1/models/conv1d/forward"' not in text  # never the raw path
    assert 'route="/v1/models/nope/forward"' not in text


def test_unmatched_paths_share_one_label(tc: TestClient) -> None:
    before = sample(
        "tensorgrade_http_requests_total", method="GET", route="unmatched", status="404"
    )
    for i in range(3):
        tc.get(f"/random/{i}")
    after = sample("tensorgrade_http_requests_total", method="GET", route="unmatched", status="404")
    assert after == before + 3


def test_budget_rejections_and_rate_limit_hits_are_counted(tc: TestClient) -> None:
    jacobian = "/v1/models/{model}/jacobian"
    budget = sample("tensorgrade_budget_rejections_total", route=jacobian)
    limited = sample("tensorgrade_rate_limited_total", route="/test/limited")
    response = tc.post("/v1/models/conv1d/jacobian", json={**SEED_BODY, "of": "y", "wrt": "x"})
    assert response.status_code == 413  # 3 x 35 entries, over the budget of 10
    assert tc.get("/test/limited").status_code == 429
    assert sample("tensorgrade_budget_rejections_total", route=jacobian) == budget + 1
    assert sample("tensorgrade_rate_limited_total", route="/test/limited") == limited + 1


def test_metrics_endpoint_speaks_prometheus_text(tc: TestClient) -> None:
    tc.get("/healthz")
    response = tc.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "tensorgrade_http_requests",
        "tensorgrade_http_request_duration_seconds",
        "tensorgrade_compute_duration_seconds",
    ):
        assert name in families
    healthz = [
        s
        for s in families["tensorgrade_http_requests"].samples
        if s.labels.get("route") == "/healthz" and s.name.endswith("_total")
    ]
    assert healthz and healthz[0].value >= 1


def test_one_access_log_line_per_request_without_secrets_or_tensors(
    tc: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        response = tc.post(
            "/v1/models/conv1d/forward?student=s1",
            json=SEED_BODY,
            headers={"X-API-Key": "sekrit-key-42", "X-Request-ID": "log-1"},
        )
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert response.status_code == 200 and len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "log-1"
    assert line["method"] == "POST" and line["status"] == 200
    assert line["route"] == "/v1/models/{model}/forward"
    assert line["path"] == "/v1/models/conv1d/forward"  # no query string
    assert line["duration_ms"] >= 0 and line["level"] == "info"
    text = json.dumps(line)
    assert "sekrit" not in text and not any("key" in field.lower() for field in line)
    assert "weight" not in text and "stride" not in text  # nothing of the body


def test_json_formatter_adds_the_request_id_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "tensorgrade", logging.ERROR, "f", 1, "failed %s", ("x",), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["level"] == "error"
    assert "ValueError: boom" in line["exception"]


def test_log_config_makes_uvicorn_and_the_service_log_json() -> None:
    config = log_config("warning")
    logging.config.dictConfig(config)
    try:
        for name in ("uvicorn", "tensorgrade", "asyncio"):
            handler = logging.getLogger(name).handlers[0]
            assert isinstance(handler.formatter, JsonFormatter)
            assert logging.getLogger(name).level == logging.WARNING
        assert logging.getLogger("uvicorn.access").handlers == []
    finally:
        for name in ("uvicorn", "uvicorn.access", "tensorgrade", "asyncio"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
            logger.setLevel(logging.NOTSET)


def test_serve_empties_the_multiprocess_directory_of_an_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "metrics"
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    prepare_multiprocess_dir()
    assert directory.is_dir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    prepare_multiprocess_dir()
    assert [p.name for p in directory.iterdir()] == ["keep.txt"]


def test_service_logs_json_under_a_bare_uvicorn_and_leaves_configured_logging_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, ours = logging.getLogger(), logging.getLogger("tensorgrade")
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(ours, "handlers", [])
    level = ours.level
    ours.setLevel(logging.NOTSET)
    try:
        ensure_logging("info")
        (handler,) = ours.handlers
        assert isinstance(handler.formatter, JsonFormatter) and ours.level == logging.INFO
        ensure_logging("info")
        assert ours.handlers == [handler]  # once only
        monkeypatch.setattr(ours, "handlers", [])
        monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
        ensure_logging("info")
        assert ours.handlers == []  # the application configured logging: not ours to change
    finally:
        ours.setLevel(level)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_compute_is_timed_under_its_device(tc: TestClient) -> None:
    labels = {"model": "conv1d", "operation": "backward", "device": "cuda"}
    before = sample("tensorgrade_compute_duration_seconds_count", **labels)
    body = {**SEED_BODY, "grad_outputs": {"y": [[1, -2, 3]]}, "device": "cuda"}
    assert tc.post("/v1/models/conv1d/backward", json=body).status_code == 200
    assert sample("tensorgrade_compute_duration_seconds_count", **labels) == before + 1


def test_fastapis_opentelemetry_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastapi.telemetry._asgi as native

    # As if the process had configured OpenTelemetry providers.
    monkeypatch.setattr(native, "_unconfigured", lambda provider: False)
    assert not create_app(Settings())._native_telemetry.enabled()
    assert create_app(Settings(opentelemetry=True))._native_telemetry.enabled()


def test_uvicorn_does_not_log_a_500s_traceback_a_second_time() -> None:
    """The service's handler logs a 500 with its request id and marks the error; Starlette
    then re-raises it, and uvicorn's own "Exception in ASGI application" record of that error
    (the same traceback) is dropped. uvicorn's record of an error the handler never saw, and
    its other records, pass."""
    config = log_config("info")
    assert config["loggers"]["uvicorn.error"]["filters"][0] == "logged_by_the_service"
    made = config["filters"]["logged_by_the_service"]["()"]
    module, name = made.rsplit(".", 1)
    drop = getattr(importlib.import_module(module), name)()

    app = create_app(Settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app) as client, pytest.raises(RuntimeError) as raised:
        client.get("/boom")
    logged = raised.value

    def record(message: str, error: BaseException | None) -> logging.LogRecord:
        info = (type(error), error, error.__traceback__) if error else None
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, info)

    # uvicorn's words, newline included (uvicorn/protocols/http/h11_impl.py).
    assert not drop.filter(record("Exception in ASGI application\n", logged))
    assert drop.filter(record("Exception in ASGI application\n", RuntimeError("unseen")))
    assert drop.filter(record("Application startup failed. Exiting.", None))


def test_the_start_up_check_of_the_assignments_is_not_counted_as_compute() -> None:
    """Every worker computes the keys of the built-in assignments at start-up: no traffic, so
    not in tensorgrade_compute_duration_seconds (a request's computation still is)."""
    labels = {"model": "conv1d", "operation": "forward", "device": "cpu"}
    before = sample("tensorgrade_compute_duration_seconds_count", **labels)
    with TestClient(create_app(Settings())) as client:
        assert sample("tensorgrade_compute_duration_seconds_count", **labels) == before
        body = {"params": {"weight": [[[1.0]]]}, "inputs": {"x": [[1.0]]}, "device": "cpu"}
        response = client.post("/v1/models/conv1d/forward", json=body)
        assert response.status_code == 200, response.text
    assert sample("tensorgrade_compute_duration_seconds_count", **labels) == before + 1


def test_uvicorn_does_not_warn_of_an_upgrade_offer_the_service_ignores() -> None:
    """A request offering ``Upgrade: h2c`` is answered as HTTP/1.1
    (tests/test_http_protocol.py); uvicorn's two warnings about it are dropped, its other
    warnings pass."""
    config = log_config("info")
    assert "upgrade_ignored" in config["loggers"]["uvicorn.error"]["filters"]
    module, name = config["filters"]["upgrade_ignored"]["()"].rsplit(".", 1)
    drop = getattr(importlib.import_module(module), name)()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, None, None)

    # uvicorn's words (uvicorn/protocols/http/h11_impl.py, _unsupported_upgrade_warning).
    assert not drop.filter(record("Unsupported upgrade request."))
    assert not drop.filter(
        record(
            'No supported WebSocket library detected. Please use "pip install '
            "'uvicorn[standard]'\", or install 'websockets' or 'wsproto' manually."
        )
    )
    assert drop.filter(record("Invalid HTTP request received."))
