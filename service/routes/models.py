"""Reference models: forward, backward and Jacobians, generic over the registry."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body, Path
from starlette.responses import Response

from models import autodiff
from models.registry import MODELS, ReferenceModel
from service.compute import (
    check_jacobian_budget,
    computing,
    decode_grad_outputs,
    encode_all,
    prepare,
)
from service.deps import GateDep, SettingsDep
from service.examples import BACKWARD_EXAMPLES, FORWARD_EXAMPLES, JACOBIAN_EXAMPLES
from service.problems import problem_responses
from service.responses import TensorJSONResponse
from service.schemas import (
    ArgInfo,
    BackwardRequest,
    BackwardResponse,
    ConfigInfo,
    ForwardResponse,
    JacobianRequest,
    JacobianResponse,
    ModelInfo,
    ModelList,
    ModelRequest,
)
from service.tensors import encode

router = APIRouter(prefix="/v1/models", tags=["models"])

COMPUTE_ERRORS = problem_responses(404, 413, 422, 503)

ModelName = Annotated[
    str,
    Path(
        description="A model of `GET /v1/models`; any other name is a 404.",
        json_schema_extra={"enum": sorted(MODELS)},
    ),
]


def model_info(model: ReferenceModel) -> ModelInfo:
    def args(specs: tuple[object, ...]) -> list[ArgInfo]:
        return [ArgInfo.model_validate(vars(s) | {"shape": list(vars(s)["shape"])}) for s in specs]

    operations = ["forward", "backward", "jacobian"]
    if model.state_jacobians is not None:
        operations.append("state-jacobians")
    return ModelInfo(
        name=model.name,
        summary=model.summary,
        params=args(model.params),
        inputs=args(model.inputs),
        outputs=args(model.outputs),
        config=[ConfigInfo.model_validate(vars(c)) for c in model.config],
        operations=operations,
    )


@router.get("", summary="The reference models with their arguments, outputs and config")
async def list_models() -> ModelList:
    """Every model with its params, inputs, outputs and config, shapes in symbols."""
    return ModelList(models=[model_info(m) for m in MODELS.values()])


@router.post(
    "/{model}/forward",
    summary="Forward pass of a reference model",
    response_model=ForwardResponse,
    responses=COMPUTE_ERRORS,
)
def forward(
    model: ModelName,
    body: Annotated[ModelRequest, Body(openapi_examples=FORWARD_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
) -> Response:
    """Every output of the model on the given params and inputs."""
    prepared = prepare(model, body, settings)
    with computing(prepared, settings, gate):
        outputs = prepared.model.forward(prepared.config, prepared.args)
        return TensorJSONResponse({"outputs": encode_all(outputs, body.encoding)})


@router.post(
    "/{model}/backward",
    summary="Backward pass (vector-Jacobian product) of a reference model",
    response_model=BackwardResponse,
    responses=COMPUTE_ERRORS,
)
def backward(
    model: ModelName,
    body: Annotated[BackwardRequest, Body(openapi_examples=BACKWARD_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
) -> Response:
    """dl/d(every param and input) given dl/d(outputs) in `grad_outputs`."""
    prepared = prepare(model, body, settings)
    grad_outputs = decode_grad_outputs(prepared, body.grad_outputs)
    with computing(prepared, settings, gate, vector_jacobian_products=1):
        outputs, grads, extras = autodiff.backward(
            prepared.model, prepared.config, prepared.args, grad_outputs
        )
        answer = {
            "outputs": encode_all(outputs, body.encoding),
            "grads": encode_all(grads, body.encoding),
            **encode_all(extras, body.encoding),
        }
        return TensorJSONResponse(answer)


@router.post(
    "/{model}/jacobian",
    summary="Jacobian of one output against one param or input",
    response_model=JacobianResponse,
    responses=COMPUTE_ERRORS,
)
def jacobian(
    model: ModelName,
    body: Annotated[JacobianRequest, Body(openapi_examples=JACOBIAN_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
) -> Response:
    """d(of)/d(wrt), shaped as the output's shape followed by the argument's shape."""
    prepared = prepare(model, body, settings)
    check_jacobian_budget(prepared, body.of, body.wrt, settings)
    rows = math.prod(prepared.output_shapes[body.of])  # one product per output element
    with computing(prepared, settings, gate, vector_jacobian_products=rows):
        result, method = autodiff.jacobian(
            prepared.model, prepared.config, prepared.args, body.of, body.wrt
        )
        return TensorJSONResponse(
            {
                "jacobian": encode(result, body.encoding),
                "of": body.of,
                "wrt": body.wrt,
                "method": method,
            }
        )
