"""Roles (API.md "Roles"): 401 without or with an unknown key, 403 for a student outside
/v1/assignments, open mode announced, keys never printed. Every route of the app is walked,
so a route added later is held to the same rule."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.routing import Route

from service.app import create_app
from service.auth import KeyRing
from service.settings import Settings
from tests.keys import INSTRUCTOR, OTHER_STUDENT, SECRET, STUDENT, UNKNOWN, key, keyed_settings

PUBLIC = {
    "/healthz",
    "/readyz",
    "/v1/info",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
}
"""Health, information and docs: open to every caller, with or without a key."""

STUDENT_PREFIX = "/v1/assignments"
"""What a student key may call: reading problem variants and checking answers."""

PATH_VALUES = {"model": "conv1d", "assignment": "cnn-rnn", "problem": "1.1a"}


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings())) as client:
        yield client


def operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation of the app: those of the OpenAPI schema and
    the plain routes beside them (the docs)."""
    templates = {
        (method.upper(), path)
        for path, methods in client.get("/openapi.json").json()["paths"].items()
        for method in methods
    }
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route):
            templates |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return sorted(
        (method, re.sub(r"\{(\w+)[^}]*\}", lambda m: PATH_VALUES.get(m[1], "x"), path))
        for method, path in templates
    )


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    response = client.request(
        method, path, params={"student_id": "alice"}, json=body, headers=headers
    )
    return response.status_code


def test_the_walk_covers_every_area(keyed: TestClient) -> None:
    paths = {path for _, path in operations(keyed)}
    assert {"/v1/models", "/v1/shapes/conv", "/v1/assignments", "/healthz"} <= paths
    assert "/v1/assignments/cnn-rnn/problems/1.1a" in paths


def test_every_route_without_a_key_or_with_an_unknown_one(keyed: TestClient) -> None:
    for method, path in operations(keyed):
        for headers in ({}, key(UNKNOWN)):
            status = call(keyed, method, path, headers)
            if path in PUBLIC:
                assert status != 401, (method, path)
            else:
                assert status == 401, (method, path, headers)


def test_every_route_with_a_student_key(keyed: TestClient) -> None:
    for method, path in operations(keyed):
        for student in (STUDENT, OTHER_STUDENT):
            status = call(keyed, method, path, key(student))
            if path in PUBLIC or path.startswith(STUDENT_PREFIX):
                assert status not in (401, 403), (method, path, status)
            else:
                assert status == 403, (method, path, status)


def test_every_route_with_an_instructor_key(keyed: TestClient) -> None:
    for method, path in operations(keyed):
        assert call(keyed, method, path, key(INSTRUCTOR)) not in (401, 403), (method, path)


def test_refusals_are_problem_details_that_say_what_to_do(keyed: TestClient) -> None:
    missing = keyed.get("/v1/models")
    assert missing.headers["content-type"] == "application/problem+json"
    assert "X-API-Key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == 'APIKey header="X-API-Key"'
    unknown = keyed.get("/v1/models", headers=key(UNKNOWN)).json()
    assert unknown["status"] == 401 and "not a key of this server" in unknown["detail"]
    forbidden = keyed.post("/v1/shapes/conv", json={}, headers=key(STUDENT)).json()
    assert forbidden["status"] == 403 and "/v1/assignments" in forbidden["detail"]


def test_a_missing_key_is_401_before_the_body_is_looked_at(keyed: TestClient) -> None:
    assert keyed.post("/v1/shapes/conv", content=b"not json").status_code == 401
    assert keyed.get("/v1/assignments/cnn-rnn/problems/1.1a").status_code == 401


def asgi_call(
    app: Any, method: str, path: str, who: str | None, root_path: str = ""
) -> list[dict[str, Any]]:
    """What ``app`` sends for a 40 MB JSON request, called directly (ASGI) with a ``receive``
    that fails the test if the body is asked for."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"40000000")]
    if who is not None:
        headers.append((b"x-api-key", who.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError(f"the body of {method} {path} was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("who", [None, UNKNOWN], ids=["no-key", "unknown-key"])
@pytest.mark.parametrize(
    ("method", "path", "root_path", "status"),
    [
        ("POST", "/v1/assignments/cnn-rnn/grade", "", 401),
        ("POST", "/api/v1/check", "/api", 401),  # behind a proxy's prefix (--root-path)
        ("POST", "/v1/nowhere", "", 404),
        ("POST", "/nowhere", "", 404),
        ("PUT", "/v1/check", "", 405),
        ("GET", "/v1/models", "", 401),
    ],
    ids=["route", "root-path", "unknown-v1-path", "unknown-path", "wrong-method", "get"],
)
def test_a_caller_without_a_key_never_has_its_body_read(
    who: str | None, method: str, path: str, root_path: str, status: int
) -> None:
    """Reading and parsing a body costs memory (a parsed JSON body takes several times its
    size, and the limit is hundreds of MB): a caller with no key, or an unknown one, gets its
    answer (401, or the router's 404 or 405 where no route answers) without the server
    reading a byte of the body. The app is called directly (ASGI), with a ``receive`` that
    fails the test if the body is asked for."""
    sent = asgi_call(create_app(keyed_settings()), method, path, who, root_path)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == status
    if status == 401:
        assert b"X-API-Key" in b"".join(m.get("body", b"") for m in sent[1:])


def test_a_student_key_on_an_instructors_route_never_has_its_body_read(keyed: TestClient) -> None:
    """A student key may call only /v1/assignments: on every other POST route its 403 comes
    before a byte of the body is read (a student key must not make the server parse a body
    it will refuse)."""
    app = create_app(keyed_settings())
    posts = [path for method, path in operations(keyed) if method == "POST"]
    instructors = [path for path in posts if not path.startswith(STUDENT_PREFIX)]
    assert len(instructors) > 5
    for path in instructors:
        assert asgi_call(app, "POST", path, STUDENT)[0]["status"] == 403, path
    # A GET sent with a JSON body too.
    gets = [path for method, path in operations(keyed) if method == "GET"]
    for path in [p for p in gets if p.startswith(("/v1/models", "/v1/diagnostics"))]:
        assert asgi_call(app, "GET", path, STUDENT)[0]["status"] == 403, path


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "/v1/check", 405),
        ("DELETE", "/v1/models/conv1d/forward", 405),
        ("POST", "/v1/check/", 307),
        ("POST", "/v1/nothing-here", 404),
        ("POST", "/v1/assignments/cnn-rnn/grade/", 307),
    ],
)
def test_a_student_on_a_path_no_route_answers_never_has_its_body_read(
    method: str, path: str, status: int
) -> None:
    """The router's 404, 405 or redirect reads no body: nor does the edge for a student."""
    sent = asgi_call(create_app(keyed_settings()), method, path, STUDENT)
    assert sent[0]["status"] == status


def test_a_student_over_the_rate_limit_never_has_its_body_read() -> None:
    """The edge counts a check before it reads the body: once over the limit, the 429 comes
    without a byte of it read (the first check reads its body, so it is sent by the client)."""
    app = create_app(keyed_settings(check_rate_limit="1/minute"))
    path = "/v1/assignments/cnn-rnn/problems/1.1a/check"
    with TestClient(app) as client:
        body = {"student_id": "alice", "answer": "5x2"}
        assert client.post(path, json=body, headers=key(STUDENT)).status_code == 200
        sent = asgi_call(app, "POST", path, STUDENT)
    assert sent[0]["status"] == 429


@pytest.mark.parametrize("body", [b"{bad", b'{"x": NaN}'], ids=["malformed", "nan"])
def test_the_key_rule_is_applied_before_a_refused_body_is_explained(
    keyed: TestClient, body: bytes
) -> None:
    """Every POST route with a body the JSON parser refuses: 401 without a key or with an
    unknown one, 403 for a student outside /v1/assignments; only an admitted caller hears
    what is wrong with the body (the 422)."""
    posts = [path for method, path in operations(keyed) if method == "POST"]
    assert len(posts) > 5
    json_type = {"content-type": "application/json"}
    for path in posts:
        for who, expected in ((None, 401), (UNKNOWN, 401), (STUDENT, 403), (INSTRUCTOR, 422)):
            if who == STUDENT and path.startswith(STUDENT_PREFIX):
                expected = 422
            headers = {**json_type, **(key(who) if who else {})}
            response = keyed.post(path, content=body, headers=headers)
            assert response.status_code == expected, (path, who, response.text[:200])
            if expected == 422:
                assert response.json()["title"] == "The body is not valid JSON", path
    unknown_path = keyed.post("/v1/nowhere", content=body, headers=json_type)
    assert unknown_path.status_code == 404


def test_the_key_rule_is_applied_before_a_coded_body_is_refused(keyed: TestClient) -> None:
    """A body sent with ``Content-Encoding: gzip``: 401 without a key, 403 for a student
    outside /v1/assignments, and only an admitted caller hears of the coding (the 415)."""
    posts = [path for method, path in operations(keyed) if method == "POST"]
    coded = {"content-type": "application/json", "content-encoding": "gzip"}
    for path in posts:
        for who, expected in ((None, 401), (STUDENT, 403), (INSTRUCTOR, 415)):
            if who == STUDENT and path.startswith(STUDENT_PREFIX):
                expected = 415
            headers = {**coded, **(key(who) if who else {})}
            response = keyed.post(path, content=b"\x1f\x8b\x08", headers=headers)
            assert response.status_code == expected, (path, who, response.text[:200])


def test_the_key_rule_is_applied_before_a_query_that_is_not_utf8_is_refused(
    keyed: TestClient,
) -> None:
    """``?student_id=%FF`` on every operation: 401 without a key and 403 for a student outside
    /v1/assignments where the key rule says so; the 422 only for a caller the rule admits."""
    docs = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # FastAPI's own pages
    # The probes and /metrics read no parameter: a stray one is no reason to fail them.
    probes = {"/healthz", "/readyz", "/metrics"}
    for path in probes:
        assert keyed.get(f"{path}?student_id=%FF").status_code != 422, path
    documented = [(method, path) for method, path in operations(keyed) if path not in docs | probes]
    assert len(documented) > 10
    for method, path in documented:
        for who in (None, STUDENT, INSTRUCTOR):
            if path in PUBLIC:
                expected = 422
            elif who is None:
                expected = 401
            elif who == STUDENT and not path.startswith(STUDENT_PREFIX):
                expected = 403
            else:
                expected = 422
            response = keyed.request(
                method,
                f"{path}?student_id=%FF",
                json={} if method == "POST" else None,
                headers=key(who) if who else {},
            )
            assert response.status_code == expected, (method, path, who, response.text[:200])


def test_open_mode_lets_every_caller_in(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models", headers=key(UNKNOWN)).status_code == 200
    assert client.get("/v1/info").json()["auth"] == "open"


def test_info_says_keys_when_keys_are_configured(keyed: TestClient) -> None:
    assert keyed.get("/v1/info").json()["auth"] == "keys"


def test_open_mode_is_announced_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tensorgrade"), TestClient(create_app(Settings())):
        pass
    text = caplog.text
    assert "runs open" in text and "TENSORGRADE_INSTRUCTOR_KEYS" in text
    assert "will change at restart" in text


def test_no_warning_with_keys_and_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="tensorgrade"),
        TestClient(create_app(keyed_settings())),
    ):
        pass
    assert "runs open" not in caplog.text and "change at restart" not in caplog.text


def test_swagger_authorize_button_is_declared(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["APIKey"]
    assert scheme == scheme | {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            if path in PUBLIC:
                assert "security" not in operation, (method, path)
                continue
            # One scheme (one Authorize button); its scopes are the roles the rule admits.
            roles = ["instructor", "student"] if path.startswith(STUDENT_PREFIX) else ["instructor"]
            assert operation["security"] == [{"APIKey": roles}], (method, path)
            assert "401" in operation["responses"], (method, path)
            if not path.startswith(STUDENT_PREFIX):
                assert "403" in operation["responses"], (method, path)


def test_keys_come_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGRADE_INSTRUCTOR_KEYS", f" {INSTRUCTOR} ,{UNKNOWN},")
    monkeypatch.setenv("TENSORGRADE_STUDENT_KEYS", STUDENT)
    monkeypatch.setenv("TENSORGRADE_VARIANT_SECRET", SECRET)
    settings = Settings()
    assert settings.api_keys("instructor") == [INSTRUCTOR, UNKNOWN]
    assert settings.api_keys("student") == [STUDENT]


def test_keys_and_the_secret_never_print() -> None:
    settings = keyed_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in (INSTRUCTOR, STUDENT, OTHER_STUDENT, SECRET):
            assert secret not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variant_secret": None}, "variant_secret is required"),
        ({"student_keys": "short"}, "at least 16 characters"),
        ({"variant_secret": "short"}, "at least 16 characters"),
        ({"variant_secret": " " * 24}, "16 characters other than spaces"),
        ({"student_keys": INSTRUCTOR}, "both an instructor key and a student key"),
        ({"check_rate_limit": "often"}, "rate limit"),
        # The example Secret's placeholders are long enough to pass as keys: refused by name.
        ({"instructor_keys": "REPLACE-ME-instructor-key"}, "instructor_keys still holds"),
        ({"student_keys": f"{STUDENT},replace-me-student-key-2"}, "student_keys still holds"),
        ({"variant_secret": "REPLACE-ME-with-32-random-bytes-hex"}, "variant_secret still"),
    ],
)
def test_wrong_key_settings_stop_start_up(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        keyed_settings(**overrides)


def test_keyring_roles() -> None:
    ring = KeyRing([INSTRUCTOR], [STUDENT, OTHER_STUDENT])
    assert not ring.open
    assert ring.role_of(INSTRUCTOR) == "instructor"
    assert ring.role_of(OTHER_STUDENT) == "student"
    assert ring.role_of(UNKNOWN) is None
    assert ring.role_of(INSTRUCTOR[:-1]) is None
    assert ring.role_of("") is None
    assert KeyRing([], []).open


def test_every_operations_text_names_the_key_it_really_needs(keyed: TestClient) -> None:
    # The note is written from the rule's security requirement; here each is held to what the
    # operation answers a caller without a key and one with a student key.
    notes = {
        "**No key needed.**": (lambda none, student: none != 401 and student != 403),
        "**Needs an instructor key**": (lambda none, student: none == 401 and student == 403),
        "**Student or instructor key**": (
            lambda none, student: none == 401 and student not in (401, 403)
        ),
    }
    seen = set()
    for template, methods in keyed.get("/openapi.json").json()["paths"].items():
        path = re.sub(r"\{(\w+)[^}]*\}", lambda m: PATH_VALUES.get(m[1], "x"), template)
        for method, operation in methods.items():
            (note,) = [n for n in notes if operation["description"].startswith(n)]
            seen.add(note)
            none = call(keyed, method.upper(), path, {})
            student = call(keyed, method.upper(), path, key(STUDENT))
            assert notes[note](none, student), (method, template, note, none, student)
    assert seen == set(notes)


def test_an_open_servers_operations_say_that_every_caller_may_call_them(
    client: TestClient,
) -> None:
    # No key is configured: every caller acts as an instructor, and the text says so, rather
    # than asking for a key the reader cannot get.
    schema = client.get("/openapi.json").json()
    assert "**This server runs without keys**" in schema["info"]["description"]
    assert "Authorize with" not in schema["info"]["description"]
    for template, methods in schema["paths"].items():
        path = re.sub(r"\{(\w+)[^}]*\}", lambda m: PATH_VALUES.get(m[1], "x"), template)
        for method, operation in methods.items():
            text = operation["description"]
            assert "Needs an instructor key" not in text and "Student or instructor" not in text
            if operation.get("security"):
                assert text.startswith("**No key needed: this server runs without keys**")
            assert call(client, method.upper(), path, {}) not in (401, 403), (method, template)


def test_a_keyed_servers_docs_ask_for_a_key_and_say_whom_the_limit_spares(
    keyed: TestClient,
) -> None:
    schema = keyed.get("/openapi.json").json()
    assert "Authorize with an `X-API-Key`" in schema["info"]["description"]
    assert "runs without keys" not in json.dumps(schema)
    # Instructor keys are not rate-limited (test_ratelimit.py): the docs of the limit say so.
    assert (
        "instructor key may call every operation, and its answer checks are not"
        in (schema["info"]["description"])
    )
    limited = [
        operation
        for methods in schema["paths"].values()
        for operation in methods.values()
        if "429" in operation["responses"]
    ]
    assert len(limited) == 2  # the check of an answer and the grade of a submission
    for operation in limited:
        assert "Instructor keys are not limited" in operation["responses"]["429"]["description"]
        assert "instructor keys are not limited" in operation["description"]


def test_a_students_key_is_looked_up_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's rule and the route's ``CallerDep`` are one dependency: one lookup (a
    SHA-256 of the key) per check, not one for each."""
    import service.auth

    calls: list[str] = []
    real = service.auth.identify

    def counting(request: Any) -> Any:
        calls.append(request.url.path)
        return real(request)

    monkeypatch.setattr(service.auth, "identify", counting)
    with TestClient(create_app(keyed_settings()), headers=key(STUDENT)) as client:
        answer = {"student_id": "alice", "answer": "5x2"}
        assert (
            client.post(f"{STUDENT_PREFIX}/cnn-rnn/problems/1.1a/check", json=answer).status_code
            == 200
        )
        variant = client.get("/v1/assignments/cnn-rnn/problems/1.1a", params={"student_id": "a"})
        assert variant.status_code == 200
    assert len(calls) == 2
