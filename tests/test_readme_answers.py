"""The answers the README shows are the answers the service gives.

A ```json block right after a curl block (no heading between them) shows that request's
answer. Each such request is sent in-process and its answer compared with the block loosely,
as a reader compares it: ``"..."`` stands for anything (a key ``"..."`` for the fields left
out, a list ending in ``"..."`` for the items after those shown, a string ending in ``...``
for its tail), a number agrees to the decimals shown, and fields that change from run to run
(timings, the secret's revision) are not compared. The curl must be one request whose body is
written in the block (``-d '...'``): a pipeline or a body built from shell variables is a
reader's exercise, not checked here.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.keys import INSTRUCTOR, key, keyed_settings

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
REQUEST = re.compile(r"curl -s '?localhost:8000(/\S+?)'? ")
VOLATILE = frozenset({"seconds", "execution_time", "revision", "request_id"})
"""Fields of an answer that change from run to run: timings, the variant secret's revision."""


def shown_answers() -> list[tuple[int, str, dict[str, Any] | None, Any]]:
    """(line, path, body or None for a GET, the answer shown) of each curl and its answer."""
    text = README.read_text()
    fences = list(FENCE.finditer(text))
    found = []
    for request, answer in itertools.pairwise(fences):
        between = text[request.end() : answer.start()]
        if (
            request[1] not in ("sh", "bash")
            or answer[1] != "json"
            or re.search(r"^#", between, re.MULTILINE)
        ):
            continue
        command = request[2]
        path = REQUEST.search(command)
        if path is None or "|" in command or command.count("curl ") != 1 or "$BODY" in command:
            continue
        body = re.search(r"-d '(.*?)'\n", command, re.DOTALL)
        line = text.count("\n", 0, answer.start()) + 2
        found.append((line, path[1], json.loads(body[1]) if body else None, json.loads(answer[2])))
    return found


SHOWN = shown_answers()


def differences(shown: Any, actual: Any, where: str = "answer") -> list[str]:
    """Where ``actual`` is not what ``shown`` says, read with its elisions."""
    if shown == "...":
        return []
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: an object is shown, the answer is {actual!r:.80}"]
        if "..." not in shown and set(actual) - set(shown) - VOLATILE:
            return [f"{where}: fields not shown: {sorted(set(actual) - set(shown))}"]
        found = [f"{where}.{name}: missing" for name in shown.keys() - actual.keys() - {"..."}]
        for name, value in shown.items():
            if name != "..." and name not in VOLATILE and name in actual:
                found += differences(value, actual[name], f"{where}.{name}")
        return found
    if isinstance(shown, list):
        if not isinstance(actual, list):
            return [f"{where}: a list is shown, the answer is {actual!r:.80}"]
        items = shown[:-1] if shown and shown[-1] == "..." else shown
        if len(actual) < len(items) or (items is shown and len(actual) != len(shown)):
            return [f"{where}: {len(shown)} items shown, {len(actual)} answered"]
        return [d for i, s in enumerate(items) for d in differences(s, actual[i], f"{where}[{i}]")]
    if isinstance(shown, str) and isinstance(actual, str) and shown.endswith("..."):
        same = actual.startswith(shown[:-3])
    elif isinstance(shown, float) and isinstance(actual, (int, float)):
        decimals = len(repr(shown).split(".")[1]) if "e" not in repr(shown) else 17
        same = round(actual, decimals) == shown or actual == shown
    else:
        same = type(shown) is type(actual) and shown == actual
    return [] if same else [f"{where}: the README shows {shown!r}, the service answers {actual!r}"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings(check_rate_limit=""))) as test_client:
        yield test_client


def test_the_readme_shows_answers_of_each_kind() -> None:
    """The collection finds what it should: a check, a grade, a model, a diagnosis."""
    paths = {path.split("?")[0] for _, path, _, _ in SHOWN}
    assert {
        "/v1/diagnostics/loss-curve",
        "/v1/models/conv1d/forward",
        "/v1/assignments/cnn-rnn/grade",
        "/v1/assignments/cnn-rnn/problems/1.1b/check",
    } <= paths, paths


@pytest.mark.parametrize(
    ("path", "body", "shown"),
    [entry[1:] for entry in SHOWN],
    ids=[f"line {entry[0]} {entry[1]}" for entry in SHOWN],
)
def test_the_shown_answer_is_the_answer(
    client: TestClient, path: str, body: dict[str, Any] | None, shown: Any
) -> None:
    headers = key(INSTRUCTOR)
    response = (
        client.get(path, headers=headers)
        if body is None
        else client.post(path, json=body, headers=headers)
    )
    assert response.status_code == 200, response.text
    assert differences(shown, response.json()) == []


@pytest.mark.parametrize(
    ("shown", "actual"),
    [
        ({"a": 1.38}, {"a": 1.3812}),
        ({"a": [1, "..."]}, {"a": [1, 2, 3]}),
        ({"a": "Your answer ..."}, {"a": "Your answer is wrong"}),
        ({"a": 1, "...": "..."}, {"a": 1, "b": 2}),
        ({"seconds": 2.4}, {"seconds": 3.3}),
    ],
)
def test_an_elision_stands_for_what_it_leaves_out(shown: Any, actual: Any) -> None:
    assert differences(shown, actual) == []


@pytest.mark.parametrize(
    ("shown", "actual"),
    [
        ({"a": 1.38}, {"a": 1.3862}),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}),
        ({"a": "e.g. '5x2'"}, {"a": "e.g. '16x16'"}),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": 1, "b": 2}, {"a": 1}),
        ({"a": True}, {"a": 1}),
    ],
)
def test_a_shown_answer_that_is_not_the_answer_is_told(shown: Any, actual: Any) -> None:
    assert differences(shown, actual) != []
