"""Domain errors of grading, answered as 422 problem details by the service's one handler.

They subclass ``models.errors.ModelError`` so that ``service/problems.py`` turns them into
problem details the same way as a model's errors: ``where`` names the offending field.
"""

from __future__ import annotations

from models.errors import ModelError


class GradingError(ModelError):
    """A check that cannot be judged, with a message that says what to change."""


class InvalidAnswer(GradingError):
    """An answer that is not of the kind the question asks for (not "wrong": invalid)."""


class FormulaError(InvalidAnswer):
    """A formula that cannot be parsed or is refused; ``column`` is 1-based, 0 when unknown."""

    def __init__(self, message: str, where: str = "answer", column: int = 0) -> None:
        super().__init__(message, where)
        self.column = column
