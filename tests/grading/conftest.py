"""Fixtures of the grading tests."""

from tests.grading.gated_rnn_model import gated_rnn

__all__ = ["gated_rnn"]
