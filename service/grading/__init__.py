"""Grading logic with no HTTP in it.

``check.py`` is the engine; ``keys.py`` computes the reference of each ``expected.op``;
``compare.py`` judges an answer within explicit tolerances and writes the report;
``diagnosis.py`` recomputes the reference with common mistakes made; ``formulas.py`` parses
and compares formula answers without running code. ``catalogue.py``, ``schema.py`` and
``variants.py`` load problem sets from data files and draw per-student variants; ``grade.py``
grades whole submissions and ``gradescope.py`` exports them.
"""
