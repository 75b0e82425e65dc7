"""The tensor wire format (API.md "Tensors"): JSON <-> numpy/torch, with budgets.

Three request forms are accepted:

1. a rectangular nested list of numbers (a bare number is a 0-d tensor);
2. ``{"shape": [...], "data": [...flat, row-major...], "datatype": "FP64" | "FP32"}``
   (``data`` may also be nested as ``shape``, as answers write it);
3. ``{"shape": [...], "datatype": "FP64" | "FP32", "b64": "<little-endian row-major bytes>"}``.

Budgets are checked from the *declared* shape (the nested list's extent along its first
elements, or the ``shape`` field) before any array is allocated, so a request declaring a
billion elements costs nothing but the check.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import WithJsonSchema

from service.jsonout import NONFINITE_NAMES, nonfinite_name
from service.problems import Problem

Datatype = Literal["FP64", "FP32"]
Encoding = Literal["json", "b64", "safetensors"]
TensorEncoding = Literal["json", "b64"]
"""How one tensor is written inside a JSON answer (``safetensors`` is a whole-body encoding:
see ``service.responses.tensor_answer``)."""

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
TORCH_DATATYPES: dict[torch.dtype, Datatype] = {torch.float64: "FP64", torch.float32: "FP32"}

_NESTED_LIST_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
}
_SHAPE_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "description": "The size of each axis; `[]` for a number.",
}
_DATATYPE_SCHEMA: dict[str, Any] = {
    "enum": ["FP64", "FP32"],
    "description": "The precision the entries are given in: `FP64` (the default) or `FP32`; "
    "the request's `dtype` is what it computes in.",
}

TENSOR_JSON_SCHEMA: dict[str, Any] = {
    "title": "Tensor",
    "description": (
        "A tensor: a rectangular nested list of numbers (a bare number is 0-d), "
        '{"shape", "data"} with flat row-major data (or nested as the shape), or '
        '{"shape", "datatype", "b64"} with base64 of little-endian row-major bytes.'
    ),
    "anyOf": [
        {"type": "number"},
        _NESTED_LIST_SCHEMA,
        {
            "type": "object",
            "properties": {
                "shape": _SHAPE_SCHEMA,
                "data": {
                    "anyOf": [_NESTED_LIST_SCHEMA, {"type": "number"}],
                    "description": "Every entry, flat, in row-major order: as many as the "
                    "shape's sizes multiply to. Nested as `shape` (a bare number for `[]`) "
                    "is taken too: the form answers write, so a tensor read from an answer "
                    "can be sent back as it came.",
                },
                "datatype": _DATATYPE_SCHEMA,
            },
            "required": ["shape", "data"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "shape": _SHAPE_SCHEMA,
                "datatype": _DATATYPE_SCHEMA,
                "b64": {
                    "type": "string",
                    "description": "Base64 of the entries' little-endian bytes in row-major "
                    "order, 8 bytes each in FP64, 4 in FP32.",
                },
            },
            "required": ["shape", "b64"],
            "additionalProperties": False,
        },
    ],
}

TensorIn = Annotated[Any, WithJsonSchema(TENSOR_JSON_SCHEMA)]
"""A tensor field of a request body: validated by ``decode``, documented as the three forms."""


@dataclass
class Budget:
    """Element budgets of one request, charged tensor by tensor before allocation."""

    max_tensor: int
    max_request: int
    max_rank: int
    used: int = field(default=0)

    def charge(self, shape: Sequence[int], where: str) -> None:
        numel = math.prod(shape)
        if numel > self.max_tensor:
            raise Problem(
                413,
                f"{where} declares {numel:,} elements (shape {list(shape)}); "
                f"the limit per tensor is {self.max_tensor:,}.",
                kind="budget-exceeded",
                title="Over the element budget",
            )
        if self.used + numel > self.max_request:
            raise Problem(
                413,
                f"the tensors of this request declare {self.used + numel:,} elements "
                f"(reached at {where}); the limit per request is {self.max_request:,}.",
                kind="budget-exceeded",
                title="Over the element budget",
            )
        self.used += numel


def _over_rank(where: str, message: str) -> Problem:
    """A rank over ``TENSORGRADE_MAX_RANK``: a budget of the service, as the element budgets
    are (a 413), not a fault of the tensor."""
    detail = f"{where}: {message}"
    return Problem(413, detail, kind="budget-exceeded", title="Over the rank limit")


def _invalid(where: str, message: str) -> Problem:
    loc: list[str | int] = ["body", *where.split(".")]
    # A message that names its place (``inputs.x[0][1] is null``) says where by itself.
    detail = message if message.startswith(where) else f"{where}: {message}"
    return Problem(
        422,
        detail,
        kind="invalid-tensor",
        title="A tensor is not valid",
        errors=[{"loc": loc, "msg": message, "type": "invalid_tensor"}],
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_shape(shape: Any, where: str, max_rank: int) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise _invalid(where, "`shape` must be a list of non-negative integers")
    # ``map(type, ...)`` at C speed: a 20M-entry shape is scanned once, not copied.
    if set(map(type, shape)) - {int}:  # 1e20 (an integer past 64 bits arrives as a float)
        odd = next(n for n in shape if type(n) is not int)
        raise _invalid(
            where, f"`shape` must be a list of non-negative integers; {_shown(odd)} is not one"
        )
    if len(shape) > max_rank:
        raise _over_rank(where, f"rank {len(shape)} is higher than the limit {max_rank}")
    if any(n < 0 for n in shape):
        raise _invalid(where, f"`shape` {shape} has a negative size")
    return tuple(shape)


_SHOWN_CHARS = 40


def _shown(value: Any, chars: int = _SHOWN_CHARS) -> str:
    """A value as a message quotes it: its ``repr``, cut to at most ``chars`` characters.

    A list or an object is named by its kind, never written out: its ``repr`` would be built
    in full before being cut (seconds for a 20M-entry list), and one nested a thousand levels
    deep has no ``repr`` at all (a RecursionError). A string is cut before it is quoted.
    """
    if isinstance(value, list | dict | tuple):
        return _kind(value)
    if isinstance(value, str):
        text = repr(value[: chars + 1])
    else:
        try:
            text = repr(value)
        except ValueError:  # an integer of more digits than Python writes
            return _kind(value)
    return text[:chars]


def _nested_extent(value: list[Any], where: str, max_rank: int) -> tuple[int, ...]:
    """The shape a nested list declares along its first elements (cheap, allocates nothing)."""
    shape: list[int] = []
    node: Any = value
    while isinstance(node, list):
        shape.append(len(node))
        if len(shape) > max_rank:
            raise _over_rank(where, f"nesting is deeper than the rank limit {max_rank}")
        if not node:
            break
        node = node[0]
    return tuple(shape)


def _locate_defect(value: Any, shape: tuple[int, ...], where: str) -> Problem:
    """Find the first place (in row-major order) where a nested list is ragged or holds a
    non-number.

    The list is read a level at a time, each level scanned at C speed (``map(type, ...)``,
    ``map(len, ...)``); only the prefix of a level before its first defect is taken down to
    the next, since anything after it comes later in row-major order. The place of the
    defect found deepest is then the first of all, and only its place is written out.
    """
    found: tuple[int, int] | None = None  # (depth, position within that level)
    rows: list[Any] = [value]
    for depth in range(len(shape) + 1):
        bad = _first_defect(rows, shape, depth)
        if bad is not None:
            found = (depth, bad)
            rows = rows[:bad]
        if depth == len(shape) or not rows:
            break
        rows = list(itertools.chain.from_iterable(rows))
    if found is None:
        return _invalid(where, "not a rectangular list of numbers")
    depth, position = found
    index: list[int] = []
    for size in reversed(shape[:depth]):  # regular up to the defect: a mixed-radix number
        position, i = divmod(position, size)
        index.append(i)
    place = where + "".join(f"[{i}]" for i in reversed(index))
    node = _node_at(value, index[::-1])
    if depth < len(shape):
        if not isinstance(node, list):
            return _invalid(
                where, f"{place} is a number where a list of {shape[depth]} was expected (ragged)"
            )
        return _invalid(
            where,
            f"ragged list: {place} has {len(node)} entries but {shape[depth]} were "
            "expected from the first row at that depth",
        )
    if isinstance(node, list):
        return _invalid(where, f"{place} is a list where a number was expected (ragged)")
    if isinstance(node, str) and node in NONFINITE_NAMES:
        return _invalid(where, f"{place} is {node}; only finite numbers are accepted")
    if not _is_number(node):
        shown = "" if node is None or isinstance(node, dict) else f" {_shown(node)}"
        return _invalid(where, f"{place} is {_kind(node)}{shown}, not a number")
    return _invalid(where, f"{place} is an integer too large to represent exactly")


def _first_defect(rows: list[Any], shape: tuple[int, ...], depth: int) -> int | None:
    """The position of the first node of ``rows`` (the nodes of one level, in order) that
    is not what ``shape`` expects at ``depth``, or ``None``."""
    kinds = set(map(type, rows))
    expected = {list} if depth < len(shape) else {int, float}
    odd = kinds - expected
    end = len(rows)
    if odd:  # the list of every node's type is built only for a level that has a stray one
        types = list(map(type, rows))
        end = min(types.index(t) for t in odd)
    prefix = rows[:end] if odd else rows
    if depth < len(shape):
        if set(map(len, prefix)) == {shape[depth]} or not prefix:
            return end if odd else None
        lengths = list(map(len, prefix))
        return min(lengths.index(n) for n in set(lengths) - {shape[depth]})
    largest = max(map(abs, prefix)) if int in kinds and prefix else 0
    if largest > 2**53 or largest != largest:  # or a NaN, which max() cannot see past
        big = (i for i, x in enumerate(prefix) if type(x) is int and abs(x) > 2**53)
        end = next(big, end)  # a float that large is taken: only an integer is refused
        return end if end < len(rows) else None
    return end if odd else None


def _node_at(value: Any, index: list[int]) -> Any:
    node = value
    for i in index:
        node = node[i]
    return node


def _check_finite(array: npt.NDArray[Any], where: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        value = float(array[tuple(bad)])
        raise _invalid(
            where,
            f"element {[int(i) for i in bad]} is {value}; only finite numbers are accepted",
        )


def _narrow(
    array: npt.NDArray[Any], dtype: np.dtype[Any], where: str, advice: str
) -> npt.NDArray[Any]:
    """``array`` cast to ``dtype``, refusing a value the cast makes infinite.

    A float64 past float32's largest finite value (about 3.4e38) rounds to infinity in the
    cast; found here, it is refused as the value it was sent as, the same however the tensor
    was written (before, a nested list became inf silently and computed, where FP32 ``data``
    was refused as "inf"). numpy's own overflow warning is silenced: this is the check.
    """
    if array.dtype == dtype:
        return array
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if dtype.itemsize < array.dtype.itemsize:
        finite = np.isfinite(cast)
        if not finite.all():
            index = np.unravel_index(int(np.flatnonzero(~finite)[0]), array.shape)
            value = float(array[index])
            name = {4: "float32", 8: "float64"}.get(dtype.itemsize, str(dtype))
            raise _invalid(
                where,
                f"element {[int(i) for i in index]} is {value:g}, outside the range of "
                f"{name} (its largest finite value is {float(np.finfo(dtype).max):g}): "
                f"{advice}",
            )
    return cast


def decode(value: Any, where: str, budget: Budget) -> npt.NDArray[Any]:
    """Decode one wire tensor into a numpy array, checking its budget before allocating.

    Args:
        value: the JSON value of the tensor (any of the three request forms).
        where: the field path used in error messages, e.g. ``"params.weight"``.
        budget: the request's budget, charged with this tensor's declared size.

    Returns:
        A float64 (or, for ``"datatype": "FP32"``, float32) array of the declared shape.

    Example:
        >>> decode({"shape": [2], "data": [1, 2]}, "x", Budget(10, 10, 4)).tolist()
        [1.0, 2.0]
    """
    if isinstance(value, dict):
        return _decode_object(value, where, budget)
    if _is_number(value):
        if isinstance(value, int) and abs(value) > 2**53:
            raise _invalid(where, "an integer too large to represent exactly")
        budget.charge((), where)
        array = np.asarray(float(value), dtype=np.float64)
        _check_finite(array, where)
        return array
    if isinstance(value, str) and value in NONFINITE_NAMES:
        raise _invalid(where, f"{where} is {value}; only finite numbers are accepted")
    if not isinstance(value, list):
        raise _invalid(
            where, f"expected a nested list of numbers or a tensor object, got {_kind(value)}"
        )
    shape = _nested_extent(value, where, budget.max_rank)
    budget.charge(shape, where)
    if math.prod(shape) == 0:
        raise _invalid(where, f"the tensor is empty (shape {list(shape)})")
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise _locate_defect(value, shape, where) from None
    if array.shape != shape or array.dtype.kind not in "iuf" or _holds_bool(value, len(shape)):
        raise _locate_defect(value, shape, where)
    if array.dtype.kind != "f" and np.abs(array).max() > 2**53:
        raise _locate_defect(value, shape, where)
    array = array.astype(np.float64, copy=False)
    _check_finite(array, where)
    return array


def _holds_bool(value: list[Any], rank: int) -> bool:
    """Whether a rectangular nested list holds a JSON boolean (numpy would read it as 0 or 1).

    ``map(type, ...)`` keeps the scan at C speed: about 20 ns an element.
    """
    leaves: Any = value
    for _ in range(rank - 1):
        leaves = itertools.chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


_KINDS = {
    str: "a string",
    bool: "a boolean",
    type(None): "null",
    int: "a number",
    float: "a number",
    dict: "an object",
    list: "a list",
}
"""A JSON value's kind as a message names it (Python's type names are not the client's)."""


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _decode_object(value: dict[str, Any], where: str, budget: Budget) -> npt.NDArray[Any]:
    unknown = set(value) - {"shape", "data", "datatype", "b64"}
    if unknown:
        raise _invalid(where, f"unknown field(s) {sorted(unknown)} in a tensor object")
    if "shape" not in value:
        raise _invalid(where, "a tensor object needs `shape`")
    shape = _check_shape(value["shape"], where, budget.max_rank)
    datatype = value.get("datatype", "FP64")
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise _invalid(where, f"`datatype` must be FP64 or FP32, got {_shown(datatype, 20)}")
    dtype = NUMPY_DTYPES[datatype]
    numel = math.prod(shape)
    budget.charge(shape, where)
    if numel == 0:
        raise _invalid(where, f"the tensor is empty (shape {list(shape)})")
    if ("data" in value) == ("b64" in value):
        raise _invalid(where, "a tensor object needs exactly one of `data` or `b64`")
    if "data" in value:
        array = _narrow(
            _object_data(value["data"], shape, where, budget.max_rank),
            dtype,
            where,
            "scale it down, or send the tensor as FP64",
        )
    else:
        encoded = value["b64"]
        if not isinstance(encoded, str):
            raise _invalid(where, "`b64` must be a base64 string")
        expected_bytes = numel * dtype.itemsize
        if len(encoded) != 4 * math.ceil(expected_bytes / 3):
            # A line break or a space (as some encoders wrap their output) is named rather
            # than counted as bytes: the size would then be wrong for no visible reason.
            _check_base64_alphabet(encoded, where)
            raise _invalid(where, _b64_length_fault(encoded, expected_bytes, shape, datatype))
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            _check_base64_alphabet(encoded, where)
            raise _invalid(where, "`b64` is not valid base64") from None
        if len(raw) != expected_bytes:
            raise _invalid(
                where,
                f"`b64` holds {len(raw)} bytes but shape {list(shape)} of {datatype} "
                f"needs {expected_bytes}",
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    _check_finite(array, where)
    return array


def _object_data(
    data: Any, shape: tuple[int, ...], where: str, max_rank: int
) -> npt.NDArray[np.float64]:
    """The entries of a tensor object's ``data``, shaped as ``shape``.

    Flat and row-major (API.md), or nested as ``shape`` and, for a 0-d tensor, a bare number:
    the forms the service's own answers write, so a tensor read from an answer (a student's
    given ``W``, a model's output) can be sent back as it came.
    """
    numel = math.prod(shape)
    if not isinstance(data, list):
        if shape or not _is_number(data):
            bare = "" if shape else ", or a bare number for shape []"
            raise _invalid(
                where,
                f"`data` must be a list of numbers (flat, or nested as `shape`{bare}), "
                f"got {_kind(data)}",
            )
        data = [data]  # a 0-d tensor's number, as answers write it
    if data and isinstance(data[0], list):
        # Nested, at any rank: compared with the shape before decoding, so that a mismatch is
        # told as one, not as a budget overrun or a count of numbers.
        extent = _nested_extent(data, where + ".data", max_rank)
        if extent != shape:
            raise _invalid(
                where,
                f"`data` is nested as {list(extent)} but `shape` is {list(shape)}: nest "
                "it as the shape, or give every entry in one flat list",
            )
        return decode(data, where + ".data", Budget(numel, numel, len(shape)))
    if len(data) != numel:
        raise _invalid(
            where, f"`data` has {len(data)} numbers but shape {list(shape)} needs {numel}"
        )
    return decode(data, where + ".data", Budget(numel, numel, 1)).reshape(shape)


def _b64_length_fault(
    encoded: str, expected_bytes: int, shape: tuple[int, ...], datatype: str
) -> str:
    """What is wrong with a base64 string whose length does not fit ``expected_bytes``.

    Padded base64 is a multiple of 4 characters, each 4 of them 3 bytes less one per ``=``
    at the end. A string of another length is no whole number of bytes: counting its bytes
    would come out at the size needed (the padding dropped, as some encoders do) and read as
    "holds 40 bytes but needs 40". Such a string is said to be missing its padding, or cut
    short, or too long, instead.
    """
    needs = f"shape {list(shape)} of {datatype} needs {expected_bytes} bytes"
    if len(encoded) % 4 == 0:
        held = len(encoded) * 3 // 4 - len(encoded[-2:]) + len(encoded[-2:].rstrip("="))
        return f"`b64` holds about {held} bytes but {needs}"
    padding = -expected_bytes % 3  # the "=" at the end of the base64 of expected_bytes
    chars = 4 * math.ceil(expected_bytes / 3)
    data = encoded.rstrip("=")
    if len(data) == chars - padding and len(encoded) < chars:
        fault = (
            "its `=` padding is missing"
            if data == encoded
            else f"its `=` padding is incomplete ({len(encoded) - len(data)} of {padding}), as "
            "if the string were cut short"
        )
    elif len(encoded) < chars:
        fault = "the string is cut short, or characters are missing"
    else:
        fault = "the string has characters too many"
    ending = f", `{'=' * padding}` included" if padding else ""
    return (
        f"`b64` has {len(encoded)} characters, not a multiple of 4 as base64 is: {fault}; "
        f"{needs}, {chars} characters of base64{ending}"
    )


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_NAMED = {" ": "a space", "\n": "a line break", "\r": "a carriage return", "\t": "a tab"}


def _check_base64_alphabet(encoded: str, where: str) -> None:
    """Refuse ``encoded`` naming its first character outside the base64 alphabet."""
    bad = _NOT_BASE64.search(encoded)
    if bad is None:
        return
    char = bad.group(0)
    name = _NAMED.get(char, repr(char))
    raise _invalid(
        where,
        f"`b64` is not valid base64: {name} at position {bad.start()} (standard base64, "
        "one line, no spaces or line breaks)",
    )


NUMPY_OF_TORCH: dict[torch.dtype, np.dtype[Any]] = {
    torch.float64: np.dtype("float64"),
    torch.float32: np.dtype("float32"),
}


def to_torch(
    array: npt.NDArray[Any], device: torch.device, dtype: torch.dtype, where: str
) -> torch.Tensor:
    """A numpy array as a tensor on ``device`` in ``dtype`` (no copy where none is needed).

    The cast to ``dtype`` is done here, in numpy, before the transfer (half the bytes when it
    narrows), so that a value out of the dtype's range is refused naming ``where``, the
    tensor's field, rather than computed as infinity.

    Raises:
        Problem: 422, a value that ``dtype`` cannot hold (e.g. 1e39 in float32).

    Example:
        >>> to_torch(np.ones(2), torch.device("cpu"), torch.float32, "x").dtype
        torch.float32
    """
    target = NUMPY_OF_TORCH.get(dtype)
    if target is not None:
        advice = 'scale it down, or ask for "dtype": "float64"'
        array = _narrow(array, target, where, advice)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device=device, dtype=dtype)


def encode(tensor: torch.Tensor, encoding: TensorEncoding = "json") -> dict[str, Any]:
    """A tensor in the response form: ``{"shape", "datatype", "data" | "b64"}``.

    Non-finite values (an exploding recurrence) are never hidden: the tensor carries
    ``"nonfinite": <count>`` and, in the JSON form, each such entry is the string ``"NaN"``,
    ``"Infinity"`` or ``"-Infinity"``.
    """
    tensor = tensor.detach()
    datatype = TORCH_DATATYPES.get(tensor.dtype, "FP64")
    array = tensor.to(device="cpu", dtype=torch.float32 if datatype == "FP32" else torch.float64)
    numpy_array = array.contiguous().numpy()
    out: dict[str, Any] = {"shape": list(numpy_array.shape), "datatype": datatype}
    nonfinite = nonfinite_count(numpy_array)
    if encoding == "b64":
        # The buffer of the contiguous little-endian array is encoded as is: no tobytes() copy.
        raw = np.ascontiguousarray(numpy_array, dtype=NUMPY_DTYPES[datatype])
        out["b64"] = base64.b64encode(raw.data.cast("B")).decode("ascii")
    elif nonfinite:
        out["data"] = _with_nonfinite_strings(numpy_array)
    else:
        # orjson writes numpy arrays of rank >= 1 only: a 0-d tensor is a bare number.
        out["data"] = numpy_array if numpy_array.ndim else numpy_array.item()
    if nonfinite:
        out["nonfinite"] = nonfinite
    return out


def nonfinite_count(array: npt.NDArray[Any]) -> int:
    """How many entries of ``array`` are NaN or infinite.

    A finite sum proves every entry finite (one NaN or infinity makes the sum NaN or
    infinite), in one read of the array and without the boolean mask of ``np.isfinite``:
    this runs on every answer's tensors, 32 MB Jacobians included. Only a sum that is not
    finite (a non-finite entry, or finite ones whose sum overflowed) is counted entry by entry.
    """
    with np.errstate(all="ignore"):  # an overflowing sum is expected here, not a fault
        total = array.sum()
    if np.isfinite(total):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _with_nonfinite_strings(array: npt.NDArray[Any]) -> Any:
    def name(x: float) -> float | str:
        return x if math.isfinite(x) else nonfinite_name(x)

    return np.vectorize(name, otypes=[object])(array).tolist() if array.ndim else name(float(array))
