"""The roster: a CSV file that binds each student key to one student id.

The file a TA generates (``tensorgrade keys``) and hands out, one line per student::

    student_id,key
    alice@example.edu,3q2V...
    bob@example.edu,Zk8p...

Extra columns (a name, a section) are ignored. A key of the roster is a student key that may
only read and check its own student id's variants (API.md "Roles": "its own answers").

Every mistake stops start-up with the file and the line, never with a key: the message goes
to logs that more people read than the roster.
"""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("student_id", "key")
MAX_STUDENT_ID_LENGTH = 200
"""As the assignment routes accept a ``student_id`` (service/routes/assignments.py): an id
they would refuse could never be used with its key."""


class RosterError(ValueError):
    """A roster that cannot be used: the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class RosterEntry:
    """One student of the roster.

    Attributes:
        student_id: the only id the key may read and check.
        key: the student's API key.
        line: where it is in the file (for messages).
    """

    student_id: str
    key: str = field(repr=False)
    line: int


def student_id_problem(student_id: str) -> str | None:
    """What makes ``student_id`` one the assignment routes refuse, or None when they accept it.

    The routes' rule (``STUDENT_ID_RULES`` in service/routes/assignments.py): 1 to 200
    characters, none of them a control character, and no white space at either end (ids are
    exact: ``"ada "`` would be another student than ``"ada"``, with another variant). Anything
    else goes: e-mail addresses with an apostrophe or accents, names with spaces inside.
    """
    if not student_id:
        return "the student_id is empty"
    if len(student_id) > MAX_STUDENT_ID_LENGTH:
        return f"the student_id is longer than {MAX_STUDENT_ID_LENGTH} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in student_id):
        return "the student_id holds a control character"
    if student_id[0].isspace() or student_id[-1].isspace():
        return "the student_id begins or ends with a space"
    return None


def _key_problem(key: str, min_length: int) -> str | None:
    if not key:
        return "the key is empty"
    if len(key) < min_length:
        return f"the key has fewer than {min_length} characters"
    # It travels in the X-API-Key header: printable ASCII without spaces, or no client can send it.
    if not all("!" <= c <= "~" for c in key):
        return "the key holds a space or a character outside printable ASCII"
    return None


def load_roster(path: Path, min_key_length: int) -> tuple[RosterEntry, ...]:
    """Read and check a roster file.

    Args:
        path: the CSV file, with a header row naming at least ``student_id`` and ``key``.
        min_key_length: the shortest key accepted (as for every other key).

    Returns:
        The students in the file's order.

    Raises:
        RosterError: the file cannot be read, lacks a column, or a line has an empty or bad id
            or key, or repeats an id or a key of an earlier line; or the file has no student.
    """
    try:
        # utf-8-sig: a spreadsheet's "Save as CSV" often starts the file with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RosterError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RosterError(f"{path}: cannot be read: {error}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise RosterError(
            f"{path}:1: the header row must name the columns student_id,key "
            f"(missing: {', '.join(missing)})"
        )
    twice = sorted({column for column in COLUMNS if header.count(column) > 1})
    if twice:
        # csv.DictReader would keep the last of them without a word: which key binds the
        # student would then depend on the column order.
        raise RosterError(f"{path}:1: the header row names {', '.join(twice)} more than once")
    reader.fieldnames = header
    entries: list[RosterEntry] = []
    lines_of_ids: dict[str, int] = {}
    lines_of_keys: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        student_id = (row.get("student_id") or "").strip()
        key = (row.get("key") or "").strip()
        problem = student_id_problem(student_id) or _key_problem(key, min_key_length)
        if problem:
            raise RosterError(f"{path}:{line}: {problem}")
        if student_id in lines_of_ids:
            raise RosterError(
                f"{path}:{line}: student_id {student_id!r} is also on line "
                f"{lines_of_ids[student_id]}"
            )
        if key in lines_of_keys:
            raise RosterError(
                f"{path}:{line}: the key is also the key of line {lines_of_keys[key]} "
                "(a key binds one student)"
            )
        lines_of_ids[student_id] = lines_of_keys[key] = line
        entries.append(RosterEntry(student_id, key, line))
    if not entries:
        # An empty roster with no other key would leave the service open, which its operator
        # did not mean by configuring one.
        raise RosterError(f"{path}: the roster has no student")
    return tuple(entries)


def new_key() -> str:
    """A fresh student key: 24 random bytes, URL-safe base64 (32 characters).

    Never one that starts with ``-``: ``--api-key -x...`` reads as an option on a command line
    (1 key in 64; drawing again costs less than 0.03 bits of the key's 192).
    """
    while (key := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return key


def roster_text(student_ids: list[str]) -> str:
    """A roster (CSV, header first) with a fresh key for each student.

    Args:
        student_ids: the students, each once.

    Returns:
        The file's text.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((student_id, new_key()) for student_id in student_ids)
    return out.getvalue()


def read_student_ids(path: Path) -> list[str]:
    """The student ids of a plain list, one a line (blank lines skipped).

    Args:
        path: the list.

    Returns:
        The ids in the file's order.

    Raises:
        RosterError: the file cannot be read, an id is not one the service accepts, an id
            is repeated, or there is none.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RosterError(f"{path}: cannot be read: {error}") from None
    ids: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        student_id = raw.strip()
        if not student_id:
            continue
        problem = student_id_problem(student_id)
        if problem:
            raise RosterError(f"{path}:{number}: {problem}")
        if student_id in ids:
            raise RosterError(
                f"{path}:{number}: student_id {student_id!r} is also on line {ids[student_id]}"
            )
        ids[student_id] = number
    if not ids:
        raise RosterError(f"{path}: no student id in the file")
    return list(ids)
