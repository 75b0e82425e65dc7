"""The OpenAPI schema, made truthful about the answers the edge of the service can give and
the key each operation needs.

FastAPI documents what each route declares. The guards in ``service/middleware.py`` and the
body parsing run before any route, so the statuses they answer are added here to every
operation they apply to, and a route added later is documented without declaring them itself.
Likewise each operation's role is stated in its text from the security requirement its key
rule puts in the document (``auth.INSTRUCTORS``, ``auth.STUDENTS``), not written route by route.
"""

from __future__ import annotations

from typing import Any

from service.auth import API_KEY_HEADER
from service.middleware import EXEMPT_PATHS
from service.problems import problem_responses

BODY_STATUSES = (400, 408, 413, 415, 422)
"""What any operation that reads a body may answer: unreadable, too slow, too large, coded
(compressed), not JSON."""


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


ROLE_NOTES: dict[frozenset[str], str] = {
    frozenset(): "**No key needed.**",
    frozenset({"instructor"}): (
        f"**Needs an instructor key** (`{API_KEY_HEADER}`); a student key gets 403."
    ),
    frozenset({"instructor", "student"}): f"**Student or instructor key** (`{API_KEY_HEADER}`).",
}
"""What an operation's text says of the key it needs, by the roles its rule admits. A server
with no key configured runs open: every caller acts as an instructor (`auth` in /v1/info)."""


def operation_roles(operation: dict[str, Any]) -> frozenset[str]:
    """The roles an operation admits, from its security requirements (their scopes are the key
    rule's roles); none for an operation without a key."""
    return frozenset(
        role
        for requirement in operation.get("security", ())
        for roles in requirement.values()
        for role in roles
    )


def declare_roles(schema: dict[str, Any]) -> None:
    """Begin every operation's description with the key it needs (``ROLE_NOTES``).

    Raises:
        KeyError: an operation's roles have no note: a new rule, to be worded here.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            note = ROLE_NOTES[operation_roles(operation)]
            description = operation.get("description", "")
            operation["description"] = f"{note}\n\n{description}" if description else note
