"""The OpenAPI schema, made truthful about the answers the edge of the service can give.

FastAPI documents what each route declares. The guards in ``service/middleware.py`` and the
body parsing run before any route, so the statuses they answer are added here to every
operation they apply to, and a route added later is documented without declaring them itself.
"""

from __future__ import annotations

from typing import Any

from service.middleware import EXEMPT_PATHS
from service.problems import problem_responses

BODY_STATUSES = (400, 408, 413, 422)
"""What any operation that reads a body may answer: unreadable, too slow, too large, not JSON."""


def declare_edge_statuses(schema: dict[str, Any]) -> None:
    """Add the problem statuses of the edge guards to every operation they apply to: 503 when
    a worker is overloaded (all but the probes), and the body statuses where there is a body."""
    body_problems = problem_responses(*BODY_STATUSES)
    overloaded = problem_responses(503)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            declared = dict(overloaded) if path not in EXEMPT_PATHS else {}
            if "requestBody" in operation:
                declared |= body_problems
            for status, response in declared.items():
                responses.setdefault(str(status), response)
