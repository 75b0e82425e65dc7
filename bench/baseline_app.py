"""The throughput baseline: a bare FastAPI endpoint that answers a constant.

It sits at the same path as ``POST /v1/shapes/conv`` and answers, without reading the body,
the JSON given in ``BENCH_CONSTANT_ANSWER`` (the benchmark passes the service's own answer
to its request, so both servers send the same bytes). Started by ``python -m bench`` as
``python -m bench.baseline_app --port N`` with the service's uvicorn settings.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI

app = FastAPI()

ANSWER: dict[str, Any] = orjson.loads(os.environ.get("BENCH_CONSTANT_ANSWER", "{}"))


@app.post("/v1/shapes/conv")
async def constant() -> dict[str, Any]:
    """The constant answer."""
    return ANSWER


@app.get("/readyz")
async def ready() -> dict[str, str]:
    """Ready as soon as it serves."""
    return {"status": "ready"}


def main() -> None:
    """Serve ``app`` the way ``tensorgrade serve`` serves the service (same uvicorn call)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(
        "bench.baseline_app:app",
        host=args.host,
        port=args.port,
        workers=1,
        http="h11",  # as `tensorgrade serve`
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
