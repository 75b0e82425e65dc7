"""Request and response bodies of ``/v1/check`` and ``/v1/check/batch`` (API.md "Checking
answers"). ``expected`` is the body of the endpoint that computes the key, beside ``op``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SkipValidation,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.devices import DeviceName, DtypeName
from service.grading.compare import RULE, PartialCredit, Tolerance
from service.grading.formulas import MAX_VARIABLES, NAMED
from service.problems import NAME_THE_TAGS, TENSOR_NAME, ProblemDetails
from service.routes.shapes import ConvShapeRequest
from service.schemas import (
    BackwardRequest,
    JacobianRequest,
    ModelRequest,
    StateJacobiansResponse,
    StrictBody,
    TensorOut,
    at_most,
)
from service.tensors import TensorIn

NAME_PATTERN = TENSOR_NAME
MAX_NAMES = 16

Names = Annotated[
    dict[str, Annotated[str, StringConstraints(pattern=NAME_PATTERN)]],
    at_most(MAX_NAMES),
    Field(
        default_factory=dict,
        max_length=MAX_NAMES,
        description="What the question calls the model's arguments and outputs, by their "
        'names here (`{"weight": "W"}`): the label and the diagnoses use these names '
        "(dy/dW, not dy/dweight). Each tensor keeps a name of its own: another tensor's name "
        "here, or the model's own name of another tensor, is refused. An assignment's problems "
        "name them after their given tensors.",
    ),
]

STATE_JACOBIAN_TENSORS = [
    name
    for name, field in StateJacobiansResponse.model_fields.items()
    if field.annotation is TensorOut
]
"""What ``select`` may name of a state-jacobians answer: its tensors."""

CHECK_TOLERANCE = Tolerance()
"""The tolerance of a check that gives none (``compare.Tolerance``'s defaults)."""


class ForwardExpected(ModelRequest):
    """The key is an output of ``POST /v1/models/{model}/forward``."""

    op: Literal["forward"] = Field(
        description="`forward`: the key is an output of the forward pass."
    )
    model: str = Field(description="A model of GET /v1/models.")
    names: Names
    select: str | None = Field(None, description="The output; needed when there are several.")


class BackwardExpected(BackwardRequest):
    """The key is a gradient (or ``state_grads``) of ``POST /v1/models/{model}/backward``."""

    op: Literal["backward"] = Field(
        description="`backward`: the key is a gradient of the backward pass."
    )
    model: str = Field(description="A model of GET /v1/models.")
    names: Names
    select: str | None = Field(
        None,
        description="The gradient (`weight` or `grads.weight`) or extra (`state_grads`); "
        "needed when there are several.",
    )


class JacobianExpected(JacobianRequest):
    """The key is ``POST /v1/models/{model}/jacobian``: d(of)/d(wrt)."""

    op: Literal["jacobian"] = Field(description="`jacobian`: the key is the Jacobian d(of)/d(wrt).")
    model: str = Field(description="A model of GET /v1/models.")
    names: Names


class StateJacobiansExpected(ModelRequest):
    """The key is a tensor of ``POST /v1/models/{model}/state-jacobians`` (recurrent models)."""

    op: Literal["state_jacobians"] = Field(
        description="`state_jacobians`: the key is a tensor of the state-jacobians answer."
    )
    model: str = Field(description="A recurrent model of GET /v1/models.")
    names: Names
    select: str = Field(
        "jacobians",
        description="The tensor of that answer to compare: "
        + ", ".join(f"`{name}`" for name in STATE_JACOBIAN_TENSORS)
        + ".",
    )


ModelExpected = ForwardExpected | BackwardExpected | JacobianExpected | StateJacobiansExpected


class ConvShapeExpected(ConvShapeRequest):
    """The key is the answer of ``POST /v1/shapes/conv``: ``output_shape`` when
    ``out_channels`` is given, else ``output_size``."""

    op: Literal["conv_shape"] = Field(
        description="`conv_shape`: the key is an output shape, with the body of "
        "`/v1/shapes/conv` beside `op`."
    )


class TakesComputeOptions(StrictBody):
    """``device`` and ``dtype``, which every request may carry (API.md), in a key that
    computes no tensor: taken, so that a client may put them in every ``expected`` alike."""

    device: DeviceName | None = Field(
        None,
        description="`auto`, `cpu` or `cuda`: taken, as by every request, though this key "
        "computes no tensor (`cuda` on a server without a GPU is still refused).",
    )
    dtype: DtypeName | None = Field(
        None, description="`float64` or `float32`: taken, as by every request."
    )


class ValueExpected(TakesComputeOptions):
    """The key given directly."""

    op: Literal["value"] = Field(description="`value`: the key is given, in `value`.")
    value: TensorIn = Field(description="The key: a tensor or a number.")
    label: str | None = Field(None, max_length=80, description="What it is, for the report.")


MAX_ROLES = 8
"""The most roles ``FormulaMistakes.variables`` may name (the conv formula has five: H, K, P,
S and D)."""


class FormulaMistakes(StrictBody):
    """A family of mistakes whose formula's parts the variables play under other names."""

    family: Literal["conv_output_size"] = Field(
        description="`conv_output_size`: the convolution's output size of the homework's "
        "1.1(b), with its parts H (the input size), K, P, S and D."
    )
    variables: Annotated[dict[str, str], at_most(MAX_ROLES)] = Field(
        default_factory=dict,
        max_length=MAX_ROLES,  # for the schema; at_most refuses more before reading them
        description='The variable that plays each part, by the part\'s letter (`{"H": "W"}`: '
        "the input size is `W`). A part not named here is played by the variable of its "
        "letter (the input size by `H`, `W` or `L`); padding, stride and dilation may be "
        "absent (0, 1 and 1).",
    )


MAX_LISTED_VARIABLES = 4 * MAX_VARIABLES
"""The most variables a formula key may list before its ranges are read: the service's own
limit (``MAX_VARIABLES``, worded by ``formulas``) is checked after, so a few too many are told
that limit; a million are refused here, before a million ranges are validated."""

Range = Annotated[list[int | float], Field(max_length=16, fail_fast=True)]
"""A variable's range as sent: ``formulas`` tells a range that is not two numbers what it is;
a list of a million is refused here, at its first wrong entry or past 16."""


class FormulaExpected(TakesComputeOptions):
    """The key is a formula, compared with the answer on many points of the variables."""

    op: Literal["formula"] = Field(
        description="`formula`: the key is a formula; the answer, an expression, is compared "
        "with it."
    )
    reference: str | None = Field(
        None, description="The reference expression, e.g. `floor((H - K)/S) + 1`."
    )
    named: (
        Literal[
            "conv_output_size",
            "conv1d_output_length",
            "gated_rnn_gate_size",
            "attention_weights_size",
        ]
        | None
    ) = Field(
        None,
        description="A built-in reference of the homework instead of `reference`: "
        + "; ".join(
            f"`{name}` ({formula.question}; variables "
            + ", ".join(f"{v} in [{low}, {high}]" for v, (low, high) in formula.variables.items())
            + ")"
            for name, formula in NAMED.items()
        )
        + ".",
    )
    variables: Annotated[dict[str, Range], at_most(MAX_LISTED_VARIABLES)] | None = Field(
        None,
        description="Each variable's range [lowest, highest]; integer bounds make an integer "
        "variable. A `named` reference brings a range for each of its variables: a variable "
        "named here takes the range given here instead, and the others keep theirs.",
    )
    constraints: list[str] = Field(
        default_factory=list,
        max_length=8,
        fail_fast=True,
        description="Comparisons that must hold at a point for it to count, e.g. `H >= K`.",
    )
    mistakes: Literal["auto", "none", "conv_output_size"] | FormulaMistakes = Field(
        "auto",
        description="Which common mistakes a wrong answer is compared with, for a diagnosis "
        "(an answer that agrees with a mistaken formula at every point checked is told what "
        "it left out or changed): `auto` (the default) recognises the reference (a `named` "
        "one, or one that is the convolution's output size), `none` diagnoses nothing, "
        "`conv_output_size` declares the reference the convolution's output size of 1.1(b) "
        "(the floor, the padding or the + 1 left out, a ceil, the padding counted once, the "
        "- 1 taken or the + 1 added twice, the dilation or the stride ignored, the transposed "
        "convolution's formula...; a reference that is "
        'not is a 422), and `{"family": "conv_output_size", "variables": {"H": "W"}}` '
        "declares it with the variables that play its parts.",
    )


Expected = Annotated[
    ForwardExpected
    | BackwardExpected
    | JacobianExpected
    | StateJacobiansExpected
    | ConvShapeExpected
    | ValueExpected
    | FormulaExpected,
    Field(discriminator="op"),
    NAME_THE_TAGS,
]

# Any JSON value, on purpose: an answer is a student's, judged rather than validated. One that
# is not of the asked kind is an invalid answer (a 422 from /v1/check, an `error` in its place
# in a batch, whose other checks are still judged), so the schema does not refuse it either.
ANSWER_JSON_SCHEMA: dict[str, Any] = {
    "title": "Answer",
    "description": (
        "A tensor (any of the three tensor forms) for forward, backward, jacobian, "
        "state_jacobians and value; a list of ints, an int or a string such as `16x16` for "
        "conv_shape; an expression string for formula. Any other value is judged an invalid "
        "answer: a 422 from /v1/check, an `error` in its place in a batch."
    ),
    "examples": [[[2.0, -2.0, 2.0]], [16, 16], "16x16", "floor((H - K)/S) + 1"],
}
AnswerIn = Annotated[Any, WithJsonSchema(ANSWER_JSON_SCHEMA)]


class ToleranceIn(StrictBody):
    """How close an answer must be: |answer - key| <= max(atol, floor * scale) + rtol * |key|."""

    rtol: float = Field(
        CHECK_TOLERANCE.rtol,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Relative tolerance: a share of each key entry's own magnitude.",
    )
    atol: float = Field(
        CHECK_TOLERANCE.atol,
        ge=0,
        allow_inf_nan=False,
        description="Absolute tolerance: the error always allowed, whatever the key's size.",
    )
    floor: float = Field(
        CHECK_TOLERANCE.floor,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Absolute floor as a fraction of the key's largest magnitude (its scale), "
        "so the exact zeros of a Jacobian accept rounding noise.",
    )


class CheckRequest(StrictBody):
    """One answer and the key to judge it against."""

    expected: Expected = Field(
        description="What the key is: `op` (one of forward, backward, jacobian, "
        "state_jacobians, conv_shape, value, formula) and, beside it, what computes it (the "
        "body of the endpoint the op stands for, a value, or a formula)."
    )
    answer: AnswerIn
    tolerance: ToleranceIn = Field(
        default_factory=lambda: ToleranceIn(),
        description="How close a numeric answer must be; each part left out takes its "
        "default. Shapes and integer formulas are compared exactly.",
    )
    partial_credit: PartialCredit = Field(
        "none",
        description="`none`: score 1 or 0; `elements`: the fraction of elements (dimensions, "
        "formula points) that are right; `steps`: the fraction of entries along the first "
        "axis (the time steps of an RNN output) that are right.",
    )
    device: DeviceName | None = Field(
        None,
        description="`auto`, `cpu` or `cuda`: where the key of a model op is computed, as "
        "`expected.device` says it (either place; not two different values). Shapes, values "
        "and formulas compute no tensors: `cuda` on a server without a GPU is still refused.",
    )
    dtype: DtypeName | None = Field(
        None,
        description="`float64` or `float32`: the precision the key of a model op is computed "
        "in, as `expected.dtype` says it (either place; not two different values).",
    )

    @field_validator("device", "dtype")
    @classmethod
    def _not_two_values(cls, top: str | None, info: ValidationInfo) -> str | None:
        """A field validator, not the model's: the error is then located at the field
        (``device``, ``dtype``) rather than at the whole check."""
        expected = info.data.get("expected")  # validated before: declared first
        name = info.field_name
        if top is None or name is None or not isinstance(expected, ModelRequest):
            return top
        inner = getattr(expected, name)
        if chosen(expected, name) and inner != top:
            raise ValueError(
                f"{name} is {top!r} here and {inner!r} in expected: give it once, or the "
                "same in both"
            )
        return top

    @model_validator(mode="after")
    def _compute_options_at_the_top(self) -> CheckRequest:
        """API.md lets every compute request carry ``device`` and ``dtype`` at its top level;
        for a check they say how ``expected`` is computed."""
        expected = self.expected
        if not isinstance(expected, ModelRequest):
            return self
        update = {
            name: top for name in ("device", "dtype") if (top := getattr(self, name)) is not None
        }
        if update:
            self.expected = expected.model_copy(update=update)
        return self


def chosen(expected: ModelRequest, name: str) -> bool:
    """Whether ``expected`` chooses its ``device`` or ``dtype`` (``name``) itself: given, and
    not ``auto``, which chooses nothing and gives way to a value at the top."""
    return name in expected.model_fields_set and getattr(expected, name) != "auto"


class BatchRequest(StrictBody):
    # Documented as checks, validated one by one by the engine (``check.validate_checks``): a
    # check that is not valid is an error in its place, and the others are still judged.
    checks: list[SkipValidation[CheckRequest]] = Field(
        description="Judged in order; see /v1/info for the limit."
    )
    device: DeviceName | None = Field(
        None,
        description="`auto`, `cpu` or `cuda`: the `device` of every check that gives none of "
        "its own.",
    )
    dtype: DtypeName | None = Field(
        None,
        description="`float64` or `float32`: the `dtype` of every check that gives none of its "
        "own.",
    )

    def checks_with_options(self) -> list[Any]:
        """The checks as sent, each given the batch's ``device`` and ``dtype`` where it gives
        none of its own: neither at its top level nor in its ``expected`` (``auto`` there
        chooses nothing, and takes the batch's)."""
        options = {name: getattr(self, name) for name in ("device", "dtype")}
        options = {name: value for name, value in options.items() if value is not None}
        if not options:
            return list(self.checks)
        return [
            {**check, **{n: v for n, v in options.items() if not _gives(check, n)}}
            if isinstance(check, dict)
            else check
            for check in self.checks
        ]


def _gives(check: dict[str, Any], name: str) -> bool:
    """Whether a check as sent gives its own ``device`` or ``dtype`` (``name``)."""
    expected = check.get("expected")
    inner = expected.get(name) if isinstance(expected, dict) else None
    return check.get(name) is not None or (inner is not None and inner != "auto")


class Diagnosis(BaseModel):
    code: str = Field(description="A stable name of the mistake, e.g. `transposed`.")
    message: str = Field(description="What the mistake is, in words a student understands.")


class ToleranceEcho(BaseModel):
    """The tolerance the answer was judged with, and what it came to for this key."""

    rtol: float = Field(description="The relative tolerance used.")
    atol: float = Field(description="The absolute tolerance used.")
    floor: float = Field(description="The floor used, a fraction of `scale`.")
    scale: float | None = Field(description="The key's largest magnitude (tensor keys only).")
    effective_atol: float | None = Field(
        description="max(atol, floor * scale) for tensors; max(atol, 1e-12) for formulas (no "
        "key scale), null for a whole-numbered formula (matched exactly); "
        "null for shapes (compared exactly)."
    )
    rule: str = Field(RULE, description="The rule this check was judged by.")


class CheckResponse(BaseModel):
    correct: bool = Field(description="Whether the answer matches the key within the tolerance.")
    score: float = Field(
        ge=0,
        le=1,
        description="1 when correct; with `partial_credit`, the share that is right; else 0.",
    )
    report: dict[str, Any] = Field(
        description="Tensors: expected and given shape, elements, mismatched, largest absolute "
        "and relative error and where, the first mismatches. Shapes: expected and given, per "
        "dimension. Formulas: points checked, a point where they disagree."
    )
    diagnosis: list[Diagnosis] = Field(description="Likely mistakes; empty when correct.")
    tolerance: ToleranceEcho = Field(description="The tolerance the answer was judged with.")


class CheckFailure(BaseModel):
    error: ProblemDetails = Field(description="Why this check could not be judged (4xx).")


class BatchSummary(BaseModel):
    checks: int = Field(description="Checks in the batch.")
    correct: int = Field(description="Checks judged correct.")
    wrong: int = Field(description="Checks judged, and not correct.")
    invalid: int = Field(description="Checks answered with an `error` instead of a verdict.")
    keys: int = Field(description="Distinct `expected` keys computed.")


class BatchResponse(BaseModel):
    results: list[CheckResponse | CheckFailure] = Field(
        description="One per check, in order: its verdict, or the `error` it could not be "
        "judged for."
    )
    summary: BatchSummary = Field(description="The counts of the results.")
