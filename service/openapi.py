"""The OpenAPI schema, made truthful about the answers the edge of the service can give.

FastAPI documents what each route declares. The guards in ``service/middleware.py`` and the
body parsing run before any route, so the statuses they answer are added here to every
operation they apply to, and a route added later is documented without declaring them itself.
"""

from __future__ import annotations

from typing import Any

from service.problems import problem_responses

BODY_STATUSES = (400, 408, 413, 422)
"""What any operation that reads a body may answer: unreadable, too slow, too large, not JSON."""


def declare_edge_statuses(schema: dict[str, Any]) -> None:
    """Add the problem statuses of the edge guards to every operation they apply to."""
    body_problems = problem_responses(*BODY_STATUSES)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in body_problems.items():
                responses.setdefault(str(status), response)
