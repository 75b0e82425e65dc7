"""Size budgets checked from declared shapes and counts, before anything is allocated.

Element budgets per tensor and per request live with the tensor codec (``tensors.Budget``);
the sizes a model may be asked for (sequence length, hidden size, ``k``) with the model's own
limit hooks (``models/limits.py``); this module holds the budgets on a model's outputs and on
counts of items in a request. ``Settings.limits`` lists them all for ``/v1/info``.
"""

from __future__ import annotations

import math

from models.registry import Shapes
from service.problems import Problem
from service.settings import Settings


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
