"""Answers echo numbers callers wrote: integers past 64 bits are written, never a 500."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from service.jsonout import dumps


def test_integers_orjson_refuses_are_written_as_floats_or_text() -> None:
    content = {"a": [10**20, -(2**63) - 1, 2**64 - 1, True, 7], "b": (10**400,), "c": "x"}
    assert orjson.loads(dumps(content)) == {
        "a": [1e20, float(-(2**63) - 1), 2**64 - 1, True, 7],
        "b": [str(10**400)],
        "c": "x",
    }
    assert dumps({"n": 5}) == orjson.dumps({"n": 5})


def test_what_orjson_cannot_write_for_another_reason_still_raises() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        dumps({"n": 10**20, "s": {1, 2}})


@pytest.mark.parametrize(
    "check",
    [
        {"expected": {"op": "formula", "named": "conv_output_size"}, "answer": "10**20"},
        {"expected": {"op": "formula", "named": "conv_output_size"}, "answer": "2**64"},
        {
            "expected": {"op": "formula", "reference": "H", "variables": {"H": [1, 4]}},
            "answer": "min(H)",
        },
        {"expected": {"op": "value", "value": 3}, "answer": 10**20},
    ],
)
def test_checks_echoing_huge_numbers_answer_200(
    client: TestClient, check: dict[str, object]
) -> None:
    single = client.post("/v1/check", json=check)
    assert single.status_code == 200, single.text[:300]
    batch = client.post("/v1/check/batch", json={"checks": [check, check]})
    assert batch.status_code == 200, batch.text[:300]
    assert [r.get("correct") for r in batch.json()["results"]] == [single.json()["correct"]] * 2
