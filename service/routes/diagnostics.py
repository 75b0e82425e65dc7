"""The seed's part 1.3: loss-curve diagnostics (with plots) and the temporal-order experiment."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field, Strict
from starlette.responses import Response

from models.temporal_order import CLASSES, CellName, TaskSpec
from models.training import PassResult, TrainingConfig, train
from service.deps import SettingsDep
from service.devices import DeviceName, DtypeName, resolve_device, resolve_dtype
from service.examples import LOSS_CURVE_EXAMPLES, TEMPORAL_ORDER_EXAMPLES
from service.grading.loss_curve import MAX_LOSS, CurveFlag, diagnose
from service.middleware import PARSED_JSON
from service.plots import MAX_PLOTTED_EPOCHS, MEDIA_TYPES, render
from service.problems import Problem, problem_responses, shared_description
from service.routing import FastJSONRoute, body_error_words, non_finite_hint
from service.schemas import DEVICE, DTYPE, StrictBody
from service.settings import Settings

router = APIRouter(route_class=FastJSONRoute)

Loss = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=MAX_LOSS)]
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]


_ONE_LIST_PER_EPOCH: dict[str, tuple[str, tuple[float, ...]]] = {
    "batch_losses": ("every batch's loss", (1.4, 1.2, 1.0)),
    "batch_accuracies": ("every batch's accuracy", (0.25, 0.5, 0.7)),
}
"""Each field of one list per epoch: what each number of a row is, and a curve of one value
per epoch, shown nested and flat where a flat list is refused (``_one_list_per_epoch``)."""


def _one_list_per_epoch(errors: Sequence[Any], body: Any) -> list[Any] | None:
    """The body's errors where a number stands in place of an epoch's row (a flat list of one
    value per epoch) told the shape the curve takes: pydantic says only "a valid list". None
    where there is no such error. Only a refused body is read here: a validator of each row
    cost a valid body of a million epochs 0.3 s."""
    reworded = False
    out = []
    for error in errors:  # one a list at most: the curves stop at their first (fail_fast)
        loc = tuple(error.get("loc", ()))
        given = error.get("input")
        if (
            error.get("type") == "list_type"
            and len(loc) == 3
            and loc[0] == "body"
            and loc[1] in _ONE_LIST_PER_EPOCH
            and isinstance(given, int | float)
            and not isinstance(given, bool)
        ):
            field = str(loc[1])
            batch_value, example = _ONE_LIST_PER_EPOCH[field]
            nested = "[" + ", ".join(f"[{value}]" for value in example) + "]"
            flat = "[" + ", ".join(map(str, example)) + "]"
            error = {
                **error,
                "msg": f"Input should be a list, not a number: {field} takes one list per epoch "
                f"({batch_value} in that epoch), {nested} for one value per epoch, not {flat}",
            }
            reworded = True
        out.append(error)
    return out if reworded else None


MAX_CLASSES = 10**9
"""The most classes a curve may declare: any real classifier's, and an integer JSON carries
(past 2**63 a number is refused as "not a valid integer", which misleads)."""


# The curves stop at their first error (fail_fast): a body of 2 million values that are not
# what they should be made 2 million errors, built by pydantic before any of ours ran, which
# held the worker's event loop 20 s and more. The first one, located, says what to change.
class LossCurveRequest(StrictBody):
    batch_losses: list[Annotated[list[Loss], Field(min_length=1, fail_fast=True)]] = Field(
        min_length=1,
        fail_fast=True,
        description=(
            "One list per epoch (epoch 0 first, ideally the untrained model) of every batch's "
            "mean cross-entropy, in the order the batches ran."
        ),
    )
    batch_accuracies: list[Annotated[list[Fraction], Field(fail_fast=True)]] | None = Field(
        None,
        fail_fast=True,
        description="Optional: the same shape as `batch_losses`, fractions in [0, 1].",
    )
    num_classes: int = Field(
        ge=2,
        le=MAX_CLASSES,
        description="C, the number of classes (4 in the seed).",
    )


class SpikeOut(BaseModel):
    """An epoch whose reported (last-batch) value stands out, and why."""

    epoch: int = Field(description="0-based row of `batch_losses`.")
    last_batch: float = Field(description="The reported value: the epoch's last batch loss.")
    epoch_mean: float = Field(description="The mean over the epoch's batches (the fix).")
    others_mean: float | None = Field(description="Mean of the epoch's other batches.")
    others_sd: float | None = Field(description="Their standard deviation.")
    reasons: list[Literal["last_batch_outlier", "above_initial_loss", "mean_jump"]] = Field(
        description="Why it stands out, one or more. `last_batch_outlier`: the last batch is "
        "more than 3 standard deviations of the epoch's other batches above their mean (and "
        "by more than 0.25 log C; only with two other batches or more, which a standard "
        "deviation needs). `above_initial_loss`: after epoch 0, the reported value exceeds the "
        "initial loss (the larger of log C and `initial_loss`) by more than 0.1 log C. "
        "`mean_jump`: the epoch's median batch loss exceeds both neighbouring epochs' "
        "by more than 0.25 log C, and its reported value rises above theirs too; in a curve of "
        "one value per epoch, that value exceeds both neighbours' by more than 0.25 log C, and "
        "its rise above their mean is more than 3 standard deviations of the same rise at the "
        "epochs not beside it."
    )
    true_class_probability: float = Field(
        description="exp(-last_batch): the batch's geometric-mean probability of the true class."
    )


class LossCurveResponse(BaseModel):
    num_classes: int = Field(description="C, as given.")
    epoch_mean: list[float] = Field(description="Mean over each epoch's batches (the fix).")
    last_batch: list[float] = Field(description="Each epoch's last batch (the bug's curve).")
    spikes: list[int] = Field(description="Epochs (0-based) whose reported value stands out.")
    spike_details: list[SpikeOut] = Field(
        description="Each spike with its values and reasons (the first 1,000 spikes)."
    )
    unstable_epochs: list[int] = Field(
        description="Epochs where the training itself is unstable, not the reporting: the "
        "typical batch loss (the median; both batches of a 2-batch epoch) jumps above both "
        "neighbouring epochs' or stays above the initial loss, or several batches (at least 2, "
        "and 1 in 20 of the epoch's) sit more than 0.5 log C above both the epoch's median "
        "and the initial loss, and more than 10 robust standard deviations of the epoch's "
        "batches (1.4826 times their median absolute deviation) above its median. Never from "
        "one value an epoch, which cannot tell."
    )
    curve_flags: list[CurveFlag] = Field(
        description="What the curve as a whole shows (none, or one or two of them). "
        "`rising_loss`: in a "
        "curve of 3 epochs or more, the median of the last third of the epoch means (at least "
        "two epochs) sits more than 0.25 log C above `initial_loss`, and none of them below it: "
        "the loss rises over training (divergence, from a learning rate too high or a sign "
        "error in the update; or another curve given as the loss). `looks_like_accuracy`: the "
        "same rise by more than 0.25, from an epoch 0 near 1/C (within 0.12, or 2/C for many "
        "classes) or, for 3 classes or more (whose loss starts at log C > 1), with most epochs "
        "above the first, unless `batch_accuracies` sent beside them do not rise by more than "
        "0.25 too; and every value in [0, 1]: the accuracy curve given as the loss. "
        "`rising_after_minimum`, only without those two: the epoch means fall to a minimum "
        "after epoch 0 and climb back, 3 epochs or more after it, the last third of them (all "
        "after it) with a median more than 0.1 log C above it (or 3 times the curve's "
        "epoch-to-epoch noise, where that is more) and none back at it: overfitting for a test "
        "curve; for a training curve, instability (the learning rate) or a bug."
    )
    expected_initial_loss: float = Field(description="log C, the loss of a model at chance.")
    chance_accuracy: float = Field(description="1/C.")
    initial_loss: float = Field(
        description="Epoch 0's mean loss, to compare with log C: without one batch far above "
        "the epoch's others (by the rule of `last_batch_outlier`), where there is one."
    )
    looks_like_last_batch_reporting: bool | None = Field(
        description="Whether the last-batch curve has spikes the epoch means do not (a "
        "`last_batch_outlier` in an epoch whose batches do not spike again and again); null "
        "when every epoch has one batch, which cannot tell."
    )
    accuracy_epoch_mean: list[float] | None = Field(
        description="Mean of each epoch's batch accuracies; null without `batch_accuracies`."
    )
    accuracy_last_batch: list[float] | None = Field(
        description="Each epoch's last batch accuracy; null without `batch_accuracies`."
    )
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


def _within_value_budget(values: int, settings: Settings) -> None:
    """Refuse a curve of more values than the settings allow (a 413)."""
    if values > settings.loss_curve_max_values:
        raise Problem(
            413,
            f"batch_losses holds {values:,} values; the limit is "
            f"{settings.loss_curve_max_values:,}",
            kind="budget-exceeded",
            title="Over the element budget",
        )


def _curve_within_budget(request: Request, settings: SettingsDep) -> None:
    """The value budget checked on the body as parsed, before it is validated: pydantic reads
    every value of a curve first, and 60 million of them (120 MB) held the worker 6 s before
    the 413 (the route checks the validated curve again, for a body not parsed here)."""
    parsed = request.scope.get(PARSED_JSON)
    rows = parsed.get("batch_losses") if isinstance(parsed, dict) else None
    if isinstance(rows, list):
        _within_value_budget(sum(len(row) for row in rows if isinstance(row, list)), settings)


@router.post(
    "/v1/diagnostics/loss-curve",
    dependencies=[Depends(_curve_within_budget)],
    tags=["diagnostics"],
    summary="Diagnose a loss curve: epoch means vs last batches, spikes, log C and 1/C",
    response_model=LossCurveResponse,
    responses={**_PLOT_RESPONSES, **problem_responses(413, 422)},
)
@non_finite_hint(
    "A NaN or infinite value in a loss curve usually means the training diverged: lower the "
    "learning rate (or clip the gradient norm). To diagnose the run, send its epochs before "
    "the loss stopped being finite"
)
@body_error_words(_one_list_per_epoch)
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
    _within_value_budget(sum(len(epoch) for epoch in body.batch_losses), settings)
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


EXPERIMENT_CAPS: dict[str, str] = {
    "epochs": "experiment_max_epochs",
    "train_batches": "experiment_max_batches",
    "test_batches": "experiment_max_batches",
    "batch_size": "experiment_max_batch_size",
    "hidden_size": "experiment_max_hidden_size",
    "length_range": "experiment_max_length",
    "max_seconds": "experiment_max_seconds",
}
"""The setting that caps each field of an experiment (a range by its top), checked by
``check_caps`` and stated in the field's description (a test holds them together)."""


def _cap(setting: str, subject: str = "") -> str:
    """A field's cap in words: the setting, its default (the settings are the one source), and
    where this server's own value is; a request over it is refused before anything runs.

    Args:
        setting: the cap's setting.
        subject: what is capped when it is not the field's whole value ("The longest").
    """
    default = Settings.model_fields[setting].default
    return (
        f"{subject + ' at most' if subject else 'At most'} `{setting}`: {default:g} by "
        "default; this server's value is under `limits` in `GET /v1/info`. More is a 422 "
        "(`limit-exceeded`)."
    )


class TemporalOrderRequest(StrictBody):
    """A reference training run on the temporal-order task; the defaults are a quick version."""

    device: DeviceName = Field("auto", description=DEVICE)
    dtype: DtypeName = Field("float64", description=DTYPE)
    cell: CellName = Field(
        "gated", description="`gated` (the seed's equations (1)-(2)), `lstm` or `rnn` (tanh)."
    )
    hidden_size: int = Field(
        32, ge=1, description=f"State size m. {_cap('experiment_max_hidden_size')}"
    )
    epochs: int = Field(
        8,
        ge=1,
        description=f"Epochs after the initial evaluation. {_cap('experiment_max_epochs')}",
    )
    batch_size: int = Field(
        32, ge=1, description=f"Sequences per batch. {_cap('experiment_max_batch_size')}"
    )
    train_batches: int = Field(
        20, ge=1, description=f"Fresh training batches per epoch. {_cap('experiment_max_batches')}"
    )
    test_batches: int = Field(
        8, ge=1, description=f"Batches of the fixed test set. {_cap('experiment_max_batches')}"
    )
    learning_rate: float = Field(0.01, gt=0, le=1, description="Of Adam.")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="Clip the gradient's global norm to this before each step."
    )
    length_range: Range = Field(
        (20, 24),
        description="Sequence lengths [shortest, longest], inclusive. "
        + _cap("experiment_max_length", "The longest is"),
    )
    t1_range: Range = Field(
        (3, 6),
        description="Positions of the first X/Y [lowest, highest], 1-based, inclusive; from 2 "
        "on (position 1 holds E).",
    )
    t2_range: Range = Field(
        (12, 16),
        description="Positions of the second X/Y [lowest, highest], 1-based, inclusive; after "
        "`t1_range` ends and before the shortest sequence's last position (which holds B).",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds the weights and the data.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Stop training after this wall time (absent: the server's cap); the answer "
        "is then a 200 with the epochs completed and `stopped_early`. "
        f"{_cap('experiment_max_seconds')} A time too short to make the test set and evaluate "
        "the untrained model is a 413 (`budget-exceeded`): there is nothing to answer.",
    )


class PassOut(BaseModel):
    loss: float = Field(description="Mean over the test batches.")
    loss_last_batch: float = Field(description="The last test batch's loss.")
    accuracy: float = Field(description="The share of the test set classified right, in [0, 1].")


class EpochOut(BaseModel):
    epoch: int = Field(description="1-based; epoch 0 is `initial`.")
    train_loss_mean: float = Field(description="Mean over the epoch's batches (the fix).")
    train_loss_last_batch: float = Field(description="The last batch's loss (the bug).")
    train_accuracy: float = Field(
        description="The share of the epoch's training sequences classified right, in [0, 1] "
        "(each batch measured before its update)."
    )
    test_loss: float = Field(description="Mean over the test batches.")
    test_loss_last_batch: float = Field(description="The last test batch's loss.")
    test_accuracy: float = Field(
        description="The share of the test set classified right, in [0, 1]."
    )
    train_batch_losses: list[float] = Field(
        description="Every training batch's loss, in order: a row for the loss-curve diagnosis."
    )
    train_batch_accuracies: list[float] = Field(
        description="Every training batch's accuracy, in order: a row of `batch_accuracies` for "
        "the loss-curve diagnosis."
    )


class TemporalOrderResponse(BaseModel):
    classes: list[str] = Field(description="Class names by index: Q, R, S, U.")
    initial: PassOut = Field(description="The untrained model on the test set (epoch 0).")
    epochs: list[EpochOut] = Field(description="Each completed epoch, in order (from 1).")
    stopped_early: bool = Field(description="True when the wall-time limit ended the run.")
    stop_reason: str | None = Field(
        description="What ended the run early, with the epochs completed; null otherwise."
    )
    device: str = Field(description="Where it ran (`cpu`, `cuda:0`).")
    dtype: str = Field(description="The dtype it ran in.")
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
    for field, setting in EXPERIMENT_CAPS.items():
        value = getattr(body, field)
        if value is None:  # max_seconds absent: the cap itself
            continue
        if isinstance(value, tuple):  # a range: its top
            value = value[1]
        limit = getattr(settings, setting)
        if value > limit:
            raise _over_cap(field, value, limit, setting)


def _pass_out(result: PassResult) -> PassOut:
    return PassOut(
        loss=result.mean_loss, loss_last_batch=result.last_batch_loss, accuracy=result.accuracy
    )


EXPERIMENT_RESPONSES = problem_responses(
    413,
    422,
    503,
    described={
        413: "The body is larger than the byte limit (`body-too-large`), or `max_seconds` ran "
        "out before the test set was made and the untrained model evaluated "
        "(`budget-exceeded`, at `max_seconds`): nothing was computed to answer; raise it, or "
        "ask for fewer or smaller test batches. A field over a cap is a 422, not this.",
        422: f"{shared_description(422)} Here also: a field over one of this server's "
        "experiment caps (`limit-exceeded`, naming the field and the setting; the caps are "
        "under `limits` in `GET /v1/info`), or ranges that make no task (`invalid-request`, "
        "e.g. a `t2_range` that does not start after `t1_range`).",
        503: "Another experiment is running (`busy`: a worker runs `experiment_concurrency` "
        f"at once, {Settings.model_fields['experiment_concurrency'].default} by default), or "
        "the service cannot answer now (overloaded, out of memory); retry after the time in "
        "Retry-After.",
    },
)


@router.post(
    "/v1/experiments/temporal-order",
    tags=["experiments"],
    summary="Train a reference classifier on seed 1.3's task and report its epoch curves",
    responses=EXPERIMENT_RESPONSES,
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
            title="The service is busy",  # as the compute slots say it: one type, one title
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
