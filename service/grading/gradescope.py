"""Gradescope's ``results.json``: a graded submission in the format its autograder harness reads.

The fields follow Gradescope's autograder specification: top-level ``score``,
``execution_time`` (seconds), ``output``, ``visibility``, ``stdout_visibility`` and
``tests``, each test with ``name``, ``number``, ``score``, ``max_score``, ``status``
(``passed`` / ``failed``), ``output`` and ``visibility``; and ``extra_data`` (data of one's own,
which Gradescope keeps and does not show): what was graded (``graded``).
"""

from __future__ import annotations

import math
from typing import Any

from service.grading.grade import MAX_IGNORED_LISTED, GradeResult, ProblemResult
from service.grading.schema import Visibility


def _number(value: float) -> float:
    """Points without float noise (2.9999999999999996 -> 3.0)."""
    return round(value, 6)


def output_of(result: ProblemResult) -> str:
    """A test's ``output``: the feedback the problem's level allows, as plain text."""
    told = result.feedback
    lines = [
        f"{told['verdict'].capitalize()}: {_number(result.score):g} of "
        f"{_number(result.max_score):g} points."
    ]
    if "reason" in told:
        lines.append(str(told["reason"]))
    report = told.get("report") or {}
    if "message" in report:
        lines.append(f"{str(report['message'])[:1].upper()}{str(report['message'])[1:]}.")
    lines += [f"- {entry['message']}" for entry in told.get("diagnosis") or []]
    return "\n".join(lines)


EXTRA_KEY = "tensorgrade"
"""The key of ``graded`` under ``extra_data``."""


def graded(grade: GradeResult, revision: str | None) -> dict[str, Any]:
    """What a result grades, for a script that keeps results: the assignment, the student,
    the revision of the assignment it was graded against (a replica of another revision may
    answer during a redeploy) and the answers ignored (to no problem of the assignment)."""
    return {
        "assignment": grade.assignment,
        "student_id": grade.student_id,
        "revision": revision,
        "ignored": grade.ignored[:MAX_IGNORED_LISTED],
    }


def gradescope_results(
    grade: GradeResult,
    *,
    execution_time: float,
    visibility: Visibility = "visible",
    stdout_visibility: Visibility = "hidden",
    revision: str | None = None,
) -> dict[str, Any]:
    """The ``results.json`` of one graded submission.

    Args:
        grade: the per-problem results.
        execution_time: seconds the grading took (rounded up to a whole second).
        visibility: when students see the results.
        stdout_visibility: when students see the autograder's standard output.
        revision: the assignment's revision (``extra_data``).

    Returns:
        A JSON-ready mapping.
    """
    output = (
        f"{grade.assignment}: {_number(grade.score):g} of {_number(grade.max_score):g} points "
        f"for {grade.student_id}."
    )
    if grade.ignored:
        listed = ", ".join(grade.ignored[:MAX_IGNORED_LISTED])
        more = len(grade.ignored) - MAX_IGNORED_LISTED
        listed += f" and {more:,} more" if more > 0 else ""
        output += f" Answers to unknown problems were ignored: {listed}."
    return {
        "score": _number(grade.score),
        "execution_time": max(0, math.ceil(execution_time)),
        "output": output,
        "visibility": visibility,
        "stdout_visibility": stdout_visibility,
        "tests": [
            {
                "name": f"{r.problem} {r.title}",
                "number": r.problem,
                "score": _number(r.score),
                "max_score": _number(r.max_score),
                "status": "passed" if r.passed else "failed",
                "output": output_of(r),
                "visibility": r.visibility,
            }
            for r in grade.results
        ],
        "extra_data": {EXTRA_KEY: graded(grade, revision)},
    }
