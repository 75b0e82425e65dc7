"""Assignments: the problem sets, each student's variant of a problem (never its key), and
checking and grading a student's answers with feedback that never holds the key."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.responses import Response

from models.errors import UnknownName
from service.auth import CallerDep, require_own
from service.deps import SettingsDep
from service.examples import for_path
from service.grading.catalogue import Catalogue
from service.grading.checker import EngineCheck
from service.grading.grade import (
    MAX_IGNORED_LISTED,
    GradeResult,
    ProblemResult,
    Status,
    grade_problem,
)
from service.grading.grade import grade_submission as grade_answers
from service.grading.gradescope import gradescope_results
from service.grading.schema import (
    AnswerKind,
    AssignmentSpec,
    FeedbackLevel,
    ProblemSpec,
    Tolerance,
    Visibility,
)
from service.grading.schemas import CHECK_TOLERANCE
from service.grading.variants import Variant
from service.problems import STUDENT_ID, Problem, problem_responses
from service.ratelimit import RATE_LIMITED
from service.responses import TensorJSONResponse
from service.routing import FastJSONRoute
from service.schemas import StrictBody, TensorOut
from service.tensors import encode

router = APIRouter(prefix="/v1/assignments", tags=["assignments"], route_class=FastJSONRoute)

STUDENT_ID_RULES: dict[str, Any] = {
    "min_length": 1,
    "max_length": 200,
    "pattern": STUDENT_ID,
    "description": "The student's id, exactly as the grading script sends it (case matters): 1 "
    "to 200 characters, no control characters or line breaks, and no space (or other white "
    "space) at either end.",
    "examples": ["alice@example.edu"],
}

# Swagger UI pre-fills a parameter from its own `examples` (not from its schema's), so that
# "Try it out" works without typing. Example ids only: a variant holds no answer.
StudentId = Annotated[
    str,
    Query(
        **STUDENT_ID_RULES,
        openapi_examples={"alice": {"summary": "A student id", "value": "alice@example.edu"}},
    ),
]
AssignmentId = Annotated[
    str,
    Path(
        description="An assignment's id (`id` in `GET /v1/assignments`); another is a 404.",
        openapi_examples={"cnn-rnn": {"summary": "The homework shipped", "value": "cnn-rnn"}},
    ),
]
ProblemId = Annotated[
    str,
    Path(
        description="A problem's id within the assignment (`problems` in `GET "
        "/v1/assignments`); another is a 404.",
        # One for each problem the answer examples of the check route are for: Swagger UI
        # sends the answer picked to the problem this field holds. Its menu shows the
        # summaries only, so each begins with the id the answer examples name.
        openapi_examples={
            "1.1a": {"summary": "1.1a: homework 1.1(a), a shape", "value": "1.1a"},
            "1.1b": {"summary": "1.1b: homework 1.1(b), a formula", "value": "1.1b"},
            "1.3-4-loss": {
                "summary": "1.3-4-loss: homework 1.3, question 4, a loss",
                "value": "1.3-4-loss",
            },
        },
    ),
]


ANSWER_KINDS = (
    "`shape` (a list of sizes or a string such as `16x16`), `tensor` (a tensor in any tensor "
    "form), `formula` (an expression string), `number` (one number), `choice` (an option's id)"
)


class ProblemSummary(BaseModel):
    """A problem as the list of an assignment shows it."""

    id: str = Field(description="The `{problem}` of its paths, and its key in `answers`.")
    title: str = Field(description="What it asks, in a few words.")
    points: float = Field(description="What a correct answer scores.")
    answer_kind: AnswerKind = Field(description=f"The form of its answer: {ANSWER_KINDS}.")


class AssignmentSummary(BaseModel):
    """An assignment and its problems, without their statements."""

    id: str = Field(description="The `{assignment}` of its paths.")
    title: str = Field(description="Its title.")
    description: str = Field(description="What it covers and how to answer, in Markdown.")
    total_points: float = Field(description="The points of all its problems.")
    problems: list[ProblemSummary] = Field(description="Its problems, in the file's order.")
    revision: str = Field(
        description="What a grade of the assignment depends on besides the answers, as 32 hex "
        "digits: a SHA-256 of the assignment as the server parsed it (references, tolerances, "
        "given tensors, points), of a fingerprint of the variant secret (an HMAC of a "
        "constant under it, never the secret) and of the numbers torch draws for one probe "
        "student. Another secret, a changed reference or tolerance, or a torch that draws "
        "other numbers gives another revision; every replica serving the same file with the "
        "same secret and torch gives the same one. A grading script that keeps results "
        "records it and grades again when it changes.",
        examples=["3f1c0e5a9b7d4e2f8a6c1b0d9e8f7a6b"],
    )


class AssignmentList(BaseModel):
    assignments: list[AssignmentSummary] = Field(description="Every assignment this server has.")


class ChoiceOut(BaseModel):
    id: str = Field(description="What to answer to pick this option.")
    text: str = Field(description="The option as the student reads it.")


FILE_TOLERANCE = Tolerance()
"""What an assignment file gives a problem that neither it nor `[defaults]` sets a tolerance
for (``grading.schema.Tolerance``)."""


class ProblemTolerance(BaseModel):
    """The problem's own tolerance, always given in full: an entry of the answer is right when
    |answer - key| <= max(atol, floor * scale) + rtol * |key|, scale the key's largest
    magnitude (the rule of `POST /v1/check`)."""

    rtol: float = Field(description="Relative tolerance: a share of each key entry's magnitude.")
    atol: float = Field(description="Absolute tolerance: the error always allowed.")
    floor: float = Field(
        description="A further absolute allowance, as a fraction of the key's largest magnitude."
    )


class ProblemVariant(BaseModel):
    """A problem as one student sees it: the statement and that student's given tensors."""

    assignment: str = Field(description="The assignment's id.")
    id: str = Field(description="The problem's id.")
    title: str = Field(description="What it asks, in a few words.")
    statement: str = Field(description="Markdown.")
    points: float = Field(description="What a correct answer scores.")
    answer_kind: AnswerKind = Field(description=f"The form of its answer: {ANSWER_KINDS}.")
    choices: list[ChoiceOut] | None = Field(None, description="The options of a choice answer.")
    tolerance: ProblemTolerance = Field(
        description="How close a numeric answer must be (shapes and formulas are exact): the "
        "problem's own, set in the assignment file for the problem or under `[defaults]`; "
        f"where neither sets it, rtol {FILE_TOLERANCE.rtol:g}, atol {FILE_TOLERANCE.atol:g}, "
        f"floor {FILE_TOLERANCE.floor:g}. (`POST /v1/check` without a `tolerance` judges "
        f"with rtol {CHECK_TOLERANCE.rtol:g}, atol {CHECK_TOLERANCE.atol:g}, floor "
        f"{CHECK_TOLERANCE.floor:g}.)"
    )
    feedback: FeedbackLevel = Field(
        description="What a check of an answer tells the student: `verdict` (correct or not, "
        "the score, and why an answer is malformed), `report` (also what was read of the "
        "answer: a tensor's shape and whether it is the one asked for, a shape's sizes, a "
        "formula's points checked and one point where it disagrees; never how many elements "
        "or points are wrong), or `diagnosis` (also the likely mistakes)."
    )
    student_id: str = Field(description="Whose variant this is, as asked.")
    given: dict[str, TensorOut] = Field(description="This student's given tensors by name.")
    given_descriptions: dict[str, str] = Field(description="What each given tensor is.")


def catalogue(request: Request) -> Catalogue:
    loaded: Catalogue = request.app.state.catalogue
    return loaded


def _not_found(error: UnknownName) -> Problem:
    """The 404 of an id the catalogue does not have: its assignment or its problem (the types
    are spelt out, so that every type the service answers can be listed from its code)."""
    kind = "unknown-assignment" if error.where == "assignment" else "unknown-problem"
    return Problem(404, error.message, kind=kind, title=f"No such {error.where}")


def find_variant(request: Request, assignment: str, problem: str, student: str) -> Variant:
    """A student's variant of the problem of a path, or 404."""
    try:
        return catalogue(request).variant(assignment, problem, student)
    except UnknownName as error:
        raise _not_found(error) from None


def summary(assignment: AssignmentSpec, revision: str) -> AssignmentSummary:
    def problem(p: ProblemSpec) -> ProblemSummary:
        return ProblemSummary(id=p.id, title=p.title, points=p.points, answer_kind=p.answer_kind)

    return AssignmentSummary(
        id=assignment.id,
        title=assignment.title,
        description=assignment.description,
        total_points=assignment.total_points,
        problems=[problem(p) for p in assignment.problems],
        revision=revision,
    )


@router.get("", summary="The assignments and their problems")
async def list_assignments(request: Request) -> AssignmentList:
    """Every assignment with its problems (id, title, points and answer kind) and its
    `revision`, which changes when its answer key does."""
    loaded = catalogue(request)
    return AssignmentList(
        assignments=[summary(a, loaded.revision(a.id)) for a in loaded.assignments.values()]
    )


ANOTHER_STUDENT = (
    "This key belongs to another student (`another-student`): a student's own key (from the "
    "roster) may name only its own `student_id`."
)
NO_ASSIGNMENT_OR_PROBLEM = (
    "No assignment of this id (`unknown-assignment`), or no problem of this id in it "
    "(`unknown-problem`); see `GET /v1/assignments`."
)
ASSIGNMENT_ERROR = (
    "The assignment file is at fault, not the answer (`assignment-error`): the reference "
    "answer of a problem cannot be computed for this student's variant. The detail names the "
    "problem; tell the course staff."
)


@router.get(
    "/{assignment}/problems/{problem}",
    summary="A problem and one student's given tensors (never the answer)",
    response_model=ProblemVariant,
    responses=problem_responses(
        403,
        404,
        422,
        described={
            403: ANOTHER_STUDENT,
            404: NO_ASSIGNMENT_OR_PROBLEM,
            422: "The `student_id` query parameter is missing or not valid "
            "(`validation-error`): 1 to 200 characters, no control characters or line breaks, "
            "no space at either end.",
        },
    ),
)
def problem_variant(
    request: Request,
    assignment: AssignmentId,
    problem: ProblemId,
    student_id: StudentId,
    who: CallerDep,
) -> Response:
    """The statement and the given tensors of student `student_id`'s variant: the same numbers
    on every call and every replica, other numbers for other students. A student's own key
    (from the roster) may name only its own student id (403 otherwise)."""
    require_own(who, student_id)
    variant = find_variant(request, assignment, problem, student_id)
    spec = variant.problem
    body = {
        "assignment": assignment,
        "id": spec.id,
        "title": spec.title,
        "statement": spec.statement,
        "points": spec.points,
        "answer_kind": spec.answer_kind,
        "choices": [c.model_dump() for c in spec.choices] if spec.choices else None,
        "tolerance": spec.tolerance.model_dump(),
        "feedback": spec.feedback,
        "student_id": student_id,
        "given": {name: encode(tensor) for name, tensor in variant.given.items()},
        "given_descriptions": {name: g.description for name, g in spec.given.items()},
    }
    return TensorJSONResponse(body)


# Any JSON value, as for /v1/check (``grading.schemas.AnswerIn``), but judged differently: a
# student's answer that cannot be judged is a verdict of its own here, never a 4xx, so that one
# bad answer neither hides the feedback on it nor stops the rest of a submission.
STUDENT_ANSWER_SCHEMA: dict[str, Any] = {
    "title": "StudentAnswer",
    "description": (
        "One answer, in the form of the problem's `answer_kind` (`GET /v1/assignments`): "
        "`tensor`, a tensor in any of the three tensor forms (a nested list of numbers, "
        '`{"shape", "data"}` or `{"shape", "datatype", "b64"}`); `number`, a number, or the '
        'text of one (`"0.693"`); `shape`, a list of sizes (`[16, 16]`), one size (`16`) '
        'or a string such as `"16x16"`; `formula`, an expression string; `choice`, the id of an '
        "option (`choices` of the problem; case does not matter; a number or a boolean is the id "
        'it spells, `2` for `"2"`). `null` is no answer: status '
        "`missing`, score 0. Any other value is judged, not refused: a 200 with status "
        "`malformed`, score 0, and `feedback.reason` saying what to change; in a submission "
        "the other answers are still graded."
    ),
    # Wrong answers only: these routes' docs are public to students (see ANSWER_EXAMPLES).
    "examples": ["6x3", 0.693, "floor((H + 2*P - K)/S) + 1", None],
}
StudentAnswer = Annotated[Any, WithJsonSchema(STUDENT_ANSWER_SCHEMA)]


class AnswerRequest(StrictBody):
    """One answer of one student to one problem."""

    student_id: str = Field(**STUDENT_ID_RULES)
    answer: StudentAnswer


class SubmissionRequest(StrictBody):
    """A student's answers to an assignment, by problem id."""

    student_id: str = Field(**STUDENT_ID_RULES)
    answers: dict[str, StudentAnswer] = Field(
        description="Answers by problem id, each judged as `answer` of the problem's check "
        'route is. A problem without an answer (or with `null`) scores 0 with "no answer"; a '
        "malformed answer scores 0 with its reason; answers to problems the assignment does "
        "not have are listed in `ignored`. A question the assignment splits into problems "
        "(`1.3-4` of `cnn-rnn` into `1.3-4-loss` and `1.3-4-accuracy`) may be answered as an "
        'object of its parts by suffix: `{"1.3-4": {"loss": <number>, "accuracy": <number>}}`; '
        "a suffix that is no part is listed in `ignored` as `1.3-4-<suffix>`."
    )


class Mistake(BaseModel):
    code: str = Field(description="A stable name of the mistake, e.g. `transposed`.")
    message: str = Field(description="The mistake in words; it never quotes the key.")


REPORT = (
    "Levels `report` and `diagnosis`: what was read of the answer, by its `kind`, and a "
    "`message` in words. `tensor`: `label` (what the answer is), `shape_matches`, `given_shape` "
    "(the answer's shape), `elements` (the answer's number of elements, where its shape is the "
    "one asked for) and `read_as_scalar` (a one-element answer read as a number); `shape`: "
    "`label` and `given` (the sizes read); `formula`: `points_checked` and, when it is wrong, "
    "a `counterexample` (`point`, one point where it disagrees, and `given`, the value the "
    "answer's own formula has there). Never how many elements or points are wrong (with every "
    "other element far off, that count would tell whether the one element tried is right), a "
    "value of the key, an error size, the key's shape where the answer's differs, or where a "
    "mismatch is."
)
"""What a student's report holds: the allow-list of ``grading.grade.STUDENT_FIELDS``, in words."""


class Feedback(BaseModel):
    """What the student is told, at the problem's feedback level."""

    verdict: str = Field(
        description="`correct`, `partially correct`, `incorrect`, `no answer` or "
        "`malformed answer`."
    )
    reason: str | None = Field(None, description="Why a malformed answer cannot be judged.")
    report: dict[str, Any] | None = Field(None, description=REPORT)
    diagnosis: list[Mistake] | None = Field(
        None, description="Level `diagnosis`: the likely mistakes."
    )


STATUS = (
    "What became of the answer. `correct`: within the tolerance, all the points; `partial`: "
    "partly right, a share of the points (the checks of an assignment give all or nothing "
    "today); `incorrect`: judged and wrong, 0; `missing`: no answer (or `null`), 0; "
    "`malformed`: not an answer of the problem's kind, 0, with the reason in "
    "`feedback.reason`."
)


class ProblemCheck(BaseModel):
    """The grade of one answer, as the student may see it."""

    assignment: str = Field(description="The assignment's id, as in the path.")
    problem: str = Field(description="The problem's id, as in the path.")
    student_id: str = Field(description="Whose variant the answer was judged against.")
    correct: bool = Field(description="Whether `status` is `correct`.")
    score: float = Field(
        description="Points earned: `points` when correct, a share of them when partly, else 0."
    )
    points: float = Field(description="What the problem is worth.")
    status: Status = Field(description=STATUS)
    feedback: Feedback = Field(description="What the student is told, at the problem's level.")


class GradedProblem(BaseModel):
    title: str = Field(description="The problem's title.")
    correct: bool = Field(description="Whether `status` is `correct`.")
    score: float = Field(description="Points earned.")
    points: float = Field(description="What the problem is worth.")
    status: Status = Field(description=STATUS)
    feedback: Feedback = Field(description="What the student is told, at the problem's level.")


class SubmissionGrade(BaseModel):
    """The grade of a whole submission (the default `format=json`)."""

    assignment: str = Field(description="The assignment's id, as in the path.")
    student_id: str = Field(description="Whose variants the answers were judged against.")
    total: float = Field(description="Points earned over every problem.")
    points: float = Field(description="What the assignment is worth.")
    problems: dict[str, GradedProblem] = Field(description="Each problem, in the file's order.")
    ignored: list[str] = Field(
        description="Answers to problem ids the assignment does not have, sorted: the first "
        f"{MAX_IGNORED_LISTED} of them (`ignored_count` counts them all)."
    )
    ignored_count: int = Field(
        description="How many answers were to problem ids the assignment does not have."
    )
    execution_time: float = Field(description="Seconds the grading took.")


VISIBILITY = "Gradescope's visibility: `visible`, `hidden`, `after_due_date` or `after_published`."


class GradescopeTest(BaseModel):
    """One problem as a test of Gradescope's `results.json`."""

    name: str = Field(description="The problem's id and title.")
    number: str = Field(description="The problem id (a gradebook column).")
    score: float = Field(description="Points earned.")
    max_score: float = Field(description="What the problem is worth.")
    status: Literal["passed", "failed"] = Field(
        description="`passed` when the answer is correct, else `failed`."
    )
    output: str = Field(description="The feedback of the problem's level, as text.")
    visibility: Visibility = Field(description=f"The problem's. {VISIBILITY}")


class GradedSubmission(BaseModel):
    """What a result grades, for a grading script that keeps results (`tensorgrade grade`
    grades a student again when any of it differs)."""

    assignment: str = Field(description="The assignment's id.")
    student_id: str = Field(description="The student whose variant was graded.")
    revision: str = Field(
        description="The assignment's `revision` the answers were graded against: the one "
        "`GET /v1/assignments` lists, unless another replica's answered (mid-way through a "
        "redeploy)."
    )
    ignored: list[str] = Field(
        description="Answers to problem ids the assignment does not have, sorted: the first "
        f"{MAX_IGNORED_LISTED} of them."
    )


class GradescopeExtra(BaseModel):
    tensorgrade: GradedSubmission = Field(description="What the result grades.")


class GradescopeResults(BaseModel):
    """Gradescope's `results.json` (`format=gradescope`)."""

    score: float = Field(description="Points earned over every problem.")
    execution_time: int = Field(description="Seconds, rounded up.")
    output: str = Field(
        description="The assignment, the points and the student; and the ids of answers the "
        "assignment does not have, which were ignored."
    )
    visibility: Visibility = Field(
        description=f"Of the whole result, from the file's `[gradescope]` table. {VISIBILITY}"
    )
    stdout_visibility: Visibility = Field(
        description="Of the autograder's output, from the file's `[gradescope]` table. "
        + VISIBILITY
    )
    tests: list[GradescopeTest] = Field(description="One per problem, in the file's order.")
    extra_data: GradescopeExtra = Field(
        description="Gradescope's field for data of one's own (kept, not shown to students)."
    )


def _graded(result: ProblemResult) -> dict[str, Any]:
    return {
        "title": result.title,
        "correct": result.passed,
        "score": round(result.score, 6),
        "points": result.max_score,
        "status": result.status,
        "feedback": result.feedback,
    }


# Wrong answers, each a common mistake: these routes are the students', and their examples are
# public in /docs. A right answer here would be the key of a problem that is the same for every
# student; a wrong one shows what the check answers, without giving the key away.
# Each names its problem: Swagger UI sends the answer to the problem in the `problem` field,
# and an answer of another problem's kind is judged `malformed` there.
ANSWER_EXAMPLES = {
    "shape": for_path(
        "a shape rounded up instead of down (wrong)",
        {"student_id": "alice@example.edu", "answer": "6x3"},
        "For problem `1.1a`: pick it in the `problem` field. Answered with status "
        "`incorrect`, score 0 (1.1a's feedback is the verdict alone).",
        problem="1.1a",
    ),
    "formula": for_path(
        "a formula without the dilation (wrong; the feedback shows a point)",
        {"student_id": "alice@example.edu", "answer": "floor((H + 2*P - K)/S) + 1"},
        "For problem `1.1b`: pick it in the `problem` field. Answered with status "
        "`incorrect`, score 0; the report's `counterexample` is a point where the formula "
        "disagrees, and the diagnosis names `dilation_ignored`.",
        problem="1.1b",
    ),
    "number": for_path(
        "a number (wrong)",
        {"student_id": "alice@example.edu", "answer": 0.693},
        "For problem `1.3-4-loss`: pick it in the `problem` field. Answered with status "
        "`incorrect`, score 0 (its feedback is the verdict alone).",
        problem="1.3-4-loss",
    ),
}
SUBMISSION_EXAMPLES = {
    "cnn-rnn": {
        "summary": "Three answers of cnn-rnn, all wrong (the problems not answered score 0)",
        "value": {
            "student_id": "alice@example.edu",
            "answers": {
                "1.1a": "6x3",
                "1.1b": "floor((H + 2*P - K)/S) + 1",
                "1.3-4-loss": 0.693,
            },
        },
    }
}
"""The examples of the students' routes hold no right answer (see ``ANSWER_EXAMPLES``)."""


def checked(not_found: str) -> dict[str, Any]:
    """The rule of the two routes that judge answers: rate-limited per key, 404 for unknown
    ids (``not_found`` says which the path has), 403 for another student's id with a student's
    own key, 500 for a reference the assignment file cannot compute."""
    described = {403: ANOTHER_STUDENT, 404: not_found, 500: ASSIGNMENT_ERROR}
    return {
        "dependencies": RATE_LIMITED["dependencies"],
        "responses": {
            **problem_responses(403, 404, 422, 500, described=described),
            **RATE_LIMITED["responses"],
        },
    }


@router.post(
    "/{assignment}/problems/{problem}/check",
    summary="Check one answer of a student: verdict, score and feedback (never the key)",
    response_model=ProblemCheck,
    **checked(NO_ASSIGNMENT_OR_PROBLEM),
)
def check_answer(
    request: Request,
    assignment: AssignmentId,
    problem: ProblemId,
    body: Annotated[AnswerRequest, Body(openapi_examples=ANSWER_EXAMPLES)],
    settings: SettingsDep,
    who: CallerDep,
) -> Response:
    """The answer is judged against `student_id`'s variant, within the problem's tolerance; the
    feedback follows the problem's level (`verdict`, `report` or `diagnosis`). A wrong or
    malformed answer is a 200 that says so. Checks are rate-limited per student key (per client
    address on a server without keys; instructor keys are not limited), at the limits in
    /v1/info. A student's own key may name only its own student id (403 otherwise)."""
    require_own(who, body.student_id)
    variant = find_variant(request, assignment, problem, body.student_id)
    result = grade_problem(variant, body.answer, EngineCheck(settings, request.app.state.gate))
    return TensorJSONResponse(
        {
            "assignment": assignment,
            "problem": result.problem,
            "student_id": body.student_id,
            "correct": result.passed,
            "score": round(result.score, 6),
            "points": result.max_score,
            "status": result.status,
            "feedback": result.feedback,
        }
    )


@router.post(
    "/{assignment}/grade",
    summary="Grade a student's whole submission; `?format=gradescope` for results.json",
    response_model=SubmissionGrade | GradescopeResults,
    **checked("No assignment of this id (`unknown-assignment`); see `GET /v1/assignments`."),
)
def grade_submission(
    request: Request,
    assignment: AssignmentId,
    body: Annotated[SubmissionRequest, Body(openapi_examples=SUBMISSION_EXAMPLES)],
    settings: SettingsDep,
    who: CallerDep,
    output_format: Annotated[
        Literal["json", "gradescope"],
        Query(alias="format", description="`gradescope`: answer Gradescope's results.json."),
    ] = "json",
) -> Response:
    """Every problem of the assignment for `student_id`: a missing answer scores 0 ("no
    answer"), a malformed one scores 0 and says why, and neither stops the others. Counts as
    one check against the rate limit of a student key (of a client address on a server without
    keys; instructor keys are not limited). A student's own key may name only its own student
    id (403 otherwise)."""
    require_own(who, body.student_id)
    start = time.perf_counter()
    try:
        graded = grade_answers(
            catalogue(request),
            assignment,
            body.student_id,
            body.answers,
            EngineCheck(settings, request.app.state.gate),
        )
    except UnknownName as error:
        raise _not_found(error) from None
    seconds = time.perf_counter() - start
    if output_format == "gradescope":
        options = catalogue(request).assignment(assignment).gradescope
        return TensorJSONResponse(
            gradescope_results(
                graded,
                execution_time=seconds,
                visibility=options.visibility,
                stdout_visibility=options.stdout_visibility,
                revision=catalogue(request).revision(assignment),
            )
        )
    return TensorJSONResponse(_submission(graded, seconds))


def _submission(graded: GradeResult, seconds: float) -> dict[str, Any]:
    return {
        "assignment": graded.assignment,
        "student_id": graded.student_id,
        "total": round(graded.score, 6),
        "points": round(graded.max_score, 6),
        "problems": {result.problem: _graded(result) for result in graded.results},
        "ignored": graded.ignored[:MAX_IGNORED_LISTED],
        "ignored_count": len(graded.ignored),
        "execution_time": round(seconds, 3),
    }
