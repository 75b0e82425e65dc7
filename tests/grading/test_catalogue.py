"""Assignment files: what a valid file gives, and every wrong one stopping start-up with a
message that names the file and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.grading.catalogue import (
    AssignmentFileError,
    assignment_revision,
    catalogue_from_settings,
    load_catalogue,
    parse_assignment,
)
from service.settings import Settings
from tests.grading.sample import SAMPLE

ROOT = Path(__file__).resolve().parents[2]


def test_the_sample_parses_with_its_defaults() -> None:
    sample = parse_assignment(SAMPLE, "sample.toml")
    p1, p2, p3 = sample.problems
    assert sample.total_points == 4.5
    assert p1.feedback == "report"  # from [defaults]
    assert p2.feedback == "verdict" and p2.visibility == "after_due_date"
    assert p1.tolerance.rtol == 1e-4 and p3.tolerance.atol == 0.01
    assert p1.visibility == "visible"


def replace(old: str, new: str) -> str:
    assert old in SAMPLE, old
    return SAMPLE.replace(old, new, 1)


P1_EXPECTED = SAMPLE.index("[problems.expected]")
P1_GIVEN_AND_EXPECTED = (
    SAMPLE[SAMPLE.index("[problems.given.v]") : P1_EXPECTED]
    + SAMPLE[P1_EXPECTED:].split("[[problems]]")[0]
)
SHARING_P1 = f"""
[[problems]]
id = "p4"
variant = "p1"
title = "The same tensor"
statement = "Give `v` again."
points = 1
answer_kind = "tensor"

{P1_GIVEN_AND_EXPECTED}"""
"""A problem drawing p1's tensor: p4's own ``v`` is p1's, given and expected as p1 has them."""

WRONG_FILES = [
    pytest.param(
        replace('title = "A sample"', 'title = "A sample'), "", "not valid TOML", id="toml"
    ),
    pytest.param(replace('id = "sample"', 'id = "a/b"'), "id", "pattern", id="bad-id"),
    pytest.param(
        replace('title = "A drawn tensor"\n', ""),
        "problems[0] (p1).title",
        "Field required",
        id="missing-key",
    ),
    pytest.param(
        replace('value = { given = "v" }', 'value = { given = "v" }\nslect = "y"'),
        "problems[0] (p1)",
        "expected.slect is not a key of op value; it takes label, op, value",
        id="typo-in-expected",
    ),
    pytest.param(
        replace("points = 2\n", "pionts = 2\n"),
        "problems[0] (p1).pionts",
        "Extra inputs",
        id="typo",
    ),
    pytest.param(
        replace('op = "value"\nvalue = { given = "v" }', 'op = "values"'),
        "problems[0] (p1)",
        "expected.op must be one of",
        id="unknown-op",
    ),
    pytest.param(
        replace('op = "value"\nvalue = { given = "v" }', 'op = "jacobian"\nmodel = "conv1d"'),
        "problems[0] (p1)",
        "needs of, wrt",
        id="op-keys",
    ),
    pytest.param(
        replace('value = { given = "v" }', 'value = { given = "w" }'),
        "problems[0] (p1)",
        "expected.value refers to given tensor 'w'",
        id="undeclared-given",
    ),
    pytest.param(
        replace("low = -3\n", "low = 5\n"),
        "problems[0] (p1).given.v",
        "`low` (5.0) must be less than `high`",
        id="low-high",
    ),
    pytest.param(
        replace("low = -3\n", "low = -3\nmean = 1\n"),
        "problems[0] (p1).given.v",
        "mean belong to the normal distribution",
        id="stray-option",
    ),
    pytest.param(
        replace("shape = [2, 3]", "shape = [2, 0]"),
        "problems[0] (p1).given.v.shape",
        "at least 1",
        id="empty-shape",
    ),
    pytest.param(
        replace("value = 4\n", "value = 4\ndistribution = 'normal'\n"),
        "problems[2] (p3).given.c",
        "exactly one of `value`",
        id="value-and-distribution",
    ),
    pytest.param(
        replace("value = 4\n", "value = [[1, 2], [3]]\n"),
        "problems[2] (p3).given.c",
        "rectangular",
        id="ragged-value",
    ),
    pytest.param(
        replace("value = 4\n", "value = 4.5\n"),
        "problems[2] (p3).given.c",
        "non-integer",
        id="integer-value",
    ),
    pytest.param(
        replace('answer_kind = "number"', 'answer_kind = "formula"'),
        "problems[2] (p3)",
        "answer_kind formula takes expected.op formula",
        id="kind-op",
    ),
    pytest.param(
        replace('correct = "b"', 'correct = "c"'),
        "problems[1] (p2)",
        "expected.correct must be one of the choices: a, b",
        id="choice",
    ),
    pytest.param(
        replace(
            'choices = [{ id = "a", text = "A" }, { id = "b", text = "B" }]\n'
            'expected = { op = "choice", correct = "b" }',
            'choices = [{ id = "A", text = "Up" }, { id = "a", text = "Down" }]\n'
            'expected = { op = "choice", correct = "A" }',
        ),
        "problems[1] (p2)",
        "choices 'A' and 'a' differ only by case",
        id="choice-ids-differ-by-case",
    ),
    pytest.param(
        replace('{ id = "b", text = "B" }', '{ id = "a", text = "B" }'),
        "problems[1] (p2)",
        "two choices have the id 'a'",
        id="choice-ids-repeat",
    ),
    pytest.param(
        replace('id = "p3"', 'id = "p1"'),
        "problems",
        "problems[2] has the id 'p1' of problems[0]",
        id="dup",
    ),
    pytest.param(
        replace('feedback = "report"', 'feedback = "verbose"'),
        "defaults.feedback",
        "'verdict', 'report' or 'diagnosis'",
        id="feedback",
    ),
    pytest.param(
        replace('id = "p3"', 'id = "p3"\nvariant = "p1"'),
        "problems",
        "share variant 'p1' but differ at given tensor 'c'",
        id="shared-variant",
    ),
    pytest.param(
        replace("points = 2\n", "points = -2\n"),
        "problems[0] (p1).points",
        "greater than 0",
        id="points",
    ),
    # Never converted: rtol = true read as 1.0 passed every answer.
    pytest.param(
        replace("tolerance = { rtol = 0, atol = 0.01 }", "tolerance = { rtol = true }"),
        "problems[2] (p3).tolerance.rtol",
        "valid number",
        id="tolerance-of-a-bool",
    ),
    pytest.param(
        replace("points = 2\n", 'points = "2"\n'),
        "problems[0] (p1).points",
        "valid number",
        id="points-as-text",
    ),
    # A bias declared and left out of the reference: every student who adds it would be wrong.
    pytest.param(
        replace("[problems.expected]", "[problems.given.b]\nvalue = 1\n\n[problems.expected]"),
        "problems[0] (p1).given.b",
        "no `expected` refers to 'b' (`{ given = \"b\" }`): refer to it where the reference "
        "uses it, or set `statement_only = true` if only the statement does",
        id="given-never-used",
    ),
    pytest.param(
        replace("integer = true\n", "integer = true\nstatement_only = true\n"),
        "problems[0] (p1).given.v.statement_only",
        "expected.value of 'p1' refers to 'v'; remove `statement_only`",
        id="statement-only-but-used",
    ),
    pytest.param(
        SAMPLE
        + SHARING_P1.replace(
            "[problems.expected]", "[problems.given.w]\nvalue = 1\n\n[problems.expected]"
        ),
        "problems[3] (p4).given.w",
        "no `expected` of variant 'p1' refers to 'w'",
        id="given-never-used-by-its-variant",
    ),
]


@pytest.mark.parametrize(("text", "key", "message"), WRONG_FILES)
def test_a_wrong_file_names_the_file_and_the_key(text: str, key: str, message: str) -> None:
    with pytest.raises(AssignmentFileError) as raised:
        parse_assignment(text, "folder/sample.toml")
    error = raised.value
    assert error.file == "folder/sample.toml"
    assert str(error).startswith("folder/sample.toml: ")
    # the key and its message, on the first line or on one of the lines after it
    lines = str(error).removeprefix("folder/sample.toml: ").splitlines()
    if not key:
        assert message in lines[0]
        return
    assert any(line.strip().startswith(f"{key}: ") and message in line for line in lines), lines


def test_the_error_holds_the_first_key_and_lists_the_others() -> None:
    text = replace("points = 2\n", "pionts = 2\n")
    with pytest.raises(AssignmentFileError) as raised:
        parse_assignment(text, "sample.toml")
    assert raised.value.key == "problems[0] (p1).points"
    assert str(raised.value).splitlines() == [
        "sample.toml: problems[0] (p1).points: Field required",
        "  problems[0] (p1).pionts: Extra inputs are not permitted",
    ]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_wrong_file_in_the_configured_folder_stops_create_app(tmp_path: Path) -> None:
    write(tmp_path, "fine.toml", SAMPLE)
    write(tmp_path, "broken.toml", replace("points = 2\n", "points = 'two'\n"))
    with pytest.raises(AssignmentFileError) as raised:
        create_app(Settings(assignments_dir=tmp_path))
    assert str(raised.value).startswith(f"{tmp_path}/broken.toml: problems[0] (p1).points: ")


def test_options_that_differ_only_by_case_stop_the_folders_load(tmp_path: Path) -> None:
    # Served, this file graded the answer "a" correct for `correct = "A"`: answers are matched
    # to option ids ignoring case, so a and A were one option to the grader.
    probe = SAMPLE.replace('id = "sample"', 'id = "probe"', 1).replace(
        'choices = [{ id = "a", text = "A" }, { id = "b", text = "B" }]\n'
        'expected = { op = "choice", correct = "b" }',
        'choices = [{ id = "A", text = "Up" }, { id = "a", text = "Down" }]\n'
        'expected = { op = "choice", correct = "A" }',
    )
    write(tmp_path, "probe.toml", probe)
    with pytest.raises(AssignmentFileError, match="'A' and 'a' differ only by case"):
        create_app(Settings(assignments_dir=tmp_path))


def test_the_configured_folder_is_served_beside_the_built_in_one(tmp_path: Path) -> None:
    write(tmp_path, "sample.toml", SAMPLE)
    write(tmp_path, "notes.txt", "not an assignment")
    client = TestClient(create_app(Settings(assignments_dir=tmp_path)))
    ids = [a["id"] for a in client.get("/v1/assignments").json()["assignments"]]
    assert ids == ["cnn-rnn", "sample"]
    alone = TestClient(create_app(Settings(assignments_dir=tmp_path, builtin_assignments=False)))
    assert [a["id"] for a in alone.get("/v1/assignments").json()["assignments"]] == ["sample"]


def test_an_assignment_defined_twice_names_both_files(tmp_path: Path) -> None:
    write(tmp_path / "a", "one.toml", SAMPLE)
    write(tmp_path / "b", "two.toml", SAMPLE)
    with pytest.raises(AssignmentFileError, match=r"b/two.toml: id: .* also defined in a/one.toml"):
        load_catalogue([(tmp_path / "a", "a"), (tmp_path / "b", "b")], b"s" * 32)


def test_a_missing_folder_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(AssignmentFileError, match="TENSORGRADE_ASSIGNMENTS_DIR is not a folder"):
        catalogue_from_settings(Settings(assignments_dir=tmp_path / "nowhere"))


def test_the_spec_validator_sees_resolved_specs_and_its_errors_stop_the_load(
    tmp_path: Path,
) -> None:
    write(tmp_path, "sample.toml", SAMPLE)
    seen: list[Mapping[str, Any]] = []

    def refuse_numbers(spec: Mapping[str, Any]) -> None:
        seen.append(spec)
        if spec["op"] == "value" and isinstance(spec["value"], int):
            raise ValueError("a number is not accepted here")

    with pytest.raises(AssignmentFileError) as raised:
        load_catalogue([(tmp_path, "mine")], b"s" * 32, refuse_numbers)
    assert str(raised.value) == (
        "mine/sample.toml: problems[2] (p3).expected: a number is not accepted here"
    )
    drawn = seen[0]["value"]
    assert len(drawn) == 2 and all(isinstance(v, int) for row in drawn for v in row)


def test_the_built_in_files_ship_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    shipped = list((ROOT / "service" / "assignments").iterdir())
    assert shipped
    for path in shipped:
        relative = path.relative_to(ROOT / "service").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_a_file_that_is_not_utf8_is_named_and_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """A statement saved as Latin-1 ("é" as 0xE9) stopped start-up with the decoder's message
    alone, naming no file; a BOM (Windows editors) made the TOML "invalid at line 1"."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "latin.toml").write_bytes(SAMPLE.replace("A drawn", "Un é").encode("latin-1"))
    with pytest.raises(AssignmentFileError, match=r"a/latin.toml: not UTF-8 text \(byte 0xE9 "):
        load_catalogue([(tmp_path / "a", "a")], b"s" * 32)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bom.toml").write_bytes(b"\xef\xbb\xbf" + SAMPLE.encode("utf-8"))
    assert list(load_catalogue([(tmp_path / "b", "b")], b"s" * 32).assignments) == ["sample"]


@pytest.mark.parametrize(
    ("text", "told"),
    [
        (replace('value = { given = "c" }', 'value = [{ given = "c" }, 1]'), "is not one number"),
        (
            replace('answer_kind = "number"', 'answer_kind = "shape"').replace(
                "value = 4\ninteger = true", "value = 2.5"
            ),
            "2.5 is no shape",
        ),
    ],
    ids=["number-of-two", "shape-of-a-fraction"],
)
def test_a_key_no_answer_of_its_kind_can_match_stops_start_up(
    tmp_path: Path, text: str, told: str
) -> None:
    """A number's key of two numbers, a shape's of sizes that are no whole numbers (drawn
    without integer = true): every student's answer would be wrong, silently."""
    write(tmp_path, "sample.toml", text)
    with pytest.raises(AssignmentFileError) as raised:
        load_catalogue([(tmp_path, "a")], b"s" * 32)
    assert str(raised.value).startswith("a/sample.toml: problems[2] (p3).expected: value: ")
    assert told in str(raised.value)


def test_a_given_used_by_another_problem_of_its_variant_or_marked_statement_only_is_taken() -> None:
    """Only the variant as a whole must use a tensor (p4 declares p1's ``v`` to draw its own
    ``w`` after it), and a tensor for the statement alone is taken when marked so; the mark
    changes no grade, so it leaves the revision as it is."""
    uses_w_only = SHARING_P1.replace(
        "[problems.expected]", "[problems.given.w]\nvalue = 1\n\n[problems.expected]"
    ).replace('value = { given = "v" }', 'value = { given = "w" }')
    assert [p.id for p in parse_assignment(SAMPLE + uses_w_only, "s.toml").problems][-1] == "p4"

    marked = parse_assignment(
        replace(
            "[problems.expected]",
            "[problems.given.n]\nvalue = 3\nstatement_only = true\n\n[problems.expected]",
        ),
        "s.toml",
    )
    assert marked.problems[0].given["n"].statement_only
    unmarked = marked.model_copy(deep=True)
    unmarked.problems[0].given["n"].statement_only = False
    secret = b"s" * 32
    assert assignment_revision(marked, secret) == assignment_revision(unmarked, secret)
