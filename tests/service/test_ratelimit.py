"""Rate limits of the check endpoints: per key, 429 with Retry-After once over, instructors
exempt. The check routes use the same rule (``RATE_LIMITED``) as the route mounted here."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from limits.errors import StorageError

from service.app import create_app
from service.ratelimit import RATE_LIMITED
from service.settings import Settings
from tests.keys import INSTRUCTOR, OTHER_STUDENT, STUDENT, UNKNOWN, key, keyed_settings

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


def test_info_reports_the_limit() -> None:
    client = TestClient(create_app(Settings(check_rate_limit="7/minute")))
    assert client.get("/v1/info").json()["limits"]["check_rate_limit"] == "7/minute"
