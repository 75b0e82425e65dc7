"""Who is calling: API keys and their roles (API.md "Roles").

Keys travel in the ``X-API-Key`` header. With no key configured the service runs open and
every caller acts as an instructor. Otherwise an instructor key may call everything, a
student key only reads problem variants and checks answers (``/v1/assignments/...``), and a
missing or unknown key gets 401.

A student key from the roster (``TENSORGRADE_STUDENT_KEY_FILE``) is bound to one student id:
the assignment routes answer it for that id only (``require_own``). A key of
``TENSORGRADE_STUDENT_KEYS`` is bound to no one, a key shared by any student id, and an
instructor key may name any student.

A router gets its rule where it is included (``app.include_router(router, **INSTRUCTORS)``),
not route by route, so a route added to a router inherits the router's rule.

Each rule is one dependency, an ``APIKeyHeader`` that checks the role itself (``KeyRule``):
it declares the key in OpenAPI as the header scheme does, and a request pays for one
dependency instead of three (the scheme, the caller, the role check). On small requests
sent by the thousand (``/v1/shapes/conv``), FastAPI's resolving of each dependency costs more
than the route's own work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.problems import Problem, problem_responses
from service.settings import Settings

Role = Literal["instructor", "student"]

API_KEY_HEADER = "X-API-Key"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Holder:
    """Whom a key belongs to.

    Attributes:
        role: what the key may do.
        student_id: the one student id a roster key may name; ``None`` for any.
    """

    role: Role
    student_id: str | None = None


class KeyRing:
    """The configured keys, each with whom it belongs to, kept as SHA-256 digests.

    A lookup hashes the key it is given and looks the digest up in a dict: one step whatever
    the number of keys (a roster of a whole class on every keyed request, the busy shape route
    included). Its timing says nothing useful about the configured keys: what is compared is
    the digest of the caller's guess, and telling how many leading bytes of a SHA-256 digest a
    guess shares with a key's is no step towards the key (that would need preimages); whether
    a key is valid at all, the status of the answer says anyway. No key is kept in clear.

    Args:
        instructor_keys: keys that may call everything.
        student_keys: student keys bound to no student (shared).
        roster: ``(student_id, key)`` pairs, each key bound to its student.
    """

    def __init__(
        self,
        instructor_keys: list[str],
        student_keys: list[str],
        roster: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._holders: dict[bytes, Holder] = {
            **{_digest(key): Holder("student", student_id) for student_id, key in roster},
            **{_digest(key): Holder("student") for key in student_keys},
            **{_digest(key): Holder("instructor") for key in instructor_keys},
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        roster = [(entry.student_id, entry.key) for entry in settings.roster()]
        return cls(settings.api_keys("instructor"), settings.api_keys("student"), roster)

    @property
    def open(self) -> bool:
        """No key is configured: every caller acts as an instructor."""
        return not self._holders

    def holder_of(self, key: str) -> Holder | None:
        """Whom ``key`` belongs to, or ``None`` when it is not a configured key."""
        return self._holders.get(_digest(key))

    def role_of(self, key: str) -> Role | None:
        """The role of ``key``, or ``None`` when it is not a configured key."""
        holder = self.holder_of(key)
        return holder.role if holder else None


@dataclass(frozen=True)
class Caller:
    """The caller of a request.

    Attributes:
        role: what the caller may do.
        keyed: whether the role comes from a key (``False`` in open mode).
        identity: a stable name for per-caller limits that reveals nothing of the key: a
            prefix of the key's SHA-256, or the client's address in open mode.
        student_id: the one student id the caller may name (a roster key); ``None`` for any.
    """

    role: Role
    keyed: bool
    identity: str
    student_id: str | None = None


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        detail,
        kind="unauthorized",
        title="API key required",
        headers={"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'},
    )


def _holder(keyring: KeyRing, key: str | None) -> Holder:
    """Whom ``key`` belongs to; 401 when it is missing or unknown (keys are configured)."""
    if not key:
        raise _unauthorized(f"this operation needs an API key in the {API_KEY_HEADER} header")
    holder = keyring.holder_of(key)
    if holder is None:
        raise _unauthorized(f"the key in {API_KEY_HEADER} is not a key of this server")
    return holder


def identify(request: Request) -> Caller:
    """The caller of this request, or 401 when keys are configured and the key is missing or
    unknown."""
    keyring: KeyRing = request.app.state.keyring
    if keyring.open:
        host = request.client.host if request.client else "unknown"
        return Caller("instructor", keyed=False, identity=f"address:{host}")
    key = request.headers.get(API_KEY_HEADER)
    holder = _holder(keyring, key)
    identity = "key:" + _digest(key or "").hex()[:32]
    return Caller(holder.role, keyed=True, identity=identity, student_id=holder.student_id)


_KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")


def edge_caller(keyring: KeyRing | None, headers: Iterable[tuple[bytes, bytes]]) -> Role | Problem:
    """The role of a request's key, or the 401 of a key that is missing or unknown while keys
    are configured, from its headers alone. The edge answers what it can with it before it
    reads the body (a 401 for any POST route, a 403 for a student key on an instructors'
    route), so that a caller who may not call a route cannot make the server read and parse
    up to the body limit (a JSON body parsed takes several times its size).

    Args:
        keyring: the app's keys (``None`` for an app that keeps none: an instructor, as in
            open mode).
        headers: the request's raw headers.

    Returns:
        The caller's role, or the problem to answer.
    """
    if keyring is None or keyring.open:
        return "instructor"
    key = next((value for name, value in headers if name.lower() == _KEY_HEADER), None)
    try:
        return _holder(keyring, key.decode("latin-1") if key is not None else None).role
    except Problem as problem:
        return problem


def edge_identity(
    keyring: KeyRing | None, headers: Iterable[tuple[bytes, bytes]], client: Any
) -> str | None:
    """The ``Caller.identity`` that ``identify`` gives this request, from its headers and
    client alone, where its checks are rate-limited: a student key's, or the address of a
    caller of an open service; ``None`` for an instructor key (not limited) or a key the edge
    refuses anyway."""
    if keyring is None:
        return None
    if keyring.open:
        host = client[0] if client else "unknown"
        return f"address:{host}"
    key = next((value for name, value in headers if name.lower() == _KEY_HEADER), None)
    if key is None:
        return None
    text = key.decode("latin-1")
    holder = keyring.holder_of(text)
    if holder is None or holder.role == "instructor":
        return None
    return "key:" + _digest(text).hex()[:32]


def forbidden() -> Problem:
    """The 403 of a student key on an instructors' operation."""
    return Problem(
        403,
        "a student key may not call this operation: students read problem variants "
        "and check their answers under /v1/assignments",
        kind="forbidden",
        title="Not allowed for this key",
    )


def require_own(who: Caller, student_id: str) -> None:
    """Return when ``who`` may name ``student_id``; 403 when its key is bound to another student.

    The detail names neither the key's student nor the key: the caller may not hold the key
    by right, and the answer must not tell whose it is.

    Args:
        who: the caller (its ``student_id`` is set for a roster key only).
        student_id: the student the request names (query or body).
    """
    if who.student_id is not None and who.student_id != student_id:
        raise Problem(
            403,
            "this key belongs to another student: a student's key reads and checks only that "
            "student's own student_id",
            kind="another-student",
            title="Not this key's student",
        )


class KeyRule(APIKeyHeader):
    """The ``X-API-Key`` header (OpenAPI scheme ``APIKey``) and the roles it must give.

    A dependency: its answer is the ``Caller``; 401 without a valid key (where keys are
    configured), 403 for a role the rule does not admit. ``async`` though it never waits: a
    plain ``def`` dependency runs in the thread pool, and the hop there and back costs more
    than the whole of a small request.

    Args:
        roles: the roles admitted.
    """

    def __init__(self, roles: frozenset[Role]) -> None:
        super().__init__(
            name=API_KEY_HEADER,
            scheme_name="APIKey",
            description=(
                "An instructor or student key (see /v1/info: `auth` is `open` without keys)."
            ),
            auto_error=False,
        )
        self.roles = roles

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        who = identify(request)
        self._check_role(who.role)
        return who

    def admit(self, request: Request) -> None:
        """Return when this rule admits the caller; raise the 401 or 403 problem otherwise.

        The check alone, without building the ``Caller``: called directly (not as a
        dependency) by ``service.routing.DirectRoute`` on its hot routes.
        """
        keyring: KeyRing = request.app.state.keyring
        if not keyring.open:  # open: every caller is an instructor, admitted by every rule
            self._check_role(identify(request).role)

    def _check_role(self, role: Role) -> None:
        if role not in self.roles:
            raise forbidden()


instructor_key = KeyRule(frozenset({"instructor"}))
any_key = KeyRule(frozenset({"instructor", "student"}))


def _rule(rule: KeyRule) -> Any:
    """A rule as a router's dependency, its roles given as the scopes of its security
    requirement: OpenAPI 3.1 lets any scheme list the roles an operation needs, so the document
    states each operation's role from the rule that enforces it (``openapi.declare_roles``)."""
    return Security(rule, scopes=sorted(rule.roles))


CallerDep = Annotated[Caller, _rule(any_key)]
"""The caller of a route under ``STUDENTS``: the same dependency as the router's rule (the
same scopes too), so FastAPI resolves it once per request, not the key twice."""


INSTRUCTORS: dict[str, Any] = {
    "dependencies": [_rule(instructor_key)],
    "responses": problem_responses(401, 403),
}
"""Router rule: instructor keys only (reference endpoints, ``/v1/check``, ...)."""

STUDENTS: dict[str, Any] = {
    "dependencies": [_rule(any_key)],
    "responses": problem_responses(401),
}
"""Router rule: any valid key (reading problem variants, checking answers)."""


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator must know at start-up: open mode, shared student keys that undo a
    roster's binding, variants that change at restart."""
    messages = []
    if not (settings.api_keys("instructor") or settings.api_keys("student") or settings.roster()):
        messages.append(
            "no API key is configured (TENSORGRADE_INSTRUCTOR_KEYS, TENSORGRADE_STUDENT_KEYS, "
            "TENSORGRADE_STUDENT_KEY_FILE): "
            "the service runs open and every caller may read every reference answer"
        )
    if settings.roster() and settings.api_keys("student"):
        messages.append(
            "TENSORGRADE_STUDENT_KEYS are configured beside a roster "
            "(TENSORGRADE_STUDENT_KEY_FILE): whoever holds one of them may read and check any "
            "student_id, the roster's included"
        )
    if settings.variant_secret is None:
        messages.append(
            "TENSORGRADE_VARIANT_SECRET is not set: student variants come from a random secret "
            "and will change at restart (and differ between replicas, and between the workers "
            "of `uvicorn --workers`, which grades right answers wrong: set it, or start the "
            "service with `tensorgrade serve`, which shares one among its workers)"
        )
    return messages
