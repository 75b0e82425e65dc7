"""Grading submissions with the service: one student's, or a whole class's, resumably.

A class is a folder of ``<student id>.json`` files or one CSV file (a ``student_id`` column and
one column per problem id). Each student's result is written as soon as it is known, as a
Gradescope ``results.json`` in the output folder (named as ``result_names`` says: usually
``<student id>.json``), so an interrupted run resumes where it stopped: students with a result
file are not graded again. The CSV gradebook is written from those files at the end.

A student id is whatever the service accepts (``roster.student_id_problem``): an e-mail
address with an apostrophe or an accent is a student like any other.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import httpx

from service.client import BaseClient, ProblemError, UnexpectedResponse, UnsendableError
from service.roster import student_id_problem

PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
"""Ids that name their result file as they are (``ada@example.edu.json``): no path separator,
no leading dot, nothing a shell quotes, short enough for any file system."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]|^\.")
"""What ``result_names`` writes ``_`` in a hashed name (a leading dot would hide the file)."""

HASH_DIGITS = 12
"""Hex digits of a hashed name's SHA-256: 48 bits, so two ids of a class of 10,000 share them
with odds under 1 in 5 million (and their safe characters must match too)."""

GRADEBOOK = "gradebook.csv"

# Answers the submission itself is at fault for: the result says why and is final. Any other
# problem (a wrong key, an unknown assignment) is the same for every student: grading stops.
SUBMISSION_FAULTS = frozenset({400, 413, 422})
# Refusals of this one request that a later run may not meet: too many requests (429), a body
# that arrived too slowly (408, TENSORGRADE_BODY_TIMEOUT_SECONDS). The student is left
# ungraded with the reason, and the class goes on.
PASSING_FAULTS = frozenset({408, 429})


class SubmissionError(Exception):
    """A submission file that cannot be read; the message says which and why."""


class GradingStopped(Exception):
    """The service refused in a way that would fail every student (key, assignment...)."""


@dataclass(frozen=True)
class Submission:
    """One student's answers, by problem id.

    Attributes:
        student_id: the student.
        answers: the answers, by problem id.
        unreadable: why the student's file of a class folder cannot be graded as it is (the
            class goes on; the student is left ungraded until the file is fixed).
        source: where it was read (a class folder's file name, a class CSV's line), for
            messages.
    """

    student_id: str
    answers: dict[str, Any]
    unreadable: str | None = None
    source: str | None = None


@dataclass
class ClassReport:
    """What a class run did.

    Attributes:
        graded: students graded by this run.
        resumed: students skipped because an earlier run had graded them.
        regraded: students of ``graded`` (or ``failed``) whose earlier result graded the same
            answers against another revision of the assignment (its key changed since).
        failed: students left ungraded (server or network failure), with the reason; a
            later run grades them.
        abandoned: the run was stopped (a second Ctrl-C) while answers were on their way:
            their threads are still waiting for them.
    """

    graded: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    regraded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    abandoned: bool = False


def read_submission(path: Path, student_id: str | None = None) -> Submission:
    """One submission from a JSON file.

    Args:
        path: ``{"student_id": ..., "answers": {...}}``, or the answers object alone (UTF-8,
            with or without a byte-order mark).
        student_id: the student, when the file does not say (or to override it).

    Returns:
        The submission.

    Raises:
        SubmissionError: the file cannot be read, is not a submission, or names no student
            id, or one the service refuses (empty, over 200 characters, a control character,
            a space at either end).
    """
    submission = _read_submission(path, student_id)
    problem = id_problem(submission.student_id)
    if problem:
        raise SubmissionError(f"{path}: {_id_message(submission.student_id, problem)}")
    return submission


def id_problem(student_id: str) -> str | None:
    """Why ``student_id`` cannot be sent to the service, or None: the service's own rule
    (``roster.student_id_problem``), and text that UTF-8 can write (a file name in a legacy
    encoding reads with lone surrogates)."""
    try:
        student_id.encode("utf-8")
    except UnicodeEncodeError:
        return "the student_id is not valid Unicode text"
    return student_id_problem(student_id)


def _id_message(student_id: str, problem: str) -> str:
    return (
        f"{problem} ({student_id!r:.60}); the service accepts 1 to 200 characters, none of "
        "them a control character, and no space at either end"
    )


def _read_submission(path: Path, student_id: str | None) -> Submission:
    """A submission with any non-empty id: a class reports a bad id as that student's result."""
    try:
        # utf-8-sig: Windows editors (Notepad) save UTF-8 with a byte-order mark.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is one
        raise SubmissionError(f"{path}: cannot read a JSON submission: {error}") from None
    except RecursionError:
        raise SubmissionError(f"{path}: cannot read a JSON submission: nested too deep") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: a submission is a JSON object of answers by problem id")
    if "answers" in data:
        answers, student = data["answers"], student_id or data.get("student_id")
    else:
        answers, student = data, student_id
    if not isinstance(answers, dict):
        raise SubmissionError(f"{path}: `answers` must be an object of answers by problem id")
    if not isinstance(student, str) or not student:
        raise SubmissionError(f"{path}: no student id: give --student-id or a `student_id` field")
    return Submission(student, answers)


BEFORE_REGRADE = "before-regrade"
"""The folder of a class's results where ``--regrade`` moves each earlier result before it
grades again (the last run's only: each result replaces the one there)."""


def refuse_overwrite(out: Path, submission: Path) -> None:
    """Refuse results written where they would replace the submissions: ``--out`` the class
    folder itself (each ``<id>.json`` result over the student's ``<id>.json``, and the next
    run grading the results as submissions), or one result file the submission file.

    Raises:
        SubmissionError: saying which.
    """
    if out.exists() and submission.exists() and out.resolve() == submission.resolve():
        what = "the class folder" if submission.is_dir() else "the submission file"
        raise SubmissionError(
            f"{out}: the results would replace the submissions: it is {what}; write them "
            "elsewhere (a folder inside the class folder is fine)"
        )


def read_class(path: Path) -> list[Submission]:
    """Every submission of a class: a folder of ``<student id>.json`` files or a CSV file."""
    if path.is_dir():
        # .JSON too: a Windows or macOS user's file names keep whatever case was typed.
        files = sorted(f for f in path.iterdir() if f.suffix.lower() == ".json" and f.is_file())
        if not files:
            raise SubmissionError(f"{path}: no .json submissions in this folder")
        submissions = [_read_folder_file(f) for f in files]
    elif path.suffix.lower() == ".csv":
        submissions = _read_csv(path)
    else:
        raise SubmissionError(f"{path}: a class is a folder of .json files or a .csv file")
    seen: dict[str, str | None] = {}
    for submission in submissions:
        student = submission.student_id
        if student in seen:
            where = [w for w in (seen[student], submission.source) if w]
            both = f": {' and '.join(where)}" if where else ""
            raise SubmissionError(f"{path}: student {student!r} appears twice{both}")
        seen[student] = submission.source
    return submissions


def _read_folder_file(path: Path) -> Submission:
    """The submission of one file of a class folder: the student its name says
    (``<student id>.json``).

    A ``student_id`` field of the file (``{"student_id", "answers"}``) must name the same
    student: the id of the name, or an id whose result file has this name (``result_names``:
    ``o_brien@example.edu~<hash>.json``, for an id that no file name can hold, such as one
    with a ``/``). A file whose field names another student is not graded: the student of its
    name is left ungraded with a note that says so (neither student is graded with the other's
    answers, and nobody disappears from the gradebook). So is a file that cannot be read; the
    rest of the class goes on."""
    named = path.stem
    claimed = _field_id(path)
    if claimed is not None and claimed != named and path.name != _hashed_name(claimed):
        return Submission(named, {}, unreadable=_names_another(path, claimed), source=path.name)
    student = claimed if claimed is not None else named
    try:
        return replace(_read_submission(path, student), source=path.name)
    except SubmissionError as error:
        return Submission(student, {}, unreadable=str(error), source=path.name)


def _names_another(path: Path, claimed: str) -> str:
    """Why a class folder's file whose ``student_id`` field disagrees with its name is not
    graded."""
    problem = id_problem(claimed)
    shown = f"{claimed!r:.80}" + (f" ({problem})" if problem else "")
    return (
        f"{path}: the file names another student: its student_id field is {shown}, its name "
        f"says {path.stem!r:.80}; not graded, so that nobody is graded with another's answers: "
        "rename the file or correct the field"
    )


def _field_id(path: Path) -> str | None:
    """The ``student_id`` field of a class folder's file of the form ``{"student_id",
    "answers"}``, or None (no such field, an empty one, or a file that cannot be read:
    ``_read_submission`` reports it properly)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and "answers" in data and isinstance(data.get("student_id"), str):
        return str(data["student_id"]) or None
    return None


CSV_CELL_LIMIT = 256 * 2**20
"""The largest CSV cell read (the csv module's own limit, 128 KiB, stopped a whole class at
one long answer); larger than any body the service takes."""


def _read_csv(path: Path) -> list[Submission]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_CELL_LIMIT))
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SubmissionError(f"{path}: cannot read the CSV: {error}") from None
    # Spreadsheets write ", 1.1a" as a header cell " 1.1a": read it as 1.1a. A column given
    # twice would keep one of its cells per student, silently: refused.
    repeated = sorted(name for name, n in Counter(h for h in header if h).items() if n > 1)
    if repeated:
        raise SubmissionError(f"{path}: the header names a column twice: {', '.join(repeated)}")
    if not lines or "student_id" not in header:
        raise SubmissionError(f"{path}: the CSV needs a header with a `student_id` column")
    submissions = []
    for line, cells in enumerate(lines, start=2):
        row = dict(zip(header, cells, strict=False))  # a short row: its last answers are blank
        student = (row.pop("student_id", "") or "").strip()
        extra = [cell for cell in cells[len(header) :] if cell.strip()]
        if extra and student:
            # An unquoted comma inside a cell (`max(H, 1)`): every answer after it would be
            # read under the next column's problem. That student waits for the line's fix.
            submissions.append(
                Submission(
                    student,
                    {},
                    unreadable=_extra_cells(path, line, cells, header),
                    source=f"line {line}",
                )
            )
            continue
        answers = {
            problem: _cell(cell)
            for problem, cell in row.items()
            if problem and cell and cell.strip()
        }
        if not student and not answers:
            continue  # a spreadsheet's trailing row of empty cells
        if not student:
            raise SubmissionError(f"{path}:{line}: answers without a student_id: whose are they?")
        submissions.append(Submission(student, answers, source=f"line {line}"))
    return submissions


def _extra_cells(path: Path, line: int, cells: list[str], header: list[str]) -> str:
    return (
        f"{path}:{line}: {len(cells)} cells for the header's {len(header)} columns, so the "
        "answers cannot be told apart (a cell holding a comma, such as max(H, 1), must be in "
        "double quotes); not graded: correct the line and run again"
    )


def _cell(cell: str) -> Any:
    """A CSV cell's answer: JSON when it parses (``[5, 2]``, ``0.25``), else the text itself
    (a formula such as ``floor((H - K)/S) + 1``)."""
    try:
        return json.loads(cell)
    except (ValueError, RecursionError):  # not JSON, or past what it reads: the text
        return cell.strip()


def result_names(student_ids: Iterable[str]) -> dict[str, str]:
    """The name of each student's result file in the output folder, by student id.

    A plain id (``PLAIN_ID``: ``ada``, ``ada@example.edu``) names its file as it is:
    ``ada@example.edu.json``. Any other id (``o'brien@example.edu``, ``ada@exämple.edu``, an id
    over 128 characters) names a file by its safe characters, every other one written ``_``,
    then ``~`` and the first 12 hex digits of the SHA-256 of the id's UTF-8:
    ``o_brien@example.edu~<12 hex digits>.json``. No plain id holds a ``~``, and two ids that
    differ anywhere differ in their hash, so no two students share a file.

    Two plain ids of the class that differ only by case (``Ada`` and ``ada``) would share a
    file on a case-insensitive file system (macOS's, Windows'): both take the hashed form.

    Args:
        student_ids: every student of the class (the names of some depend on the others).

    Returns:
        File names (``<name>.json``), by student id.
    """
    ids = list(student_ids)
    folded = Counter(i.lower() for i in ids if PLAIN_ID.fullmatch(i))
    return {
        i: f"{i}.json" if PLAIN_ID.fullmatch(i) and folded[i.lower()] == 1 else _hashed_name(i)
        for i in ids
    }


def _hashed_name(student_id: str) -> str:
    digest = hashlib.sha256(student_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_UNSAFE.sub('_', student_id[:64])}~{digest[:HASH_DIGITS]}.json"


STAMP = "tensorgrade"
"""The key, under a result's ``extra_data`` (Gradescope's field for data of one's own), of what
was graded: the assignment, the student, its revision (``revision`` in ``GET /v1/assignments``:
the answer key, tolerances and variant secret it was graded against) and a digest of the
answers, so that a later run takes the result again only for the same answers of the same
student to the same assignment, graded against the same key. The service writes the
assignment, student, revision and ignored answers there itself; the digest is added here."""


def answers_digest(answers: Mapping[str, Any]) -> str | None:
    """SHA-256 of the answers written canonically (keys sorted), or None where JSON cannot
    write them (then a result is never taken again: the student is graded on every run)."""
    try:
        text = json.dumps(answers, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def stamped(
    result: Mapping[str, Any],
    assignment: str,
    student_id: str,
    answers: Mapping[str, Any],
    ignored: Sequence[str],
    revision: str | None = None,
) -> dict[str, Any]:
    """``result`` with what it grades under ``extra_data``: the assignment, the student, the
    revision it was graded against, the answers' digest and the answers to problems the
    assignment does not have.

    The revision and the ignored answers are the service's own record in ``result`` where it
    gives one: a replica of another revision (mid-way through a redeploy) may have graded it,
    and the service alone knows which answers it took (an object answering a split question's
    parts). Else ``revision`` (as the service listed it; None for a service that lists none)
    and ``ignored`` (worked out from the problems listed).
    """
    extra = dict(result.get("extra_data") or {})
    served = extra.get(STAMP)
    served = served if isinstance(served, dict) else {}
    graded_revision = served.get("revision")
    served_ignored = served.get("ignored")
    extra[STAMP] = {
        "assignment": assignment,
        "student_id": student_id,
        "revision": graded_revision if isinstance(graded_revision, str) else revision,
        "answers_sha256": answers_digest(answers),
        "ignored": (
            [str(i) for i in served_ignored] if isinstance(served_ignored, list) else list(ignored)
        ),
    }
    return {**result, "extra_data": extra}


def _stamp(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    extra = result.get("extra_data") if result is not None else None
    mark = extra.get(STAMP) if isinstance(extra, dict) else None
    return mark if isinstance(mark, dict) else None


def _same_answers(
    mark: Mapping[str, Any], assignment: str, student_id: str, answers: Mapping[str, Any]
) -> bool:
    digest = answers_digest(answers)
    return (
        digest is not None
        and mark.get("assignment") == assignment
        # The student too: on macOS and Windows `Ada.json` is the file `ada.json`, so an id
        # corrected from ada to Ada would otherwise keep ada's grade, of ada's variant.
        and mark.get("student_id") == student_id
        and mark.get("answers_sha256") == digest
    )


def graded_before(
    result: Mapping[str, Any] | None,
    assignment: str,
    student_id: str,
    answers: Mapping[str, Any],
    revision: str | None = None,
) -> bool:
    """Whether ``result`` (an earlier run's) grades these answers of this student to this
    revision of this assignment: a result of another assignment or student, of answers since
    corrected, of another revision (the answer key, a tolerance or the variant secret changed
    since), or of a run that did not record them (no stamp, or a stamp without a student or
    a revision while the service lists one), is graded again.

    Args:
        result: the earlier result, or None.
        assignment: the assignment graded now.
        student_id: the student graded now.
        answers: the answers graded now.
        revision: the assignment's ``revision`` as the service lists it now (None: it lists
            none, and only a result recorded without one is taken again).
    """
    mark = _answers_stamp(result, assignment, student_id, answers)
    return mark is not None and mark.get("revision") == revision


def _answers_stamp(
    result: Mapping[str, Any] | None,
    assignment: str,
    student_id: str,
    answers: Mapping[str, Any],
) -> Mapping[str, Any] | None:
    """The stamp of ``result`` when it grades these very answers of this student to this
    assignment (of whichever revision), else None."""
    mark = _stamp(result)
    if mark is None or not _same_answers(mark, assignment, student_id, answers):
        return None
    return mark


def is_grade(result: object) -> bool:
    """Whether an answer of the grade route is a Gradescope result (a proxy's page or an
    empty object is not, and must not be kept as a student's grade)."""
    return (
        isinstance(result, dict)
        and isinstance(result.get("tests"), list)
        and isinstance(result.get("score"), int | float)
    )


def load_result(path: Path) -> dict[str, Any] | None:
    """A student's result from an earlier run, or None (none, or cut short mid-write)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a reader (or a resumed run) sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    try:
        os.replace(partial, path)
    except OSError:  # ``path`` a folder, say: the error says so, and nothing is left behind
        partial.unlink(missing_ok=True)
        raise


COMEBACK_SECONDS = 120.0
"""How long a class run waits for a service that stopped taking connections after it had
answered (a restart, a redeploy) before it leaves the rest of the class ungraded."""


class Comeback:
    """The wait, shared by the workers of a class run, for a service that stopped taking
    connections: the first worker refused polls ``/readyz`` (one at a time: the others wait
    behind it and find it back, or given up); past ``patience`` seconds of it, every worker
    gives up at once. A service restarting (15-20 s to be ready again) left a whole queue
    ungraded within seconds, each student after the client's own retries (about 8 s)."""

    def __init__(
        self,
        client: BaseClient[Any],
        patience: float = COMEBACK_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.patience = patience
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._given_up = False

    @property
    def given_up(self) -> bool:
        return self._given_up

    def wait(self) -> bool:
        """Whether the service is ready again (polled for at most ``patience`` seconds)."""
        with self._lock:
            if self._given_up:
                return False
            deadline = self._clock() + self.patience
            while True:
                with contextlib.suppress(httpx.HTTPError, ProblemError):
                    if self._client.ready():
                        return True
                if self._clock() >= deadline:
                    self._given_up = True
                    return False
                self._sleep(1.0)


def grade_patiently(
    comeback: Comeback,
    client: BaseClient[Any],
    assignment: str,
    student_id: str,
    answers: Mapping[str, Any],
) -> dict[str, Any]:
    """``grade_submission``, sent once more when the service had stopped taking connections
    and came back (``Comeback``); not sent at all once the run gave up waiting for it."""
    if comeback.given_up:
        raise httpx.ConnectError(
            f"the service stopped taking connections during this run and was not back within "
            f"{comeback.patience:g} s"
        )
    try:
        return grade_submission(client, assignment, student_id, answers)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        if not comeback.wait():
            raise
    return grade_submission(client, assignment, student_id, answers)


def grade_submission(
    client: BaseClient[Any], assignment: str, student_id: str, answers: Mapping[str, Any]
) -> dict[str, Any]:
    """The Gradescope result of one student's answers.

    An answer JSON cannot carry (text that is not valid Unicode, lists nested past the
    client's bound) is not sent: its problem scores 0 ("no answer" to the service) and its
    feedback says why, and the other answers are graded, as the service does for a malformed
    answer. Otherwise one such answer would leave the whole submission ungraded.

    Raises:
        ProblemError, UnexpectedResponse, httpx.HTTPError: as ``BaseClient.grade`` does.
        UnsendableError: the request cannot be sent for a reason of no single answer.
    """
    try:
        return client.grade(assignment, student_id, answers, gradescope=True)
    except UnsendableError:
        unsent = client.unsendable_answers(answers)
        if not unsent:
            raise
    sent = {problem: answer for problem, answer in answers.items() if problem not in unsent}
    return with_unsent(client.grade(assignment, student_id, sent, gradescope=True), unsent)


def with_unsent(result: Mapping[str, Any], unsent: Mapping[str, str]) -> dict[str, Any]:
    """``result`` whose tests of the ``unsent`` problems (why each, by problem id) say that
    their answer could not be sent; the others (an object answering a split question, an
    unknown id) are named in its ``output``."""
    tests = []
    named = set()
    for test in result.get("tests") or []:
        reason = unsent.get(str(test.get("number"))) if isinstance(test, dict) else None
        # Scored 0 as not answered; one with points was answered otherwise too (in an object
        # of a split question's parts), and its feedback stands.
        if reason is not None and not test.get("score"):
            named.add(str(test.get("number")))
            output = f"Not graded: your answer could not be sent to the grader: {reason}"
            test = {**test, "output": output}
        tests.append(test)
    output = str(result.get("output") or "")
    others = [f"{problem}: {reason}" for problem, reason in unsent.items() if problem not in named]
    if others:
        output += " Answers that could not be sent to the grader: " + "; ".join(others)
    return {**result, "tests": tests, "output": output}


def unknown_answers(answers: Mapping[str, Any], problems: Collection[str]) -> list[str]:
    """The answers' ids that are no problem of ``problems`` nor a question split into some
    of them (``1.3-4`` for ``1.3-4-loss``): those the service ignores."""
    return sorted(
        answer
        for answer in answers
        if answer not in problems and not any(p.startswith(f"{answer}-") for p in problems)
    )


def problem_result(error: ProblemError) -> dict[str, Any]:
    """A Gradescope result for a submission the service refused (e.g. a malformed answer)."""
    problem = error.body or {"status": error.status, "detail": error.detail}
    return refused_result(error.detail, problem)


def refused_result(detail: str, problem: Mapping[str, Any]) -> dict[str, Any]:
    """A Gradescope result, score 0, for a submission that cannot be graded as it is.

    Args:
        detail: why, and what to change (the student reads it, the gradebook's note quotes it).
        problem: the refusal as a problem detail (its ``tensorgrade_problem`` field).
    """
    return {
        "score": 0.0,
        "output": f"Not graded: {detail}",
        "tests": [],
        "tensorgrade_problem": dict(problem),
    }


def bad_id_result(student_id: str, problem: str) -> dict[str, Any]:
    """The result of a student whose id the service refuses, without asking it: the class
    goes on, and the gradebook's note says what to correct."""
    detail = f"{_id_message(student_id, problem)}: correct the id in the class and run again"
    # 422: what the service answers a request naming such an id.
    return refused_result(detail, {"status": 422, "detail": detail})


class Progress:
    """A progress bar on a terminal; one line per student elsewhere (a CI log, a file)."""

    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = done
        self.failed = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        if self.tty:
            self._draw("")

    def advance(self, student_id: str, ok: bool) -> None:
        self.done += 1
        self._show(student_id, ok)

    def failed_before(self, student_id: str) -> None:
        """A student counted in ``done`` from the start who failed all the same (a file that
        cannot be read): counted and shown as failed."""
        self._show(student_id, False)

    def _show(self, student_id: str, ok: bool) -> None:
        self.failed += not ok
        if self.tty:
            self._draw(student_id)
        else:
            state = "graded" if ok else "FAILED"
            print(f"[{self.done}/{self.total}] {state} {student_id}", file=self.stream)

    def _draw(self, student_id: str) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total}{failed} {student_id:<20.20}")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def grade_class(
    client: BaseClient[Any],
    assignment: str,
    submissions: Sequence[Submission],
    out: Path,
    *,
    jobs: int = 4,
    progress: Callable[[int, int], Progress] | None = None,
    problems: Collection[str] | None = None,
    regrade: bool = False,
    report: ClassReport | None = None,
    revision: str | None = None,
    comeback: Comeback | None = None,
) -> ClassReport:
    """Grade every submission not graded yet, ``jobs`` at a time, writing each result.

    A result file of an earlier run is taken again (the student is not graded again) when it
    grades the same answers to the same revision of the assignment (``graded_before``).

    Args:
        client: the service's client (shared by the threads: httpx clients are thread-safe).
        assignment: the assignment id, e.g. ``cnn-rnn``.
        submissions: the class.
        out: the folder of result files (created if missing).
        jobs: requests in flight at once.
        progress: makes the progress display from (total, already done).
        problems: the assignment's problem ids, when known: answers to others are recorded
            in the result (the service ignores them) and the gradebook's note names them.
        regrade: grade every student again, whatever the folder holds.
        report: filled as the run goes (so that a caller has it after an interrupt or a
            stop too); a new one by default.
        revision: the assignment's ``revision`` as the service lists it (recorded in each
            result; an earlier result of another revision is graded again).
        comeback: how the run waits for a service that stops taking connections (a
            ``Comeback`` of ``COMEBACK_SECONDS`` by default).

    Returns:
        Who was graded, resumed and left ungraded.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = result_names(s.student_id for s in submissions)
    report = report if report is not None else ClassReport()
    set_aside: dict[str, Path] = {}
    if regrade:
        # Every earlier result goes aside before any request: a student whose request fails
        # now is "not graded yet" in the gradebook, and a later run (with or without
        # --regrade) grades them, rather than their earlier result standing as if it were
        # this run's. A run the service stops at once (a key refused) puts them back.
        aside = out / BEFORE_REGRADE
        aside.mkdir(exist_ok=True)
        for submission in submissions:
            name = names[submission.student_id]
            with contextlib.suppress(FileNotFoundError):
                os.replace(out / name, aside / name)
                set_aside[submission.student_id] = aside / name
    todo = []
    for submission in submissions:
        student = submission.student_id
        if submission.unreadable is not None:
            report.failed[student] = submission.unreadable  # fixed, a later run grades it
            continue
        earlier = None if regrade else load_result(out / names[student])
        # As graded_before, with the answers' digest worked out once: the same answers graded
        # to another revision (or to none recorded) are graded again because the key changed.
        mark = _answers_stamp(earlier, assignment, student, submission.answers)
        if mark is not None and mark.get("revision") == revision:
            report.resumed.append(student)
            continue
        if mark is not None:
            report.regraded.append(student)
        if problem := id_problem(student):
            # Known before any request, and the same on every run: a result, not a failure.
            result = bad_id_result(student, problem)
            write_json(
                out / names[student],
                stamped(result, assignment, student, submission.answers, [], revision),
            )
            report.graded.append(student)
        else:
            todo.append(submission)
    # Done already: the resumed, the refused ids and the unreadable files (failed).
    bar = (progress or Progress)(len(submissions), len(submissions) - len(todo))
    for student in report.failed:
        bar.failed_before(student)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    comeback = comeback if comeback is not None else Comeback(client)
    futures: dict[Future[dict[str, Any]], Submission] = {
        pool.submit(grade_patiently, comeback, client, assignment, s.student_id, s.answers): s
        for s in todo
    }
    handled: set[Future[dict[str, Any]]] = set()
    known = set(problems) if problems else None

    def keep(future: Future[dict[str, Any]]) -> None:
        handled.add(future)
        submission = futures[future]
        student = submission.student_id
        result = _outcome(future, student, report)
        if result is not None:
            ignored = unknown_answers(submission.answers, known) if known else []
            write_json(
                out / names[student],
                stamped(result, assignment, student, submission.answers, ignored, revision),
            )
            report.graded.append(student)
        bar.advance(student, result is not None)

    try:
        for future in as_completed(futures):
            keep(future)
    except GradingStopped:
        # Refused for everyone: the earlier results of those this run did not grade stand.
        for student, path in set_aside.items():
            if student not in report.graded:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, out / names[student])
        raise
    except KeyboardInterrupt:
        running = sum(1 for f in futures if f.running())
        if running:
            print(
                f"\ninterrupted: waiting for the {running} answers on their way "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
            )
        raise
    finally:
        # On an interrupt or a stop, requests not yet sent are dropped; the answers already
        # on their way are kept when they arrive; the next run starts from the results.
        report.abandoned = True  # until the wait below ends: a second Ctrl-C may cut it short
        pool.shutdown(wait=True, cancel_futures=True)
        report.abandoned = False
        for future in futures:
            if future not in handled and future.done() and not future.cancelled():
                with contextlib.suppress(GradingStopped):  # the stop under way says it
                    keep(future)
        bar.close()
    return report


def _outcome(
    future: Future[dict[str, Any]], student: str, report: ClassReport
) -> dict[str, Any] | None:
    try:
        result = future.result()
    except UnexpectedResponse as error:
        # Not the service answering (a proxy's page, a captive portal): the same for everyone.
        raise GradingStopped(str(error)) from error
    except ProblemError as error:
        if error.status in SUBMISSION_FAULTS and not _from_service(error):
            # Not the service's problem detail: a proxy's page (nginx's 413 for a body over
            # its own limit, or a gateway's {"status": "error", "detail": ...}). Nothing the
            # service judged: no grade; a later run retries.
            report.failed[student] = f"answered by something other than the service: {error}"
        elif error.status in SUBMISSION_FAULTS:
            return problem_result(error)
        elif error.status not in PASSING_FAULTS and error.status < 500:
            raise GradingStopped(str(error)) from error
        else:
            report.failed[student] = str(error)  # busy or failing: a later run retries
    except UnsendableError as error:
        # The submission holds what JSON cannot carry: the same on every run, so a result.
        return refused_result(str(error), {"detail": str(error)})
    except httpx.ReadTimeout:
        report.failed[student] = "the service was reached but did not answer in time (--timeout)"
    except httpx.HTTPError as error:
        report.failed[student] = f"{type(error).__name__}: {error}"
    else:
        if is_grade(result):
            return result
        # A proxy's page, an empty object: nothing to keep as a grade; a later run retries.
        report.failed[student] = "the service's answer is not a Gradescope result"
    return None


def _from_service(error: ProblemError) -> bool:
    """Whether a refusal is the service's own problem detail (RFC 9457: a ``type`` URI and
    the integer ``status`` it answered with), not the JSON of something in front of it that
    also has a ``detail`` (``{"status": "error"}``) or an integer ``status`` (a Spring
    gateway's ``{"timestamp", "status", "error", "path"}``)."""
    body = error.body or {}
    status = body.get("status")
    return (
        isinstance(status, int)
        and not isinstance(status, bool)
        and isinstance(body.get("type"), str)
        and isinstance(body.get("title"), str)
    )


def unknown_columns(
    path: Path, submissions: Sequence[Submission], problems: Collection[str]
) -> None:
    """Refuse a class CSV whose columns name problems the assignment does not have: the
    service would ignore those answers, and every student would lose them silently.

    Raises:
        SubmissionError: naming each such column, with the problem id it may have meant.
    """
    unknown = sorted({key for s in submissions for key in s.answers} - set(problems))
    if not unknown:
        return
    by_case = {p.casefold(): p for p in problems}
    named = [
        f"{column!r} (did you mean {by_case[column.casefold()]!r}?)"
        if column.casefold() in by_case
        else repr(column)
        for column in unknown
    ]
    raise SubmissionError(
        f"{path}: columns that are no problem of the assignment: {', '.join(named)}; "
        f"its problems are {', '.join(problems)}"
    )


def problem_key(test: Mapping[str, Any]) -> str:
    """The gradebook column of a Gradescope test: its number (the problem id), else its name."""
    return str(test.get("number") or test.get("name") or "?")


def write_gradebook(
    out: Path,
    student_ids: Iterable[str],
    reasons: Mapping[str, str] | None = None,
    max_score: float | None = None,
    current: Callable[[str, Mapping[str, Any]], bool] | None = None,
) -> Path:
    """The CSV gradebook of the given students, from their result files.

    Columns: ``student_id``, ``score``, ``max_score``, one per problem (in the order they
    first appear), and ``note`` (why a submission was not graded, or answers that were
    ignored). A student without a result file has an empty row, so nobody silently
    disappears from the gradebook.

    Args:
        out: the folder of result files.
        student_ids: the class, in the gradebook's order.
        reasons: why students were left ungraded by this run (their note says so).
        max_score: the assignment's points, the ``max_score`` of a submission that was not
            graded as it is (its result has no problems to add up), so that every row's
            percentage means the same.
        current: whether a student's result file grades what they submit now (see
            ``graded_before``); one that does not (answers since corrected, not graded again
            yet) is no grade of theirs, and their row says "not graded yet".
    """
    ids = list(student_ids)
    names = result_names(ids)
    rows: list[dict[str, Any]] = []
    problems: dict[str, None] = {}
    for student in ids:
        result = load_result(out / names[student])
        if result is not None and current is not None and not current(student, result):
            result = None
        row: dict[str, Any] = {"student_id": student}
        if result is None:
            reason = (reasons or {}).get(student)
            row["note"] = f"not graded yet: {reason}" if reason else "not graded yet"
        else:
            tests = result.get("tests") or []
            row["score"] = result.get("score", sum(t.get("score", 0) for t in tests))
            row["max_score"] = sum(t.get("max_score", 0) for t in tests)
            if not tests and max_score is not None:
                row["max_score"] = max_score
            for test in tests:
                key = problem_key(test)
                problems.setdefault(key)
                row[key] = test.get("score")
            if "tensorgrade_problem" in result:
                row["note"] = result.get("output", "")
            else:
                extra = result.get("extra_data")
                mark = extra.get(STAMP) if isinstance(extra, dict) else None
                ignored = mark.get("ignored") if isinstance(mark, dict) else None
                if ignored:
                    row["note"] = "answers to unknown problems ignored: " + ", ".join(ignored)
        rows.append(row)
    path = out / GRADEBOOK
    partial = path.with_name(path.name + ".partial")
    # backslashreplace: an id that is not valid Unicode (see id_problem) keeps its row.
    with partial.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["student_id", "score", "max_score", *problems, "note"]
        )
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)
    return path
