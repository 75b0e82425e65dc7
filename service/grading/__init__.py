"""Grading: problem sets as data files, per-student variants, whole-submission grading and
its exports. Plain Python and torch: the HTTP layer lives in ``service/routes``."""
