"""Reading an answer sent with ``"encoding": "safetensors"``, without copying its tensors.

Shared by the client and the service's own tools; numpy and orjson only (no torch, no web
code), so that the client stays light. The file is safetensors' (an 8-byte little-endian
header length, a JSON header giving each tensor's dtype, shape and byte range, then the
bytes); each tensor comes back as a numpy view of the body, read-only as the body is, just as
``safetensors.numpy.load`` answers them, but without that function's copy of every tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

# safetensors dtypes numpy has, little-endian as the format stores them.
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors_answer(body: bytes) -> dict[str, Any]:
    """An answer sent as safetensors, back as nested mappings.

    Args:
        body: the response body.

    Returns:
        The answer with its tensors as (read-only) numpy arrays at their dotted paths and its
        other fields decoded from the header's JSON ``__metadata__``, e.g.
        ``{"jacobian": array(...), "of": "y", "wrt": "x", "method": "closed-form"}``. A
        tensor's count of non-finite entries (``"outputs.y.nonfinite": "4"`` in the header, a
        field of the tensor's object in the JSON form) cannot sit on an array: the counts are
        gathered under ``nonfinite`` by the tensor's dotted name, ``{"outputs.y": 4}``, and
        ``nonfinite`` is absent when every tensor is finite.

    Raises:
        ValueError: the body is not a safetensors file (too short, a header that is not JSON,
            a dtype numpy lacks, byte ranges that do not fit the body or the shape), or its
            metadata puts a field inside a value that is not an object.
    """
    if len(body) < 8:
        raise ValueError("not a safetensors file: shorter than the 8 bytes of its header length")
    length = int.from_bytes(body[:8], "little")
    start = 8 + length
    if start > len(body):
        raise ValueError(f"not a safetensors file: a {length:,}-byte header in {len(body):,} bytes")
    try:
        header = orjson.loads(body[8:start])
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not a safetensors file: the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: the header is not a JSON object")
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    answer: dict[str, Any] = {}
    for name, info in header.items():
        _put(answer, name, _tensor(body, start, name, info))
    for path, text in metadata.items():
        _put(answer, path, orjson.loads(text))
    return answer


def _tensor(body: bytes, start: int, name: str, info: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The view of one tensor of the file, checked against the body's size."""
    layout = _DTYPES.get(info.get("dtype", ""))
    if layout is None:
        raise ValueError(f"{name}: dtype {info.get('dtype')!r} has no numpy equivalent")
    dtype = np.dtype(layout)
    shape = tuple(int(n) for n in info["shape"])
    begin, end = (int(n) for n in info["data_offsets"])
    count = math.prod(shape)
    if end - begin != count * dtype.itemsize or not 0 <= begin <= end <= len(body) - start:
        raise ValueError(f"{name}: bytes {begin}-{end} do not hold {shape} of {info['dtype']}")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=start + begin).reshape(shape)
    # Native byte order, which is the file's on little-endian machines: no copy there.
    return array.astype(dtype.newbyteorder("="), copy=False)


def _put(answer: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    tree = answer
    for depth, key in enumerate(parents):
        node = tree.setdefault(key, {})
        if isinstance(node, np.ndarray) and depth == len(parents) - 1 and leaf == "nonfinite":
            answer.setdefault("nonfinite", {})[".".join(parents)] = value
            return
        if not isinstance(node, dict):
            owner = ".".join(parents[: depth + 1])
            raise ValueError(f"{path}: a field inside {owner}, which is not an object")
        tree = node
    tree[leaf] = value
