"""The ``tensorgrade`` command's client side: shape, check, grade (one student or a class).

``shape`` runs against the real app over real HTTP; ``check`` and ``grade`` against a test double
of the checking and assignment routes (tests/fakes.py), which land with those features.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import gradebook
from service.app import create_app
from service.auth import startup_warnings
from service.cli import main, serve_warnings
from service.client import BaseClient
from service.settings import Settings, get_settings
from tests.fakes import FakeGrading
from tests.grading.test_grade import NUMBERED
from tests.keys import INSTRUCTOR, SECRET, STUDENT, keyed_settings
from tests.servers import uvicorn_thread


@pytest.fixture(scope="module")
def real_url() -> Iterator[str]:
    with uvicorn_thread(create_app(Settings())) as url:
        yield url


@pytest.fixture
def fake() -> Iterator[tuple[FakeGrading, str]]:
    fake = FakeGrading()
    with uvicorn_thread(fake.app) as url:
        yield fake, url


def test_shape_prints_the_seeds_worked_steps(
    real_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shape", "--url", real_url, "--input-size", "21", "12", "--kernel-size", "4", "5"]
    assert main([*argv, "--stride", "4", "--out-channels", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "output size [5, 2], output shape [8, 5, 2]"
    assert out[1] == "dimension 0: out = floor((in + 2P - D(K - 1) - 1) / S) + 1"
    assert out[2].strip().startswith("floor((21 + 2*0 - 1*(4 - 1) - 1) / 4) + 1")
    assert out[2].endswith("= 5") and out[4].endswith("= 2")


def test_shape_json_and_padding_words(real_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["shape", "--url", real_url, "--input-size", "32", "--kernel-size", "3"]
    assert main([*argv, "--padding", "same", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_size"] == [32]
    assert main([*argv, "--padding", "lots"]) == 2
    assert "--padding takes ints" in capsys.readouterr().err
    # A value after the word was dropped without a word: this ran as "same".
    assert main([*argv, "--padding", "same", "1"]) == 2
    assert "error: --padding same takes no other value" in capsys.readouterr().err


def test_shape_reports_the_services_problem(
    real_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shape", "--url", real_url, "--input-size", "5", "--kernel-size", "5"]
    assert main([*argv, "--dilation", "2", "--padding", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 422") and "effective kernel 9" in err and "request id" in err


def test_unreachable_service_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    argv = ["shape", "--url", url, "--retries", "0", "--input-size", "5", "--kernel-size", "3"]
    assert main(argv) == 2
    assert f"cannot reach {url}" in capsys.readouterr().err


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that takes connections and never answers (a hung service)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_a_service_that_does_not_answer_in_time_is_not_called_unreachable(
    silent_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submission = tmp_path / "answers.json"
    submission.write_text(json.dumps({"1.1a": [5, 2]}))
    argv = ["grade", "--url", silent_url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", "ada", "--timeout", "0.3", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach" not in err
    assert f"the service at {silent_url} was reached but did not answer within 0.3 s" in err


@pytest.fixture
def trickling_url() -> Iterator[str]:
    """A server that answers every request, 40 bytes every 0.25 s: no read waits long, the
    whole answer (about 2 s) does."""
    body = json.dumps({"status": "ok", "padding": "x" * 180}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    data = head.encode() + b"\r\n\r\n" + body

    def serve(server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for start in range(0, len(data), 40):
                    threading.Event().wait(0.25)
                    try:
                        conn.sendall(data[start : start + 40])
                    except OSError:
                        break

    with socket.create_server(("127.0.0.1", 0)) as server:
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_timeout_bounds_the_whole_answer_of_a_trickling_service(
    trickling_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --timeout 1 a 243-byte answer sent 40 bytes every 0.5 s was waited out (3.3 s)."""
    started = time.monotonic()
    argv = ["shape", "--url", trickling_url, "--input-size", "5", "--kernel-size", "3"]
    assert main([*argv, "--timeout", "1", "--retries", "0"]) == 2
    assert time.monotonic() - started < 1.8
    err = capsys.readouterr().err
    assert f"the service at {trickling_url} was reached but did not answer within 1 s" in err


def test_a_class_run_says_a_student_was_not_answered_in_time(
    silent_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    report = gradebook.ClassReport()
    with BaseClient(silent_url, timeout=0.3, retries=0) as client:
        gradebook.grade_class(client, "cnn-rnn", gradebook.read_class(tmp_path / "subs"), out,
                              report=report)  # fmt: skip
    assert report.failed == {
        "ada": "the service was reached but did not answer in time (--timeout)"
    }
    capsys.readouterr()


def test_healthcheck_exit_status(real_url: str) -> None:
    assert main(["healthcheck", "--url", f"{real_url}/healthz"]) == 0
    assert main(["healthcheck", "--url", f"{real_url}/nothing"]) == 1


def test_check_one_and_many(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = fake
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"expected": {"op": "value", "value": [5, 2]}, "answer": [5, 2]}))
    assert main(["check", "--url", url, str(one)]) == 0
    assert capsys.readouterr().out == "check 1: correct (score 1.0)\n"
    many = tmp_path / "many.json"
    expected = {"op": "value", "value": 3}
    checks = [{"expected": expected, "answer": 3}, {"expected": expected, "answer": 6}]
    many.write_text(json.dumps({"checks": checks}))
    assert main(["check", "--url", url, str(many)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "check 1: correct (score 1.0)",
        "check 2: WRONG (score 0.0)",
        "  - off by a constant factor",
        "2 checks: 1 correct, 1 wrong, 0 invalid",
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('{"answer": 1}')
    assert main(["check", "--url", url, str(bad)]) == 2
    assert "a check is" in capsys.readouterr().err


def test_an_invalid_check_of_a_batch_is_told_as_invalid_with_its_detail(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A check the service could not judge answers an `error` (a problem detail) in its
    place: it is no wrong answer with "score None". Exit status 2, as for the same check
    alone (a 422)."""
    _, url = fake
    expected = {"op": "value", "value": 3}
    checks = [
        {"expected": expected, "answer": 3},
        {"expected": expected, "answer": 6},
        {"expected": {"op": "forward"}, "answer": 1},
    ]
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"checks": checks}))
    assert main(["check", "--url", url, str(many)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "  - off by a constant factor"
    assert out[3] == "check 3: INVALID: this fake checks only `op: value`"
    assert out[-1] == "3 checks: 1 correct, 1 wrong, 1 invalid"
    assert "None" not in "\n".join(out)
    assert main(["check", "--url", url, str(many), "--json"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["summary"]["invalid"] == 1 and "error" in answer["results"][2]
    # The same check alone is a 422: a refusal, exit status 2.
    one = tmp_path / "one.json"
    one.write_text(json.dumps(checks[2]))
    assert main(["check", "--url", url, str(one)]) == 2
    assert "this fake checks only" in capsys.readouterr().err


def test_grade_one_submission_prints_a_summary_and_writes_gradescope_results(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    submission = tmp_path / "answers.json"
    submission.write_text(json.dumps({"1.1a": [5, 2], "1.1c-i": 4}))
    results = tmp_path / "results" / "results.json"
    results.parent.mkdir()
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", "s1", "--gradescope", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cnn-rnn, student s1: 2.0 / 3.0"
    assert out[1].split() == ["1.1a", "2.0", "/", "2.0", "correct"]
    written = json.loads(results.read_text())
    assert written["score"] == 2.0 and [t["number"] for t in written["tests"]] == ["1.1a", "1.1c-i"]
    assert service.bodies[-1] == {"student_id": "s1", "answers": {"1.1a": [5, 2], "1.1c-i": 4}}

    assert main(argv) == 2  # no student id anywhere
    assert "no student id" in capsys.readouterr().err
    submission.write_text(json.dumps({"student_id": "s2", "answers": {"1.1a": [5, 2]}}))
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 2.0
    assert service.graded == ["s1", "s2"]


def write_class(folder: Path, students: dict[str, dict[str, object]]) -> None:
    folder.mkdir()
    for student, answers in students.items():
        (folder / f"{student}.json").write_text(json.dumps(answers))


CLASS = {
    "ada": {"1.1a": [5, 2], "1.1c-i": 3},
    "ben": {"1.1a": [2, 5], "1.1c-i": 3},
    "cy": {"1.1a": [5, 2]},
    "dee": {"1.1z": 1},  # the service refuses it: a result that says why
    "eve": {"1.1a": [4, 2], "1.1c-i": 4},
}


def read_gradebook(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_grade_a_class_folder_concurrently_then_resume_after_failures(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", CLASS)
    out = tmp_path / "grades"
    service.fail_with = {"ben": 503, "eve": 500}  # the service fails these two, for now
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(tmp_path / "subs")]
    argv += ["--out", str(out), "--jobs", "3", "--timeout", "10"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "3 graded, 0 already graded, 2 failed" in captured.out
    assert "not graded: ben" in captured.err and "not graded: eve" in captured.err
    assert "[5/5]" in captured.err  # the progress, one line per student off a terminal
    assert sorted(p.name for p in out.glob("*.json")) == ["ada.json", "cy.json", "dee.json"]
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ben"]["score"] == ""
    assert rows["ben"]["note"] == "not graded yet: 503 Service Unavailable: failing ben on purpose"

    service.fail_with = {}
    service.graded.clear()
    assert main(argv) == 0
    assert sorted(service.graded) == ["ben", "eve"]  # only those not graded before
    assert "2 graded, 3 already graded, 0 failed" in capsys.readouterr().out
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert list(rows) == ["ada", "ben", "cy", "dee", "eve"]
    assert (rows["ada"]["score"], rows["ada"]["max_score"]) == ("3.0", "3.0")
    assert (rows["ben"]["1.1a"], rows["ben"]["1.1c-i"], rows["ben"]["score"]) == (
        "0.0",
        "1.0",
        "1.0",
    )
    assert rows["cy"]["score"] == "2.0" and rows["eve"]["score"] == "0.0"
    assert rows["dee"]["score"] == "0.0" and "unknown problem" in rows["dee"]["note"]
    # Refused, so no problems to add up: out of the assignment's points all the same.
    assert rows["dee"]["max_score"] == rows["ada"]["max_score"] == "3.0"
    assert json.loads((out / "dee.json").read_text())["tensorgrade_problem"]["status"] == 422
    assert not list(out.glob("*.partial"))


def test_grade_a_class_csv(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    table = tmp_path / "class.csv"
    table.write_text('student_id,1.1a,1.1c-i\nada,"[5, 2]",3\nben,"[5, 2]",\n')
    out = tmp_path / "grades"
    assert (
        main(["grade", "--url", url, "--assignment", "cnn-rnn", str(table), "--out", str(out)]) == 0
    )
    assert sorted(b["student_id"] for b in service.bodies) == ["ada", "ben"]
    assert {b["student_id"]: b["answers"] for b in service.bodies} == {
        "ada": {"1.1a": [5, 2], "1.1c-i": 3},
        "ben": {"1.1a": [5, 2]},  # an empty cell is no answer
    }
    rows = read_gradebook(out / gradebook.GRADEBOOK)
    assert [(r["student_id"], r["score"]) for r in rows] == [("ada", "3.0"), ("ben", "2.0")]
    capsys.readouterr()


def test_a_refusal_that_would_fail_everyone_stops_the_run(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    service.fail_with = {"ada": 403}
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(tmp_path / "subs")]
    assert main([*argv, "--out", str(tmp_path / "grades")]) == 2
    assert "403" in capsys.readouterr().err
    assert not (tmp_path / "grades" / "ada.json").exists()
    rows = read_gradebook(tmp_path / "grades" / gradebook.GRADEBOOK)  # written all the same
    assert [r["student_id"] for r in rows] == ["ada"] and rows[0]["note"].startswith("not graded")


def test_class_inputs_are_checked(tmp_path: Path) -> None:
    table = tmp_path / "dup.csv"
    table.write_text("student_id,1.1a\nada,1\nada,2\n")
    with pytest.raises(gradebook.SubmissionError, match="'ada' appears twice: line 2 and line 3"):
        gradebook.read_class(table)
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("name,1.1a\nada,1\n")
    with pytest.raises(gradebook.SubmissionError, match="student_id"):
        gradebook.read_class(nohead)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(gradebook.SubmissionError, match="cannot read"):
        gradebook.read_submission(broken, "ada")
    nobody = tmp_path / "nobody.csv"
    nobody.write_text('student_id,1.1a\nada,1\n,"[5, 2]"\n')
    with pytest.raises(
        gradebook.SubmissionError, match=r"nobody.csv:3: answers without a student_id"
    ):
        gradebook.read_class(nobody)


# Ids the service accepts (any text of 1 to 200 characters without a control character) that
# are no file names: Gradescope's e-mail addresses among them.
ODD_IDS = [
    "o'brien@example.edu",
    "ada@exämple.edu",
    "Name <a@b>",
    "../../etc/passwd",
    ".hidden",
    "x" * 129,
    "y" * 200,
]


def test_the_ids_refused_before_sending_are_those_the_service_refuses(real_url: str) -> None:
    ids = [*ODD_IDS, "z" * 201, "", "a\tb", "a\x7fb", "a\x85b", " spaced ", "\u00e9\u0301"]
    ids += ["ada ", "\u2003ada", "ada\u00a0", "a\u00a0b", "a b"]
    with httpx.Client(base_url=real_url) as http:
        for student in ids:
            answer = http.post(
                "/v1/assignments/cnn-rnn/grade", json={"student_id": student, "answers": {}}
            )
            assert answer.status_code in (200, 422), answer.text
            assert (gradebook.id_problem(student) is None) == (answer.status_code == 200), student


@pytest.mark.parametrize("student", ODD_IDS)
def test_one_submission_is_graded_under_any_id_the_service_accepts(
    fake: tuple[FakeGrading, str], tmp_path: Path, student: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    submission = tmp_path / "answers.json"
    submission.write_text(json.dumps({"1.1a": [5, 2]}))
    results = tmp_path / "results.json"
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", student, "--gradescope", str(results)]) == 0, (
        capsys.readouterr().err
    )
    assert service.graded == [student]
    assert json.loads(results.read_text())["score"] == 2.0


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ("x" * 201, "longer than 200 characters"),
        ("a\tb", "control character"),
        ("\udcfc.json", "not valid Unicode"),
        ("student03@example.edu ", "begins or ends with a space"),
        ("\u00a0ada", "begins or ends with a space"),
    ],
)
def test_one_submission_under_an_id_the_service_refuses_says_why(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    student: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service, url = fake
    submission = tmp_path / "answers.json"
    submission.write_text(json.dumps({"1.1a": [5, 2]}))
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", student]) == 2
    assert message in capsys.readouterr().err
    assert service.bodies == []


def test_a_class_is_graded_whatever_its_ids_one_result_file_each(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    # Ada and ada are two students (ids are case-sensitive) but one file on macOS or Windows.
    students = [*ODD_IDS, "ada", "Ada", "ben", "z" * 201]
    table = tmp_path / "class.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student_id", "1.1a"])
        writer.writerows([student, "[5, 2]"] for student in students)
        writer.writerow(["", ""])  # a spreadsheet's trailing empty row
    out = tmp_path / "grades"
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(table), "--out", str(out)]
    assert main(argv) == 0
    assert f"{len(students)} graded, 0 already graded, 0 failed" in capsys.readouterr().out
    assert sorted(service.graded) == sorted(students[:-1])  # all but the id over 200

    names = gradebook.result_names(students)
    assert names["ben"] == "ben.json" and names["x" * 129] != "x" * 129 + ".json"
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*names.values(), gradebook.GRADEBOOK])  # all in out/, none hidden
    assert len({name.lower() for name in names.values()}) == len(students)
    assert not any(name.startswith(".") for name in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._@+~-]+\.json", name) for name in names.values())

    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert list(rows) == students
    assert all(rows[s]["score"] == "2.0" for s in students[:-1])
    bad = rows["z" * 201]
    assert bad["score"] == "0.0" and "longer than 200 characters" in bad["note"]

    service.graded.clear()
    assert main(argv) == 0  # resumed: every result file is found again
    assert service.graded == []
    assert f"0 graded, {len(students)} already graded" in capsys.readouterr().out


def test_result_file_names_are_stable_and_plain_ids_keep_theirs() -> None:
    names = gradebook.result_names(["ada@example.edu", "o'brien@example.edu"])
    assert names["ada@example.edu"] == "ada@example.edu.json"
    assert re.fullmatch(r"o_brien@example\.edu~[0-9a-f]{12}\.json", names["o'brien@example.edu"])
    # A student's file is the same whoever else is in the class (a resumed run finds it).
    assert gradebook.result_names(["o'brien@example.edu"]) == {
        "o'brien@example.edu": names["o'brien@example.edu"]
    }


BOM = "\ufeff"


def test_files_that_start_with_a_byte_order_mark_are_read(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    submission = tmp_path / "answers.json"
    submission.write_text(BOM + json.dumps({"1.1a": [5, 2]}), encoding="utf-8")
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", "ada"]) == 0, capsys.readouterr().err
    assert service.bodies[-1]["answers"] == {"1.1a": [5, 2]}

    folder = tmp_path / "subs"
    folder.mkdir()
    answers = {"student_id": "o'brien", "answers": {"1.1a": [5, 2]}}
    (folder / "o'brien.json").write_text(BOM + json.dumps(answers), encoding="utf-8")
    assert gradebook.read_class(folder) == [
        gradebook.Submission("o'brien", {"1.1a": [5, 2]}, source="o'brien.json")
    ]

    check = tmp_path / "check.json"
    check.write_text(
        BOM + json.dumps({"expected": {"op": "value", "value": 3}, "answer": 3}), encoding="utf-8"
    )
    assert main(["check", "--url", url, str(check)]) == 0, capsys.readouterr().err


def test_a_folder_file_whose_student_id_names_another_student_is_not_graded(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """student02's file says it is student00's: neither is graded with the other's answers,
    and student02 keeps a row that says why."""
    service, url = fake
    folder = tmp_path / "subs"
    write_class(folder, {"student00@example.edu": {"1.1a": [2, 5]}})
    claimed = {"student_id": "student00@example.edu", "answers": {"1.1a": [5, 2]}}
    (folder / "student02@example.edu.json").write_text(json.dumps(claimed))
    padded = {"student_id": "student03@example.edu ", "answers": {"1.1a": [5, 2]}}
    (folder / "student03@example.edu.json").write_text(json.dumps(padded))
    out = tmp_path / "grades"
    assert main(class_argv(url, folder, out)) == 1
    assert service.bodies == [
        {"student_id": "student00@example.edu", "answers": {"1.1a": [2, 5]}}
    ]  # student00's own answers, once
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert list(rows) == [
        "student00@example.edu",
        "student02@example.edu",
        "student03@example.edu",
    ]
    assert rows["student00@example.edu"]["score"] == "0.0"
    note = rows["student02@example.edu"]["note"]
    assert rows["student02@example.edu"]["score"] == ""
    assert "the file names another student" in note and "'student00@example.edu'" in note
    note = rows["student03@example.edu"]["note"]
    assert "the file names another student" in note and "begins or ends with a space" in note
    assert "not graded: student02@example.edu" in capsys.readouterr().err


def test_a_folder_files_student_id_may_be_one_no_file_name_holds(tmp_path: Path) -> None:
    """An id with a "/" names its file as its result file is named (``result_names``)."""
    folder = tmp_path / "subs"
    folder.mkdir()
    student = "cs101/ada@example.edu"
    name = gradebook.result_names([student])[student]
    submission = {"student_id": student, "answers": {"1.1a": [5, 2]}}
    (folder / name).write_text(json.dumps(submission))
    assert gradebook.read_class(folder) == [
        gradebook.Submission(student, {"1.1a": [5, 2]}, source=name)
    ]
    # The same student twice: both files are named.
    plain = "ada@example.edu"
    (folder / f"{plain}.json").write_text(json.dumps({"1.1a": 1}))
    (folder / gradebook._hashed_name(plain)).write_text(
        json.dumps({"student_id": plain, "answers": {}})
    )
    with pytest.raises(gradebook.SubmissionError) as raised:
        gradebook.read_class(folder)
    message = str(raised.value)
    assert f"student {plain!r} appears twice" in message
    assert "ada@example.edu.json" in message and gradebook._hashed_name(plain) in message


def test_progress_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = gradebook.Progress(4, done=1, stream=stream)
    bar.advance("ada", ok=True)
    bar.advance("ben", ok=False)
    bar.close()
    frames = stream.getvalue().split("\r")
    assert frames[-1].startswith("[" + "#" * 22 + "." * 8 + "] 3/4, 1 failed ben")
    assert stream.getvalue().endswith("\n")


def test_an_interrupted_class_run_keeps_its_results_and_resumes(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", CLASS)
    out = tmp_path / "grades"
    grade = BaseClient.grade

    def interrupted_at_cy(
        self: BaseClient[Any], assignment: str, student: str, *a: Any, **k: Any
    ) -> Any:
        if student == "cy":
            raise KeyboardInterrupt  # Ctrl-C while cy's request is in flight
        return grade(self, assignment, student, *a, **k)

    monkeypatch.setattr(BaseClient, "grade", interrupted_at_cy)
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(tmp_path / "subs")]
    argv += ["--out", str(out), "--jobs", "1"]
    assert main(argv) == 130
    assert "Run the same command to resume" in capsys.readouterr().out
    assert (out / "ada.json").exists() and (out / "ben.json").exists()
    assert not (out / "cy.json").exists()
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["score"] == "3.0" and rows["cy"]["note"] == "not graded yet"

    monkeypatch.setattr(BaseClient, "grade", grade)
    service.graded.clear()
    assert main(argv) == 0
    assert "cy" in service.graded and not {"ada", "ben"} & set(service.graded)
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["cy"]["score"] == "2.0" and rows["eve"]["score"] == "0.0"
    capsys.readouterr()


def test_check_prints_the_services_diagnoses_as_sentences(
    real_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"expected": {"op": "value", "value": [1, 2]}, "answer": [-1, -2]}))
    assert main(["check", "--url", real_url, str(one)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "check 1: WRONG (score 0.0)"
    assert out[1].startswith("  - Your answer is the negative of the key")


def test_grade_judges_nan_and_infinity_as_written_never_as_no_answer(
    real_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's json reads NaN and 1e400 (infinity); sent as null, they graded as "No answer"
    # and as "answer[0][0] is null", which the student never wrote.
    submission = tmp_path / "answers.json"
    submission.write_text('{"1.3-4-loss": NaN, "1.1c-i": [[1e400, 0, 0]]}')
    results = tmp_path / "results.json"
    argv = ["grade", "--url", real_url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", "s1", "--gradescope", str(results)]) == 0
    capsys.readouterr()
    tests = {t["number"]: t for t in json.loads(results.read_text())["tests"]}
    assert "answer is NaN; only finite numbers are accepted" in tests["1.3-4-loss"]["output"]
    assert "answer[0][0] is Infinity" in tests["1.1c-i"]["output"]
    for number in ("1.3-4-loss", "1.1c-i"):
        assert "no answer" not in tests[number]["output"].lower()
        assert "null" not in tests[number]["output"]


def test_a_class_csvs_nan_cells_are_judged_as_nan(
    real_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "class.csv"
    table.write_text(
        'student_id,1.3-4-loss,1.1c-i\nada,NaN,"[[1e400, 0, 0]]"\nben,-Infinity,\n',
        encoding="utf-8",
    )
    out = tmp_path / "grades"
    argv = ["grade", "--url", real_url, "--assignment", "cnn-rnn", str(table), "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    ada = {t["number"]: t["output"] for t in json.loads((out / "ada.json").read_text())["tests"]}
    assert "answer is NaN" in ada["1.3-4-loss"] and "answer[0][0] is Infinity" in ada["1.1c-i"]
    ben = {t["number"]: t["output"] for t in json.loads((out / "ben.json").read_text())["tests"]}
    assert "answer is -Infinity" in ben["1.3-4-loss"]


def test_an_answer_json_cannot_carry_scores_0_and_the_others_are_graded(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text that is not valid Unicode in one answer: that answer is not sent and its problem
    says why; the student's other answers are graded, in a class run and for one file."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    # A JSON escape of half a UTF-16 pair: Python reads it, no UTF-8 writer can send it.
    (tmp_path / "subs" / "ben.json").write_text('{"1.1a": [5, 2], "1.1c-i": "\\ud800"}')
    out = tmp_path / "grades"
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(tmp_path / "subs")]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(service.graded) == ["ada", "ben"]
    ben_sent = next(b["answers"] for b in service.bodies if b["student_id"] == "ben")
    assert ben_sent == {"1.1a": [5, 2]}
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["score"] == "2.0"
    assert rows["ben"]["score"] == "2.0" and rows["ben"]["1.1c-i"] == "0.0"
    ben = {t["number"]: t for t in json.loads((out / "ben.json").read_text())["tests"]}
    assert ben["1.1c-i"]["output"].startswith("Not graded: your answer could not be sent")
    assert "cannot be sent as JSON" in ben["1.1c-i"]["output"]
    assert ben["1.1a"]["output"] == "correct"

    single = ["grade", "--url", url, "--assignment", "cnn-rnn", str(tmp_path / "subs" / "ben.json")]
    results = tmp_path / "results.json"
    assert main([*single, "--student-id", "ben", "--gradescope", str(results)]) == 0
    assert json.loads(results.read_text())["score"] == 2.0
    assert "could not be sent" in capsys.readouterr().out


def test_gradescope_tests_of_unsent_answers_say_why_and_the_rest_in_the_output() -> None:
    result = {
        "score": 1.0,
        "output": "cnn-rnn: 1 of 3 points for ben.",
        "tests": [
            {"number": "p1", "score": 0.0, "output": "No answer: 0 of 1 points."},
            {"number": "p2", "score": 1.0, "output": "Correct."},  # answered in a split object
        ],
    }
    marked = gradebook.with_unsent(result, {"p1": "bad text", "p2": "bad too", "q": "deep"})
    assert marked["tests"][0]["output"].endswith("could not be sent to the grader: bad text")
    assert marked["tests"][1] == result["tests"][1]
    assert marked["output"].endswith("could not be sent to the grader: p2: bad too; q: deep")
    assert marked["score"] == 1.0


def test_a_csv_line_with_more_cells_than_the_header_leaves_its_student_ungraded(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unquoted comma in a formula shifts every answer after it into the next column:
    that student is not graded with shifted answers; the others are."""
    service, url = fake
    table = tmp_path / "class.csv"
    # ben's formula holds an unquoted comma; cat's trailing empty cells are a spreadsheet's.
    table.write_text(
        'student_id,1.1c-i,1.1a\nada,3,"[5, 2]"\nben,max(H, 1),"[5, 2]"\ncat,3,"[5, 2]",,\n'
    )
    out = tmp_path / "grades"
    assert main(class_argv(url, table, out)) == 1
    captured = capsys.readouterr()
    assert "2 graded, 0 already graded, 1 failed" in captured.out
    assert sorted(service.graded) == ["ada", "cat"]
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert "4 cells for the header's 3 columns" in rows["ben"]["note"]
    assert "must be in double quotes" in rows["ben"]["note"] and rows["ben"]["score"] == ""


def test_a_result_of_another_student_is_never_kept(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On macOS and Windows `Ada.json` is the file `ada.json`: an id corrected from ada to Ada
    must not keep ada's grade, of ada's variant. (Copying the file stands in for that file
    system here.)"""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    (tmp_path / "subs" / "ada.json").rename(tmp_path / "subs" / "Ada.json")
    (out / "Ada.json").write_bytes((out / "ada.json").read_bytes())
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert "1 graded, 0 already graded" in capsys.readouterr().out
    assert service.graded == ["Ada"]
    stamp = json.loads((out / "Ada.json").read_text())["extra_data"]["tensorgrade"]
    assert stamp["student_id"] == "Ada"


def test_the_revision_recorded_is_the_one_the_grade_was_graded_against(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """During a redeploy a replica of the old revision may grade after the new one was
    listed: its result records the old one, and the next run grades the student again."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    service.revision, service.graded_revision = "b" * 32, "a" * 32
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert (
        json.loads((out / "ada.json").read_text())["extra_data"]["tensorgrade"]["revision"]
        == "a" * 32
    )
    service.graded_revision = None
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert service.graded == ["ada"]
    assert "1 graded again because the assignment changed" in capsys.readouterr().out


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_proxys_error_page_is_no_grade(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
) -> None:
    """A 413 page from a proxy in front of the service (nginx's limit on bodies) is not the
    service refusing the submission: no grade of 0 is kept, the student is left ungraded with
    the reason and retried by the next run, and the class goes on."""
    service, url = fake
    service.page_with = {"ben": status}
    ben_is_left_for_the_next_run(url, tmp_path, capsys, service.page_with.clear)


def ben_is_left_for_the_next_run(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], answer_again: Callable[[], Any]
) -> None:
    """A class of ada and ben where ben's answer is not the service's: ada is graded, ben
    is left ungraded with the reason (no grade of 0 kept), and once ``answer_again()`` the
    next run grades ben alone."""
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}, "ben": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 1
    captured = capsys.readouterr()
    assert "1 graded, 0 already graded, 1 failed" in captured.out
    assert "answered by something other than the service" in captured.err
    assert not (out / "ben.json").exists()
    answer_again()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert "1 graded, 1 already graded, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("status", [408, 429])
def test_a_refusal_of_one_request_leaves_that_student_for_the_next_run(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
) -> None:
    """A body that arrived too slowly (408) or a key over its rate (429, once retries are
    spent) says nothing of the other students: the class goes on."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}, "ben": {"1.1a": [5, 2]}})
    service.fail_with = {"ben": status}
    out = tmp_path / "grades"
    assert main([*class_argv(url, tmp_path / "subs", out), "--retries", "0"]) == 1
    captured = capsys.readouterr()
    assert "1 graded, 0 already graded, 1 failed" in captured.out
    assert f"not graded: ben: {status}" in captured.err


def test_json_files_of_a_class_folder_are_read_whatever_the_case_of_their_suffix(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    (tmp_path / "subs" / "bob.JSON").write_text('{"1.1a": [5, 2]}')
    (tmp_path / "subs" / "notes.txt").write_text("not a submission")
    assert main(class_argv(url, tmp_path / "subs", tmp_path / "grades")) == 0
    assert sorted(service.graded) == ["ada", "bob"]


def test_options_of_a_class_are_refused_for_one_file_and_the_other_way_round(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rather than ignored: a TA who passes --gradescope to a class run expects a file."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    base = ["grade", "--url", url, "--assignment", "cnn-rnn"]
    one = str(tmp_path / "subs" / "ada.json")
    for argv, told in [
        ([*base, str(tmp_path / "subs"), "--gradescope", "r.json"], "--gradescope: for one"),
        ([*base, str(tmp_path / "subs"), "--student-id", "ada"], "--student-id: for one"),
        ([*base, str(tmp_path / "subs"), "--json"], "--json: for one"),
        ([*base, one, "--student-id", "ada", "--out", "g"], "--out: for a class"),
        ([*base, one, "--student-id", "ada", "--jobs", "2", "--regrade"], "--jobs and --regrade"),
    ]:
        assert main(argv) == 2, argv
        assert told in capsys.readouterr().err, argv
    assert service.graded == []


def test_a_split_questions_answer_is_not_called_ignored(
    real_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service takes `{"1.3-4": {"loss": ..., "accuracy": ...}}` as the answers of its two
    parts: the gradebook's note must not say it was ignored."""
    answers = {"1.3-4": {"loss": 1.386, "accuracy": 0.25}, "9.9": 1}
    write_class(tmp_path / "subs", {"ada": answers})
    out = tmp_path / "grades"
    assert main(class_argv(real_url, tmp_path / "subs", out)) == 0, capsys.readouterr().err
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["note"] == "answers to unknown problems ignored: 9.9"
    assert gradebook.unknown_answers(answers, ["1.3-4-loss", "1.3-4-accuracy"]) == ["9.9"]


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The environment read again by the command (settings are read once per process)."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "told"),
    [
        ("TENSORGRADE_PORT", "tcp://10.0.0.1:80", "TENSORGRADE_PORT: Input should be a valid"),
        ("TENSORGRADE_WORKERS", "-1", "TENSORGRADE_WORKERS: Input should be greater"),
        ("TENSORGRADE_EXPERIMENT_MAX_SECONDS", "1e999", "TENSORGRADE_EXPERIMENT_MAX_SECONDS: "),
        (
            "TENSORGRADE_INSTRUCTOR_KEYS",
            "REPLACE-ME-instructor-key",
            "instructor_keys still holds a placeholder",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    fresh_settings: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    told: str,
) -> None:
    fresh_settings.setenv(variable, value)
    fresh_settings.setenv("TENSORGRADE_VARIANT_SECRET", "v" * 32)
    for argv in (["serve"], ["healthcheck"], ["shape", "--help"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("tensorgrade: invalid configuration: ") and told in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_serve_stops_before_the_workers_on_a_storage_it_cannot_use(
    fresh_settings: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked once in the supervisor: otherwise each worker fails and is restarted forever."""
    fresh_settings.setenv("TENSORGRADE_RATE_LIMIT_STORAGE", "nosuch://:password@host:1/0")
    fresh_settings.setattr("uvicorn.run", lambda *a, **k: pytest.fail("uvicorn started"))
    assert main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tensorgrade: TENSORGRADE_RATE_LIMIT_STORAGE: ") and "password" not in err


def test_serve_hands_its_options_to_the_workers(
    fresh_settings: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker divides the cores among the workers for its torch threads: --workers must
    reach it (with 4 workers on 16 cores each took all 16). The environment is as it was
    afterwards."""
    seen: list[Settings] = []
    fresh_settings.delenv("TENSORGRADE_WORKERS", raising=False)
    fresh_settings.setattr("service.cli.check_assignments", lambda settings, workers: None)
    fresh_settings.setattr("uvicorn.run", lambda *a, **k: seen.append(get_settings()))
    assert main(["serve", "--workers", "3", "--port", "8123"]) == 0
    assert (seen[0].workers, seen[0].port) == (3, 8123)
    assert "TENSORGRADE_WORKERS" not in os.environ and get_settings().workers == 1


@pytest.mark.parametrize(
    ("option", "told"),
    [("--port=70000", "70000 is not from 1 to 65535"), ("--workers=0", "0 is not from 1 to 64")],
)
def test_serve_refuses_options_its_settings_would(
    option: str, told: str, fresh_settings: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh_settings.setattr("service.cli.check_assignments", lambda settings, workers: None)
    fresh_settings.setattr("uvicorn.run", lambda *a, **k: pytest.fail("uvicorn started"))
    with pytest.raises(SystemExit) as stopped:
        main(["serve", option])
    assert stopped.value.code == 2 and told in capsys.readouterr().err


def test_serve_stops_with_one_line_on_a_metrics_folder_it_cannot_make(
    fresh_settings: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only file system (a container run --read-only without a tmpfs) ended in a
    traceback."""
    fresh_settings.setenv("PROMETHEUS_MULTIPROC_DIR", "/proc/tensorgrade-metrics")
    fresh_settings.setattr("service.cli.check_assignments", lambda settings, workers: None)
    fresh_settings.setattr("uvicorn.run", lambda *a, **k: pytest.fail("uvicorn started"))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "tensorgrade: invalid configuration: PROMETHEUS_MULTIPROC_DIR=/proc/tensorgrade-metrics: "
        "cannot make or empty it"
    )
    assert "Traceback" not in err


def test_log_levels_are_read_in_either_case() -> None:
    assert Settings.model_validate({"log_level": "INFO"}).log_level == "info"
    assert Settings.model_validate({"log_level": " Debug "}).log_level == "debug"


def class_argv(url: str, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        "grade",
        "--url",
        url,
        "--assignment",
        "cnn-rnn",
        str(source),
        "--out",
        str(out),
        *extra,
    ]


def test_files_a_class_cannot_read_leave_their_students_ungraded_not_the_class(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not JSON, holds a number Python will not read (over 4,300 digits) or
    nests past what it reads: that student is left ungraded, with the reason in the
    gradebook, and the rest of the class is graded."""
    _, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    (tmp_path / "subs" / "bad.json").write_text('{"1.1a": [5, 2],}')
    (tmp_path / "subs" / "big.json").write_text('{"1.3-4-loss": ' + "1" * 5000 + "}")
    (tmp_path / "subs" / "deep.json").write_text('{"1.1a": ' + "[" * 5000 + "]" * 5000 + "}")
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 1
    captured = capsys.readouterr()
    assert "1 graded, 0 already graded, 3 failed" in captured.out, captured
    assert "Traceback" not in captured.err
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["score"] == "2.0"
    for student, reason in [
        ("bad", "cannot read a JSON submission"),
        ("big", "cannot read a JSON submission"),
        ("deep", "nested too deep"),
    ]:
        assert (
            rows[student]["note"].startswith("not graded yet: ") and reason in rows[student]["note"]
        ), rows[student]
    assert sorted(p.name for p in out.glob("*.json")) == ["ada.json"]


def test_an_answer_that_is_not_a_grade_stops_the_class(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 200 that is not a grade (a proxy or captive portal answering in the service's place)
    would be the same for everyone: the run stops and says so, nothing is kept for it, and
    the gradebook is written."""
    service, url = fake
    write_class(tmp_path / "subs", {"zed": {"1.1a": [5, 2]}})
    service.answer_with = {"zed": {}}
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 2
    assert "no proxy or captive portal answers in its place" in capsys.readouterr().err
    assert not (out / "zed.json").exists()
    assert read_gradebook(out / gradebook.GRADEBOOK)[0]["note"].startswith("not graded yet")


def test_class_csv_headers_are_trimmed_and_checked_against_the_assignment(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    table = tmp_path / "class.csv"
    table.write_text('student_id, 1.1a ,1.1c-i\nada,"[5, 2]",3\nben,"1' + "2" * 5000 + '",\n')
    assert main(class_argv(url, table, tmp_path / "grades")) == 0, capsys.readouterr().err
    # The class is graded by several requests at once: find each student's body by its id.
    answers = {body["student_id"]: body["answers"] for body in service.bodies}
    assert answers["ada"] == {"1.1a": [5, 2], "1.1c-i": 3}
    assert answers["ben"]["1.1a"].startswith("12222")  # too long a number: text
    capsys.readouterr()
    for header, told in [
        ("student_id,1.1A", "'1.1A' (did you mean '1.1a'?)"),
        ("student_id,1.1a,1.1a", "names a column twice: 1.1a"),
        ("student_id,9.9", "'9.9'; its problems are 1.1a, 1.1c-i"),
    ]:
        cells = ",".join(['"[5, 2]"'] * header.count(","))  # one per column, as a line must
        table.write_text(f"{header}\nada,{cells}\n")
        service.bodies.clear()
        assert main(class_argv(url, table, tmp_path / "other")) == 2
        assert told in capsys.readouterr().err
        assert service.bodies == []  # nobody graded, nobody losing an answer


def test_a_result_is_kept_only_for_the_same_answers_to_the_same_assignment(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [2, 5]}, "ben": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    stamp = json.loads((out / "ada.json").read_text())["extra_data"]["tensorgrade"]
    assert stamp["assignment"] == "cnn-rnn" and len(stamp["answers_sha256"]) == 64
    # Another assignment: refused before anything is read from the folder, or sent.
    service.bodies.clear()
    other = ["grade", "--url", url, "--assignment", "hw2", str(tmp_path / "subs")]
    assert main([*other, "--out", str(out)]) == 2
    assert "no assignment 'hw2'; it has cnn-rnn" in capsys.readouterr().err
    # ada corrects her answer: graded again; ben's result is kept.
    (tmp_path / "subs" / "ada.json").write_text(json.dumps({"1.1a": [5, 2]}))
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert service.graded == ["ada"] and "1 graded, 1 already graded" in capsys.readouterr().out
    # A result without the stamp (an older run's) is graded again; --regrade grades all.
    result = json.loads((out / "ben.json").read_text())
    del result["extra_data"]
    (out / "ben.json").write_text(json.dumps(result))
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert service.graded == ["ben"]
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out, "--regrade")) == 0
    assert sorted(service.graded) == ["ada", "ben"]
    capsys.readouterr()


def test_a_result_graded_against_another_revision_of_the_assignment_is_graded_again(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new variant secret, or a changed tolerance or reference, changes the assignment's
    revision: every result kept from before is stale, whatever the answers."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}, "ben": {"1.1a": [2, 5]}})
    out = tmp_path / "grades"
    service.revision = "a" * 32
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    stamp = json.loads((out / "ada.json").read_text())["extra_data"]["tensorgrade"]
    assert stamp["revision"] == "a" * 32
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0  # the same key: kept
    assert service.graded == [] and "0 graded, 2 already graded" in capsys.readouterr().out

    service.revision = "b" * 32  # the answer key changed
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert sorted(service.graded) == ["ada", "ben"]
    printed = capsys.readouterr().out
    assert "2 graded, 0 already graded" in printed
    assert "2 graded again because the assignment changed" in printed
    stamp = json.loads((out / "ben.json").read_text())["extra_data"]["tensorgrade"]
    assert stamp["revision"] == "b" * 32

    # A result of an older run, stamped without a revision: graded again, once.
    result = json.loads((out / "ada.json").read_text())
    del result["extra_data"]["tensorgrade"]["revision"]
    (out / "ada.json").write_text(json.dumps(result))
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert service.graded == ["ada"]
    capsys.readouterr()


def test_a_stale_result_is_no_grade_in_the_gradebook_while_its_student_is_not_graded_again(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    service.revision = "c" * 32
    service.fail_with = {"ada": 503}
    assert main(class_argv(url, tmp_path / "subs", out, "--retries", "0")) == 1
    rows = read_gradebook(out / gradebook.GRADEBOOK)
    assert rows[0]["score"] == "" and rows[0]["note"].startswith("not graded yet: 503")
    capsys.readouterr()


def test_answers_to_problems_the_assignment_lacks_are_noted_in_the_gradebook(
    real_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service ignores them (and says so in the result's output); the gradebook's note
    names them, so that a TA sees the answers that did not count."""
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2], "1.1A": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(real_url, tmp_path / "subs", out)) == 0, capsys.readouterr().err
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["note"] == "answers to unknown problems ignored: 1.1A"


@pytest.mark.parametrize(
    ("key", "status"),
    [("secret-key-0123456789\r\n", 0), ("secret-key\x01-0123456789", 2)],
    ids=["windows-line-ending", "control-character"],
)
def test_a_key_from_a_file_never_shows_in_the_output(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    status: int,
) -> None:
    """A key file saved on Windows keeps its \\r\\n under $(cat key): dropped, the key works.
    A key no header can carry is one line that does not quote it (run_autograder shows the
    command's output to students)."""
    _, url = fake
    submission = tmp_path / "answers.json"
    submission.write_text(json.dumps({"1.1a": [5, 2]}))
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(submission)]
    assert main([*argv, "--student-id", "ada", "--api-key", key]) == status
    captured = capsys.readouterr()
    assert "secret-key" not in captured.out + captured.err
    if status:
        assert captured.err.startswith("error: the API key holds ")
        assert len(captured.err.strip().splitlines()) == 1


def test_a_result_of_answers_since_changed_is_no_grade_in_the_gradebook(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ada corrects her answers, and the service fails her this time: her old result is not
    her grade any more, so her row says she is not graded yet (and why) rather than showing
    the old score. The progress counts each student once."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [2, 5]}, "ben": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    (tmp_path / "subs" / "ada.json").write_text(json.dumps({"1.1a": [5, 2]}))
    (tmp_path / "subs" / "ben.json").write_text("{bad")
    (tmp_path / "subs" / "cy.json").write_text(json.dumps({"1.1a": [5, 2]}))
    service.fail_with = {"ada": 503}
    capsys.readouterr()
    assert main(class_argv(url, tmp_path / "subs", out)) == 1
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    # ben's unreadable file is done from the start, and shown as failed; then ada and cy.
    assert progress[0] == "[1/3] FAILED ben"
    assert sorted(line.split(" ", 1)[1] for line in progress[1:]) == ["FAILED ada", "graded cy"]
    assert sorted(line.split(" ")[0] for line in progress[1:]) == ["[2/3]", "[3/3]"]
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["score"] == "" and rows["ada"]["note"].startswith("not graded yet: 503")
    assert rows["ben"]["score"] == "" and "cannot read" in rows["ben"]["note"]
    assert rows["cy"]["score"] == "2.0"


def test_serve_warns_of_a_rate_limit_counted_per_worker_and_of_shared_keys_beside_a_roster(
    tmp_path: Path,
) -> None:
    one, many = keyed_settings(), serve_warnings(keyed_settings(), 4)
    assert serve_warnings(one, 1) == []
    assert len(many) == 1 and "each of the 4 workers counts the rate limit" in many[0]
    assert "30/minute;300/hour" in many[0]
    shared = keyed_settings(rate_limit_storage="redis://localhost:6379/0")
    assert serve_warnings(shared, 4) == []
    assert serve_warnings(keyed_settings(check_rate_limit=""), 4) == []
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,key\nalice,alice-key-0123456789abcdef\n")
    both = Settings(
        instructor_keys=INSTRUCTOR,
        student_keys=STUDENT,
        student_key_file=roster,
        variant_secret=SECRET,
    )
    assert any("beside a roster" in w for w in startup_warnings(both))
    only_roster = Settings(
        instructor_keys=INSTRUCTOR, student_key_file=roster, variant_secret=SECRET
    )
    assert startup_warnings(only_roster) == []


@pytest.mark.parametrize("spring", [False, True])
def test_a_gateways_json_refusal_is_no_grade(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spring: bool,
) -> None:
    """`{"status": "error", "detail": ...}` with a 413 is a gateway's, not the service's
    problem detail (a `type`, a `title` and the integer status it answered), and so is a
    Spring gateway's page with an integer status: no grade of 0 is kept."""
    service, url = fake
    service.spring_gateway = spring
    service.gateway_with = {"ben": 413}
    ben_is_left_for_the_next_run(url, tmp_path, capsys, service.gateway_with.clear)


def test_results_that_would_replace_the_submissions_are_refused(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each <id>.json result over the student's <id>.json submission lost every answer, and
    the next run graded the results as submissions: 0 for the whole class."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    before = (tmp_path / "subs" / "ada.json").read_text()
    assert main(class_argv(url, tmp_path / "subs", tmp_path / "subs" / ".")) == 2
    assert "the results would replace the submissions" in capsys.readouterr().err
    one = tmp_path / "subs" / "ada.json"
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(one), "--gradescope", str(one)]
    assert main(argv) == 2
    assert "it is the submission file" in capsys.readouterr().err
    assert (tmp_path / "subs" / "ada.json").read_text() == before and service.graded == []
    # A folder inside the class folder is fine: the class is its .json files alone.
    assert main(class_argv(url, tmp_path / "subs", tmp_path / "subs" / "grades")) == 0
    assert main(class_argv(url, tmp_path / "subs", tmp_path / "subs" / "grades")) == 0
    assert "0 graded, 1 already graded" in capsys.readouterr().out


def test_a_regrade_that_fails_a_student_leaves_no_earlier_grade_standing(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier result of a student the regrade could not grade was listed as their grade
    with no note, and the next run (as the run advises) kept it as already graded."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}, "ben": {"1.1a": [5, 2]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    service.fail_with = {"ben": 503}
    assert main([*class_argv(url, tmp_path / "subs", out), "--regrade", "--retries", "0"]) == 1
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert rows["ada"]["score"] == "2.0"
    assert rows["ben"]["score"] == "" and rows["ben"]["note"].startswith("not graded yet: 503")
    assert not (out / "ben.json").exists()
    assert (out / gradebook.BEFORE_REGRADE / "ben.json").exists()  # aside, not lost
    service.fail_with = {}
    service.graded.clear()
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    assert service.graded == ["ben"]
    capsys.readouterr()


def test_a_regrade_the_service_stops_at_once_leaves_the_earlier_results(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key refused for every student (401, 403) stops the run: the earlier results, set
    aside before it, were lost with it."""
    service, url = fake
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}, "ben": {"1.1a": [2, 5]}})
    out = tmp_path / "grades"
    assert main(class_argv(url, tmp_path / "subs", out)) == 0
    before = {p.name: p.read_text() for p in out.glob("*.json")}
    service.fail_with = {"ada": 403, "ben": 403}
    assert main([*class_argv(url, tmp_path / "subs", out), "--regrade", "--jobs", "1"]) == 2
    assert {p.name: p.read_text() for p in out.glob("*.json")} == before
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert (rows["ada"]["score"], rows["ben"]["score"]) == ("2.0", "0.0")
    capsys.readouterr()


def test_a_csv_cell_larger_than_the_csv_modules_limit_is_read(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One cell over 131,072 characters stopped the whole class."""
    service, url = fake
    table = tmp_path / "class.csv"
    formula = "H + " * 50_000 + "1"
    table.write_text(f'student_id,1.1a\nada,"[5, 2]"\nben,"{formula}"\n')
    assert main(class_argv(url, table, tmp_path / "grades")) == 0
    assert {b["student_id"]: b["answers"]["1.1a"] for b in service.bodies} == {
        "ada": [5, 2],
        "ben": formula,
    }
    capsys.readouterr()


def test_a_csv_class_answering_numbered_or_boolean_options_is_graded_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell `2` or `false` reads as JSON, a number or a boolean: the service took only text
    for an option's id, and every right answer scored 0 as malformed."""
    folder = tmp_path / "assignments"
    folder.mkdir()
    (folder / "numbered.toml").write_text(NUMBERED)
    settings = Settings(assignments_dir=folder, builtin_assignments=False, variant_secret=SECRET)
    table = tmp_path / "quiz.csv"
    table.write_text('student_id,q1,q2\nada,2,false\nben,"2","FALSE"\ncy,3,true\n')
    out = tmp_path / "grades"
    with uvicorn_thread(create_app(settings)) as url:
        argv = ["grade", "--url", url, "--assignment", "numbered", str(table), "--out", str(out)]
        assert main(argv) == 0
    rows = {r["student_id"]: r for r in read_gradebook(out / gradebook.GRADEBOOK)}
    assert [rows[s]["score"] for s in ("ada", "ben", "cy")] == ["2.0", "2.0", "0.0"]
    assert rows["cy"]["note"] == ""
    capsys.readouterr()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"checks": 5}, '"checks" is a list of'),
        ({"checks": "ab"}, '"checks" is a list of'),
        ({"checks": [1, 2]}, '"checks" is a list of'),
        ({"expected": [1], "answer": [1]}, '"expected" is an object'),
        (
            {"expected": {"op": "value", "value": [5, 2]}, "answer": [5, 2], "tolerance": [1, 2]},
            '"tolerance" is an object',
        ),
    ],
)
def test_a_malformed_checks_file_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: object, said: str
) -> None:
    """Each was a TypeError or AttributeError traceback with exit status 1, which the README
    gives a wrong answer."""
    path = tmp_path / "checks.json"
    path.write_text(json.dumps(body))
    assert main(["check", str(path), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--url", "http://[::1"], "is not a URL"),
        (["--url", "http://127.0.0.1:99999"], "the port must be 1 to 65535"),
        (["--url", "ftp://example.org"], "give the service's http:// or https:// URL"),
    ],
)
def test_a_url_that_cannot_be_the_services_is_a_message(
    capsys: pytest.CaptureFixture[str], option: list[str], said: str
) -> None:
    assert main(["shape", "--input-size", "7", "--kernel-size", "3", *option]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize(
    "option",
    [
        ["--timeout", "-1"],
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--timeout", "1e10"],  # an OverflowError traceback from the socket
        ["--retries", "-1"],
    ],
)
def test_option_values_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    """`--timeout -1` was a ValueError traceback from the socket, and in a class run it
    escaped before the gradebook was written."""
    with pytest.raises(SystemExit) as stop:
        main(["shape", "--input-size", "7", "--kernel-size", "3", *option])
    assert stop.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err


def test_a_gradescope_file_that_cannot_be_written_leaves_nothing_behind(
    fake: tuple[FakeGrading, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = fake
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"1.1a": [5, 2]}))
    folder = tmp_path / "results"
    folder.mkdir()
    argv = ["grade", "--url", url, "--assignment", "cnn-rnn", str(answers)]
    assert main([*argv, "--student-id", "ada", "--gradescope", str(folder)]) == 2
    assert "error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.json", "results"]


@pytest.mark.parametrize("listed", [{"id": "cnn-rnn"}, {"id": "cnn-rnn", "problems": [{}]}])
def test_a_listing_without_problems_is_a_message_not_a_traceback(
    fake: tuple[FakeGrading, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    listed: dict[str, Any],
) -> None:
    service, url = fake
    service.listed = listed
    write_class(tmp_path / "subs", {"ada": {"1.1a": [5, 2]}})
    assert main(class_argv(url, tmp_path / "subs", tmp_path / "grades")) == 2
    err = capsys.readouterr().err
    assert "has no problems with ids" in err and "Traceback" not in err


def test_a_connection_closed_after_the_request_is_not_told_as_unreachable() -> None:
    from service.cli import unreachable
    from service.transport import ClosedBeforeAnswer

    error = ClosedBeforeAnswer("the server closed the connection before answering: reset")
    said = unreachable(error, "http://127.0.0.1:8000", 60)
    assert said.startswith("the service at http://127.0.0.1:8000 was reached but closed")
    assert "cannot reach" not in said


def test_a_connection_closed_while_the_request_was_sent_is_not_told_as_unreachable() -> None:
    import httpx

    from service.cli import unreachable

    error = httpx.WriteError("the server closed the connection while the request was sent")
    said = unreachable(error, "http://127.0.0.1:8000", 60)
    assert said.startswith("the service at http://127.0.0.1:8000 was reached but closed")
    assert "cannot reach" not in said


class Restarting:
    """A client of a service that stops taking connections after ``answered`` grades and is
    ready again after ``down`` polls of /readyz (forever down with ``down=None``)."""

    def __init__(self, answered: int, down: int | None) -> None:
        self.answered, self.down = answered, down
        self.graded: list[str] = []
        self.polls = 0

    def grade(self, assignment: str, student: str, answers: object, **_: object) -> object:
        if len(self.graded) >= self.answered and not self.back():
            raise httpx.ConnectError("connection refused")
        self.graded.append(student)
        return {"score": 1.0, "tests": [{"number": "1.1a", "score": 1.0, "max_score": 1.0}]}

    def back(self) -> bool:
        return self.down is not None and self.polls > self.down

    def ready(self) -> bool:
        self.polls += 1
        if not self.back():
            raise httpx.ConnectError("connection refused")
        return True


def test_a_service_that_restarts_mid_run_is_waited_for(tmp_path: Path) -> None:
    """A restart left the rest of the queue ungraded within seconds (82 of 196 students)."""
    client = Restarting(answered=3, down=4)
    class_ = [gradebook.Submission(f"s{i}", {"1.1a": [5, 2]}) for i in range(10)]
    comeback = gradebook.Comeback(client, patience=60, sleep=lambda _: None)  # type: ignore[arg-type]
    report = gradebook.grade_class(
        client,  # type: ignore[arg-type]
        "cnn-rnn",
        class_,
        tmp_path,
        jobs=3,
        comeback=comeback,
    )
    assert sorted(report.graded) == sorted(s.student_id for s in class_) and not report.failed
    assert client.polls == 5


def test_a_service_gone_for_good_is_given_up_on_once(tmp_path: Path) -> None:
    client = Restarting(answered=2, down=None)
    ticks = iter(range(0, 10_000, 10))
    comeback = gradebook.Comeback(
        client,  # type: ignore[arg-type]
        patience=60,
        sleep=lambda _: None,
        clock=lambda: float(next(ticks)),
    )
    class_ = [gradebook.Submission(f"s{i}", {"1.1a": [5, 2]}) for i in range(10)]
    report = gradebook.grade_class(
        client,  # type: ignore[arg-type]
        "cnn-rnn",
        class_,
        tmp_path,
        jobs=3,
        comeback=comeback,
    )
    assert len(report.graded) == 2 and len(report.failed) == 8
    assert client.polls == 6  # one wait of 60 s (a poll each 10 s here), then none
    late = [s for s, why in report.failed.items() if "was not back within 60 s" in why]
    assert len(late) >= 8 - 3  # those queued behind the wait were not sent at all
