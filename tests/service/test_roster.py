"""The roster (TENSORGRADE_STUDENT_KEY_FILE): a student's own key reads and checks only that
student's id (API.md "Roles": "its own answers"), shared student keys and instructor keys any id;
a wrong roster stops start-up naming the file and the line; ``tensorgrade keys`` makes one."""

from __future__ import annotations

import csv
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import auth, roster
from service.app import create_app
from service.auth import KeyRing
from service.cli import main
from service.settings import Settings
from tests.keys import INSTRUCTOR, OTHER_STUDENT, SECRET, STUDENT, UNKNOWN, key, keyed_settings

ALICE, BOB = "alice@example.edu", "bob@example.edu"
ALICE_KEY = "alice-key-0123456789abcdefghij"
BOB_KEY = "bob-key-0123456789abcdefghijkl"
ROSTER = f"student_id,key,name\n{ALICE},{ALICE_KEY},Alice A.\n{BOB},{BOB_KEY},Bob B.\n"

VARIANT = "/v1/assignments/cnn-rnn/problems/1.1a"
CHECK = "/v1/assignments/cnn-rnn/problems/1.1a/check"
GRADE = "/v1/assignments/cnn-rnn/grade"


def write_roster(folder: Path, text: str = ROSTER) -> Path:
    path = folder / "roster.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def roster_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_roster(tmp_path_factory.mktemp("roster"))


@pytest.fixture(scope="module")
def client(roster_file: Path) -> Iterator[TestClient]:
    """A service with an instructor key, two shared student keys and the roster."""
    settings = keyed_settings(student_key_file=roster_file, check_rate_limit="")
    with TestClient(create_app(settings)) as client:
        yield client


def call(client: TestClient, route: str, student_id: str, api_key: str) -> Any:
    """One of the three assignment routes that name a student, for ``student_id``."""
    headers = key(api_key)
    if route == "variant":
        return client.get(VARIANT, params={"student_id": student_id}, headers=headers)
    if route == "check":
        body = {"student_id": student_id, "answer": "5x2"}
        return client.post(CHECK, json=body, headers=headers)
    body = {"student_id": student_id, "answers": {"1.1a": "5x2"}}
    return client.post(GRADE, json=body, headers=headers)


ROUTES = ["variant", "check", "grade"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_students_own_key_reads_and_checks_its_own_id(client: TestClient, route: str) -> None:
    for student_id, api_key in ((ALICE, ALICE_KEY), (BOB, BOB_KEY)):
        response = call(client, route, student_id, api_key)
        assert response.status_code == 200, response.text
        assert response.json()["student_id"] == student_id


@pytest.mark.parametrize("route", ROUTES)
# (An id with a space at either end is no id at all: a 422 before the key is looked at.)
@pytest.mark.parametrize("other", [BOB, "carol@example.edu", ALICE.upper(), f"{ALICE}\u200b"])
def test_a_students_own_key_gets_403_for_any_other_id(
    client: TestClient, route: str, other: str
) -> None:
    response = call(client, route, other, ALICE_KEY)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 403 and "belongs to another student" in problem["detail"]
    # Neither whose key it is nor the key, nor the id asked for: the answer says no more.
    for secret in (ALICE, ALICE_KEY, other.strip(), "alice"):
        assert secret not in response.text


@pytest.mark.parametrize("route", ROUTES)
def test_shared_student_keys_and_instructor_keys_name_any_student(
    client: TestClient, route: str
) -> None:
    for api_key in (STUDENT, OTHER_STUDENT, INSTRUCTOR):
        for student_id in (ALICE, BOB, "carol@example.edu"):
            assert call(client, route, student_id, api_key).status_code == 200


def test_a_roster_key_is_a_student_key(client: TestClient) -> None:
    assert client.get("/v1/models", headers=key(ALICE_KEY)).status_code == 403
    assert client.post("/v1/shapes/conv", json={}, headers=key(BOB_KEY)).status_code == 403
    assert client.get("/v1/assignments", headers=key(ALICE_KEY)).status_code == 200
    assert client.get(VARIANT, params={"student_id": ALICE}).status_code == 401
    unknown = client.get(VARIANT, params={"student_id": ALICE}, headers=key(UNKNOWN))
    assert unknown.status_code == 401


def test_the_403_is_declared_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in ((VARIANT, "get"), (CHECK, "post"), (GRADE, "post")):
        template = path.replace("cnn-rnn", "{assignment}").replace("1.1a", "{problem}")
        assert "403" in paths[template][method]["responses"], path


def test_the_roster_alone_is_not_open_and_needs_the_variant_secret(roster_file: Path) -> None:
    with pytest.raises(ValidationError, match="variant_secret is required"):
        Settings(student_key_file=roster_file)
    settings = Settings(student_key_file=roster_file, variant_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/info").json()["auth"] == "keys"
        assert client.get("/v1/models").status_code == 401
        assert call(client, "variant", BOB, BOB_KEY).status_code == 200
        assert call(client, "variant", ALICE, BOB_KEY).status_code == 403


def test_info_says_keys_with_a_roster(client: TestClient) -> None:
    assert client.get("/v1/info").json()["auth"] == "keys"


def test_the_file_comes_from_the_environment(
    roster_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORGRADE_STUDENT_KEY_FILE", str(roster_file))
    monkeypatch.setenv("TENSORGRADE_VARIANT_SECRET", SECRET)
    settings = Settings()
    assert [(e.student_id, e.key, e.line) for e in settings.roster()] == [
        (ALICE, ALICE_KEY, 2),
        (BOB, BOB_KEY, 3),
    ]


def test_roster_keys_never_print(client: TestClient, roster_file: Path) -> None:
    settings = keyed_settings(student_key_file=roster_file)
    texts = [repr(settings), str(settings), settings.model_dump_json(), repr(settings.roster())]
    for text in texts:
        assert ALICE_KEY not in text and BOB_KEY not in text


def test_the_rate_limit_is_per_key(roster_file: Path) -> None:
    settings = keyed_settings(student_key_file=roster_file, check_rate_limit="2/minute")
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            assert call(client, "check", ALICE, ALICE_KEY).status_code == 200
        assert call(client, "check", ALICE, ALICE_KEY).status_code == 429
        # Bob's key has its own count; a shared key has its own too.
        assert call(client, "check", BOB, BOB_KEY).status_code == 200
        assert call(client, "check", ALICE, STUDENT).status_code == 200
        assert call(client, "grade", ALICE, ALICE_KEY).status_code == 429


def test_each_key_finds_its_holder_and_no_key_is_kept_in_clear() -> None:
    ring = KeyRing([INSTRUCTOR], [STUDENT], [(ALICE, ALICE_KEY), (BOB, BOB_KEY)])
    found = {given: ring.holder_of(given) for given in (INSTRUCTOR, STUDENT, ALICE_KEY, BOB_KEY)}
    found[UNKNOWN] = ring.holder_of(UNKNOWN)
    kept = repr(vars(ring))
    for secret in (INSTRUCTOR, STUDENT, ALICE_KEY, BOB_KEY):
        assert secret not in kept
    assert found[ALICE_KEY] == auth.Holder("student", ALICE)
    assert found[BOB_KEY] == auth.Holder("student", BOB)
    assert found[STUDENT] == auth.Holder("student", None)
    assert found[INSTRUCTOR] == auth.Holder("instructor", None)
    assert found[UNKNOWN] is None


SHORT = "short-key"
ROSTER_MISTAKES = [
    ("student_id,name\nalice,Alice\n", ":1: ", "missing: key"),
    ("id,key\nalice,KEY_A\n", ":1: ", "missing: student_id"),
    ("student_id,key,key\nalice,KEY_A,KEY_B\n", ":1: ", "names key more than once"),
    (" student_id,student_id ,key\nalice,bob,KEY_A\n", ":1: ", "names student_id more than"),
    ("", ":1: ", "student_id,key"),
    ("student_id,key\nalice,KEY_A\n,KEY_B\n", ":3: ", "student_id is empty"),
    ("student_id,key\nalice,KEY_A\nbob,\n", ":3: ", "key is empty"),
    ("student_id,key\nalice\n", ":2: ", "key is empty"),
    (f"student_id,key\nalice,{SHORT}\n", ":2: ", "fewer than 16 characters"),
    ("student_id,key\nalice,KEY_A\nbob,KEY_A\n", ":3: ", "also the key of line 2"),
    ("student_id,key\nalice,KEY_A\n\nalice,KEY_B\n", ":4: ", "'alice' is also on line 2"),
    (f"student_id,key\nalice,KEY_A\nbob,{INSTRUCTOR}\n", ":3: ", "also in instructor_keys"),
    (f"student_id,key\nalice,{OTHER_STUDENT}\n", ":2: ", "also in student_keys"),
    ("student_id,key\nalice,has a space in the key\n", ":2: ", "printable ASCII"),
    ('student_id,key\n"al\x07ice",KEY_A\n', ":2: ", "control character"),
    (f"student_id,key\n{'x' * 201},KEY_A\n", ":2: ", "longer than 200"),
    ("student_id,key\n", ": ", "no student"),
]


@pytest.mark.parametrize(("text", "where", "message"), ROSTER_MISTAKES)
def test_a_wrong_roster_stops_start_up_naming_file_and_line(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    text = text.replace("KEY_A", ALICE_KEY).replace("KEY_B", BOB_KEY)
    path = write_roster(tmp_path, text)
    with pytest.raises(ValidationError) as raised:
        keyed_settings(student_key_file=path)
    error = str(raised.value)  # all that start-up prints: it quotes no setting's value
    assert f"student_key_file {path}{where}" in error and message in error
    for secret in (ALICE_KEY, BOB_KEY, INSTRUCTOR, OTHER_STUDENT, SHORT):
        assert secret not in error


def test_a_missing_or_unreadable_roster_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=f"{tmp_path / 'nope.csv'}: no such file"):
        keyed_settings(student_key_file=tmp_path / "nope.csv")
    with pytest.raises(ValidationError, match=f"{tmp_path}: cannot be read"):
        keyed_settings(student_key_file=tmp_path)
    binary = tmp_path / "roster.csv"
    binary.write_bytes(b"student_id,key\n\xff\xfe,x\n")
    with pytest.raises(ValidationError, match="cannot be read"):
        keyed_settings(student_key_file=binary)


def test_a_spreadsheets_csv_is_read(tmp_path: Path) -> None:
    """A byte-order mark, CRLF line ends, quoted fields, spaces around values, blank lines."""
    text = (
        f'\ufeffname, student_id ,key\r\n"B, Bob", {BOB} ,{BOB_KEY}\r\n'
        f"\r\nA,{ALICE},{ALICE_KEY}\r\n"
    )
    path = write_roster(tmp_path, text)
    roster = keyed_settings(student_key_file=path).roster()
    assert [(e.student_id, e.key, e.line) for e in roster] == [
        (BOB, BOB_KEY, 2),
        (ALICE, ALICE_KEY, 4),
    ]


# tensorgrade keys


def test_keys_makes_a_roster_the_service_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    students = tmp_path / "students.txt"
    students.write_text(f"{ALICE}\n\n  {BOB}  \nsmith, jo\n", encoding="utf-8")
    out = tmp_path / "roster.csv"
    assert main(["keys", "--students", str(students), "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["student_id"] for row in rows] == [ALICE, BOB, "smith, jo"]
    keys = [row["key"] for row in rows]
    assert len(set(keys)) == 3 and all(len(k) == 32 for k in keys)
    printed = capsys.readouterr().out
    assert "wrote 3 keys" in printed and not any(k in printed for k in keys)

    settings = Settings(student_key_file=out, variant_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        assert call(client, "variant", "smith, jo", keys[2]).status_code == 200
        assert call(client, "variant", ALICE, keys[2]).status_code == 403


def test_keys_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    students = tmp_path / "students.txt"
    students.write_text(f"{ALICE}\n", encoding="utf-8")
    out = tmp_path / "roster.csv"
    out.write_text("handed out already\n", encoding="utf-8")
    out.chmod(0o644)
    argv = ["keys", "--students", str(students), "--out", str(out)]
    assert main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "handed out already\n"
    assert main([*argv, "--force"]) == 0
    assert out.read_text(encoding="utf-8").startswith(f"student_id,key\n{ALICE},")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    first = out.read_text(encoding="utf-8")
    assert main([*argv, "--force"]) == 0
    assert out.read_text(encoding="utf-8") != first  # fresh keys every time


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ALICE}\n{BOB}\n{ALICE}\n", ":3: student_id 'alice@example.edu' is also on line 1"),
        ("\n\n", "no student id"),
        ("a\x01b\n", ":1: the student_id holds a control character"),
    ],
)
def test_keys_refuses_a_wrong_student_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    students = tmp_path / "students.txt"
    students.write_text(text, encoding="utf-8")
    out = tmp_path / "roster.csv"
    assert main(["keys", "--students", str(students), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_keys_reports_an_unreadable_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["keys", "--students", str(tmp_path / "none.txt"), "--out", str(tmp_path / "r.csv")]
    assert main(argv) == 2
    assert "none.txt: cannot be read" in capsys.readouterr().err


def test_roster_alone_warns_of_nothing_open(
    roster_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(student_key_file=roster_file, variant_secret=SECRET)
    with caplog.at_level(logging.WARNING, logger="tensorgrade"), TestClient(create_app(settings)):
        pass
    assert "runs open" not in caplog.text


def test_a_new_key_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--api-key -x...`` would read as an option: such a draw is drawn again."""
    draws = iter(["-" + "a" * 31, "-" + "b" * 31, "c" * 32])
    monkeypatch.setattr(roster.secrets, "token_urlsafe", lambda nbytes: next(draws))
    assert roster.new_key() == "c" * 32


@pytest.mark.parametrize("student_id", ["ada ", " ada", "ada\u00a0", "\u3000ada", "ada\n"])
def test_an_id_with_white_space_at_either_end_is_one_the_routes_refuse(student_id: str) -> None:
    from service.roster import student_id_problem

    assert student_id_problem(student_id) is not None
    assert student_id_problem("Ada Lovelace") is None  # a space inside is part of the id
