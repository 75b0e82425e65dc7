"""The curl examples of the checking documentation answer what the text beside them says,
and every diagnosis code of its table has an example."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.registry import MODELS
from service.grading.diagnosis import MISTAKES
from service.grading.formula_mistakes import ConvRoles, conv_mistakes
from service.grading.shapes import SHAPE_MISTAKES
from tests.grading import gated_rnn_model

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md"]
BLOCK = re.compile(r"```sh\n(curl [^`]*?/v1/check[^`]*?)```", re.DOTALL)


def examples() -> list[tuple[str, dict[str, Any], str]]:
    for source in SOURCES:
        if source.exists():
            found = []
            for block in BLOCK.findall(source.read_text()):
                path = re.search(r"localhost:8000(/v1/check(?:/batch)?) ", block)
                body = re.search(r"-d '(.*?)'\n", block, re.DOTALL)
                outcome = re.search(r"^# -> (.*)$", block, re.MULTILINE)
                assert path and body and outcome, block
                found.append((path.group(1), json.loads(body.group(1)), outcome.group(1)))
            if found:
                return found
    raise AssertionError("no /v1/check examples found in the documentation")


EXAMPLES = examples()
ROLE_LETTERS: dict[str, str | None] = {letter: letter for letter in "HKPSD"}


@pytest.fixture
def gated_rnn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The examples use the service's gated_rnn; the test model stands in where it is absent."""
    if "gated_rnn" not in MODELS:
        model = dataclasses.replace(gated_rnn_model.TEST_GATED_RNN, name="gated_rnn")
        monkeypatch.setitem(MODELS, "gated_rnn", model)
    yield


@pytest.mark.usefixtures("gated_rnn")
@pytest.mark.parametrize(("path", "body", "outcome"), EXAMPLES, ids=[e[2] for e in EXAMPLES])
def test_each_documented_example(
    client: TestClient, path: str, body: dict[str, Any], outcome: str
) -> None:
    response = client.post(path, json=body)
    if outcome.isdigit():
        assert response.status_code == int(outcome), response.text
        return
    assert response.status_code == 200, response.text
    answer = response.json()
    if outcome.startswith("results: "):
        wanted = outcome.removeprefix("results: ").split(", ")
        got = ["error" if "error" in r else str(r["correct"]).lower() for r in answer["results"]]
        assert got == wanted
        return
    parts = dict(part.split(": ") for part in outcome.split("; "))
    assert str(answer["correct"]).lower() == parts["correct"], answer["report"]
    codes = [d["code"] for d in answer["diagnosis"]]
    assert codes == (parts["diagnosis"].split(", ") if "diagnosis" in parts else [])


def test_every_diagnosis_has_an_example() -> None:
    shown = {
        code
        for _, _, outcome in EXAMPLES
        if not outcome.isdigit() and not outcome.startswith("results")
        for code in dict(p.split(": ") for p in outcome.split("; "))
        .get("diagnosis", "")
        .split(", ")
    }
    codes = {m.code for m in MISTAKES} | {m.code for m in SHAPE_MISTAKES}
    codes |= {d[0][0] for d in (m.diagnoses for m in conv_mistakes(ConvRoles(ROLE_LETTERS)))}
    codes |= {"transposed", "jacobian_halves_swapped", "wrong_output", "channels_missing"}
    assert codes <= shown, codes - shown


def test_the_quoted_detail_of_the_formula_example_is_the_detail_answered(
    client: TestClient,
) -> None:
    text = " ".join(ROOT.joinpath("README.md").read_text().split())
    quoted = re.search(r'`"(answer: syntax error: [^"]*)"`', text)
    assert quoted, "the README quotes no syntax error of a formula"
    (body,) = [b for p, b, outcome in EXAMPLES if outcome == "422" and "formula" in str(b)]
    response = client.post("/v1/check", json=body)
    assert response.status_code == 422
    assert response.json()["detail"] == quoted.group(1)
