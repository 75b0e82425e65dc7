"""A small typed client of the tensorgrade API for grading scripts.

    from service.client import Client

    with Client("http://tensorgrade.course.example", api_key="...") as tg:
        tg.conv_shape([21, 12], [4, 5], stride=4)["output_size"]        # [5, 2]
        y = tg.forward("conv1d", {"weight": w}, {"x": x}, config={"stride": 2})["y"]
        dy_dw = tg.jacobian("conv1d", {"weight": w}, {"x": x}, of="y", wrt="weight",
                            config={"stride": 2})                        # shape (1, 3, 1, 5, 3)

Tensors go in as numpy arrays, torch tensors, nested lists or numbers (a list of arrays of
one shape is one tensor); large ones travel as base64 of their bytes (exact, and no text to
parse); torch's 16-bit and 8-bit floats (bfloat16 among them, which numpy lacks) as float32,
which holds their values exactly. Tensors come back as numpy arrays (``Client``) or torch
tensors (``TorchClient``), always exact: answers are asked for in base64, or with
``encoding="safetensors"`` as one binary safetensors body, the fast way for large Jacobians
(``Client`` then answers read-only views of the body, with no copy)::

    with Client(url, encoding="safetensors") as tg:
        dy_dx = tg.jacobian("conv1d", {"weight": w}, {"x": x}, of="y", wrt="x")

Non-finite numbers are never sent as ``null`` (what JSON writers make of them). In an answer
they are written ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, the service's own spelling, so the
service judges the answer as holding NaN or an infinity; a numpy array or torch tensor holding
them travels as base64 of its bytes; anywhere else ``UnsendableError`` names the entry. A numpy
scalar or a 0-d array or tensor is a number wherever it is: ``[np.int64(5), np.int64(2)]`` is
``[5, 2]``, and so in a config, a tolerance or a loss curve.

Every error of the service is raised as ``ProblemError`` with its status, title, detail and
field-level errors. A success whose body is not the service's answer (a proxy's or captive
portal's page, JSON that is not an object, an object without the fields the operation always
answers) is raised as ``UnexpectedResponse``, a ``ProblemError`` too. No error quotes the API
key, even where the page that came back echoes it (escaped as JSON, HTML or a URL writes it
too). A service that gives no answer at all (a
connection refused or lost after the retries, a timeout) raises httpx's own ``httpx.HTTPError``,
not a ``ProblemError``. Connection failures and 429/503 answers are
retried, honouring ``Retry-After`` plus a random extra, so that the many workers of a grading
run do not all come back at the same instant; every operation of the API is a pure
computation, so a retry is safe. Plain-HTTP requests go through
``service.transport.StdlibTransport`` (kept-alive connections, a large answer read in one
piece); others through httpx's own transport; both through the proxy the environment names for
the base URL (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, unless ``NO_PROXY`` names its
host).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import functools
import html.entities
import json
import math
import numbers
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeAlias, TypeGuard, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
import orjson

from service import __version__
from service.binary import read_safetensors_answer
from service.jsonout import nonfinite_name
from service.transport import StdlibTransport, environment_proxy

if TYPE_CHECKING:
    import torch

DEFAULT_URL = "http://127.0.0.1:8000"

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=60.0, pool=30.0)
"""Connecting fails fast (a retry follows); reading waits for a large Jacobian."""

B64_THRESHOLD = 1024
"""Tensors with more elements than this are sent as base64 rather than nested lists."""

RETRIED_STATUSES = frozenset({429, 503})

PLOT_MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
"""What ``loss_curve_plot`` asks for and accepts, by format (as ``service.plots`` answers)."""

JITTER = 0.1
"""A retry waits what was asked plus a random extra of up to this share of it, plus up to
``backoff``: workers told the same ``Retry-After`` then come back spread out, not at once."""

MAX_NESTING = 200
"""The deepest nesting of lists and mappings a request value may have. orjson writes at most
254 levels for the whole body, and converting a much deeper value would exhaust Python's
stack; no tensor nests this deep (numpy allows 64 dimensions)."""

EXCERPT_CHARS = 200
"""How much of an unexpected body an ``UnexpectedResponse`` quotes."""

AnswerEncoding = Literal["b64", "safetensors"]
"""How tensors of answers travel: base64 in JSON, or one binary safetensors body."""

# Failures before the server has seen or answered the request: a connection refused while a
# pod restarts, a connection closed under a draining server. A read timeout is not retried:
# the server may still be computing, and a retry would double its load.
RETRIED_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

_ORJSON_NATIVE = (datetime.date, datetime.time, uuid.UUID, enum.Enum)
"""Types orjson writes that JSON has no type of (besides dataclasses)."""

_WIRE_DATATYPES = {np.dtype("float32"): ("FP32", "<f4"), np.dtype("float64"): ("FP64", "<f8")}

Array = npt.NDArray[Any]
T = TypeVar("T")

Int: TypeAlias = "int | np.integer[Any]"
Ints: TypeAlias = "Int | Sequence[Int] | Array | torch.Tensor"
"""An int, or one per dimension; numpy's and torch's too."""
Number: TypeAlias = "float | np.number[Any] | Array | torch.Tensor"
"""A number: Python's, a numpy scalar, a 0-d array or tensor."""
Curve: TypeAlias = (
    "Sequence[Sequence[Number]] | Sequence[Array | torch.Tensor] | Array | torch.Tensor"
)
"""Epochs of batch values: nested sequences, a sequence of 1-D arrays or tensors, a 2-D one."""


class ProblemError(Exception):
    """An RFC 9457 problem detail answered by the service (or a non-JSON error, likewise).

    Attributes:
        status: the problem detail's status, or the HTTP status where it gives no integer.
        title: the kind of problem, in words.
        detail: what went wrong in this request and what to change.
        errors: field-level problems (``loc``, ``msg``, ``type``), or None.
        type: the URI naming the kind of problem.
        request_id: the id to quote when reporting the problem.
        body: the whole problem detail as received.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        type: str = "about:blank",
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.type = type
        self.request_id = request_id
        self.body = dict(body or {})

    @classmethod
    def from_response(cls, response: httpx.Response, secret: str | None = None) -> ProblemError:
        """The problem an error response describes, whatever its media type.

        Args:
            response: the error response.
            secret: text never to quote (the API key): a proxy's page may echo the request's
                headers, and the message of this error can end up where students read it.
        """
        request_id = response.headers.get("x-request-id")
        text = _redacted(response.text, secret)
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:  # also where the redaction broke the JSON
            body = None
        if not isinstance(body, dict) or "detail" not in body:
            # Not from the service itself (a proxy's HTML page, say): keep what can be read.
            return cls(
                response.status_code,
                response.reason_phrase or "Error",
                text[:500] or "(no body)",
                request_id=request_id,
            )
        status = body.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            # A page of something else that has a "detail" too ({"status": "error", ...}): the
            # status that came back is the one to go by.
            status = response.status_code
        return cls(
            status,
            str(body.get("title", response.reason_phrase)),
            str(body["detail"]),
            errors=body.get("errors"),
            type=str(body.get("type", "about:blank")),
            request_id=body.get("request_id", request_id),
            body=body,
        )


class UnexpectedResponse(ProblemError):
    """A success (or a redirect) whose body is not the service's answer: a proxy's or captive
    portal's HTML page answered with 200, JSON that is not an object, or an object without the
    fields the operation always answers (``{}``, say).

    A ``ProblemError``, so that code handling the service's refusals handles this one too.
    ``status`` is the status received; ``detail`` names the request, the content type and the
    start of the body (at most ``EXCERPT_CHARS`` characters, never the API key); ``body`` is
    empty.
    """

    @classmethod
    def of(
        cls, response: httpx.Response, request: str, what: str, secret: str | None
    ) -> UnexpectedResponse:
        """The error for ``response``, the answer to ``request`` (``GET /healthz``), which
        came ``what`` (``"with a body that is not JSON"``)."""
        text = _redacted(response.text, secret)
        excerpt = repr(text[:EXCERPT_CHARS]) + ("..." if len(text) > EXCERPT_CHARS else "")
        content_type = response.headers.get("content-type") or "no content type"
        detail = (
            f"{request} was answered {what} ({content_type}; the body begins {excerpt}): "
            "check that the URL is the service's and that no proxy or captive portal "
            "answers in its place"
        )
        return cls(
            response.status_code,
            "Not the service's answer",
            _redacted(detail, secret),
            request_id=response.headers.get("x-request-id"),
        )


class UnsendableError(ValueError):
    """A request value that JSON cannot carry, raised before anything is sent: NaN or an
    infinity outside an answer and outside an array, or text that is not valid Unicode.
    The message names the entry, e.g. ``batch_losses[1][2] is NaN: ...``."""


def to_wire(value: Any, b64_threshold: int = B64_THRESHOLD, *, where: str = "the value") -> Any:
    """A request value with every numpy array and torch tensor inside in the wire form.

    Args:
        value: a tensor, or a mapping or sequence holding tensors (other values pass through).
        b64_threshold: tensors with more elements than this are sent as base64.
        where: what the value is, for an error's message (``params``, ``answers["1.1a"]``).

    Returns:
        JSON-ready data: numpy scalars and 0-d arrays or tensors as the numbers they are,
        small tensors as nested lists, large ones as ``{"shape", "datatype", "b64"}``.

    Raises:
        UnsendableError: the value nests lists or mappings more than ``MAX_NESTING`` deep.
    """
    return _to_wire(value, b64_threshold, where, 0)


def _to_wire(value: Any, b64_threshold: int, where: str, depth: int) -> Any:
    """``to_wire`` of a value inside ``depth`` lists or mappings."""
    kind, gathered = _gathered(value, b64_threshold, where, depth)
    return _array_to_wire(gathered, b64_threshold) if kind == _ARRAY else gathered


_PURE, _ARRAY, _MIXED = "pure", "array", "mixed"
"""What ``_gathered`` made of a value: JSON-ready as given (Python's numbers, text, lists of
them); one numeric numpy array; JSON-ready data made from arrays (a mapping, a list that does
not stack)."""

_PLAIN_TYPES = frozenset({float, int, str, bool, type(None)})


def _gathered(value: Any, b64_threshold: int, where: str, depth: int) -> tuple[str, Any]:
    """``value`` with what it is (``_PURE``, ``_ARRAY``, ``_MIXED``), in one pass up from its
    entries: a torch tensor or numpy value as a numeric array, and so a list or tuple whose
    entries are arrays, tensors or numbers of one shape, one of them at least numpy's or
    torch's: one tensor, whose wire form is chosen as a whole. Sent entry by entry, each past
    ``b64_threshold`` would go as base64 inside a list, which the service reads as numbers.

    Raises:
        UnsendableError: the value nests lists or mappings more than ``MAX_NESTING`` deep.
    """
    if type(value) in _PLAIN_TYPES:  # most entries of a nested list: no further look
        return _PURE, value
    value = _numpy_of(value)
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        return (_ARRAY, array) if array.dtype.kind in "iuf" else (_MIXED, array.tolist())
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_NESTING:
        # Checked on the way down, so that the recursion below stays far from Python's limit.
        raise _too_deep(where)
    if isinstance(value, Mapping):
        return _MIXED, {
            key: _to_wire(v, b64_threshold, where, depth + 1) for key, v in value.items()
        }
    if not isinstance(value, list | tuple):
        return _PURE, value
    entries = [_gathered(item, b64_threshold, where, depth + 1) for item in value]
    kinds = {kind for kind, _ in entries}
    if kinds <= {_PURE}:  # Python's own values: sent as written, NaN and ragged rows too
        return _PURE, value
    if _MIXED not in kinds:
        stacked = _stacked([entry for _, entry in entries])
        if stacked is not None:
            return _ARRAY, stacked
    # Ragged, or holding text or mappings: a list, its arrays as nested lists, so that the
    # service answers what it answers of such a list (a 422 naming the entry).
    return _MIXED, [entry.tolist() if kind == _ARRAY else entry for kind, entry in entries]


def _stacked(entries: list[Any]) -> Array | None:
    """The entries (arrays, and Python numbers or lists of them) as one numeric array, or
    None where they are not of one shape or not all numbers."""
    arrays = []
    for entry in entries:
        if not isinstance(entry, np.ndarray):
            if _holds_non_number(entry):
                # A boolean (np.asarray makes [True, 2.0] the numbers [1.0, 2.0]) or text:
                # sent as written, for the service to refuse.
                return None
            try:
                entry = np.asarray(entry)
            except ValueError:  # a ragged list
                return None
            if entry.dtype.kind not in "iuf":
                return None
        arrays.append(entry)
    if any(array.shape != arrays[0].shape for array in arrays):
        return None
    stacked = np.stack(arrays)
    if stacked.dtype.kind == "f" and all(array.dtype.kind in "iu" for array in arrays):
        # Integers only, made floats by numpy (uint64 beside int64; 2**63 beside an int64):
        # past 2**53 they would change. Sent entry by entry instead, each exact.
        return None
    return stacked


def _holds_non_number(value: Any) -> bool:
    """Whether a plain entry (a Python value, or lists of them) holds anything but numbers:
    a boolean, text, None, a mapping. ``_gathered`` bounded its depth on the way down."""
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_non_number(item) for item in value)
    return False


def _array_to_wire(array: Array, b64_threshold: int) -> Any:
    """A numeric array in the wire form: a number, nested lists, or base64 of its bytes."""
    if array.ndim == 0:
        # A number, whatever holds it (np.int64(5), a 0-d tensor): sent as the number it is,
        # so that a field taking a number reads one, and its NaN follows the rules of numbers
        # (spelled out in an answer, refused before sending elsewhere).
        return array.item()
    # JSON has no NaN or infinity (a writer makes them null): the bytes carry them exactly,
    # and the service then says which element is not finite.
    finite = array.dtype.kind != "f" or bool(np.isfinite(array).all())
    if array.size <= b64_threshold and finite:
        return array.tolist()
    datatype, layout = _WIRE_DATATYPES.get(array.dtype, ("FP64", "<f8"))
    raw = base64.b64encode(np.ascontiguousarray(array, dtype=layout).tobytes()).decode()
    return {"shape": list(array.shape), "datatype": datatype, "b64": raw}


def _too_deep(where: str) -> UnsendableError:
    return UnsendableError(
        f"{where} nests lists or mappings more than {MAX_NESTING} levels deep, which this "
        "client does not send (no tensor nests that deep): give a tensor, a number or text"
    )


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """A request value for a field that takes numbers, not tensors (a config, a tolerance, a
    loss curve, the sizes of ``conv_shape``): numpy scalars and 0-d arrays or tensors as the
    Python numbers they are, other arrays and tensors as nested lists, tuples as lists.

    Raises:
        UnsendableError: the value nests lists or mappings more than ``MAX_NESTING`` deep.
    """
    value = _numpy_of(value)
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_NESTING:
        raise _too_deep(where)
    if isinstance(value, Mapping):
        return {key: _plain(item, where, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, where, depth + 1) for item in value]
    return value


def _as_list(value: Any) -> Any:
    """An iterable other than an array, a tensor, text or a mapping (a range, a deque, a
    generator) as a list, which JSON can write; anything else as it is."""
    if isinstance(value, Iterable) and not (
        isinstance(value, str | bytes | Mapping | list | tuple | np.ndarray | np.generic)
        or _is_tensor(value)
    ):
        return list(value)
    return value


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, asked without importing torch."""
    return hasattr(value, "detach") and hasattr(value, "numpy")


def _numpy_of(value: Any) -> Any:
    """A torch tensor as a numpy array; any other value as it is. Torch is not imported: a
    script that sends numpy arrays only does not pay for loading it."""
    if not _is_tensor(value):
        return value
    tensor = value.detach().cpu()
    if tensor.is_floating_point() and tensor.element_size() < 4:
        # numpy has no bfloat16 nor float8 types (torch refuses to convert them): float32
        # holds every value of these, and of float16, exactly.
        tensor = tensor.float()
    return tensor.numpy()


def answer_to_wire(
    answer: Any, b64_threshold: int = B64_THRESHOLD, *, where: str = "the answer"
) -> Any:
    """A student's answer in the wire form, its non-finite numbers written as the service
    writes them: ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

    An answer holding NaN is a wrong answer, and the service says so ("answer[0][0] is NaN;
    only finite numbers are accepted") whatever its form: a number, a list (ragged or not),
    a shape. Left as floats, a JSON writer would send ``null``, which grades as no answer.

    Args:
        answer: as ``to_wire`` takes it.
        b64_threshold: as ``to_wire`` takes it.
        where: as ``to_wire`` takes it.

    Returns:
        JSON-ready data without a non-finite float.

    Raises:
        UnsendableError: as ``to_wire`` raises it.
    """
    # to_wire bounds the nesting, and with it the recursion of _nonfinite_as_text.
    return _nonfinite_as_text(to_wire(answer, b64_threshold, where=where))


def _nonfinite_as_text(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_name(value)
    if isinstance(value, Mapping):
        return {key: _nonfinite_as_text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nonfinite_as_text(item) for item in value]
    return value


def _first_nonfinite(value: Any, where: str = "") -> tuple[str, float] | None:
    """The first non-finite float in JSON-ready data, with where it is (``x["a"][1]``)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, place = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return place, node
        elif isinstance(node, Mapping):
            items = [(v, _place(place, k)) for k, v in node.items()]
            stack.extend(reversed(items))
        elif isinstance(node, list | tuple):
            stack.extend(reversed([(v, f"{place}[{i}]") for i, v in enumerate(node)]))
    return None


def _first_unwritable(value: Any, where: str = "") -> tuple[str, str] | None:
    """The first entry of ``value`` that orjson cannot write, with where it is and what it
    is (``"a set"``); None where none of these is found."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, place = stack.pop()
        if isinstance(node, str):
            try:
                node.encode()
            except UnicodeEncodeError:
                return place, "text that is not valid Unicode"
        elif isinstance(node, bool | float | None):
            pass
        elif isinstance(node, int):
            if not -(2**63) <= node < 2**64:
                return place, "an integer outside 64 bits"
        elif isinstance(node, dict):
            keys = [key for key in node if not isinstance(key, str)]
            if keys:
                return place, f"a mapping with a key that is not text ({keys[0]!r})"
            stack.extend(reversed([(v, _place(place, k)) for k, v in node.items()]))
        elif isinstance(node, list | tuple):
            stack.extend(reversed([(v, f"{place}[{i}]") for i, v in enumerate(node)]))
        elif not isinstance(node, _ORJSON_NATIVE) and not dataclasses.is_dataclass(node):
            return place, f"a {type(node).__module__}.{type(node).__qualname__}".replace(
                "a builtins.", "a "
            )
    return None


def _place(parent: str, key: Any) -> str:
    if not parent:
        return str(key)
    return f"{parent}[{json.dumps(key) if isinstance(key, str) else key}]"


def from_wire(tensor: Mapping[str, Any] | Array) -> Array:
    """A tensor of an answer (``{"shape", "datatype", "data" | "b64"}``) as a numpy array.

    Non-finite entries, which the JSON form writes as ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``, come back as the floats they are. An array (a tensor of a safetensors
    answer) is returned as it is.
    """
    if isinstance(tensor, np.ndarray):
        return tensor
    dtype = np.dtype("<f4") if tensor.get("datatype") == "FP32" else np.dtype("<f8")
    shape = tuple(tensor["shape"])
    if "b64" in tensor:
        raw = base64.b64decode(tensor["b64"])
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    data = tensor["data"]
    if tensor.get("nonfinite"):
        return np.array(data, dtype=object).astype(dtype).reshape(shape)
    return np.asarray(data, dtype=dtype).reshape(shape)


@dataclass
class Backward(Generic[T]):
    """The answer of a backward pass.

    Attributes:
        outputs: every output of the model, by name.
        grads: dl/d(argument) for every param and input given, by name.
        extras: any further tensors of the answer (``state_grads`` for the RNNs), by name.
    """

    outputs: dict[str, T]
    grads: dict[str, T]
    extras: dict[str, T] = field(default_factory=dict)


class BatchResults(list[dict[str, Any]]):
    """The answer of ``check_batch``: the results, one per check in order (each
    ``{"correct", "score", ...}``, or ``{"error": <problem detail>}`` for a check that could not
    be judged), as a list; and the batch's ``summary`` beside them.

    Attributes:
        summary: ``{"checks", "correct", "wrong", "invalid", "keys"}`` as the service answers
            it (a service that answers none: the counts of the results, without ``keys``).
    """

    def __init__(self, results: Sequence[dict[str, Any]], summary: Mapping[str, Any]) -> None:
        super().__init__(results)
        self.summary: dict[str, Any] = dict(summary)

    @property
    def invalid(self) -> list[int]:
        """The 0-based positions of the checks answered with an ``error``."""
        return [i for i, result in enumerate(self) if "error" in result]


def batch_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The counts the service's ``summary`` gives, worked out from the results."""
    invalid = sum("error" in r for r in results)
    correct = sum(bool(r.get("correct")) for r in results)
    return {
        "checks": len(results),
        "correct": correct,
        "wrong": len(results) - correct - invalid,
        "invalid": invalid,
    }


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (``Retry-After`` in seconds or as a date), or None.

    Sent twice (a proxy adding its own), httpx joins the two with a comma: the longer wait
    is taken (read as no wait at all, the retry came too early)."""
    waits = []
    for value in response.headers.get_list("retry-after"):
        wait = _seconds(value)  # a number, or a date (which holds a comma of its own)
        if wait is None:  # "5, 30": two on one line
            parts = [part for part in map(_seconds, value.split(",")) if part is not None]
            wait = max(parts, default=None)
        if wait is not None:
            waits.append(wait)
    return max(waits, default=None)


def _ceiled(seconds: float) -> str:
    """Seconds as a message says them: whole, rounded up (``inf`` for a wait without end)."""
    return str(math.ceil(seconds)) if math.isfinite(seconds) else "inf"


def _seconds(value: str) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class BaseClient(Generic[T]):
    """The client, generic over the type tensors come back as (see ``Client``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        b64_threshold: int = B64_THRESHOLD,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        encoding: AnswerEncoding = "b64",
        trust_env: bool = True,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """A client of the service at ``base_url``.

        Args:
            base_url: where the service answers, e.g. ``http://127.0.0.1:8000``.
            api_key: sent as ``X-API-Key``; None for a server that runs open. Surrounding
                whitespace is dropped (a key read from a file keeps its line break).
            timeout: seconds, or an ``httpx.Timeout`` for connect/read/write/pool apart.
                Over ``http://`` the read timeout bounds the whole answer, from the request
                sent to its last byte; over ``https://`` (httpx's transport) each read.
            retries: how many times a request is retried after a connection failure or a
                429/503 answer (0: never).
            backoff: first wait in seconds when the server gave no ``Retry-After``; doubles on
                each retry. Every wait, ``Retry-After`` too, gets a random extra of up to
                ``JITTER`` of itself plus up to ``backoff``.
            max_wait: the longest ``Retry-After`` waited out (an answer asking for more is
                answered at once, as the error it is: a retry sooner would be refused
                again), and the longest backoff; a backoff it caps keeps its random extra
                below it.
            b64_threshold: tensors with more elements are sent as base64.
            transport: an httpx transport to send requests through (default:
                ``StdlibTransport``, which hands ``https://`` to httpx's own, through the
                proxy the environment names for ``base_url`` if ``trust_env``). A transport
                given is used as it is, without the environment's proxy.
            sleep: how to wait between retries (tests pass a recorder).
            encoding: how forward, backward and jacobian answer tensors: ``b64`` (JSON) or
                ``safetensors`` (one binary body; ``Client`` then answers read-only arrays
                that share the body's memory).
            trust_env: as httpx's: take the proxy (``HTTP_PROXY``, ``HTTPS_PROXY``,
                ``ALL_PROXY``, ``NO_PROXY``) and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from the
                environment.
            jitter: draws the share, in [0, 1), of each retry's random extra wait (tests pass
                a constant).

        Raises:
            ValueError: the API key holds a control character or a character outside ASCII
                (the message does not quote the key); a timeout is not a number of seconds
                above 0 and at most ``MAX_TIMEOUT`` (or None, no limit); ``retries`` is not
                an integer of at least 0; ``backoff`` is not a number of seconds from 0 to
                ``MAX_TIMEOUT``, or ``max_wait`` neither at least 0 nor ``math.inf``.
        """
        _check_settings(timeout, retries, backoff, max_wait)
        headers = {"User-Agent": f"tensorgrade-client/{__version__}"}
        # A key read from a file ends with its line break ("\r\n" on Windows), which httpx
        # would refuse with an error quoting the key: that message can reach a traceback in
        # the output students see.
        api_key = api_key.strip() if api_key is not None else None
        if api_key:
            _check_api_key(api_key)
            headers["X-API-Key"] = api_key
        self._secret = api_key or None
        if transport is None:
            proxy = environment_proxy(base_url) if trust_env else None
            transport = StdlibTransport(proxy=proxy, trust_env=trust_env)
        self.http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,
        )
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.b64_threshold = b64_threshold
        self.encoding: AnswerEncoding = encoding
        self._sleep = sleep
        self._jitter = jitter

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def tensor(self, wire: Mapping[str, Any] | Array) -> T:
        """A tensor of an answer (its wire form, or an array of a safetensors answer) as this
        client's tensor type."""
        raise NotImplementedError

    # -- the operations ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` while the server serves."""
        return self._call("GET", "/healthz", fields=("status",))

    def ready(self) -> bool:
        """``GET /readyz``: whether the server is ready (torch loaded, a warm-up computation
        run): True on its ``{"status": "ready"}``, False on a 503 while it warms up (answered
        at once, not waited out as other 503s are): its own problem detail, or the page of a
        proxy or load balancer with no ready server behind it ("no healthy upstream"), which
        is what a caller behind an ingress sees while every pod warms up.

        Raises:
            ProblemError: any other error, as ``health`` raises it (a proxy's error page).
            UnexpectedResponse: a success (or a redirect) that is not ``{"status": "ready"}``,
                as ``health`` raises it: a captive portal's page, ``{}``, a 204.
            httpx.HTTPError: the server cannot be reached (after the retries).
        """
        response = self._send("GET", "/readyz", None, None, retried=frozenset())
        if response.status_code == 503:
            return False
        if response.status_code >= 400:
            raise ProblemError.from_response(response, self._secret)
        answer = self._answer(response, "GET /readyz", ("status",))
        if answer["status"] != "ready":
            what = f"with status {answer['status']!r}, not 'ready'"
            raise UnexpectedResponse.of(response, "GET /readyz", what, self._secret)
        return True

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: version, torch version, devices, limits and auth mode."""
        return self._call("GET", "/v1/info", fields=("version",))

    def conv_shape(
        self,
        input_size: Ints,
        kernel_size: Ints,
        *,
        stride: Ints = 1,
        padding: Ints | Literal["valid", "same"] = 0,
        dilation: Ints = 1,
        in_channels: Int | None = None,
        out_channels: Int | None = None,
        transposed: bool = False,
        output_padding: Ints = 0,
    ) -> dict[str, Any]:
        """``POST /v1/shapes/conv``: a convolution's output size with the worked steps.

        Each size is an int or a sequence of them (one per dimension); numpy's and torch's
        ints, arrays and tensors are taken too.

        Returns:
            ``{"output_size", "output_shape", "steps"}``.
        """
        sizes = {
            "input_size": input_size,
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "transposed": transposed,
            "output_padding": output_padding,
            "in_channels": in_channels,
            "out_channels": out_channels,
        }
        body = {k: _plain(_as_list(v), k) for k, v in sizes.items() if v is not None}
        return self._call(
            "POST", "/v1/shapes/conv", body, fields=("output_size", "output_shape", "steps")
        )

    def forward(
        self,
        model: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        config: Mapping[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "float64",
    ) -> dict[str, T]:
        """``POST /v1/models/{model}/forward``: every output of the model, by name."""
        body = self._model_body(params, inputs, config, device, dtype)
        answer = self._call("POST", f"/v1/models/{model}/forward", body, fields=("outputs",))
        return {name: self.tensor(t) for name, t in answer["outputs"].items()}

    def backward(
        self,
        model: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        grad_outputs: Mapping[str, Any],
        *,
        config: Mapping[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "float64",
    ) -> Backward[T]:
        """``POST /v1/models/{model}/backward``: gradients given dl/d(outputs).

        Args:
            grad_outputs: dl/d(output) for one or more outputs, each of its output's shape.
        """
        body = self._model_body(params, inputs, config, device, dtype)
        body["grad_outputs"] = to_wire(grad_outputs, self.b64_threshold, where="grad_outputs")
        answer = self._call(
            "POST", f"/v1/models/{model}/backward", body, fields=("outputs", "grads")
        )
        return Backward(
            outputs={n: self.tensor(t) for n, t in answer.pop("outputs").items()},
            grads={n: self.tensor(t) for n, t in answer.pop("grads").items()},
            extras={n: self.tensor(t) for n, t in answer.items() if _is_wire_tensor(t)},
        )

    def jacobian(
        self,
        model: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        of: str,
        wrt: str,
        config: Mapping[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "float64",
    ) -> T:
        """``POST /v1/models/{model}/jacobian``: d(of)/d(wrt), shaped of's shape + wrt's."""
        body = self._model_body(params, inputs, config, device, dtype)
        body |= {"of": of, "wrt": wrt}
        answer = self._call("POST", f"/v1/models/{model}/jacobian", body, fields=("jacobian",))
        return self.tensor(answer["jacobian"])

    def check(
        self,
        expected: Mapping[str, Any],
        answer: Any,
        *,
        tolerance: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/check``: is ``answer`` the reference ``expected`` describes?

        Returns:
            ``{"correct", "score", "report", "diagnosis"}``.
        """
        body = self._check_body(expected, answer, tolerance)
        return self._call("POST", "/v1/check", body, fields=("correct", "score"))

    def check_batch(self, checks: Sequence[Mapping[str, Any]]) -> BatchResults:
        """``POST /v1/check/batch``: several checks (each ``{"expected", "answer",
        "tolerance"?}``), answered in order.

        Returns:
            The results in order, as a list (a check that could not be judged is
            ``{"error": <problem detail>}`` in its place), with the batch's ``summary`` as
            an attribute: ``results.summary["invalid"]``.
        """
        body = {"checks": [self._check_to_wire(c, f"checks[{i}]") for i, c in enumerate(checks)]}
        answer = self._call("POST", "/v1/check/batch", body, fields=("results",))
        results: list[dict[str, Any]] = answer["results"]
        summary = answer.get("summary")
        if not isinstance(summary, dict):
            summary = batch_summary(results)
        return BatchResults(results, summary)

    def grade(
        self,
        assignment: str,
        student_id: str,
        answers: Mapping[str, Any],
        *,
        gradescope: bool = False,
    ) -> dict[str, Any]:
        """``POST /v1/assignments/{assignment}/grade``: a student's whole submission.

        Args:
            answers: the answer to each problem, by problem id (``"1.1a"``...).
            gradescope: answer a Gradescope ``results.json`` instead of the service's form.

        Returns:
            The service's form (``total``, ``problems``...) or ``results.json`` (``score``,
            ``tests``...).

        Raises:
            UnexpectedResponse: the answer lacks those fields (the service always answers
                them), e.g. a proxy's page; an empty gradebook entry is never returned.
        """
        wire = {
            problem: answer_to_wire(a, self.b64_threshold, where=_place("answers", problem))
            for problem, a in answers.items()
        }
        body = {"student_id": student_id, "answers": wire}
        params = {"format": "gradescope"} if gradescope else None
        fields = ("tests", "score") if gradescope else ("problems", "total")
        path = f"/v1/assignments/{assignment}/grade"
        return self._call("POST", path, body, params, fields=fields)

    def unsendable_answers(self, answers: Mapping[str, Any]) -> dict[str, str]:
        """Why each answer that JSON cannot carry cannot be sent, by problem id (``grade``
        raises ``UnsendableError`` for the whole submission): a grading script leaves those
        out and grades the rest."""
        reasons = {}
        for problem, answer in answers.items():
            try:
                where = _place("answers", problem)
                wire = answer_to_wire(answer, self.b64_threshold, where=where)
                _json_body({"answers": {problem: wire}})  # an error names answers["1.1a"]...
            except UnsendableError as error:
                reasons[problem] = str(error)
        return reasons

    def assignments(self) -> list[dict[str, Any]]:
        """``GET /v1/assignments``: every assignment with its problems (id, title, points)."""
        answer = self._call("GET", "/v1/assignments", fields=("assignments",))
        listed: list[dict[str, Any]] = answer["assignments"]
        return listed

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: every model with its params, inputs, outputs and config."""
        models: list[dict[str, Any]] = self._call("GET", "/v1/models", fields=("models",))["models"]
        return models

    def state_jacobians(
        self,
        model: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        config: Mapping[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "float64",
    ) -> dict[str, Any]:
        """``POST /v1/models/{model}/state-jacobians``: dh[t]/dh[t-1] per step, their norms and
        the vanishing/exploding verdict; tensors of the answer as this client's tensor type."""
        body = self._model_body(params, inputs, config, device, dtype)
        path = f"/v1/models/{model}/state-jacobians"
        answer = self._call("POST", path, body, fields=("jacobians",))
        return {k: self.tensor(v) if _is_wire_tensor(v) else v for k, v in answer.items()}

    def problem(self, assignment: str, problem: str, student_id: str) -> dict[str, Any]:
        """``GET /v1/assignments/{a}/problems/{p}?student_id=``: the statement and the given
        tensors of the student's variant (never the answer); ``given`` holds them as this
        client's tensor type, by name."""
        answer = self._call(
            "GET",
            f"/v1/assignments/{assignment}/problems/{problem}",
            params={"student_id": student_id},
            fields=("statement", "given"),
        )
        given = answer["given"]
        if isinstance(given, Mapping):
            answer["given"] = {
                n: self.tensor(t) if _is_wire_tensor(t) else t for n, t in given.items()
            }
        return answer

    def check_problem(
        self, assignment: str, problem: str, student_id: str, answer: Any
    ) -> dict[str, Any]:
        """``POST /v1/assignments/{a}/problems/{p}/check``: one answer of a student judged
        against their variant: ``{"correct", "score", "points", "feedback", ...}``."""
        wire = answer_to_wire(answer, self.b64_threshold, where="answer")
        body = {"student_id": student_id, "answer": wire}
        path = f"/v1/assignments/{assignment}/problems/{problem}/check"
        return self._call("POST", path, body, fields=("correct", "score"))

    def loss_curve(
        self,
        batch_losses: Curve,
        num_classes: Int,
        *,
        batch_accuracies: Curve | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/diagnostics/loss-curve``: epoch means beside last-batch values, spikes
        and findings (the homework's part 1.3)."""
        body = _loss_curve_body(batch_losses, num_classes, batch_accuracies)
        return self._call("POST", "/v1/diagnostics/loss-curve", body, fields=("epoch_mean",))

    def loss_curve_plot(
        self,
        batch_losses: Curve,
        num_classes: Int,
        *,
        batch_accuracies: Curve | None = None,
        format: Literal["png", "svg"] = "png",
    ) -> bytes:
        """``POST /v1/diagnostics/loss-curve?format=png`` (or ``svg``): the plot of both
        curves, as the image file's bytes (write them to ``curve.png``).

        Raises:
            ProblemError: the service refused (e.g. a 422 for an empty epoch).
            UnexpectedResponse: the answer is not an image of that format.
        """
        if format not in PLOT_MEDIA_TYPES:
            raise ValueError(f"format must be png or svg, not {format!r}")
        body = _loss_curve_body(batch_losses, num_classes, batch_accuracies)
        path = "/v1/diagnostics/loss-curve"
        response = self._send("POST", path, body, {"format": format})
        if response.status_code >= 400:
            raise ProblemError.from_response(response, self._secret)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type != PLOT_MEDIA_TYPES[format] or not response.content:
            what = f"with no {PLOT_MEDIA_TYPES[format]} image"
            raise UnexpectedResponse.of(response, f"POST {path}", what, self._secret)
        return response.content

    def temporal_order(self, **options: Any) -> dict[str, Any]:
        """``POST /v1/experiments/temporal-order``: a bounded reference training run; the
        options are the body's fields (``epochs``, ``cell``, ``seed``...)."""
        body = _plain(dict(options), "the options")
        return self._call("POST", "/v1/experiments/temporal-order", body)

    # -- plumbing ------------------------------------------------------------------------------

    def _model_body(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        config: Mapping[str, Any] | None,
        device: str,
        dtype: str,
    ) -> dict[str, Any]:
        return {
            "config": _plain(dict(config or {}), "config"),
            "params": to_wire(params, self.b64_threshold, where="params"),
            "inputs": to_wire(inputs, self.b64_threshold, where="inputs"),
            "device": device,
            "dtype": dtype,
            "encoding": self.encoding,
        }

    def _check_body(
        self, expected: Mapping[str, Any], answer: Any, tolerance: Mapping[str, float] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "expected": to_wire(expected, self.b64_threshold, where="expected"),
            "answer": answer_to_wire(answer, self.b64_threshold, where="answer"),
        }
        if tolerance is not None:
            body["tolerance"] = _plain(dict(tolerance), "tolerance")
        return body

    def _check_to_wire(self, check: Mapping[str, Any], where: str) -> dict[str, Any]:
        return {
            key: (answer_to_wire if key == "answer" else to_wire)(
                value, self.b64_threshold, where=_place(where, key)
            )
            for key, value in check.items()
        }

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        *,
        fields: Collection[str] = (),
    ) -> dict[str, Any]:
        """The answer of one operation.

        Args:
            method: the HTTP method.
            path: the operation's path.
            body: JSON-ready data to send, or None.
            params: the query's parameters.
            fields: the fields the operation always answers.

        Returns:
            The answer: a non-empty JSON object holding ``fields`` (or a safetensors body).

        Raises:
            ProblemError: the service refused (or something in its place did).
            UnexpectedResponse: a success whose body is not such an answer.
            UnsendableError: ``body`` cannot be sent as JSON.
            httpx.HTTPError: the service cannot be reached (after the retries).
        """
        response = self._send(method, path, body, params)
        if response.status_code >= 400:
            raise ProblemError.from_response(response, self._secret)
        return self._answer(response, f"{method} {path}", fields)

    def _answer(
        self, response: httpx.Response, request: str, fields: Collection[str]
    ) -> dict[str, Any]:
        """The answer a success (or a redirect) to ``request`` (``GET /healthz``) carries: a
        non-empty JSON object holding ``fields`` (or a safetensors body).

        Raises:
            UnexpectedResponse: the body is no such answer.
        """
        answer: Any
        if response.headers.get("content-type", "").startswith("application/octet-stream"):
            try:
                answer = read_safetensors_answer(response.content)
            except ValueError as error:
                what = f"with a body that is not a safetensors file ({error})"
                raise UnexpectedResponse.of(response, request, what, self._secret) from None
        else:
            try:
                answer = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                what = "with a body that is not JSON"
                raise UnexpectedResponse.of(response, request, what, self._secret) from None
        if not isinstance(answer, dict):
            what = "with JSON that is not an object"
            raise UnexpectedResponse.of(response, request, what, self._secret)
        missing = [name for name in fields if name not in answer]
        # Every operation answers fields: an empty object is never an answer.
        if missing or not answer:
            what = "with an empty object" if not answer else f"without {', '.join(missing)}"
            raise UnexpectedResponse.of(response, request, what, self._secret)
        return answer

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None,
        *,
        retried: Collection[int] = RETRIED_STATUSES,
    ) -> httpx.Response:
        """The response to one request, after retrying connection failures and the
        ``retried`` statuses (429 and 503 unless told otherwise).

        Raises:
            ProblemError: a ``retried`` status asking (``Retry-After``) for a wait longer than
                ``max_wait``, at once: its message says how long.
            httpx.HTTPError: the connection failed (after the retries, for those retried).
        """
        headers = {"X-Request-ID": uuid.uuid4().hex}  # the same id on every retry of this call
        content = None
        if body is not None:
            content = _json_body(body)
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    method, path, content=content, params=params, headers=headers
                )
                # httpx leaves the response and its stream pointing at each other: a cycle,
                # which keeps a read body (32 MB for a large Jacobian) alive until the garbage
                # collector's next pass instead of freeing it when the caller is done, and
                # the next answer then lands in fresh memory (a page fault every 4 KiB).
                response.stream = httpx.ByteStream(b"")
            except RETRIED_ERRORS:
                if attempt >= self.retries:
                    raise
                asked = None
            else:
                if response.status_code not in retried or attempt >= self.retries:
                    return response
                asked = retry_after(response)
                if asked is not None and not asked <= self._longest_wait:
                    # Sooner is refused again (the service's 429 names the very second its
                    # window resets): the caller hears of it now rather than after the retries.
                    raise self._not_waited(response, asked)
            attempt += 1
            self._sleep(self._waited(asked, attempt))

    def _not_waited(self, response: httpx.Response, asked: float) -> ProblemError:
        """The error of a 429 or 503 whose ``Retry-After`` is past ``max_wait``, its message
        saying how long the server asked to wait: a page that does not say it (a proxy's, a
        503 "retry after the time in Retry-After") would leave the caller guessing when."""
        error = ProblemError.from_response(response, self._secret)
        limit = (
            f"max_wait ({self.max_wait:g} s)"
            if self.max_wait <= MAX_TIMEOUT
            else f"a day ({MAX_TIMEOUT:g} s), the longest wait"
        )
        error.args = (
            f"{error}; the server asked to wait {_ceiled(asked)} s before a retry, longer "
            f"than {limit}, so it was not retried",
        )
        return error

    @property
    def _longest_wait(self) -> float:
        """``max_wait``, and never past a day: ``time.sleep`` refuses what the platform's
        time_t cannot hold (``max_wait=inf`` with a huge ``Retry-After`` was an
        OverflowError)."""
        return min(self.max_wait, MAX_TIMEOUT)

    def _waited(self, asked: float | None, attempt: int) -> float:
        """How long to wait before retry ``attempt``: what the server asked (``Retry-After``,
        never less: before it, the retry is refused again) or else ``backoff`` doubling each
        time, at most ``max_wait``; and a random extra on top.

        The workers of a grading run told the same ``Retry-After`` (or failing on the same
        restart) would otherwise all retry at the same instant, and be refused together again.
        The extra is drawn from a window of ``JITTER`` of the wait plus ``backoff``: above
        what the server asked, and for a backoff capped by ``max_wait``, below the cap.
        """
        if asked is not None:
            return asked + self._jitter() * (JITTER * asked + self.backoff)
        longest = self._longest_wait
        base = min(self.backoff * 2.0 ** min(attempt - 1, 64), longest)
        spread = min(JITTER * base + self.backoff, longest)
        return min(base, longest - spread) + self._jitter() * spread


def _loss_curve_body(
    batch_losses: Curve, num_classes: Int, batch_accuracies: Curve | None
) -> dict[str, Any]:
    return {
        "batch_losses": _curve(batch_losses, "batch_losses"),
        "batch_accuracies": _curve(batch_accuracies, "batch_accuracies"),
        "num_classes": _plain(num_classes, "num_classes"),
    }


def _curve(curve: Any, where: str) -> Any:
    """A curve (epochs of batch values) as lists of numbers: a 2-D array or tensor, a list of
    1-D ones, lists of numpy scalars or 0-d tensors, any iterable of iterables."""
    epochs = _as_list(curve)
    if isinstance(epochs, list | tuple):
        epochs = [_as_list(epoch) for epoch in epochs]
    return _plain(epochs, where)


def _json_body(body: Any) -> bytes:
    """The body as JSON, or ``UnsendableError`` where JSON cannot say what it holds."""
    try:
        content = orjson.dumps(body)
    except orjson.JSONEncodeError as error:  # text with a lone surrogate, a set...
        # orjson's message names the type, not the entry: find it, for the caller to fix.
        unwritable = _first_unwritable(body)
        if unwritable is None:
            raise UnsendableError(f"the request cannot be sent as JSON: {error}") from None
        where, what = unwritable
        raise UnsendableError(
            f"{where or 'the body'} is {what}, which cannot be sent as JSON ({error})"
        ) from None
    # orjson writes NaN and infinities as null, and the service would read "no value" where
    # the caller meant NaN. A null in the bytes is rare (an absent option): only then look.
    if b"null" in content:
        found = _first_nonfinite(body)
        if found is not None:
            where, value = found
            raise UnsendableError(
                f"{where or 'the body'} is {nonfinite_name(value)}, which JSON "
                "cannot carry, and the service takes only finite numbers there: give a "
                "finite value"
            )
    return content


class Client(BaseClient[Array]):
    """The client; tensors come back as numpy arrays."""

    def tensor(self, wire: Mapping[str, Any] | Array) -> Array:
        return from_wire(wire)


class TorchClient(BaseClient["torch.Tensor"]):
    """The client; tensors come back as torch tensors (on the CPU)."""

    def tensor(self, wire: Mapping[str, Any] | Array) -> torch.Tensor:
        import torch

        array = from_wire(wire)
        # A tensor owns writable memory: a read-only view of a safetensors body is copied.
        return torch.from_numpy(array if array.flags.writeable else array.copy())


MAX_TIMEOUT = 86400.0
"""The longest timeout: a day. No answer is worth a longer wait, and a socket refuses one past
what the platform's time_t holds (``timeout=1e10`` was an OverflowError from the socket at the
first request)."""


def _check_settings(
    timeout: httpx.Timeout | float | None, retries: int, backoff: float, max_wait: float
) -> None:
    """Refuse, when the client is made, what would fail or misbehave at its first request.

    Raises:
        ValueError: naming the argument and what it must be.
    """
    parts: dict[str, object]
    if isinstance(timeout, httpx.Timeout | tuple):
        try:
            phases = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        except (TypeError, ValueError):
            raise ValueError(
                f"timeout must be seconds, an httpx.Timeout or a tuple of 4, got {timeout!r}"
            ) from None
        parts = {
            "the connect timeout": phases.connect,
            "the read timeout": phases.read,
            "the write timeout": phases.write,
            "the pool timeout": phases.pool,
        }
    else:
        parts = {"timeout": timeout}
    for name, value in parts.items():
        if value is None:
            continue  # httpx's own "no limit"
        if not (_is_seconds(value) and 0 < float(value) <= MAX_TIMEOUT):
            raise ValueError(
                f"{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, "
                f"got {_shown(value)}"
            )
    if not (isinstance(retries, numbers.Integral) and not isinstance(retries, bool)) or retries < 0:
        raise ValueError(f"retries must be an integer of at least 0, got {_shown(retries)}")
    if not (_is_seconds(backoff) and 0 <= backoff <= MAX_TIMEOUT):
        raise ValueError(
            f"backoff must be a number of seconds of at least 0 and at most {MAX_TIMEOUT:g}, "
            f"got {_shown(backoff)}"
        )
    # inf is allowed: every Retry-After up to a day is waited out (the backoff stays finite).
    if not ((_is_seconds(max_wait) or max_wait == math.inf) and max_wait >= 0):
        raise ValueError(
            f"max_wait must be a number of seconds of at least 0, got {_shown(max_wait)}"
        )


def _shown(value: object) -> str:
    """A value as an error message quotes it: its repr, cut short (an int of 400 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _is_seconds(value: object) -> TypeGuard[numbers.Real]:
    """A finite real number (a numpy scalar too), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past what a float holds
        return False


def _check_api_key(key: str) -> None:
    """Refuse a key that cannot travel in a header, without quoting it.

    Raises:
        ValueError: the key holds a control character or a character outside ASCII.
    """
    for position, char in enumerate(key, 1):
        if char.isascii() and char.isprintable():
            continue
        kind = (
            f"a control character (U+{ord(char):04X})"
            if char.isascii()
            else "a non-ASCII character"
        )
        # Never the key itself, nor the character when it may be part of the secret.
        raise ValueError(
            f"the API key holds {kind} at character {position} of {len(key)}; a key is "
            "printable ASCII: check the file or variable it was read from"
        )


def _redacted(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced, however the page that echoes it
    wrote it: as it is, escaped in JSON, in HTML or in a URL (``%26``, ``+`` for a space).
    Each character may be written in any of its forms, so a page mixing them is covered too."""
    if not secret:
        return text
    return _secret_pattern(secret).sub("[the API key]", text)


@functools.lru_cache(maxsize=4)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """What matches ``secret`` written in any of the forms ``_redacted`` names."""
    return re.compile("".join(_char_forms(char) for char in secret))


def _char_forms(char: str) -> str:
    """A pattern matching ``char`` (printable ASCII: ``_check_api_key`` sees to it) as it is
    or escaped: a JSON escape, an HTML character reference, a percent-encoding."""
    code = ord(char)
    # Hex digits and the x of &#x are either case; the rest as written (entity names are).
    forms = [
        re.escape(char),
        rf"\\u(?i:0*{code:x})",  # \u0026, as JSON writers that escape <, > and & write it
        rf"&#0*{code};",
        rf"&#(?i:x0*{code:x});",
        rf"%(?i:{code:02x})",
    ]
    if char in '"\\/':
        forms.append(re.escape("\\" + char))  # \" and \\ (JSON), \/ (some writers)
    if char == " ":
        forms.append(r"\+")  # a form's encoding of a space
    forms += [re.escape(f"&{name}") for name, value in html.entities.html5.items() if value == char]
    return f"(?:{'|'.join(forms)})"


def _is_wire_tensor(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, Mapping) and "shape" in value and ("data" in value or "b64" in value)
