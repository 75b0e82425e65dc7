"""Reference models: forward, backward and Jacobians, generic over the registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path
from starlette.responses import Response

from models import autodiff
from models.registry import MODELS, ReferenceModel
from models.zeroed_buffers import recycling
from service.compute import (
    check_jacobian_budget,
    check_state_jacobian_budget,
    closed_form_flops,
    closed_form_seconds,
    computing,
    decode_grad_outputs,
    lookup,
    prepare,
    vector_jacobian_products,
)
from service.deps import GateDep, SettingsDep
from service.examples import (
    BACKWARD_EXAMPLES,
    FORWARD_EXAMPLES,
    JACOBIAN_EXAMPLES,
    STATE_JACOBIAN_EXAMPLES,
)
from service.metrics import compute_timer
from service.problems import Problem, problem_responses, shared_description
from service.responses import binary_answer_responses, tensor_answer
from service.routing import FastJSONRoute
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
    StateJacobiansResponse,
)

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=FastJSONRoute)

NO_MODEL = "No model of this name (`unknown-model`); see `GET /v1/models`."
NOT_COMPUTABLE = (
    f"{shared_description(422)} Here also: a tensor that is not one (`invalid-tensor`: "
    "ragged, a wrong element count, a null entry, bad base64), a name the model does not "
    "have (`unknown-name`: a param, an input, an output in `grad_outputs`, `of`, `wrt`), a "
    "request it cannot compute (`invalid-request`: a missing argument, shapes that do not "
    'fit together, a config value out of range), `"device": "cuda"` on a server without '
    "one (`device-unavailable`), or an estimate over the compute deadline "
    "(`over-compute-deadline`)."
)
COMPUTE_ERRORS = problem_responses(
    404, 413, 422, 503, described={404: NO_MODEL, 422: NOT_COMPUTABLE}
)

RECURRENT = sorted(name for name, model in MODELS.items() if model.state_jacobians is not None)
"""The models with a recurrent state: the only ones with state Jacobians."""

ModelName = Annotated[
    str,
    Path(
        description="A model of `GET /v1/models`; any other name is a 404.",
        json_schema_extra={"enum": sorted(MODELS)},
    ),
]

RecurrentModelName = Annotated[
    str,
    Path(
        description="A model with a recurrent state (its `operations` in `GET /v1/models` "
        "list `state-jacobians`); any other name is a 404.",
        json_schema_extra={"enum": RECURRENT},
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
        backward_extras=args(model.extras),
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
    responses={**binary_answer_responses(ForwardResponse), **COMPUTE_ERRORS},
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
        with compute_timer(prepared.model.name, "forward", prepared.device):
            outputs = prepared.model.forward(prepared.config, prepared.args)
        return tensor_answer({"outputs": outputs}, body.encoding)


@router.post(
    "/{model}/backward",
    summary="Backward pass (vector-Jacobian product) of a reference model",
    response_model=BackwardResponse,
    responses={**binary_answer_responses(BackwardResponse), **COMPUTE_ERRORS},
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
        with compute_timer(prepared.model.name, "backward", prepared.device):
            outputs, grads, extras = autodiff.backward(
                prepared.model, prepared.config, prepared.args, grad_outputs
            )
        return tensor_answer({"outputs": outputs, "grads": grads, **extras}, body.encoding)


@router.post(
    "/{model}/jacobian",
    summary="Jacobian of one output against one param or input",
    response_model=JacobianResponse,
    responses={**binary_answer_responses(JacobianResponse), **COMPUTE_ERRORS},
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
    rows = vector_jacobian_products(prepared, "jacobian", body.of, body.wrt)
    closed = closed_form_flops(prepared, "jacobian", body.of, body.wrt)
    # Recycled buffers: the answer is only read (encoded, or its memory sent) after this.
    with (
        computing(prepared, settings, gate, vector_jacobian_products=rows, closed_form=closed),
        recycling(),
    ):
        with compute_timer(prepared.model.name, "jacobian", prepared.device):
            result, method = autodiff.jacobian(
                prepared.model, prepared.config, prepared.args, body.of, body.wrt
            )
        answer = {"jacobian": result, "of": body.of, "wrt": body.wrt, "method": method}
        return tensor_answer(answer, body.encoding)


@router.post(
    "/{model}/state-jacobians",
    summary="One-step state Jacobians dh[t]/dh[t-1] of a recurrent model, and a verdict",
    response_model=StateJacobiansResponse,
    responses={
        **binary_answer_responses(StateJacobiansResponse),
        **COMPUTE_ERRORS,
        **problem_responses(
            404,
            described={
                404: f"{NO_MODEL.removesuffix('.')}, or a model without a recurrent state "
                f"(`unsupported-operation`): state Jacobians exist for {', '.join(RECURRENT)} "
                "only."
            },
        ),
    },
)
def state_jacobians(
    model: RecurrentModelName,
    body: Annotated[ModelRequest, Body(openapi_examples=STATE_JACOBIAN_EXAMPLES)],
    settings: SettingsDep,
    gate: GateDep,
) -> Response:
    """dh[t]/dh[t-1] in closed form per step, their singular values, the norms of
    dh[t]/dh[1] through time, and whether gradients vanish or explode, with the reason."""
    reference = lookup(model)
    if reference.state_jacobians is None:
        recurrent = ", ".join(RECURRENT)
        raise Problem(
            404,
            f"{model} has no recurrent state, so it has no state Jacobians; "
            f"state-jacobians exists for {recurrent}",
            kind="unsupported-operation",
            title="No such operation for this model",
        )
    prepared = prepare(model, body, settings)
    check_state_jacobian_budget(prepared, settings)
    closed = closed_form_flops(prepared, "state-jacobians")
    seconds = closed_form_seconds(prepared, "state-jacobians")
    with computing(prepared, settings, gate, closed_form=closed, closed_form_seconds=seconds):
        with compute_timer(reference.name, "state-jacobians", prepared.device):
            answer = reference.state_jacobians(prepared.config, prepared.args)
        return tensor_answer(answer, body.encoding)
