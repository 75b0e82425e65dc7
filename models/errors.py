"""Domain errors of the reference models.

``models/`` knows nothing about HTTP: it raises these, and the service turns them into
problem details in one place (``service/problems.py``).
"""

from __future__ import annotations


class ModelError(ValueError):
    """A request the reference cannot compute, with a message that says what to change.

    ``where`` names the offending field (``"config.stride"``, ``"params.weight"``), or is
    empty when the problem is not tied to one field.
    """

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where


class InvalidConfig(ModelError):
    """A configuration value is out of range or of the wrong kind."""


class ShapeMismatch(ModelError):
    """Tensor shapes do not fit together (channels, kernel larger than the input, ...)."""


class MissingArgument(ModelError):
    """A param or input the model needs is not in the request."""


class UnknownName(ModelError):
    """A model, argument or output name that does not exist."""


class LimitExceeded(ModelError):
    """A size (sequence length, hidden size, window k) over the configured limit."""
