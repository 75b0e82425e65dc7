"""Answers that hold tensors, in the encoding the request asked for (API.md "Tensors").

A route builds its answer as a mapping whose leaves are torch tensors and plain values
(strings, numbers, lists) and hands it to ``tensor_answer``:

- ``json`` and ``b64``: one JSON body rendered by orjson, each tensor as
  ``{"shape", "datatype", "data" | "b64"}`` (numpy arrays written natively, no Python loop);
- ``safetensors``: the whole body is one safetensors file (``application/octet-stream``)
  holding every tensor under its path in the answer, nested names joined by ``.``
  (``grads.weight``); every other field is in the header's ``__metadata__`` under its path,
  its value written as JSON (``"of": "\\"y\\""``, ``"steps": "[1, 2]"``). No base64 and no
  text: the fast path for large Jacobians. ``read_safetensors_answer`` reverses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import safetensors.numpy
import torch
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from service.memory import note_large_answer
from service.tensors import Encoding, encode

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"
CHUNK_BYTES = 1 << 20


class BinaryResponse(Response):
    """A large binary body sent in slices of ``CHUNK_BYTES``, with its ``Content-Length``.

    Handing the server one 32 MB body makes it copy what the socket does not take at once
    into its write buffer (twice, with asyncio's transport); slices let it write each one as
    the socket drains, so the body is never copied whole and memory stays flat.
    """

    media_type = SAFETENSORS_MEDIA_TYPE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = memoryview(self.body)
        for start in range(0, len(body), CHUNK_BYTES):
            chunk = body[start : start + CHUNK_BYTES]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class TensorJSONResponse(JSONResponse):
    """JSON rendered by orjson, with numpy arrays written natively as nested lists."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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
        return BinaryResponse(to_safetensors(answer))
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
        The bytes of the file.
    """
    tensors: dict[str, npt.NDArray[Any]] = {}
    metadata: dict[str, str] = {}
    _flatten(answer, "", tensors, metadata)
    # safetensors.numpy rather than safetensors.torch: the numpy writer skips the torch one's
    # checks for shared storage and copies each tensor once instead of several times.
    data: bytes = safetensors.numpy.save(tensors, metadata=metadata or None)
    return data


def _flatten(
    value: Any, path: str, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str]
) -> None:
    """Sort the leaves under ``path`` into tensors and JSON metadata, by dotted path.

    A module-level function rather than a closure: a recursive closure is a reference cycle
    that would keep the (large) tensors alive until the garbage collector's next pass.
    """
    if isinstance(value, torch.Tensor):
        tensors[path] = _as_array(value)
    elif isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), tensors, metadata)
    else:
        metadata[path] = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _as_array(tensor: torch.Tensor) -> npt.NDArray[Any]:
    """A tensor as a C-contiguous CPU array in its own dtype (float64 or float32)."""
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float64, torch.float32):
        tensor = tensor.to(torch.float64)
    return np.ascontiguousarray(tensor.cpu().numpy())


def read_safetensors_answer(body: bytes) -> dict[str, Any]:
    """An answer sent with ``"encoding": "safetensors"``, back as nested mappings.

    Args:
        body: the response body.

    Returns:
        The answer with its tensors as numpy arrays at their places and its other fields
        decoded from JSON, e.g. ``{"jacobian": array(...), "of": "y", ...}``.
    """
    answer: dict[str, Any] = {}
    for path, array in safetensors.numpy.load(body).items():
        _put(answer, path, array)
    for path, text in (_metadata(body) or {}).items():
        _put(answer, path, orjson.loads(text))
    return answer


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _metadata(body: bytes) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file (its 8-byte length, then a JSON header)."""
    length = int.from_bytes(body[:8], "little")
    header: dict[str, Any] = orjson.loads(body[8 : 8 + length])
    metadata: dict[str, str] | None = header.get("__metadata__")
    return metadata


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
