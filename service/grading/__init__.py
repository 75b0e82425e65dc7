"""Grading logic: comparing and diagnosing answers, with no HTTP in it."""
