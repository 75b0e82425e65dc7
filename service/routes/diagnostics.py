"""The seed's part 1.3: loss-curve diagnostics (with plots) and the temporal-order experiment."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, FastAPI, Query, Request
from pydantic import BaseModel, Field, Strict
from starlette.responses import Response

from models.temporal_order import CLASSES, CellName, TaskSpec
from models.training import PassResult, TrainingConfig, train
from service.deps import SettingsDep
from service.devices import DeviceName, DtypeName, resolve_device, resolve_dtype
from service.examples import LOSS_CURVE_EXAMPLES, TEMPORAL_ORDER_EXAMPLES
from service.grading.loss_curve import MAX_LOSS, diagnose
from service.plots import MAX_PLOTTED_EPOCHS, MEDIA_TYPES, render
from service.problems import Problem, problem_responses
from service.routing import FastJSONRoute
from service.schemas import StrictBody
from service.settings import Settings

router = APIRouter(route_class=FastJSONRoute)

Loss = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=MAX_LOSS)]
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]


MAX_CLASSES = 10**9
"""The most classes a curve may declare: any real classifier's, and an integer JSON carries
(past 2**63 a number is refused as "not a valid integer", which misleads)."""


class LossCurveRequest(StrictBody):
    batch_losses: list[Annotated[list[Loss], Field(min_length=1)]] = Field(
        min_length=1,
        description=(
            "One list per epoch (epoch 0 first, ideally the untrained model) of every batch's "
            "mean cross-entropy, in the order the batches ran."
        ),
    )
    batch_accuracies: list[list[Fraction]] | None = Field(
        None, description="Optional: the same shape as `batch_losses`, fractions in [0, 1]."
    )
    num_classes: int = Field(
        ge=2,
        le=MAX_CLASSES,
        description="C, the number of classes (4 in the seed).",
    )


class SpikeOut(BaseModel):
    epoch: int = Field(description="0-based row of `batch_losses`.")
    last_batch: float = Field(description="The reported value: the epoch's last batch loss.")
    epoch_mean: float
    others_mean: float | None = Field(description="Mean of the epoch's other batches.")
    others_sd: float | None = Field(description="Their standard deviation.")
    reasons: list[Literal["last_batch_outlier", "above_initial_loss", "mean_jump"]]
    true_class_probability: float = Field(
        description="exp(-last_batch): the batch's geometric-mean probability of the true class."
    )


class LossCurveResponse(BaseModel):
    num_classes: int
    epoch_mean: list[float] = Field(description="Mean over each epoch's batches (the fix).")
    last_batch: list[float] = Field(description="Each epoch's last batch (the bug's curve).")
    spikes: list[int] = Field(description="Epochs (0-based) whose reported value stands out.")
    spike_details: list[SpikeOut]
    unstable_epochs: list[int] = Field(
        description="Epochs where the typical batch loss itself jumps: training, not reporting."
    )
    expected_initial_loss: float = Field(description="log C, the loss of a model at chance.")
    chance_accuracy: float = Field(description="1/C.")
    initial_loss: float = Field(description="Epoch 0's mean loss, to compare with log C.")
    looks_like_last_batch_reporting: bool | None = Field(
        description="Whether the last-batch curve has spikes the epoch means do not; null when "
        "every epoch has one batch, which cannot tell."
    )
    accuracy_epoch_mean: list[float] | None
    accuracy_last_batch: list[float] | None
    findings: list[str] = Field(description="What the curve shows, in the seed's terms.")


_PLOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The diagnosis as JSON, or with `format=png|svg` a plot of both curves.",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/svg+xml": {"schema": {"type": "string"}},
        },
    },
}


@router.post(
    "/v1/diagnostics/loss-curve",
    tags=["diagnostics"],
    summary="Diagnose a loss curve: epoch means vs last batches, spikes, log C and 1/C",
    response_model=LossCurveResponse,
    responses={**_PLOT_RESPONSES, **problem_responses(413, 422)},
)
def loss_curve(
    body: Annotated[LossCurveRequest, Body(openapi_examples=LOSS_CURVE_EXAMPLES)],
    settings: SettingsDep,
    fmt: Annotated[
        Literal["json", "png", "svg"],
        Query(
            alias="format",
            description="`json` (default) for the diagnosis, `png` or `svg` for a plot.",
        ),
    ] = "json",
) -> Any:
    """Epoch means beside last-batch values, the spikes and what explains them (seed 1.3)."""
    values = sum(len(epoch) for epoch in body.batch_losses)
    if values > settings.loss_curve_max_values:
        raise Problem(
            413,
            f"batch_losses holds {values:,} values; the limit is "
            f"{settings.loss_curve_max_values:,}",
            kind="budget-exceeded",
            title="Over the element budget",
        )
    if fmt != "json" and len(body.batch_losses) > MAX_PLOTTED_EPOCHS:
        raise Problem(
            413,
            f"batch_losses holds {len(body.batch_losses):,} epochs; a plot shows at most "
            f"{MAX_PLOTTED_EPOCHS:,} (more than its width in pixels): send fewer epochs, or ask "
            "for the diagnosis as JSON (format=json)",
            kind="budget-exceeded",
            title="Over the element budget",
        )
    diagnosis = diagnose(body.batch_losses, body.num_classes, body.batch_accuracies)
    if fmt != "json":
        return Response(render(diagnosis, fmt), media_type=MEDIA_TYPES[fmt])
    answer = vars(diagnosis) | {"spike_details": [vars(s) for s in diagnosis.spike_details]}
    return LossCurveResponse.model_validate(answer)


# JSON has no tuples: a pair arrives as a list, which strict bodies otherwise refuse.
Range = Annotated[tuple[int, int], Strict(False)]


class TemporalOrderRequest(StrictBody):
    """A reference training run on the temporal-order task; the defaults are a quick version."""

    device: DeviceName = Field("auto", description="`auto` is the GPU when there is one.")
    dtype: DtypeName = Field("float64", description="Precision of the model and the data.")
    cell: CellName = Field(
        "gated", description="`gated` (the seed's equations (1)-(2)), `lstm` or `rnn` (tanh)."
    )
    hidden_size: int = Field(32, ge=1, description="State size m.")
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    train_batches: int = Field(20, ge=1, description="Fresh training batches per epoch.")
    test_batches: int = Field(8, ge=1, description="Batches of the fixed test set.")
    learning_rate: float = Field(0.01, gt=0, le=1, description="Of Adam.")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="Clip the gradient's global norm to this before each step."
    )
    length_range: Range = Field((20, 24), description="Sequence lengths, inclusive.")
    t1_range: Range = Field((3, 6), description="Position of the first X/Y, 1-based.")
    t2_range: Range = Field((12, 16), description="Position of the second X/Y, 1-based.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds the weights and the data.")
    max_seconds: float | None = Field(
        None, gt=0, description="Stop training after this wall time (at most the server's cap)."
    )


class PassOut(BaseModel):
    loss: float = Field(description="Mean over the test batches.")
    loss_last_batch: float
    accuracy: float


class EpochOut(BaseModel):
    epoch: int = Field(description="1-based; epoch 0 is `initial`.")
    train_loss_mean: float = Field(description="Mean over the epoch's batches (the fix).")
    train_loss_last_batch: float = Field(description="The last batch's loss (the bug).")
    train_accuracy: float
    test_loss: float = Field(description="Mean over the test batches.")
    test_loss_last_batch: float
    test_accuracy: float
    train_batch_losses: list[float] = Field(
        description="Every training batch's loss, in order: a row for the loss-curve diagnosis."
    )
    train_batch_accuracies: list[float]


class TemporalOrderResponse(BaseModel):
    classes: list[str] = Field(description="Class names by index: Q, R, S, U.")
    initial: PassOut = Field(description="The untrained model on the test set (epoch 0).")
    epochs: list[EpochOut]
    stopped_early: bool = Field(description="True when the wall-time limit ended the run.")
    stop_reason: str | None
    device: str
    dtype: str
    seconds: float = Field(description="Wall time of the run.")


_SLOTS_LOCK = threading.Lock()


def experiment_slots(app: FastAPI, settings: Settings) -> threading.BoundedSemaphore:
    """The app's semaphore of concurrent experiments, created on first use."""
    with _SLOTS_LOCK:
        slots: threading.BoundedSemaphore | None = getattr(app.state, "experiment_slots", None)
        if slots is None:
            slots = threading.BoundedSemaphore(settings.experiment_concurrency)
            app.state.experiment_slots = slots
        return slots


def _over_cap(field: str, value: float, limit: float, setting: str) -> Problem:
    message = f"{value} is over this server's limit of {limit} (TENSORGRADE_{setting.upper()})"
    return Problem(
        422,
        f"{field}: {message}",
        kind="limit-exceeded",
        title="Over an experiment limit",
        errors=[{"loc": ["body", field], "msg": message, "type": "limit_exceeded"}],
    )


def check_caps(body: TemporalOrderRequest, settings: Settings) -> None:
    """Refuse, before computing anything, a run larger than the server's caps allow."""
    caps: list[tuple[str, float, str]] = [
        ("epochs", body.epochs, "experiment_max_epochs"),
        ("train_batches", body.train_batches, "experiment_max_batches"),
        ("test_batches", body.test_batches, "experiment_max_batches"),
        ("batch_size", body.batch_size, "experiment_max_batch_size"),
        ("hidden_size", body.hidden_size, "experiment_max_hidden_size"),
        ("length_range", body.length_range[1], "experiment_max_length"),
    ]
    if body.max_seconds is not None:
        caps.append(("max_seconds", body.max_seconds, "experiment_max_seconds"))
    for field, value, setting in caps:
        limit = getattr(settings, setting)
        if value > limit:
            raise _over_cap(field, value, limit, setting)


def _pass_out(result: PassResult) -> PassOut:
    return PassOut(
        loss=result.mean_loss, loss_last_batch=result.last_batch_loss, accuracy=result.accuracy
    )


@router.post(
    "/v1/experiments/temporal-order",
    tags=["experiments"],
    summary="Train a reference classifier on seed 1.3's task and report its epoch curves",
    responses=problem_responses(422, 503),
)
def temporal_order(
    body: Annotated[TemporalOrderRequest, Body(openapi_examples=TEMPORAL_ORDER_EXAMPLES)],
    settings: SettingsDep,
    request: Request,
) -> TemporalOrderResponse:
    """A bounded training run: the initial loss and accuracy, then per epoch the mean and the
    last batch's training loss, the test loss and the test accuracy."""
    check_caps(body, settings)
    config = TrainingConfig(
        spec=TaskSpec(body.length_range, body.t1_range, body.t2_range),
        cell=body.cell,
        hidden_size=body.hidden_size,
        epochs=body.epochs,
        batch_size=body.batch_size,
        train_batches=body.train_batches,
        test_batches=body.test_batches,
        learning_rate=body.learning_rate,
        clip_grad_norm=body.clip_grad_norm,
        seed=body.seed,
    )
    device = resolve_device(body.device)
    dtype = resolve_dtype(body.dtype)
    slots = experiment_slots(request.app, settings)
    if not slots.acquire(blocking=False):
        raise Problem(
            503,
            f"this server already runs {settings.experiment_concurrency} experiment(s) at once; "
            "retry shortly",
            kind="busy",
            title="Busy",
            headers={"Retry-After": "5"},
        )
    try:
        limit = min(
            body.max_seconds or settings.experiment_max_seconds, settings.experiment_max_seconds
        )
        start = time.monotonic()
        run = train(config, device, dtype, lambda: time.monotonic() - start > limit)
        seconds = time.monotonic() - start
    finally:
        slots.release()
    return TemporalOrderResponse(
        classes=list(CLASSES),
        initial=_pass_out(run.initial),
        epochs=[
            EpochOut(
                epoch=e.epoch,
                train_loss_mean=e.train.mean_loss,
                train_loss_last_batch=e.train.last_batch_loss,
                train_accuracy=e.train.accuracy,
                test_loss=e.test.mean_loss,
                test_loss_last_batch=e.test.last_batch_loss,
                test_accuracy=e.test.accuracy,
                train_batch_losses=e.train.batch_losses,
                train_batch_accuracies=e.train.batch_accuracies,
            )
            for e in run.epochs
        ],
        stopped_early=run.stopped_early,
        stop_reason=(
            f"the wall-time limit of {limit:g} s ended the run after {len(run.epochs)} of "
            f"{body.epochs} epochs"
            if run.stopped_early
            else None
        ),
        device=str(device),
        dtype=body.dtype,
        seconds=seconds,
    )
