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
from service.examples import PATH_PARAMETERS
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
"""What an operation's text says of the key it needs, by the roles its rule admits, on a
server with keys configured."""

OPEN = "**No key needed: this server runs without keys**, so every caller may call it"
OPEN_ROLE_NOTES: dict[frozenset[str], str] = {
    frozenset(): "**No key needed.**",
    frozenset({"instructor"}): f"{OPEN} (with keys configured, an instructor key only).",
    frozenset({"instructor", "student"}): (
        f"{OPEN} (with keys configured, a student or instructor key)."
    ),
}
"""The same on a server with no key configured, which runs open: every caller acts as an
instructor (`auth` is `open` in /v1/info), and a note that asked for a key would send a reader
to look for one in vain."""


def operation_roles(operation: dict[str, Any]) -> frozenset[str]:
    """The roles an operation admits, from its security requirements (their scopes are the key
    rule's roles); none for an operation without a key."""
    return frozenset(
        role
        for requirement in operation.get("security", ())
        for roles in requirement.values()
        for role in roles
    )


def declare_roles(schema: dict[str, Any], *, open_server: bool = False) -> None:
    """Begin every operation's description with the key it needs on this server
    (``ROLE_NOTES``, or ``OPEN_ROLE_NOTES`` where ``open_server``: no key is configured).

    Raises:
        KeyError: an operation's roles have no note: a new rule, to be worded here.
    """
    notes = OPEN_ROLE_NOTES if open_server else ROLE_NOTES
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            note = notes[operation_roles(operation)]
            description = operation.get("description", "")
            operation["description"] = f"{note}\n\n{description}" if description else note


def first_body_example(operation: dict[str, Any]) -> dict[str, Any]:
    """The body example Swagger UI shows first (and sends when nothing is picked), or ``{}``."""
    content = operation.get("requestBody", {}).get("content", {})
    examples = content.get("application/json", {}).get("examples", {})
    first: dict[str, Any] = next(iter(examples.values()), {})
    return first


def prefill_path_parameters(schema: dict[str, Any]) -> None:
    """Give each path parameter the value the operation's first body example is for
    (``examples.PATH_PARAMETERS``), so that "Try it out", then Execute with nothing changed,
    sends that body where it belongs.

    Swagger UI 5 fills a parameter from its own ``example`` (or the first of its
    ``examples``), else selects the first value of an enum: ``attention_rnn``, for a conv1d
    body. The value goes in the parameter's ``example``: Swagger UI ignores the schema's
    ``examples`` and does not apply the parameter's ``examples`` to an enum's list, and a
    ``default`` would say that the path may go without it.

    Raises:
        ValueError: the example names a value the parameter does not offer (not in its enum,
            or not the first of its own examples): the page would send it elsewhere.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            wanted = first_body_example(operation).get(PATH_PARAMETERS, {})
            for parameter in operation.get("parameters", ()):
                value = wanted.get(parameter["name"]) if parameter["in"] == "path" else None
                if value is None:
                    continue
                own = [example["value"] for example in parameter.get("examples", {}).values()]
                enum = parameter.get("schema", {}).get("enum", [value])
                if (own and own[0] != value) or value not in enum:
                    raise ValueError(f"{parameter['name']} {value!r} is not offered first")
                if not own:
                    parameter["example"] = value
