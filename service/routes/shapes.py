"""Convolution output shapes with worked steps (seed 1.1(a)-(b))."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from models.conv import MAX_SIZE, conv_output_size
from models.errors import ModelError
from service.devices import DeviceName, DtypeName, resolve_device
from service.examples import CONV_SHAPE_EXAMPLES
from service.problems import problem_responses
from service.routing import DirectRoute, documented_body, validate_body
from service.schemas import StrictBody

# DirectRoute: thousands of these per grading run, each a few integer operations (see routing).
router = APIRouter(prefix="/v1/shapes", tags=["shapes"], route_class=DirectRoute)

MAX_LISTED_DIMS = 16
"""The most sizes a list of ``ConvShapeRequest`` may hold before its entries are read: a
convolution has 1 to 3 spatial dimensions, which ``conv_output_size`` words for a few too many;
a list of a million is refused here, at its first wrong entry or past this many."""

Sizes = Annotated[list[int], Field(max_length=MAX_LISTED_DIMS, fail_fast=True)]
IntOrList = int | Sizes


class ConvShapeRequest(StrictBody):
    input_size: Sizes = Field(description="Spatial sizes only, 1 to 3 of them.")
    kernel_size: IntOrList = Field(description="An int for every dimension, or one per dimension.")
    stride: IntOrList = Field(
        1, description="S: an int for every dimension, or one per dimension; at least 1."
    )
    padding: IntOrList | Literal["valid", "same"] = Field(
        0,
        description="P, added on each side: an int for every dimension, or one per dimension; "
        "or `valid` (no padding, P = 0) or `same` (the output as large as the input: "
        "D(K - 1) in all, the odd one after, as torch pads; stride 1 and not transposed only).",
    )
    dilation: IntOrList = Field(
        1,
        description="D, the spacing of the kernel's taps: an int for every dimension, or one "
        "per dimension; at least 1. The kernel then spans D(K - 1) + 1 (`effective_kernel`).",
    )
    in_channels: int | None = Field(
        None, ge=1, le=MAX_SIZE, description="Checked, not needed for the size."
    )
    out_channels: int | None = Field(
        None, ge=1, le=MAX_SIZE, description="Prepended to `output_shape`."
    )
    transposed: bool = Field(
        False,
        description="The output size of a transposed convolution (`ConvTranspose`), "
        "out = (in - 1) S - 2P + D(K - 1) + output_padding + 1, instead of a convolution's.",
    )
    output_padding: IntOrList = Field(0, description="Transposed convolutions only.")
    device: DeviceName | None = Field(
        None,
        description="`auto`, `cpu` or `cuda`: taken, as by every request, but a shape is "
        "integer arithmetic: it computes no tensor, on any device.",
    )
    dtype: DtypeName | None = Field(
        None,
        description="`float64` or `float32`: taken, as by every request; a shape has no precision.",
    )


class Step(BaseModel):
    """The output size of one spatial dimension, worked out."""

    dimension: int = Field(description="0-based index into `input_size`.")
    formula: str = Field(description="The formula in symbols (in, K, S, P, D).")
    substitution: str = Field(description="The formula with this request's numbers put in.")
    result: int = Field(description="The output size of this dimension.")
    effective_kernel: int = Field(description="D(K - 1) + 1")
    padded_input: int = Field(
        description="What the kernel slides over: in + 2P for a convolution; for a transposed "
        "one, the input of the stride-1 convolution that computes it, (in - 1) S + 1 + "
        "2(D(K - 1) - P) + output_padding (S - 1 zeros between the entries, D(K - 1) - P on "
        "each end), so that out = padded_input - effective_kernel + 1."
    )


class ConvShapeResponse(BaseModel):
    output_size: list[int] = Field(description="The output's spatial sizes, one per dimension.")
    output_shape: list[int] = Field(description="[out_channels, *output_size] when given.")
    steps: list[Step] = Field(description="How each size comes out, dimension by dimension.")


def conv_shape(body: ConvShapeRequest) -> dict[str, Any]:
    """The answer as plain data (the shape of ``ConvShapeResponse``, with each step a
    ``DimStep`` dataclass); raises ``ModelError`` with where it went wrong."""
    steps = conv_output_size(
        body.input_size,
        body.kernel_size,
        body.stride,
        body.padding,
        body.dilation,
        transposed=body.transposed,
        output_padding=body.output_padding,
    )
    size = [s.result for s in steps]
    shape = [body.out_channels, *size] if body.out_channels is not None else size
    return {"output_size": size, "output_shape": shape, "steps": steps}


@router.post(
    "/conv",
    summary="Output size of a (transposed) convolution, with the worked steps",
    response_model=ConvShapeResponse,
    responses=problem_responses(422),
    openapi_extra=documented_body(ConvShapeRequest, CONV_SHAPE_EXAMPLES),
)
async def shapes_conv(request: Request) -> Response:
    """Output size per spatial dimension, shown the way the seed's solution 1.1(a) works it."""
    # Grading scripts send thousands of these: `async def` (a few integer operations per
    # dimension cost less than the hop to the thread pool), the body validated straight from
    # its bytes, and the answer, built by this code and documented as ConvShapeResponse,
    # written by orjson without a model in between; this keeps the route near a bare
    # endpoint's throughput (see bench/).
    body = await validate_body(request, ConvShapeRequest)
    if body.device == "cuda":
        resolve_device(body.device)  # no GPU: refused as everywhere, though a shape needs none
    try:
        answer = conv_shape(body)
    except ModelError as error:
        # The shape fields sit at the top of this body, not under `config`.
        error.where = error.where.removeprefix("config.")
        raise
    return Response(orjson.dumps(answer), media_type="application/json")
