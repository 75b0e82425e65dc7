"""Fast JSON responses for answers that hold tensors (numpy arrays serialised by orjson)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class TensorJSONResponse(JSONResponse):
    """JSON rendered by orjson, with numpy arrays written natively as nested lists."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
