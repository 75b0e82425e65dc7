"""Size budgets checked from declared shapes and counts, before anything is allocated.

Element budgets per tensor and per request live with the tensor codec (``tensors.Budget``);
this module holds the budgets that apply to a model's named dimensions and config, to its
outputs, and to counts of items in a request, plus the listing that ``/v1/info`` reports.

Dimension budgets are generic over the registry: a model's arguments are declared with their
shapes in symbols (``x [T, n]``, ``W_h [m, m]``), and every symbol listed in
``DIMENSION_LIMITS`` is checked against its setting, so a model added later with the same
symbols is covered without any code of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.registry import ReferenceModel, Shapes
from service.problems import Problem
from service.settings import Settings

DIMENSION_LIMITS: dict[str, tuple[str, str]] = {
    "T": ("max_sequence_length", "sequence length"),
    "m": ("max_hidden_size", "hidden size"),
    "n": ("max_hidden_size", "input size"),
}
"""Symbol of a declared shape -> (the setting that bounds it, what it is called in messages)."""

CONFIG_LIMITS: dict[str, str] = {"k": "max_k"}
"""Integer config key of a model -> the setting that bounds it."""

REPORTED_LIMITS = (
    "body_timeout_seconds",
    "compute_deadline_seconds",
    "compute_queue_size",
    "compute_queue_timeout_seconds",
    "cpu_flops_per_second",
    "cuda_flops_per_second",
)


def over_budget(message: str, where: str) -> Problem:
    """A 413 for a request over one of the size budgets; ``message`` gives number and limit."""
    loc: list[str | int] = ["body", *where.split(".")] if where else ["body"]
    return Problem(
        413,
        message,
        kind="budget-exceeded",
        title="Over the element budget",
        errors=[{"loc": loc, "msg": message, "type": "budget_exceeded"}],
    )


def check_count(count: int, setting: str, what: str, where: str, settings: Settings) -> None:
    """Refuse ``count`` items (e.g. the checks of one batch) when over the ``setting`` limit.

    Example:
        >>> check_count(3, "max_batch_checks", "checks", "checks", Settings())
    """
    limit = getattr(settings, setting)
    if count > limit:
        raise over_budget(f"{where} holds {count:,} {what}; the limit is {limit:,}", where)


def check_config(model: ReferenceModel, config: Mapping[str, Any], settings: Settings) -> None:
    """Refuse an integer config value over its limit (``k`` of an attention window)."""
    declared = {spec.name for spec in model.config}
    for key, setting in CONFIG_LIMITS.items():
        value = config.get(key)
        if key not in declared or not isinstance(value, int) or isinstance(value, bool):
            continue
        limit = getattr(settings, setting)
        if value > limit:
            raise over_budget(f"config.{key} is {value:,}; the limit is {limit:,}", f"config.{key}")


def check_dimensions(model: ReferenceModel, shapes: Shapes, settings: Settings) -> None:
    """Refuse a declared size over the limit of its symbol (sequence length, hidden size)."""
    for spec in model.arguments:
        where = f"{'params' if spec in model.params else 'inputs'}.{spec.name}"
        shape = shapes.get(spec.name)
        if shape is None or len(shape) != len(spec.shape):
            continue  # absent optional argument, or a rank error the model reports itself
        for axis, (symbol, size) in enumerate(zip(spec.shape, shape, strict=True)):
            if symbol not in DIMENSION_LIMITS:
                continue
            setting, words = DIMENSION_LIMITS[symbol]
            limit = getattr(settings, setting)
            if size > limit:
                raise over_budget(
                    f"{spec.name} declares {words} {symbol} = {size:,} (axis {axis} of shape "
                    f"{list(shape)}); the limit is {limit:,}",
                    where,
                )


def check_outputs(outputs: Shapes, settings: Settings) -> None:
    """Refuse a computation whose outputs, from the declared shapes, are over the budget."""
    total = sum(math.prod(shape) for shape in outputs.values())
    if total > settings.max_output_elements:
        sizes = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
        raise over_budget(
            f"the outputs would have {total:,} elements ({sizes}); "
            f"the limit is {settings.max_output_elements:,}",
            "",
        )


def limits(settings: Settings) -> dict[str, Any]:
    """Every budget and limit in force, by setting name, as ``/v1/info`` reports them.

    Every ``max_*`` setting is included, so a budget added later is reported without more code.
    """
    values = settings.model_dump()
    reported = {name: value for name, value in values.items() if name.startswith("max_")}
    reported |= {name: values[name] for name in REPORTED_LIMITS}
    reported["max_body_bytes"] = settings.body_limit  # the derived default when unset
    return reported
