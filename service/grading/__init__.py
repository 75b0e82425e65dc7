"""Grading: comparing an answer with the reference, diagnosing mistakes, safe formulas.

``check.py`` is the engine; ``keys.py`` computes the reference of each ``expected.op``;
``compare.py`` judges an answer within explicit tolerances and writes the report;
``diagnosis.py`` recomputes the reference with common mistakes made; ``formulas.py`` parses
and compares formula answers without running code.
"""
