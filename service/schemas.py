"""Request and response bodies shared by the routes (the wire contract of API.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.devices import DeviceName, DtypeName
from service.tensors import TensorIn

ResponseEncoding = Literal["json", "b64", "safetensors"]


class StrictBody(BaseModel):
    """A request body that refuses unknown fields and coerces nothing (``"3"`` is not 3), so a
    typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ComputeOptions(StrictBody):
    device: DeviceName = Field("auto", description="`auto` is the GPU when there is one.")
    dtype: DtypeName = Field("float64", description="Precision of the computation.")
    encoding: ResponseEncoding = Field(
        "json",
        description=(
            "Tensors of the answer as nested lists (`json`), base64 (`b64`), or the whole "
            "answer as one safetensors file (`safetensors`, `application/octet-stream`: "
            "tensors under their dotted names, e.g. `grads.weight`, the other fields as JSON "
            "in the header's `__metadata__`)."
        ),
    )


class ModelRequest(ComputeOptions):
    """The arguments of a reference model: its config, params and inputs."""

    config: dict[str, Any] = Field(default_factory=dict, description="The model's config.")
    params: dict[str, TensorIn] = Field(default_factory=dict, description="Parameters by name.")
    inputs: dict[str, TensorIn] = Field(default_factory=dict, description="Inputs by name.")


class BackwardRequest(ModelRequest):
    grad_outputs: dict[str, TensorIn] = Field(
        description="Upstream gradient dl/d(output) for one or more outputs, each of its shape."
    )


class JacobianRequest(ModelRequest):
    of: str = Field(description="The output to differentiate.")
    wrt: str = Field(description="The parameter or input to differentiate against.")


class TensorOut(BaseModel):
    """A tensor of an answer."""

    shape: list[int]
    datatype: Literal["FP64", "FP32"]
    data: Any = Field(None, description="Nested list of numbers (absent with `b64`).")
    b64: str | None = Field(None, description="Base64 of little-endian row-major bytes.")
    nonfinite: int | None = Field(
        None,
        description=(
            "Present when some entries are not finite; in `data` they are the strings "
            '"NaN", "Infinity" or "-Infinity".'
        ),
    )


class ForwardResponse(BaseModel):
    outputs: dict[str, TensorOut]


class BackwardResponse(BaseModel):
    outputs: dict[str, TensorOut]
    grads: dict[str, TensorOut] = Field(description="dl/d(argument) for every given argument.")
    state_grads: TensorOut | None = Field(
        None,
        description=(
            "Recurrent models only: `[T, m]`, row t-1 the total dl/dh[t] through time "
            "(the seed's 1.2.2(f)): its direct part plus every later step that depends on h[t]."
        ),
    )


class JacobianResponse(BaseModel):
    jacobian: TensorOut = Field(description="Shaped output shape + argument shape.")
    of: str
    wrt: str
    method: Literal["closed-form", "autograd"]


class StateJacobiansResponse(BaseModel):
    """The one-step state Jacobians of a recurrent model and how gradients fare through time."""

    jacobians: TensorOut = Field(
        description="`[T, m, m]`: entry t-1 is dh[t]/dh[t-1] with every other argument fixed."
    )
    spectral_norms: TensorOut = Field(description="`[T]`: ||dh[t]/dh[t-1]||_2 at entry t-1.")
    min_singular_values: TensorOut = Field(
        description="`[T]`: the smallest singular value of dh[t]/dh[t-1]."
    )
    product_norms: TensorOut = Field(
        description=(
            "`[T]`: ||dh[t]/dh[1]||_2 (1 at entry 0): the product dh[t]/dh[t-1] ... "
            "dh[2]/dh[1] where h[t] reads only h[t-1]; with AttentionRNN(k >= 2) or inf, "
            "every path, the direct attention to older states included. May overflow to "
            "Infinity or underflow to 0, see `log_product_norms`."
        )
    )
    log_product_norms: TensorOut = Field(
        description="`[T]`: the natural log of `product_norms`, finite where they are not."
    )
    growth_factor: float = Field(
        description=(
            "Per-step growth ||dh[T]/dh[1]||_2 ** (1 / (T - 1)); 1 when T = 1 (dh[1]/dh[1] "
            "is the identity)."
        )
    )
    verdict: Literal["vanishing", "exploding", "neither"]
    reason: str = Field(description="One sentence of why, in the seed's terms.")
    terms: dict[str, float] = Field(
        description=(
            "The parts of the one-step Jacobian behind the reason, averaged over the steps "
            "t = 2..T (the one step when T = 1); with AttentionRNN(k >= 2) or inf also "
            "`chain_growth_factor`, the growth of the chain of one-step Jacobians alone."
        )
    )
    vanishing_below: float = Field(description="Growth factors below this are `vanishing`.")
    exploding_above: float = Field(description="Growth factors above this are `exploding`.")


class ArgInfo(BaseModel):
    name: str
    shape: list[str]
    description: str
    optional: bool


class ConfigInfo(BaseModel):
    name: str
    description: str
    default: Any
    json_schema: dict[str, Any]


class ModelInfo(BaseModel):
    name: str
    summary: str
    params: list[ArgInfo]
    inputs: list[ArgInfo]
    outputs: list[ArgInfo]
    backward_extras: list[ArgInfo] = Field(
        default_factory=list,
        description="What `backward` answers beside the grads (the recurrent models' "
        "`state_grads`, the gradients through time).",
    )
    config: list[ConfigInfo]
    operations: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]
