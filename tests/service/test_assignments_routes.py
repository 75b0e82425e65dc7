"""GET /v1/assignments and a student's variant of a problem: stable per student across app
instances that share the secret, different between students, never the key."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.grading import variants
from service.settings import Settings
from tests.grading.sample import SAMPLE
from tests.keys import SECRET, STUDENT, key, keyed_settings

API_IDS = {
    "1.1a",
    "1.1b",
    "1.1c-i",
    "1.1c-ii",
    "1.1c-iii",
    "1.1c-iv",
    "1.2.1b",
    "1.2.1c",
    "1.2.1d-jacobian",
    "1.2.1d-vanishing",
    "1.2.2b",
    "1.2.2c",
    "1.2.2d",
    "1.2.2e",
    "1.2.2f",
    "1.3-4-loss",
    "1.3-4-accuracy",
}


@pytest.fixture(scope="module")
def first() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(variant_secret=SECRET))) as client:
        yield client


@pytest.fixture(scope="module")
def second() -> Iterator[TestClient]:
    """Another instance with the same secret: a second replica, or the first after a restart."""
    with TestClient(create_app(Settings(variant_secret=SECRET))) as client:
        yield client


def problem_ids(client: TestClient) -> list[str]:
    listing = client.get("/v1/assignments").json()["assignments"]
    return [p["id"] for p in next(a for a in listing if a["id"] == "cnn-rnn")["problems"]]


def variant(client: TestClient, problem: str, student: str) -> dict[str, Any]:
    response = client.get(
        f"/v1/assignments/cnn-rnn/problems/{problem}", params={"student_id": student}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def given_values(body: dict[str, Any]) -> dict[str, np.ndarray]:
    return {n: np.asarray(t["data"], dtype=np.float64) for n, t in body["given"].items()}


def test_the_listing_has_every_problem_of_the_homework(first: TestClient) -> None:
    listing = first.get("/v1/assignments").json()["assignments"]
    cnn_rnn = next(a for a in listing if a["id"] == "cnn-rnn")
    assert set(problem_ids(first)) == API_IDS
    assert cnn_rnn["total_points"] == sum(p["points"] for p in cnn_rnn["problems"])
    kinds = {p["id"]: p["answer_kind"] for p in cnn_rnn["problems"]}
    assert kinds["1.1a"] == "shape" and kinds["1.1b"] == "formula"
    assert kinds["1.2.1d-vanishing"] == "choice" and kinds["1.3-4-loss"] == "number"
    assert set(cnn_rnn["problems"][0]) == {"id", "title", "points", "answer_kind"}
    assert re.fullmatch(r"[0-9a-f]{32}", cnn_rnn["revision"])


def test_a_variant_has_the_statement_and_the_given_tensors(first: TestClient) -> None:
    body = variant(first, "1.1c-iv", "alice")
    assert body["student_id"] == "alice" and body["answer_kind"] == "tensor"
    assert "stride 2" in variant(first, "1.1c-i", "alice")["statement"]
    given = given_values(body)
    assert {n: list(a.shape) for n, a in given.items()} == {
        "x": [5, 7],
        "W": [1, 5, 3],
        "dl_dy": [1, 3],
    }
    assert body["given"]["x"]["datatype"] == "FP64"
    # integer-valued, in the file's ranges, so the convolution can be done by hand
    for name, bound in (("x", 3), ("W", 2), ("dl_dy", 3)):
        assert np.array_equal(given[name], np.round(given[name]))
        assert np.abs(given[name]).max() <= bound
    assert body["given_descriptions"]["x"].startswith("the input")


def test_a_variants_tensors_are_sent_to_a_model_as_they_came(first: TestClient) -> None:
    """A student's given tensors, pasted as they came into a backward pass, give what the
    same numbers as nested lists give: the answer's own tensor form is a request form too."""
    given = variant(first, "1.1c-iv", "alice")["given"]
    plain = given_values({"given": given})
    bodies = [
        {
            "config": {"stride": 2},
            "params": {"weight": tensors["W"]},
            "inputs": {"x": tensors["x"]},
            "grad_outputs": {"y": tensors["dl_dy"]},
        }
        for tensors in (given, {n: a.tolist() for n, a in plain.items()})
    ]
    answers = [first.post("/v1/models/conv1d/backward", json=body) for body in bodies]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert answers[0].json()["grads"] == answers[1].json()["grads"]


def test_a_variant_never_holds_the_key(first: TestClient) -> None:
    for problem in problem_ids(first):
        body = variant(first, problem, "alice")
        assert not {"expected", "answer", "key", "reference", "correct"} & set(body)
        assert "expected" not in str(body).lower()
    choice = variant(first, "1.2.1d-vanishing", "alice")
    assert {c["id"] for c in choice["choices"]} == {"yes", "no", "vanishing-only", "exploding-only"}


def test_the_seeds_own_numbers_in_1_1a(first: TestClient) -> None:
    body = variant(first, "1.1a", "alice")
    assert body["given"] == {}
    times = "\N{MULTIPLICATION SIGN}"
    assert f"21 {times} 12" in body["statement"] and f"4 {times} 5" in body["statement"]
    assert "stride 4" in body["statement"]


def test_same_student_same_variant_across_instances(first: TestClient, second: TestClient) -> None:
    for problem in problem_ids(first):
        assert variant(first, problem, "alice") == variant(second, problem, "alice"), problem


def test_the_parts_of_1_1c_share_x_and_w(first: TestClient) -> None:
    parts = [given_values(variant(first, p, "alice")) for p in ("1.1c-i", "1.1c-ii", "1.1c-iv")]
    for part in parts[1:]:
        np.testing.assert_array_equal(part["x"], parts[0]["x"])
        np.testing.assert_array_equal(part["W"], parts[0]["W"])


def drawn(body: dict[str, Any]) -> bool:
    """Whether a problem draws enough numbers that two students colliding is out of question."""
    return sum(math.prod(t["shape"]) for t in body["given"].values()) >= 10


def test_different_students_get_different_numbers(first: TestClient) -> None:
    compared = 0
    for problem in problem_ids(first):
        alice, bob = variant(first, problem, "alice"), variant(first, problem, "bob")
        if drawn(alice):
            compared += 1
            assert alice["given"] != bob["given"], problem
    assert compared >= 10


def test_student_ids_are_exact(first: TestClient) -> None:
    assert variant(first, "1.1c-i", "Alice")["given"] != variant(first, "1.1c-i", "alice")["given"]


def test_another_secret_gives_other_numbers(first: TestClient) -> None:
    with TestClient(create_app(Settings(variant_secret=SECRET[::-1]))) as other:
        assert (
            variant(other, "1.1c-i", "alice")["given"] != variant(first, "1.1c-i", "alice")["given"]
        )


def test_without_a_secret_variants_change_at_restart() -> None:
    apps = [create_app(Settings()) for _ in range(2)]
    bodies = [variant(TestClient(app), "1.2.2c", "alice") for app in apps]
    assert bodies[0]["given"] != bodies[1]["given"]


def test_a_student_key_reads_variants(first: TestClient) -> None:
    with TestClient(create_app(keyed_settings())) as keyed:
        response = keyed.get(
            "/v1/assignments/cnn-rnn/problems/1.1c-i",
            params={"student_id": "alice"},
            headers=key(STUDENT),
        )
        assert response.status_code == 200
        # the same secret as `first`: keys do not change the numbers
        assert response.json()["given"] == variant(first, "1.1c-i", "alice")["given"]


@pytest.mark.parametrize(
    ("path", "kind", "names"),
    [
        ("/v1/assignments/nope/problems/1.1a", "unknown-assignment", "cnn-rnn"),
        ("/v1/assignments/cnn-rnn/problems/9.9", "unknown-problem", "1.1c-iv"),
    ],
)
def test_unknown_assignment_or_problem_is_404(
    first: TestClient, path: str, kind: str, names: str
) -> None:
    response = first.get(path, params={"student_id": "alice"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith(kind) and names in body["detail"]


@pytest.mark.parametrize(
    "params", [{}, {"student_id": ""}, {"student_id": "a\tb"}, {"student_id": "x" * 201}]
)
def test_a_missing_or_bad_student_id_is_422(first: TestClient, params: dict[str, str]) -> None:
    response = first.get("/v1/assignments/cnn-rnn/problems/1.1a", params=params)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "student_id"]


@pytest.mark.parametrize("escaped", ["%FF", "%FE", "ada%C3", "%C3%28"])
def test_a_student_id_that_is_not_utf8_is_422_at_the_parameter(
    first: TestClient, escaped: str
) -> None:
    """Decoded leniently, every invalid escape became U+FFFD: %FF and %FE were the same id,
    and got the same variant. Refused as the same bytes in a JSON body are."""
    response = first.get(f"/v1/assignments/cnn-rnn/problems/1.1a?student_id={escaped}")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["errors"][0]["loc"] == ["query", "student_id"]
    assert problem["detail"].startswith(
        "query.student_id: not valid UTF-8 once its percent-escapes are decoded (0x"
    )


def test_a_student_id_escaped_as_utf8_is_its_text(first: TestClient) -> None:
    body = first.get("/v1/assignments/cnn-rnn/problems/1.1a?student_id=%C3%A9l%C3%A8ve+1").json()
    assert body["student_id"] == "élève 1"


def test_a_number_is_given_as_a_0d_tensor(first: TestClient) -> None:
    m = variant(first, "1.2.1b", "alice")["given"]["m"]
    assert m["shape"] == [] and isinstance(m["data"], float)
    assert m["data"].is_integer() and 2 <= m["data"] <= 9


@pytest.mark.parametrize(
    "student", ["student03@example.edu ", " student03@example.edu", "ada\u00a0", "\u3000ada"]
)
def test_a_student_id_with_a_space_at_either_end_is_422_on_every_route(
    first: TestClient, student: str
) -> None:
    """Ids are exact: a trailing space would give another student's variant (graded as
    someone else, without a word). Refused, never trimmed or lowercased."""
    read = first.get("/v1/assignments/cnn-rnn/problems/1.1a", params={"student_id": student})
    checked = first.post(
        "/v1/assignments/cnn-rnn/problems/1.1a/check", json={"student_id": student, "answer": "5x2"}
    )
    graded = first.post(
        "/v1/assignments/cnn-rnn/grade", json={"student_id": student, "answers": {}}
    )
    for response, where in ((read, "query"), (checked, "body"), (graded, "body")):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["errors"][0]["loc"] == [where, "student_id"]
        assert "must not begin or end with a space" in problem["detail"]
    # Spaces inside an id are a part of it, as any other character.
    assert variant(first, "1.1a", "Ada Lovelace <ada@example.edu>")["student_id"].startswith("Ada")


def revisions(client: TestClient) -> dict[str, str]:
    listing = client.get("/v1/assignments").json()["assignments"]
    return {a["id"]: a["revision"] for a in listing}


def served(folder: Path, text: str, secret: str = SECRET) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    (folder / "sample.toml").write_text(text, encoding="utf-8")
    settings = Settings(variant_secret=secret, assignments_dir=folder, builtin_assignments=False)
    with TestClient(create_app(settings)) as client:
        return revisions(client)


def test_the_revision_is_the_same_on_every_replica_with_the_same_secret_and_file(
    first: TestClient, second: TestClient
) -> None:
    assert revisions(first) == revisions(second)


def test_the_revision_changes_with_the_secret_the_tolerance_and_the_reference(
    tmp_path: Path, first: TestClient
) -> None:
    """A result kept by a grading script is stale when any of them changes: its revision
    says so. Reformatting the file (a comment) keeps it."""
    base = served(tmp_path / "base", SAMPLE)["sample"]
    assert served(tmp_path / "comment", "# reviewed\n" + SAMPLE)["sample"] == base
    changed = {
        "secret": served(tmp_path / "secret", SAMPLE, secret=SECRET[::-1]),
        "tolerance": served(
            tmp_path / "tolerance",
            SAMPLE.replace("tolerance = { rtol = 0, atol = 0.01 }", "tolerance = { atol = 0.1 }"),
        ),
        "reference": served(
            tmp_path / "reference", SAMPLE.replace('correct = "b"', 'correct = "a"')
        ),
        "given": served(tmp_path / "given", SAMPLE.replace("low = -3\n", "low = -2\n")),
    }
    for what, listing in changed.items():
        assert listing["sample"] != base, what
    # Never the secret, nor anything of it a reader could check a guess against.
    listing = first.get("/v1/assignments").text
    assert SECRET not in listing and SECRET[:12] not in listing


def test_the_revision_changes_when_torch_draws_other_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variant is drawn by torch's generator: a torch that draws other numbers for the
    same seed (another version) gives every student other tensors, with the same file and
    secret. Kept results are stale then, and the revision says so."""
    base = served(tmp_path / "base", SAMPLE)["sample"]
    assert served(tmp_path / "again", SAMPLE)["sample"] == base
    drawn = variants.draw_given
    monkeypatch.setattr(variants, "draw_given", lambda spec, gen: drawn(spec, gen) + 1)
    assert served(tmp_path / "other-torch", SAMPLE)["sample"] != base


def test_the_revision_is_documented_in_the_openapi_schema(first: TestClient) -> None:
    schemas = first.get("/openapi.json").json()["components"]["schemas"]
    described = schemas["AssignmentSummary"]["properties"]["revision"]["description"]
    assert "variant secret" in described and "HMAC" in described and "grades again" in described
