"""A small, complete assignment file: the base the tests of the format vary."""

from __future__ import annotations

SAMPLE = """
id = "sample"
title = "A sample"

[defaults]
feedback = "report"

[[problems]]
id = "p1"
title = "A drawn tensor"
statement = "Double `v`."
points = 2
answer_kind = "tensor"

[problems.given.v]
shape = [2, 3]
distribution = "uniform"
low = -3
high = 3
integer = true

[problems.expected]
op = "value"
value = { given = "v" }

[[problems]]
id = "p2"
title = "A choice"
statement = "Pick one."
points = 1
answer_kind = "choice"
feedback = "verdict"
visibility = "after_due_date"
choices = [{ id = "a", text = "A" }, { id = "b", text = "B" }]
expected = { op = "choice", correct = "b" }

[[problems]]
id = "p3"
title = "A number"
statement = "Give `c`."
points = 1.5
answer_kind = "number"
feedback = "diagnosis"
tolerance = { rtol = 0, atol = 0.01 }

[problems.given.c]
value = 4
integer = true

[problems.expected]
op = "value"
value = { given = "c" }
"""
