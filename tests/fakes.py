"""A test double of the grading routes of the API contract, for the client and CLI tests.

It implements ``POST /v1/assignments/{a}/grade`` (native and ``?format=gradescope``),
``POST /v1/check`` and ``POST /v1/check/batch`` as the contract describes them, with a tiny
fixed key taken from the homework (1.1a: a 21x12 input, 4x5 kernel, stride 4 gives 5x2;
1.1c-i: length 7, kernel 3, stride 2 gives 3), so the client and the ``grade``/``check``
commands can be tested before the real routes exist. It records what it was sent and can be
told to fail some students.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from service.grading.check import batch_summary
from service.problems import Problem, install_problem_handlers

KEY: dict[str, tuple[Any, float, str]] = {
    "1.1a": ([5, 2], 2.0, "Output size of a 21x12 input, 4x5 kernel, stride 4"),
    "1.1c-i": (3, 1.0, "Output length of the 1-D convolution"),
}


class FakeGrading:
    """The fake service's state: what it received and whom it fails."""

    def __init__(self) -> None:
        self.graded: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.fail_with: dict[str, int] = {}  # student id -> status answered instead
        self.answer_with: dict[str, Any] = {}  # student id -> JSON answered with a 200 instead
        self.page_with: dict[str, int] = {}  # student id -> status of a proxy's HTML page
        self.gateway_with: dict[str, int] = {}  # student id -> status of a gateway's JSON
        self.spring_gateway = False  # that JSON with an integer status
        self.revision: str | None = "0" * 32  # the listed revision (None: a service without)
        self.graded_revision: str | None = None  # the grades' own, if not the listed one
        self.listed: dict[str, Any] | None = None  # the assignment as listed, if not the key's
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()
        install_problem_handlers(app)

        @app.get("/v1/assignments")
        async def assignments() -> Response:
            problems = [
                {"id": pid, "title": title, "points": points}
                for pid, (_, points, title) in KEY.items()
            ]
            listed: dict[str, Any] = {"id": "cnn-rnn", "problems": problems}
            if self.revision is not None:
                listed["revision"] = self.revision
            if self.listed is not None:  # something else in the service's place
                listed = self.listed
            return JSONResponse({"assignments": [listed]})

        @app.post("/v1/assignments/{assignment}/grade")
        async def grade(assignment: str, request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if assignment != "cnn-rnn":
                raise Problem(404, f"no assignment {assignment!r}; there is cnn-rnn")
            student = body["student_id"]
            if student in self.answer_with:  # a proxy's answer, say: not a grade
                return JSONResponse(self.answer_with[student])
            if student in self.page_with:  # nginx's page for a body over its limit, say
                status = self.page_with[student]
                return HTMLResponse(f"<html><h1>{status} from a proxy</h1></html>", status)
            if student in self.gateway_with:  # a gateway's refusal: JSON, not a problem detail
                status = self.gateway_with[student]
                detail: dict[str, Any] = {"status": "error", "detail": "too large for the gateway"}
                if self.spring_gateway:  # an integer status, as Spring's error pages have
                    detail = {"status": status, "error": "Payload Too Large", "detail": "big"}
                return JSONResponse(detail, status)
            status = self.fail_with.get(student)
            if status is not None:
                raise Problem(status, f"failing {student} on purpose", headers={"Retry-After": "0"})
            unknown = set(body["answers"]) - set(KEY)
            if unknown:
                raise Problem(422, f"unknown problem(s) {sorted(unknown)}")
            self.graded.append(student)
            scores = {
                pid: (points if body["answers"].get(pid) == answer else 0.0, points, title)
                for pid, (answer, points, title) in KEY.items()
            }
            if request.query_params.get("format") == "gradescope":
                revision = self.graded_revision or self.revision
                graded = {"assignment": assignment, "student_id": student, "revision": revision}
                # As the service records what it graded; one that lists no revision records none.
                extra = {"extra_data": {"tensorgrade": {**graded, "ignored": []}}}
                return JSONResponse(
                    {
                        **(extra if revision is not None else {}),
                        "score": sum(s for s, _, _ in scores.values()),
                        "tests": [
                            {
                                "name": f"{pid}: {title}",
                                "number": pid,
                                "score": score,
                                "max_score": points,
                                "output": "correct" if score else "not the expected answer",
                            }
                            for pid, (score, points, title) in scores.items()
                        ],
                    }
                )
            return JSONResponse(
                {
                    "student_id": student,
                    "problems": {
                        pid: {"score": s, "points": p} for pid, (s, p, _) in scores.items()
                    },
                    "total": sum(s for s, _, _ in scores.values()),
                }
            )

        def one_check(check: dict[str, Any]) -> dict[str, Any]:
            expected = check["expected"]
            if expected.get("op") != "value":
                raise Problem(422, "this fake checks only `op: value`")
            correct = check["answer"] == expected["value"]
            return {
                "correct": correct,
                "score": 1.0 if correct else 0.0,
                "report": {},
                "diagnosis": [] if correct else ["off by a constant factor"],
            }

        @app.post("/v1/check")
        async def check(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.bodies.append(body)
            return one_check(body)

        @app.post("/v1/check/batch")
        async def check_batch(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.bodies.append(body)
            results = []
            for check in body["checks"]:
                try:
                    results.append(one_check(check))
                except Problem as problem:  # in its place, as the contract says
                    results.append({"error": problem.body()})
            keys = len({json.dumps(c["expected"], sort_keys=True) for c in body["checks"]})
            return {"results": results, "summary": batch_summary(results, keys)}

        return app
