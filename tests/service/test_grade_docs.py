"""The documentation of checking and grading does what it says: each curl example answers the
outcome written under it, and the Gradescope `run_autograder` script, run with bash as it is
written, grades a submission through the service and writes a valid results.json."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.grading.schema import AnswerKind
from tests.grading import seed_answers as seed
from tests.grading.test_gradescope import TEST_FIELDS, TOP_LEVEL
from tests.keys import INSTRUCTOR, STUDENT, key, keyed_settings
from tests.servers import uvicorn_thread

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md"]
CURL = re.compile(r"```sh\n(curl -s '?localhost:8000/v1/assignments/[^`]*?)```", re.DOTALL)
AUTOGRADER = re.compile(r"```bash\n(#!/usr/bin/env bash\n# Gradescope's autograder[^`]*?)```")


def documentation() -> str:
    """The README, which documents grading."""
    for source in SOURCES:
        if source.exists() and CURL.search(source.read_text()):
            return source.read_text()
    raise AssertionError("no grading examples found in the documentation")


def examples() -> list[tuple[str, dict[str, Any], str]]:
    found = []
    for block in CURL.findall(documentation()):
        if " -d '" not in block:
            continue  # reading variants: tested with the routes
        path = re.search(r"localhost:8000(/v1/assignments/[^ ']+)'? ", block)
        body = re.search(r"-d '(.*?)'\n", block, re.DOTALL)
        outcome = re.search(r"^# -> (.*)$", block, re.MULTILINE)
        assert path and body and outcome, block
        found.append((path.group(1), json.loads(body.group(1)), outcome.group(1)))
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings(check_rate_limit=""))) as test_client:
        yield test_client


def test_the_examples_cover_check_grade_and_gradescope() -> None:
    paths = {path for path, _, _ in EXAMPLES}
    assert any(path.endswith("/check") for path in paths)
    assert "/v1/assignments/cnn-rnn/grade" in paths
    assert "/v1/assignments/cnn-rnn/grade?format=gradescope" in paths


@pytest.mark.parametrize(("path", "body", "outcome"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_each_documented_example(
    client: TestClient, path: str, body: dict[str, Any], outcome: str
) -> None:
    response = client.post(path, json=body, headers=key(STUDENT))
    assert response.status_code == 200, response.text
    answer = response.json()
    total = re.fullmatch(r"total (\S+) of (\S+)", outcome)
    if total is None:
        assert answer["status"] == outcome
    elif "tests" in answer:
        assert answer["score"] == float(total[1])
        assert sum(t["max_score"] for t in answer["tests"]) == float(total[2])
    else:
        assert (answer["total"], answer["points"]) == (float(total[1]), float(total[2]))


# -- run_autograder, with bash, against a real server --


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with uvicorn_thread(create_app(keyed_settings())) as base:
        yield base


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented script, and `tensorgrade` and `python3` on the PATH as an install
    would give them (this checkout's command, this interpreter)."""
    found = AUTOGRADER.search(documentation())
    assert found, "no run_autograder in the documentation"
    folder = tmp_path_factory.mktemp("autograder-bin")
    path = folder / "run_autograder"
    path.write_text(found.group(1))
    for name, command in (("tensorgrade", "-m service.cli "), ("python3", "")):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command}"$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return path


def autograder(
    tmp_path: Path,
    submission: str | None,
    email: str = "ada@example.edu",
    users: list[dict[str, Any]] | None = None,
) -> Path:
    """A folder laid out as Gradescope's: submission, its metadata (one user of ``email``, or
    ``users``), the key in source/."""
    (tmp_path / "submission").mkdir()
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "tensorgrade.key").write_text(INSTRUCTOR + "\n")
    if users is None:
        users = [{"email": email, "name": "Ada", "sid": "1"}]
    metadata = {"users": users, "id": 7}
    (tmp_path / "submission_metadata.json").write_text(json.dumps(metadata))
    if submission is not None:
        (tmp_path / "submission" / "answers.json").write_text(submission)
    return tmp_path


def run(script: Path, folder: Path, url: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "AUTOGRADER": str(folder),
        "TENSORGRADE_URL": url,
        "PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("TENSORGRADE_API_KEY", None)
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads((folder / "results" / "results.json").read_text())
    return results


def answers_of(url: str, student: str) -> dict[str, Any]:
    """The homework's answers on the student's variants, read as a student reads them."""
    answers = {}
    with httpx.Client(base_url=url, headers=key(STUDENT)) as http:
        listing = http.get("/v1/assignments").json()["assignments"]
        for problem in next(a for a in listing if a["id"] == "cnn-rnn")["problems"]:
            variant = http.get(
                f"/v1/assignments/cnn-rnn/problems/{problem['id']}",
                params={"student_id": student},
            ).json()
            given = {
                name: np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
                for name, t in variant["given"].items()
            }
            answers[problem["id"]] = seed.answer_to(problem["id"], given)
    return answers


def test_run_autograder_grades_the_submission_as_the_student_gradescope_names(
    script: Path, url: str, tmp_path: Path
) -> None:
    # The file claims to be bob's; Gradescope says it is ada's: ada's variant is graded.
    submission = {"student_id": "bob", "answers": answers_of(url, "ada@example.edu")}
    results = run(script, autograder(tmp_path, json.dumps(submission)), url)
    assert set(results) == TOP_LEVEL and all(set(t) == TEST_FIELDS for t in results["tests"])
    assert all(test["status"] == "passed" for test in results["tests"])
    assert results["score"] == sum(t["max_score"] for t in results["tests"]) == 44
    assert "ada@example.edu" in results["output"]


@pytest.mark.parametrize(
    "email",
    ["o'brien@example.edu", "ada@exämple.edu", "Ada <ada@example.edu>", "a" * 140 + "@example.edu"],
)
def test_run_autograder_grades_any_email_the_service_accepts(
    script: Path, url: str, tmp_path: Path, email: str
) -> None:
    # Each was refused as a file name before: "Not graded", score 0, for a valid submission.
    submission = json.dumps(answers_of(url, email))
    results = run(script, autograder(tmp_path, submission, email=email), url)
    assert results["score"] == 44 and all(t["status"] == "passed" for t in results["tests"])


def test_run_autograder_reads_answers_saved_with_a_byte_order_mark(
    script: Path, url: str, tmp_path: Path
) -> None:
    folder = autograder(tmp_path, None)
    answers = "\ufeff" + json.dumps(answers_of(url, "ada@example.edu"))
    (folder / "submission" / "answers.json").write_text(answers, encoding="utf-8")
    results = run(script, folder, url)
    assert results["score"] == 44, results["output"]


def test_run_autograder_judges_a_nan_answer_as_nan_not_as_no_answer(
    script: Path, url: str, tmp_path: Path
) -> None:
    answers = answers_of(url, "ada@example.edu")
    del answers["1.3-4-loss"]
    text = json.dumps(answers).removesuffix("}") + ', "1.3-4-loss": NaN}'
    results = run(script, autograder(tmp_path, text), url)
    loss = next(t for t in results["tests"] if t["number"] == "1.3-4-loss")
    assert loss["score"] == 0 and "answer is NaN" in loss["output"], loss
    assert results["score"] == 44 - loss["max_score"]


def test_run_autograder_without_answers_says_so(script: Path, url: str, tmp_path: Path) -> None:
    results = run(script, autograder(tmp_path, None), url)
    assert results["score"] == 0 and results["tests"] == []
    assert "upload your answers as a file named answers.json" in results["output"]


def test_run_autograder_with_a_broken_file_says_why(script: Path, url: str, tmp_path: Path) -> None:
    results = run(script, autograder(tmp_path, '{"1.1a": [5, 2]'), url)
    assert results["score"] == 0 and results["tests"] == []
    assert "cannot read a JSON submission" in results["output"]
    assert "correct it and submit again" in results["output"]  # the student's to fix


@pytest.mark.parametrize(
    "users",
    [
        [{"email": None, "name": "Ada"}],
        [{"email": "", "name": "Ada"}],
        [{"name": "Ada"}],
        [{"email": 7}],
        [],
    ],
    ids=["null", "empty", "missing", "not-text", "no-users"],
)
def test_run_autograder_never_grades_a_submission_without_an_email_as_a_student(
    script: Path, url: str, tmp_path: Path, users: list[dict[str, Any]]
) -> None:
    """A null e-mail was printed `None` by Python and graded as the student "None": another
    variant, a wrong score written as valid."""
    submission = json.dumps(answers_of(url, "None"))  # right for "None", if it were graded
    results = run(script, autograder(tmp_path, submission, users=users), url)
    assert results["score"] == 0 and results["tests"] == []
    assert "no student e-mail address" in results["output"]
    assert "None" not in results["output"]


def test_run_autograder_grades_a_group_against_the_variant_its_answers_fit(
    script: Path, url: str, tmp_path: Path
) -> None:
    """A group's answers are one member's variant, not necessarily the first member's: each
    member's variant is tried, the best kept, and the output names whose it is."""
    users = [
        {"email": None, "name": "Nobody"},
        {"email": "bob@example.edu", "name": "Bob"},
        {"email": "ada@example.edu", "name": "Ada"},
    ]
    submission = json.dumps(answers_of(url, "ada@example.edu"))
    results = run(script, autograder(tmp_path, submission, users=users), url)
    assert set(results) == TOP_LEVEL, results["output"]
    assert all(set(t) == TEST_FIELDS for t in results["tests"])
    assert results["score"] == 44 and all(t["status"] == "passed" for t in results["tests"])
    assert "each of its 2 members" in results["output"]
    assert "kept: ada@example.edu" in results["output"]


def test_run_autograder_keeps_no_lesser_result_of_a_group_a_member_of_which_failed(
    script: Path, url: str, tmp_path: Path
) -> None:
    """bob's variant is graded, ada's is refused (an id the service does not take): bob's
    lesser result may not be the group's grade, since ada's variant is the one that fits."""
    users = [{"email": "bob@example.edu"}, {"email": "ada@example.edu "}]
    answers = answers_of(url, "ada@example.edu")
    results = run(script, autograder(tmp_path, json.dumps(answers), users=users), url)
    assert results["score"] == 0 and results["tests"] == []
    assert "begins or ends with a space" in results["output"]
    # A perfect result of one member stands, whatever became of the others.
    users = [{"email": "ada@example.edu"}, {"email": "bob@example.edu "}]
    (tmp_path / "2").mkdir()
    results = run(script, autograder(tmp_path / "2", json.dumps(answers), users=users), url)
    assert results["score"] == 44 and "kept: ada@example.edu" in results["output"]


def test_run_autograder_gives_up_on_a_service_that_does_not_answer(
    script: Path, tmp_path: Path
) -> None:
    """The recipe bounds the wait for an answer (`--timeout 60`), and a hung service is told
    as reached but slow, not as unreachable (here with a timeout of 1 s, for the test)."""
    assert "--timeout 60 " in script.read_text()
    fast = script.with_name("run_autograder_fast")
    fast.write_text(script.read_text().replace("--timeout 60 ", "--timeout 1 "))
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        results = run(fast, autograder(tmp_path, json.dumps({"1.1a": [5, 2]})), silent_url)
    assert results["score"] == 0 and results["tests"] == []
    assert "was reached but did not answer within 1 s" in results["output"]
    assert "cannot reach" not in results["output"]


def test_the_gradescope_recipe_names_the_python_it_needs() -> None:
    section = documentation().split("#### A Gradescope autograder", 1)[1].split("\n### ", 1)[0]
    assert "Python 3.11 or later" in section and "Ubuntu 24.04" in section
    assert "supersedes" not in documentation()


def test_the_answer_schema_of_the_assignment_routes_says_what_they_answer(
    client: TestClient,
) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    described = [
        schemas["AnswerRequest"]["properties"]["answer"]["description"],
        schemas["SubmissionRequest"]["properties"]["answers"]["additionalProperties"][
            "description"
        ],
    ]
    for text in described:
        # /v1/check's wording (a 422, an `error` in a batch) is not what these routes do.
        assert "422" not in text and "`error`" not in text and "batch" not in text
        assert "status `malformed`" in text and "`feedback.reason`" in text
        for kind in get_args(AnswerKind):
            assert f"`{kind}`" in text, kind
    # And it is what they do: a value of no kind is a 200 that says why, the rest graded.
    body = {"student_id": "alice", "answers": {"1.3-4-loss": {"no": "kind"}, "1.1a": "5x2"}}
    graded = client.post("/v1/assignments/cnn-rnn/grade", json=body, headers=key(STUDENT))
    assert graded.status_code == 200
    problems = graded.json()["problems"]
    assert problems["1.3-4-loss"]["status"] == "malformed"
    assert problems["1.3-4-loss"]["feedback"]["reason"]
    assert problems["1.1a"]["status"] in ("correct", "incorrect")
