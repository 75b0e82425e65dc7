"""Grading logic with no HTTP in it: comparing and diagnosing answers, problem sets as data
files, per-student variants, whole-submission grading and its exports."""
