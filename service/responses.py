"""Answers that hold tensors, in the encoding the request asked for (API.md "Tensors").

A route builds its answer as a mapping whose leaves are torch tensors and plain values
(strings, numbers, lists) and hands it to ``tensor_answer``:

- ``json`` and ``b64``: one JSON body rendered by orjson, each tensor as
  ``{"shape", "datatype", "data" | "b64"}`` (numpy arrays written natively, no Python loop);
- ``safetensors``: the whole body is one safetensors file (``application/octet-stream``)
  holding every tensor under its path in the answer, nested names joined by ``.``
  (``grads.weight``); every other field is in the header's ``__metadata__`` under its path,
  its value written as JSON (``"of": "\\"y\\""``, ``"steps": "[1, 2]"``), a tensor's
  ``nonfinite`` count too (``"outputs.y.nonfinite": "4"``). No base64 and no text: the fast
  path for large Jacobians. ``read_safetensors_answer`` (``service.binary``) reverses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from service.binary import read_safetensors_answer as read_safetensors_answer  # re-exported
from service.jsonout import dumps
from service.memory import note_large_answer
from service.tensors import Encoding, encode, nonfinite_count

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"
CHUNK_BYTES = 1 << 20
_SAFETENSORS_DTYPES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32"}
_DTYPE_RANK = {np.dtype("<f8"): 1, np.dtype("<f4"): 0}

Part = bytes | npt.NDArray[Any]
"""A part of a binary body: bytes, or a C-contiguous array sent as its memory."""


class BinaryResponse(Response):
    """A large binary body, given in parts and sent in slices of ``CHUNK_BYTES``.

    The parts (a safetensors header, then each tensor's own memory) are never joined: the
    body of a 32 MB Jacobian would be copied whole once more, with the page faults of a
    fresh 32 MB buffer, before its first byte is sent. In slices the server writes each one
    as the socket drains, and memory stays flat. ``Content-Length`` is the parts' total.
    """

    media_type = SAFETENSORS_MEDIA_TYPE

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = [_byte_view(part) for part in parts]
        super().__init__()
        self.headers["content-length"] = str(sum(len(part) for part in self.parts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        for part in self.parts:
            for start in range(0, len(part), CHUNK_BYTES):
                chunk = part[start : start + CHUNK_BYTES]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class TensorJSONResponse(JSONResponse):
    """JSON rendered by orjson, with numpy arrays written natively as nested lists."""

    def render(self, content: Any) -> bytes:
        return dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def tensor_answer(answer: Mapping[str, Any], encoding: Encoding) -> Response:
    """The response for an answer whose leaves are tensors and plain values.

    Args:
        answer: the answer's fields; tensors may sit at any depth of nested mappings.
        encoding: ``json`` (nested lists), ``b64`` or ``safetensors`` (one binary body).

    Returns:
        A JSON response, or an ``application/octet-stream`` safetensors file.
    """
    note_large_answer(_tensor_bytes(answer))
    if encoding == "safetensors":
        return BinaryResponse(safetensors_parts(answer))
    return TensorJSONResponse(_encode_tree(answer, encoding))


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(item) for item in value.values())
    return 0


def _encode_tree(value: Any, encoding: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return encode(value, encoding)
    if isinstance(value, Mapping):
        return {key: _encode_tree(item, encoding) for key, item in value.items()}
    return value


def to_safetensors(answer: Mapping[str, Any]) -> bytes:
    """An answer as one safetensors file: tensors by dotted path, other fields as JSON metadata.

    Args:
        answer: the answer's fields; nested mappings are walked, every other leaf that is not
            a tensor goes to ``__metadata__`` (an empty mapping too, so nothing is lost).

    Returns:
        The bytes of the file (``safetensors_parts`` joined).
    """
    return b"".join(_byte_view(part) for part in safetensors_parts(answer))


def _byte_view(part: Part) -> memoryview:
    """The bytes of a part, shared (an array's memory seen as bytes)."""
    return memoryview(part) if isinstance(part, bytes) else part.data.cast("B")


def safetensors_parts(answer: Mapping[str, Any]) -> list[Part]:
    """An answer as a safetensors file in parts: its header, then each tensor's own memory.

    The file is the one ``safetensors.serialize`` writes (the tests check it against the
    library: the same header, byte for byte up to the order of the metadata keys, which the
    library leaves to a hash map, and the same data), without copying any tensor: the
    library can only answer one ``bytes`` object holding them all, and for a 32 MB Jacobian
    that copy costs more than computing it.

    Args:
        answer: the answer's fields, as for ``to_safetensors``.

    Returns:
        The header (its 8-byte little-endian length, the JSON, spaces up to a multiple of 8),
        then each tensor's bytes, little-endian and row-major, in the header's order.
    """
    tensors: dict[str, npt.NDArray[Any]] = {}
    metadata: dict[str, str] = {}
    _flatten(answer, "", tensors, metadata)
    # The library's order: wider dtypes first (F64 before F32), then by name.
    order = sorted(tensors, key=lambda name: (-_DTYPE_RANK[tensors[name].dtype], name))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        array = tensors[name]
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = orjson.dumps(header)
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little") + text, *(tensors[name] for name in order)]


def _flatten(
    value: Any, path: str, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str]
) -> None:
    """Sort the leaves under ``path`` into tensors and JSON metadata, by dotted path.

    A module-level function rather than a closure: a recursive closure is a reference cycle
    that would keep the (large) tensors alive until the garbage collector's next pass.
    """
    if isinstance(value, torch.Tensor):
        array = tensors[path] = _as_array(value)
        nonfinite = nonfinite_count(array)
        if nonfinite:
            # The count the JSON and b64 forms carry in the tensor's object, under the dotted
            # name that field has there: a safetensors answer says so as explicitly.
            metadata[f"{path}.nonfinite"] = str(nonfinite)
    elif isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), tensors, metadata)
    else:
        metadata[path] = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _as_array(tensor: torch.Tensor) -> npt.NDArray[Any]:
    """A tensor as a C-contiguous, little-endian CPU array in its own dtype (float64 or
    float32); a contiguous CPU tensor is shared, not copied."""
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float64, torch.float32):
        tensor = tensor.to(torch.float64)
    array = np.ascontiguousarray(tensor.cpu().numpy())
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def binary_answer_responses(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of a route that can answer in safetensors.

    Args:
        model: the JSON answer's pydantic model (documented under ``application/json``).

    Returns:
        A 200 entry declaring both media types.
    """
    return {
        200: {
            "model": model,
            "description": (
                'The answer: JSON, or with `"encoding": "safetensors"` one safetensors file '
                "(`application/octet-stream`) holding every tensor under its dotted path and "
                "the other fields, as JSON, in the header's `__metadata__`."
            ),
            "content": {SAFETENSORS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    }
