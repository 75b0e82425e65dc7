"""The guards at the edge: the body size limit and strict JSON, on every route."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib
import json
import logging
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service.routes
from service import routing
from service.app import create_app
from service.examples import SEED_W_1x5x3, SEED_X_5x7
from service.middleware import EdgeMiddleware, is_json
from service.routing import FastJSONRoute
from service.settings import Settings
from tests.keys import STUDENT, key, keyed_settings

JSON = {"content-type": "application/json"}
SEED = {"config": {"stride": 2}, "params": {"weight": SEED_W_1x5x3}, "inputs": {"x": SEED_X_5x7}}


@pytest.fixture(scope="module")
def unlimited() -> Iterator[TestClient]:
    """A client of an app without the rate limit of checks: a test that sends every operation
    several times would otherwise spend the limit the whole run's shared client counts on
    (the counters are the process's)."""
    with TestClient(create_app(Settings(check_rate_limit=""))) as client:
        yield client


@pytest.fixture(scope="module")
def small() -> Iterator[TestClient]:
    """A client of an app whose body limit is 4 KiB."""
    with TestClient(create_app(Settings(max_body_bytes=4096))) as client:
        yield client


def chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): the limit must count it as it streams."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def assert_too_large(response_status: int, body: dict[str, object], words: str) -> None:
    assert response_status == 413
    assert body["type"] == "https://tensorgrade.dev/problems/body-too-large"
    assert words in str(body["detail"])


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_a_declared_length_over_the_limit_is_refused_without_reading(
    small: TestClient, content_type: str
) -> None:
    response = small.post(
        "/v1/shapes/conv", content=b" " * 5000, headers={"content-type": content_type}
    )
    assert_too_large(response.status_code, response.json(), "declares 5,000 bytes")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["connection"] == "close"


# A body that is not JSON by its type reaches a route that reads it (/v1/check: FastAPI reads
# any body before deciding it is not JSON; /v1/shapes/conv refuses it unread), and is counted.
BY_TYPE = [("application/json", "/v1/shapes/conv"), ("text/plain", "/v1/check")]


@pytest.mark.parametrize(("content_type", "path"), BY_TYPE)
def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(
    small: TestClient, content_type: str, path: str
) -> None:
    response = small.post(path, content=chunks(10_000), headers={"content-type": content_type})
    assert "content-length" not in response.request.headers
    assert_too_large(response.status_code, response.json(), "larger than the limit of 4,096")


def test_a_chunked_body_within_the_limit_is_served(small: TestClient) -> None:
    body = b'{"input_size": [21, 12], "kernel_size": [4, 5], "stride": 4}'

    def two_chunks() -> Iterator[bytes]:
        yield body[:20]
        yield body[20:]

    response = small.post("/v1/shapes/conv", content=two_chunks(), headers=JSON)
    assert response.status_code == 200
    assert response.json()["output_size"] == [5, 2]


def test_the_limit_applies_to_routes_that_do_not_read_a_body(small: TestClient) -> None:
    response = small.request("GET", "/healthz", content=b" " * 5000)
    assert response.status_code == 413
    assert small.get("/healthz").status_code == 200


def test_the_default_limit_fits_the_largest_request_the_budgets_allow() -> None:
    settings = Settings()
    # The longest float64 in JSON and its separator: 25 bytes.
    longest = len("-1.2345678901234567e-308, ")
    assert longest <= 26
    assert settings.body_limit >= settings.max_request_elements * (longest - 1)
    assert settings.body_limit - settings.max_request_elements * 25 == 4 * 2**20
    assert Settings(max_body_bytes=10_000).body_limit == 10_000


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ('{"inputs": {"x": [[NaN, 1]]}}', "`NaN`"),
        ('{"inputs": {"x": [[1, Infinity]]}}', "`Infinity`"),
        ('{"inputs": {"x": {"shape": [1], "data": [-Infinity]}}}', "`-Infinity`"),
        ('{"device": NaN}', "`NaN`"),
        ('{"config": {"stride": Infinity}}', "`Infinity`"),
        ('{"of": "y", "wrt": -Infinity}', "`-Infinity`"),
    ],
)
def test_non_finite_tokens_are_refused_wherever_they_are(
    client: TestClient, text: str, token: str
) -> None:
    response = client.post("/v1/models/conv1d/forward", content=text, headers=JSON)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "https://tensorgrade.dev/problems/non-finite-number"
    assert token in problem["detail"] and "only finite numbers" in problem["detail"]
    assert "line 1 column" in problem["detail"]


@pytest.mark.parametrize(
    "number", ["1e400", "-1e400", "1E+309", "9" * 5000, "1" + "0" * 400 + ".5", "-2e308"]
)
def test_numbers_too_large_for_a_float64_are_refused(client: TestClient, number: str) -> None:
    text = '{"input_size": [7], "kernel_size": ' + number + "}"
    response = client.post("/v1/shapes/conv", content=text, headers=JSON)
    assert response.status_code == 422
    assert "too large for a float64" in response.json()["detail"]


def test_a_token_inside_a_string_is_just_text(client: TestClient) -> None:
    response = client.post(
        "/v1/models/conv1d/forward", content='{"device": "NaN Infinity"}', headers=JSON
    )
    assert response.status_code == 422
    assert response.json()["type"].endswith("/validation-error")
    assert "device" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 1024 levels"),
        (b'{"device": "\xff"}', "not valid UTF-8"),
        (b'{"device": "cpu"', "not valid JSON"),
        (b"   ", "not valid JSON"),
    ],
    ids=["deep", "utf8", "truncated", "blank"],
)
def test_bodies_a_strict_parser_refuses_are_422(
    client: TestClient, body: bytes, words: str
) -> None:
    response = client.post("/v1/models/conv1d/forward", content=body, headers=JSON)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/models/conv1d/forward", "/v1/check"])
def test_nesting_within_the_strict_limit_reaches_validation(client: TestClient, path: str) -> None:
    # Deep enough for Python's json to give up (a RecursionError): the routes take the strict
    # parser's value instead of parsing again, so the body is judged on its fields.
    text = '{"config": ' + "[" * 1000 + "]" * 1000 + "}"
    response = client.post(path, content=text, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("/validation-error")


def test_every_route_with_a_json_body_takes_the_guards_parse() -> None:
    modules = [
        importlib.import_module(f"service.routes.{module.name}")
        for module in pkgutil.iter_modules(service.routes.__path__)
    ]
    routes = [r for m in modules for r in m.router.routes if isinstance(r, APIRoute)]
    with_body = [r for r in routes if r.dependant.body_params]
    assert with_body, "no route with a body: the test would check nothing"
    assert [r.path for r in with_body if not isinstance(r, FastJSONRoute)] == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/conv1d/forward", SEED),
        ("/v1/check", {"expected": {"op": "value", "value": [1, 2]}, "answer": [1, 2]}),
        ("/v1/diagnostics/loss-curve", {"batch_losses": [[1.0, 0.5]], "num_classes": 4}),
    ],
)
def test_a_body_is_parsed_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any]
) -> None:
    def parse_again(*_: Any) -> Any:
        raise AssertionError("the body was parsed a second time")

    monkeypatch.setattr(routing, "parse_json", parse_again)
    monkeypatch.setattr(json, "loads", parse_again)
    response = client.post(path, content=orjson.dumps(body), headers=JSON)
    assert response.status_code == 200, response.text


def test_a_valid_body_reaches_the_route_intact(client: TestClient) -> None:
    response = client.post("/v1/models/conv1d/forward", json=SEED)
    assert response.status_code == 200
    assert response.json()["outputs"]["y"]["shape"] == [1, 3]


def test_every_operation_with_a_body_declares_the_edge_statuses(client: TestClient) -> None:
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                statuses = {"400", "408", "413", "415", "422"}
                assert statuses <= set(operation["responses"]), (method, path)


PATH_VALUES = {"model": "conv1d", "assignment": "cnn-rnn", "problem": "1.1a"}


def paths_with_a_body(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation that takes a body."""
    return sorted(
        (method.upper(), re.sub(r"\{(\w+)[^}]*\}", lambda m: PATH_VALUES.get(m[1], "x"), path))
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    )


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("GZIP", "GZIP"),
        ("deflate, gzip", "deflate"),
        ("identity, gzip", "gzip"),  # identity is the body as it is: gzip is the coding
    ],
)
def test_a_coded_body_is_415_on_every_route_with_a_body(
    client: TestClient, header: str, named: str
) -> None:
    """The service decodes no content coding: a gzip body was read as JSON and blamed on its
    byte 0x8b. Every route that takes a body says what is wrong instead, and how to send it."""
    body = gzip.compress(orjson.dumps({"input_size": [5], "kernel_size": 3}))
    operations = paths_with_a_body(client)
    assert len(operations) > 5
    for method, path in operations:
        for content_type in ("application/json", "text/plain"):
            headers = {"content-type": content_type, "content-encoding": header}
            response = client.request(method, path, content=body, headers=headers)
            assert response.status_code == 415, (method, path, response.text[:200])
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["accept-encoding"] == "identity"  # RFC 9110, 15.5.16
            problem = response.json()
            assert (
                problem["type"] == "https://tensorgrade.dev/problems/unsupported-content-encoding"
            )
            assert problem["detail"] == (
                f"the request body is sent with `Content-Encoding: {named}`, which this service "
                "does not decode; send the body uncompressed, without Content-Encoding (or with "
                "`identity`)"
            )


def test_a_coded_body_is_refused_unread_and_a_path_no_route_answers_stays_404(
    client: TestClient,
) -> None:
    scope = http_scope("application/json")
    scope["headers"] = [*scope["headers"], (b"content-encoding", b"gzip")]
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the coded body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    anyio.run(client.app, scope, receive, send)
    assert sent[0]["status"] == 415
    headers = {**JSON, "content-encoding": "gzip"}
    assert client.post("/v1/nowhere", content=b"\x1f\x8b", headers=headers).status_code == 404
    assert client.put("/v1/check", content=b"\x1f\x8b", headers=headers).status_code == 405
    # A route without a body: nothing coded to refuse.
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_identity_is_the_body_as_it_is(client: TestClient) -> None:
    headers = {**JSON, "content-encoding": "identity"}
    body = orjson.dumps({"input_size": [5], "kernel_size": 3})
    response = client.post("/v1/shapes/conv", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["output_size"] == [3]


def every_operation(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation of the OpenAPI schema."""
    return sorted(
        (method.upper(), re.sub(r"\{(\w+)[^}]*\}", lambda m: PATH_VALUES.get(m[1], "x"), path))
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        for method in operations
    )


@pytest.mark.parametrize(
    ("query", "loc", "words"),
    [
        ("student_id=%FF", ["query", "student_id"], "not valid UTF-8 once its percent-escapes"),
        ("a=1&format=json%E9", ["query", "format"], "(0xE9 at byte 4)"),
        ("%FEname=1", ["query", "\ufffdname"], "its name is not valid UTF-8"),
    ],
)
def test_a_query_that_is_not_utf8_is_422_on_every_operation(
    unlimited: TestClient, query: str, loc: list[str], words: str
) -> None:
    client = unlimited
    operations = every_operation(client)
    probes = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    assert {*probes, ("POST", "/v1/shapes/conv")} <= set(operations)
    for method, path in probes:  # they read no parameter: a stray one fails no probe
        assert client.request(method, f"{path}?{query}").status_code == 200, path
    for method, path in sorted(set(operations) - probes):
        body = {} if method == "POST" else None
        response = client.request(method, f"{path}?{query}", json=body)
        assert response.status_code == 422, (method, path, response.text[:200])
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["errors"][0]["loc"] == loc, (method, path)
        assert words in problem["detail"], (method, path)
    head = client.head(f"/v1/assignments/cnn-rnn/problems/1.1a?{query}")
    assert head.status_code == 422 and head.content == b""


def test_a_query_that_is_not_utf8_on_a_path_no_route_answers_stays_404(
    client: TestClient,
) -> None:
    assert client.get("/v1/nowhere?student_id=%FF").status_code == 404
    assert client.put("/v1/check?student_id=%FF", json={}).status_code == 405


def http_scope(content_type: str, path: str = "/v1/shapes/conv") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode()), (b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }


def call_asgi(
    app: ASGIApp, scope: dict[str, Any], first: bytes, *, disconnect: bool = False
) -> list[Message]:
    """Send the first part of a body, then nothing more: the client has stalled, or (with
    ``disconnect``) closed its connection, which the app may raise as ``ClientDisconnect``
    where it reads the body itself."""
    pending: list[Message] = [{"type": "http.request", "body": first, "more_body": True}]
    if disconnect:
        pending.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        with anyio.fail_after(30):  # the test's own bound; the service's is far shorter
            with contextlib.suppress(ClientDisconnect):
                await app(scope, receive, send)

    anyio.run(main)
    return sent


@pytest.mark.parametrize(("content_type", "path"), BY_TYPE)
def test_a_body_that_stalls_past_the_time_limit_is_408(content_type: str, path: str) -> None:
    app = create_app(Settings(body_timeout_seconds=0.05))
    sent = call_asgi(app, http_scope(content_type, path), b'{"input_size": [')
    start, body = sent[0], sent[1]
    assert start["status"] == 408
    assert (b"content-type", b"application/problem+json") in start["headers"]
    detail = json.loads(body["body"])["detail"]
    assert detail == "the request body did not arrive within 0.05 s; send it faster"


def test_the_time_limit_ends_when_the_body_is_complete() -> None:
    async def reads_body_then_waits(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["more_body"] is False
        await anyio.sleep(0.1)  # longer than the limit: waiting for a disconnect is not timed
        assert (await receive())["type"] == "http.disconnect"
        await PlainTextResponse("ok")(scope, receive, send)

    messages: list[Message] = [
        {"type": "http.request", "body": b"{}", "more_body": False},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    guarded = EdgeMiddleware(reads_body_then_waits, max_bytes=100, timeout=0.05, max_in_flight=1)
    anyio.run(guarded, http_scope("application/json"), receive, send)
    assert sent[0]["status"] == 200


def ok_app_that_must_not_run(calls: list[str]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append("app")
        await PlainTextResponse("ok")(scope, receive, send)

    return app


def test_a_deadline_that_passes_as_the_body_arrives_is_a_408_not_a_cancelled_app() -> None:
    """The sweep cancels a reader whose body is ready but which has not resumed yet: the
    cancellation lands on the read (a 408), never inside the app."""
    calls: list[str] = []
    edge = EdgeMiddleware(
        ok_app_that_must_not_run(calls), max_bytes=100, timeout=60, max_in_flight=1
    )
    sent: list[Message] = []

    async def main() -> None:
        arrived: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def receive() -> Message:
            return await arrived

        async def send(message: Message) -> None:
            sent.append(message)

        task = asyncio.create_task(edge(http_scope("application/json"), receive, send))
        await asyncio.sleep(0)  # the request is now waiting for its body
        deadlines = edge._deadlines[asyncio.get_running_loop()]
        assert task in deadlines.reading
        arrived.set_result({"type": "http.request", "body": b"{}", "more_body": False})
        deadlines.reading[task] = 0.0  # its deadline has passed...
        deadlines._sweep()  # ...and the sweep runs before the reader resumes
        await task
        assert not deadlines.reading and not deadlines.expired

    asyncio.run(main())
    assert sent[0]["status"] == 408
    assert calls == []


def test_a_cancellation_from_elsewhere_is_passed_on_not_turned_into_a_408() -> None:
    edge = EdgeMiddleware(ok_app_that_must_not_run([]), max_bytes=100, timeout=60, max_in_flight=1)
    sent: list[Message] = []

    async def main() -> None:
        async def receive() -> Message:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        task = asyncio.create_task(edge(http_scope("application/json"), receive, send))
        await asyncio.sleep(0)
        task.cancel()  # the server shutting down, say
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not edge._deadlines[asyncio.get_running_loop()].reading

    asyncio.run(main())
    assert sent == []
    assert edge.in_flight == 0


def test_the_time_limit_holds_in_every_event_loop_the_app_runs_in() -> None:
    """One app, served by one loop after another (test clients do this): each has its sweep."""
    app = create_app(Settings(body_timeout_seconds=0.05))
    for _ in range(2):
        sent = call_asgi(app, http_scope("text/plain", "/v1/check"), b"partial")
        assert sent[0]["status"] == 408


def test_fast_is_json_agrees_with_the_mime_parser() -> None:
    """The edge decides JSON from the raw header without the email parser FastAPI uses; the
    two must agree on every shape of content type."""
    from email.message import Message as MimeMessage

    def by_mime(value: str) -> bool:
        mime = MimeMessage()
        mime["content-type"] = value
        subtype = mime.get_content_subtype()
        return mime.get_content_maintype() == "application" and (
            subtype == "json" or subtype.endswith("+json")
        )

    for value in [
        "application/json",
        "APPLICATION/JSON",
        "application/json; charset=utf-8",
        " application/json ;charset=utf-8",
        "application/problem+json",
        "application/vnd.api+json; q=1",
        "application/jsonx",
        "application/x-json",
        "text/json",
        "text/plain",
        "json",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
    ]:
        assert is_json(value.encode()) == by_mime(value), value
    assert not is_json(None) and not is_json(b"")


def test_a_receive_that_turns_the_cancellation_into_its_own_error_still_gives_a_408() -> None:
    async def reads_the_body(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the app reads a body that is not JSON itself
        await PlainTextResponse("ok")(scope, receive, send)

    edge = EdgeMiddleware(reads_the_body, max_bytes=100, timeout=60, max_in_flight=1)
    sent: list[Message] = []

    async def main() -> None:
        async def receive() -> Message:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise OSError("the server's own error for a cancelled read") from None
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        task = asyncio.create_task(edge(http_scope("text/plain"), receive, send))
        await asyncio.sleep(0)
        deadlines = edge._deadlines[asyncio.get_running_loop()]
        assert task in deadlines.reading
        deadlines.reading[task] = 0.0
        deadlines._sweep()
        await task
        assert not deadlines.reading and not deadlines.expired

    asyncio.run(main())
    assert sent[0]["status"] == 408


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/v1/info", "/v1/models", "/docs", "/nowhere"]
)
def test_head_is_get_without_the_body(client: TestClient, path: str) -> None:
    """RFC 9110: every GET resource answers HEAD with the same status and headers (a load
    balancer's or uptime checker's probe) and no body; FastAPI's routes declare GET only."""
    head, get = client.head(path), client.get(path)
    assert head.status_code == get.status_code
    assert head.content == b"" and get.content
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/v1/shapes/conv").status_code == 405  # POST only, as for GET


MIB = 1 << 20


def test_large_bodies_share_a_budget_and_a_small_one_always_passes() -> None:
    """A worker holds at most ``max_body_bytes_in_flight`` of large bodies (1 MiB or more) at
    once: past it, a large body is a 503 before a byte of it is read, whatever its sender may
    do; a small body passes while large ones are held, and one body alone is taken whatever
    its size. What a request held is given back when it is answered."""
    release = asyncio.Event()

    async def holds_until_released(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)

    edge = EdgeMiddleware(
        holds_until_released,
        max_bytes=10 * MIB,
        timeout=60,
        max_in_flight=10,
        max_body_bytes_in_flight=3 * MIB,
    )

    def declared(size: int) -> dict[str, Any]:
        scope = http_scope("text/plain")
        scope["headers"] = [*scope["headers"], (b"content-length", str(size).encode())]
        return scope

    async def request(scope: dict[str, Any], body: list[bytes], read: list[int]) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            chunk = body.pop(0)
            read.append(len(chunk))
            return {"type": "http.request", "body": chunk, "more_body": bool(body)}

        async def send(message: Message) -> None:
            sent.append(message)

        await edge(scope, receive, send)
        return sent

    async def main() -> None:
        reads: dict[str, list[int]] = {name: [] for name in "abcdef"}
        first = asyncio.create_task(request(declared(2 * MIB), [b"x" * 2 * MIB], reads["a"]))
        alone = asyncio.create_task(request(declared(5 * MIB), [b"x" * 5 * MIB], reads["b"]))
        await asyncio.sleep(0.01)
        assert edge.bodies.held == 2 * MIB  # the 5 MiB body did not fit beside the first
        assert alone.done() and alone.result()[0]["status"] == 503 and reads["b"] == []
        assert alone.result()[0]["headers"] and any(
            name == b"retry-after" for name, _ in alone.result()[0]["headers"]
        )
        small = asyncio.create_task(request(declared(1000), [b"x" * 1000], reads["c"]))
        fits = asyncio.create_task(request(declared(MIB), [b"x" * MIB], reads["d"]))
        # Undeclared (chunked): held from its first large byte, refused once it grows too big.
        streamed = asyncio.create_task(
            request(http_scope("text/plain"), [b"x" * MIB, b"x" * MIB], reads["e"])
        )
        await asyncio.sleep(0.01)
        assert not small.done() and not fits.done()  # both taken, waiting to be answered
        assert edge.bodies.held == 3 * MIB
        assert streamed.done() and streamed.result()[0]["status"] == 503
        assert reads["e"] == [MIB]  # refused at its first large chunk, the rest unread
        release.set()
        for task in (first, small, fits):
            assert (await task)[0]["status"] == 200
        assert edge.bodies.held == 0 and edge.in_flight == 0
        # Alone, a body larger than the budget is taken (up to the body limit).
        release.clear()
        big = asyncio.create_task(request(declared(5 * MIB), [b"x" * 5 * MIB], reads["f"]))
        await asyncio.sleep(0.01)
        assert edge.bodies.held == 5 * MIB
        release.set()
        assert (await big)[0]["status"] == 200 and edge.bodies.held == 0

    asyncio.run(main())


def test_api_answers_are_never_kept_by_a_shared_cache() -> None:
    """A variant, feedback or a reference is its caller's alone: every /v1 answer says
    ``no-store`` (a 200, a problem, a student's and an instructor's; behind a proxy's prefix
    too), while the docs' assets may be cached."""
    with TestClient(create_app(keyed_settings())) as client:
        answers = [
            client.get(
                "/v1/assignments/cnn-rnn/problems/1.1c-i",
                params={"student_id": "alice"},
                headers=key(STUDENT),
            ),
            client.post(
                "/v1/assignments/cnn-rnn/problems/1.1a/check",
                json={"student_id": "alice", "answer": "4x2"},
                headers=key(STUDENT),
            ),
            client.get("/v1/models", headers=key(STUDENT)),  # a 403
            client.get("/v1/models"),  # a 401
            client.get("/v1/info"),
        ]
        assert [a.status_code for a in answers] == [200, 200, 403, 401, 200]
        for answer in answers:
            assert answer.headers.get_list("cache-control") == ["no-store"], answer.url
        assert "no-store" not in client.get("/openapi.json").headers.get("cache-control", "")
    with TestClient(create_app(keyed_settings()), root_path="/api") as behind:
        assert behind.get("/api/v1/info").headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("content_type", "path"), BY_TYPE)
def test_a_client_gone_before_its_body_is_whole_is_a_499_not_a_500(
    content_type: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closed its connection mid-body reads no answer (FastAPI sends a 400 to
    nobody where it reads the body itself); counted as a 500, it set off the alerts on server
    errors whenever clients gave up."""
    app = create_app(Settings())
    with caplog.at_level(logging.INFO, logger="tensorgrade.access"):
        sent = call_asgi(app, http_scope(content_type, path), b'{"input_size": [', disconnect=True)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] in ([], [400])
    access = [r for r in caplog.records if r.name == "tensorgrade.access"]
    assert [r.getMessage() for r in access] == [f"POST {path} 499"]
