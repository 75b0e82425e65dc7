"""Rate limits of the check endpoints: per key, 429 with Retry-After once over, instructors
exempt. The check routes use the same rule (``RATE_LIMITED``) as the route mounted here."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from limits.errors import StorageError

from service import limitstore
from service.app import create_app
from service.limitstore import open_storage
from service.middleware import BodyBudget
from service.ratelimit import RATE_LIMITED
from service.settings import Settings
from tests.keys import INSTRUCTOR, OTHER_STUDENT, STUDENT, UNKNOWN, key, keyed_settings
from tests.service.test_auth import asgi_call

PATH = "/test/check"


def with_check_route(app: FastAPI) -> TestClient:
    def check() -> dict[str, bool]:
        return {"checked": True}

    app.add_api_route(PATH, check, methods=["POST"], **RATE_LIMITED)
    return TestClient(app)


def test_429_with_retry_after_once_over_the_limit() -> None:
    client = with_check_route(create_app(keyed_settings(check_rate_limit="2/minute")))
    for _ in range(2):
        assert client.post(PATH, headers=key(STUDENT)).status_code == 200
    refused = client.post(PATH, headers=key(STUDENT))
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert body["status"] == 429 and "2 per 1 minute" in body["detail"]
    # per key: another student is not affected, and a refused check does not count twice
    assert client.post(PATH, headers=key(OTHER_STUDENT)).status_code == 200
    assert client.post(PATH, headers=key(STUDENT)).status_code == 429


def test_every_limit_of_a_list_applies() -> None:
    client = with_check_route(create_app(keyed_settings(check_rate_limit="5/minute;1/hour")))
    assert client.post(PATH, headers=key(STUDENT)).status_code == 200
    refused = client.post(PATH, headers=key(STUDENT))
    assert refused.status_code == 429
    assert 60 < int(refused.headers["retry-after"]) <= 3600


def test_instructor_keys_are_not_limited() -> None:
    client = with_check_route(create_app(keyed_settings(check_rate_limit="1/minute")))
    assert all(client.post(PATH, headers=key(INSTRUCTOR)).status_code == 200 for _ in range(5))


def test_the_key_is_checked_before_the_limit() -> None:
    client = with_check_route(create_app(keyed_settings(check_rate_limit="1/minute")))
    assert client.post(PATH).status_code == 401
    assert client.post(PATH, headers=key(UNKNOWN)).status_code == 401
    assert client.post(PATH, headers=key(STUDENT)).status_code == 200


def test_an_open_service_limits_per_address() -> None:
    client = with_check_route(create_app(Settings(check_rate_limit="1/minute")))
    assert client.post(PATH).status_code == 200
    assert client.post(PATH).status_code == 429


def test_an_empty_setting_turns_the_limit_off() -> None:
    client = with_check_route(create_app(keyed_settings(check_rate_limit="")))
    assert all(client.post(PATH, headers=key(STUDENT)).status_code == 200 for _ in range(5))


def test_an_unreachable_store_is_503_not_500(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(keyed_settings())
    client = with_check_route(app)

    def unreachable(*_: object) -> bool:
        raise StorageError(ConnectionError("no route to redis"))

    monkeypatch.setattr(app.state.check_limiter._limiter, "hit", unreachable)
    response = client.post(PATH, headers=key(STUDENT))
    assert response.status_code == 503 and "rate-limit store" in response.json()["detail"]


def test_an_unknown_store_stops_start_up_without_printing_its_password() -> None:
    uri = "nosuchstore://user:hunter2-password@here"
    with pytest.raises(ValueError, match="TENSORGRADE_RATE_LIMIT_STORAGE") as raised:
        create_app(Settings(rate_limit_storage=uri))
    assert "nosuchstore://..." in str(raised.value) and "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "uri",
    [
        "redis//:s3cretPW@redis:6379/0",  # "://" left out: all of it was quoted as the scheme
        "redis:/:s3cretPW@redis:6379/0",
        ":s3cretPW@redis:6379/0",
        "redis:s3cretPW@redis://x",
        "",
    ],
)
def test_a_store_that_is_no_url_is_refused_quoting_nothing_of_it(uri: str) -> None:
    with pytest.raises(ValueError) as raised:
        open_storage(uri)
    message = str(raised.value)
    assert message == (
        "TENSORGRADE_RATE_LIMIT_STORAGE: not a URL of the form scheme://... "
        "(memory://, or redis://host:6379/0)"
    )
    assert "s3cret" not in message


def test_info_reports_the_limit() -> None:
    client = TestClient(create_app(Settings(check_rate_limit="7/minute")))
    assert client.get("/v1/info").json()["limits"]["check_rate_limit"] == "7/minute"


CHECK_1_1A = "/v1/assignments/cnn-rnn/problems/1.1a/check"


def test_the_edge_counts_a_check_before_reading_its_body_and_only_once() -> None:
    """On the assignment routes the edge counts the check: a body that is no JSON counts, a
    caller over the limit is refused before the body is parsed (a 429, not the 422 the body
    would get), and the route does not count a check the edge counted."""
    app = create_app(keyed_settings(check_rate_limit="3/minute"))
    with TestClient(app) as client:
        client.headers.update(key(STUDENT))
        assert app.state.rate_limited_routes  # the check and grade routes
        answer = {"student_id": "alice", "answer": "5x2"}
        assert client.post(CHECK_1_1A, json=answer).status_code == 200
        assert client.post(CHECK_1_1A, json=answer).status_code == 200  # counted once each
        broken = client.post(
            CHECK_1_1A, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422  # parsed after being counted
        over = client.post(
            CHECK_1_1A, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert over.status_code == 429 and "retry-after" in over.headers
        assert client.post("/v1/assignments/cnn-rnn/grade", json={}).status_code == 429
        # Instructors are not counted, at the edge either.
        instructor = {**key(INSTRUCTOR), "content-type": "application/json"}
        for _ in range(5):
            assert client.post(CHECK_1_1A, json=answer, headers=instructor).status_code == 200


def test_the_edge_counts_per_address_in_an_open_service() -> None:
    """Bodies that are no JSON: only the edge counts them (the route never runs)."""
    broken = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    with TestClient(create_app(Settings(check_rate_limit="2/minute"))) as client:
        assert client.post(CHECK_1_1A, **broken).status_code == 422  # type: ignore[arg-type]
        assert client.post(CHECK_1_1A, **broken).status_code == 422  # type: ignore[arg-type]
        assert client.post(CHECK_1_1A, **broken).status_code == 429  # type: ignore[arg-type]


def test_the_edge_counts_behind_a_proxys_prefix() -> None:
    broken = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    app = create_app(keyed_settings(check_rate_limit="1/minute"))
    with TestClient(app, root_path="/api", headers=key(STUDENT)) as client:
        path = "/api" + CHECK_1_1A
        assert client.post(path, **broken).status_code == 422  # type: ignore[arg-type]
        assert client.post(path, **broken).status_code == 429  # type: ignore[arg-type]


def test_a_check_the_worker_sheds_costs_the_caller_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 503 of a worker that cannot take the body now (its large-body budget is held by other
    bodies) is the server's refusal, not the student's check: it is not counted."""
    app = create_app(keyed_settings(check_rate_limit="1/minute"))
    with TestClient(app, headers=key(STUDENT)) as client:
        with monkeypatch.context() as busy:
            busy.setattr(BodyBudget, "take", lambda self, size, own=0: False)
            shed = asgi_call(app, "POST", CHECK_1_1A, STUDENT)  # declares 40 MB
        assert shed[0]["status"] == 503
        answer = {"student_id": "alice", "answer": "5x2"}
        assert client.post(CHECK_1_1A, json=answer).status_code == 200


def test_an_unreachable_store_at_the_edge_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(keyed_settings(check_rate_limit="3/minute"))

    def unreachable(identity: str) -> int | None:
        raise StorageError(ConnectionError("down"))

    with TestClient(app) as client:
        monkeypatch.setattr(app.state.check_limiter, "hit", unreachable)
        # A body that is no JSON: only the edge counts it (the route would answer a 422).
        headers = {**key(STUDENT), "content-type": "application/json"}
        refused = client.post(CHECK_1_1A, content=b"{not json", headers=headers)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"


def test_a_redis_url_its_client_cannot_read_is_told_under_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Redis client's own ValueError (a port that is no number) reached the console as it
    was, without the setting's name."""
    uri = "redis://:s3cretPW@127.0.0.1:notaport/0"

    def unreadable(given: str, **options: object) -> None:
        raise ValueError(f"Port could not be cast to integer value as 'notaport' in {given}")

    monkeypatch.setattr(limitstore, "storage_from_string", unreadable)
    with pytest.raises(ValueError) as error:
        limitstore.open_storage(uri)
    told = str(error.value)
    assert told.startswith("TENSORGRADE_RATE_LIMIT_STORAGE: Port could not be cast")
    assert "s3cretPW" not in told
