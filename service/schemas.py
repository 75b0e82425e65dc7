"""Request and response bodies shared by the routes (the wire contract of API.md)."""

from __future__ import annotations

from itertools import islice
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from models.registry import MODELS
from service.devices import DeviceName, DtypeName
from service.tensors import TensorIn

ResponseEncoding = Literal["json", "b64", "safetensors"]

DEVICE = (
    "Where to compute: `auto` (the default) is the GPU when there is one, else the CPU; "
    "`cpu`; `cuda`, a 422 (`device-unavailable`) on a server without one (see `devices` in "
    "`GET /v1/info`)."
)
DTYPE = "The precision of the computation: `float64` (the default) or `float32`."


MAX_UNKNOWN_KEYS = 20
"""The most unknown fields of an object worded one by one: past it, the object is refused with
one error that names a few of them and counts them all."""

_SHOWN_UNKNOWN_KEYS = 5
_SHOWN_KEY_CHARACTERS = 40


def too_many_unknown_keys(data: dict[Any, Any], fields: dict[str, Any]) -> str | None:
    """The words of an object of more than ``MAX_UNKNOWN_KEYS`` fields that ``fields`` does not
    have, or None when it has no more than that."""
    if len(data) <= MAX_UNKNOWN_KEYS:
        return None
    count = len(data.keys() - fields.keys())
    if count <= MAX_UNKNOWN_KEYS:
        return None
    shown = ", ".join(
        f"`{str(key)[:_SHOWN_KEY_CHARACTERS]}`"
        for key in islice((key for key in data if key not in fields), _SHOWN_UNKNOWN_KEYS)
    )
    known = ", ".join(f"`{name}`" for name in fields) or "none"
    return f"{count:,} fields this object does not have ({shown}, ...); it takes {known}"


class StrictBody(BaseModel):
    """A request body that refuses unknown fields and coerces nothing (``"3"`` is not 3), so a
    typo is an error, not a silent default.

    An object with more than ``MAX_UNKNOWN_KEYS`` unknown fields is refused before any field is
    validated, with one error: a body of 2 million unknown keys otherwise made 2 million errors,
    built by pydantic before any of the service's code ran, which held the worker 10 s and more.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            words = too_many_unknown_keys(data, cls.model_fields)
            if words is not None:
                raise PydanticCustomError("extra_forbidden", "{words}", {"words": words})
        return data


def at_most(limit: int) -> BeforeValidator:
    """Refuse an object of more than ``limit`` entries before its entries are validated, with
    pydantic's own error for a ``max_length`` (which it checks only after validating every
    entry: a million wrong entries made a million errors first)."""

    def check(value: Any) -> Any:
        if isinstance(value, dict) and len(value) > limit:
            raise PydanticCustomError(
                "too_long",
                "Dictionary should have at most {max_length} items after validation, not "
                "{actual_length}",
                {"field_type": "Dictionary", "max_length": limit, "actual_length": len(value)},
            )
        return value

    return BeforeValidator(check)


MAX_NAMES = 64
"""The most entries of a model request's ``config``, ``params``, ``inputs`` and
``grad_outputs``, refused before they are read: no model takes more than a few, and a million
names took 1-4 s to refuse one by one."""


class ComputeOptions(StrictBody):
    device: DeviceName = Field("auto", description=DEVICE)
    dtype: DtypeName = Field("float64", description=DTYPE)
    encoding: ResponseEncoding = Field(
        "json",
        description=(
            "Tensors of the answer as nested lists (`json`), base64 (`b64`), or the whole "
            "answer as one safetensors file (`safetensors`, `application/octet-stream`: "
            "tensors under their dotted names, e.g. `grads.weight`, the other fields as JSON "
            "in the header's `__metadata__`)."
        ),
    )


def _config_keys() -> str:
    """The config keys of every model, from the registry (what ``parse_config`` accepts)."""
    per_model = [
        f"`{name}`: " + (", ".join(f"`{c.name}`" for c in model.config) or "none")
        for name, model in MODELS.items()
    ]
    return "; ".join(per_model)


class ModelRequest(ComputeOptions):
    """The arguments of a reference model: its config, params and inputs."""

    config: Annotated[dict[str, Any], at_most(MAX_NAMES)] = Field(
        default_factory=dict,
        description=f"The model's config; a key missing takes its default. Keys by model: "
        f"{_config_keys()}; each with its default and schema under `config` in "
        "`GET /v1/models`. Any other key is a 422.",
    )
    params: Annotated[dict[str, TensorIn], at_most(MAX_NAMES)] = Field(
        default_factory=dict, description="Parameters by name."
    )
    inputs: Annotated[dict[str, TensorIn], at_most(MAX_NAMES)] = Field(
        default_factory=dict, description="Inputs by name."
    )


class BackwardRequest(ModelRequest):
    grad_outputs: Annotated[dict[str, TensorIn], at_most(MAX_NAMES)] = Field(
        description="Upstream gradient dl/d(output) for one or more outputs, each of its shape."
    )


class JacobianRequest(ModelRequest):
    of: str = Field(description="The output to differentiate.")
    wrt: str = Field(description="The parameter or input to differentiate against.")


class TensorOut(BaseModel):
    """A tensor of an answer."""

    shape: list[int] = Field(description="The size of each axis; `[]` for a number.")
    datatype: Literal["FP64", "FP32"] = Field(
        description="`FP64` or `FP32`: the dtype the request computed in (`dtype`)."
    )
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
    outputs: dict[str, TensorOut] = Field(
        description="Every output of the model by name (`outputs` in `GET /v1/models`)."
    )


class BackwardResponse(BaseModel):
    outputs: dict[str, TensorOut] = Field(
        description="Every output of the forward pass by name, as `forward` answers them."
    )
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
    of: str = Field(description="The output differentiated, as asked.")
    wrt: str = Field(description="The argument differentiated against, as asked.")
    method: Literal["closed-form", "autograd"] = Field(
        description="How it was computed. `closed-form`: from the model's own formula for "
        "this Jacobian, without autodiff (the conv layers' dy/dweight, dy/dx and dy/dbias: "
        "exact, and far faster for large ones); `autograd`: by reverse-mode autodiff "
        "(`torch.func.jacrev`), one vector-Jacobian product per output element, for every "
        "other pair. Both agree to rounding."
    )


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
    verdict: Literal["vanishing", "exploding", "neither"] = Field(
        description="From `growth_factor`: `vanishing` below `vanishing_below`, `exploding` "
        "above `exploding_above`, `neither` between (a gradient that keeps its size through "
        "time)."
    )
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
    """A parameter, input or output of a model."""

    name: str = Field(description="Its key in `params`, `inputs` or `outputs`.")
    shape: list[str] = Field(
        description="Its shape in symbols (`[F, C, K]`); the same symbol is the same size "
        "wherever it appears in the model."
    )
    description: str = Field(description="What it is, in the homework's terms.")
    optional: bool = Field(description="Whether a request may leave it out (a bias, h0).")


class ConfigInfo(BaseModel):
    """A key of a model's `config`."""

    name: str = Field(description="The key in `config`.")
    description: str = Field(description="What it sets.")
    default: Any = Field(description="Its value when `config` leaves it out.")
    json_schema: dict[str, Any] = Field(description="The JSON Schema of the values it takes.")


class ModelInfo(BaseModel):
    """A reference model: what it takes, what it answers, and the operations it has."""

    name: str = Field(description="The `{model}` of its paths.")
    summary: str = Field(description="What it computes.")
    params: list[ArgInfo] = Field(description="Its parameters (`params` of a request).")
    inputs: list[ArgInfo] = Field(description="Its inputs (`inputs` of a request).")
    outputs: list[ArgInfo] = Field(description="What `forward` answers under `outputs`.")
    backward_extras: list[ArgInfo] = Field(
        default_factory=list,
        description="What `backward` answers beside the grads (the recurrent models' "
        "`state_grads`, the gradients through time).",
    )
    config: list[ConfigInfo] = Field(description="The keys its `config` takes (may be none).")
    operations: list[str] = Field(
        description="The operations of its paths: `forward`, `backward`, `jacobian`, and "
        "`state-jacobians` for a model with a recurrent state."
    )


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="Every reference model.")
