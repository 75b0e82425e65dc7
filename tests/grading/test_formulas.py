"""Formula answers: parsing without running code, exact equivalence, refusals."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

from service.grading.errors import FormulaError
from service.grading.formulas import (
    MAX_CHARS,
    NAMED,
    FormulaKey,
    formula_key,
    parse,
    parse_ranges,
    sample_points,
)

SEED_1_1B = "floor((H + 2*P - D*(K-1) - 1)/S) + 1"
CONV_VARIABLES = {"H": [1, 64], "K": [1, 8], "P": [0, 4], "S": [1, 4], "D": [1, 4]}
VALID = ["H + 2*P >= D*(K - 1) + 1"]


def seed_size(h: int, k: int, p: int, s: int, d: int) -> int:
    """Seed 1.1(b) in plain integer arithmetic: an oracle independent of the parser."""
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.fixture(scope="module")
def conv_key() -> FormulaKey:
    return formula_key(SEED_1_1B, None, CONV_VARIABLES, VALID)


@pytest.mark.parametrize(
    "answer",
    [
        SEED_1_1B,
        "floor((H - D*(K - 1) - 1 + 2*P)/S) + 1",  # the seed's first form of 1.1(b)
        "(H + 2*P - D*(K - 1) - 1)//S + 1",
        "floor((H + 2*P - (D*(K - 1) + 1))/S + 1)",  # K_eff = D(K - 1) + 1
        "  floor( ( H+2*P-D*K+D-1 ) / S )+1",
    ],
)
def test_equivalent_forms_of_the_seed_formula_pass(conv_key: FormulaKey, answer: str) -> None:
    agree, disagree = conv_key.compare(answer)
    assert disagree == [] and agree == len(conv_key.points) > 100


def test_the_formula_without_floor_and_dilation_fails_at_a_named_point(
    conv_key: FormulaKey,
) -> None:
    agree, disagree = conv_key.compare("(H - K + 2*P)/S + 1")
    assert agree < len(conv_key.points) and disagree
    point = disagree[0].point
    h, k, p, s, d = (point[n] for n in "HKPSD")
    assert disagree[0].expected == seed_size(h, k, p, s, d)
    assert Fraction(disagree[0].given) == Fraction(h - k + 2 * p, s) + 1
    assert disagree[0].expected != disagree[0].given


def test_the_reference_is_checked_where_it_is_valid(conv_key: FormulaKey) -> None:
    for point, value in zip(conv_key.points, conv_key.values, strict=True):
        h, k, p, s, d = (int(point[n]) for n in "HKPSD")
        assert h + 2 * p >= d * (k - 1) + 1
        assert value == seed_size(h, k, p, s, d) >= 1
    values = {n: {int(p[n]) for p in conv_key.points} for n in "HKPSD"}
    assert {1, 64} <= values["H"] and {1, 8} <= values["K"] and {0, 4} <= values["P"]


def test_a_formula_that_differs_only_where_the_reference_is_invalid_passes() -> None:
    key = formula_key(SEED_1_1B, None, CONV_VARIABLES, VALID)
    agree, _ = key.compare(f"max(1, {SEED_1_1B})")
    assert agree == len(key.points)


def test_arithmetic_is_exact_for_integer_variables() -> None:
    # In floats 0.1*3*10 is 3.0000000000000004, whose ceil is 4.
    assert math.ceil(0.1 * 3 * 10) == 4
    key = formula_key("H", None, {"H": [1, 50]}, [])
    assert key.compare("ceil(H*0.1*10)") == (50, [])
    assert key.compare("H/3*3") == (50, [])


def test_small_domains_are_checked_exhaustively() -> None:
    key = formula_key("a*b", None, {"a": [0, 9], "b": [-3, 3]}, [])
    assert len(key.points) == 70
    agree, disagree = key.compare("a*b + floor(a/9)*max(0, floor(-b/3))")
    assert agree == 69 and disagree[0].point == {"a": 9, "b": -3}


def test_sampling_covers_corners_and_edges_of_large_domains() -> None:
    ranges = parse_ranges({"x": [0, 1000], "y": [5, 900]}, "variables")
    points = sample_points(ranges)
    pairs = {(int(p["x"]), int(p["y"])) for p in points}
    assert {(0, 5), (0, 900), (1000, 5), (1000, 900)} <= pairs
    assert {1, 999} <= {x for x, _ in pairs} and {6, 899} <= {y for _, y in pairs}
    assert sample_points(ranges) == points


def test_real_variables_and_sqrt() -> None:
    key = formula_key("sqrt(r*r)", None, {"r": [0.5, 4.0]}, [])
    assert key.compare("abs(r)")[1] == []
    assert key.compare("r**2")[1] != []


def test_an_answer_undefined_where_the_reference_is_defined_disagrees_there() -> None:
    key = formula_key("S", None, {"S": [1, 4]}, [])
    agree, disagree = key.compare("S*(S - 1)/(S - 1)")
    assert agree == 3
    assert disagree[0].point == {"S": 1} and disagree[0].given is None
    assert "division by zero" in disagree[0].reason


@pytest.mark.parametrize(
    ("named", "right", "wrong", "seed_point", "seed_value"),
    [
        ("conv_output_size", SEED_1_1B, "floor((H + P - D*(K-1) - 1)/S) + 1", None, None),
        # seed 1.1(c)(i): L = 7, K = 3, S = 2 gives 3
        ("conv1d_output_length", "(L - K)//S + 1", "(L - K)/S + 1", {"L": 7, "K": 3, "S": 2}, 3),
        # seed 1.2.1(b): c[t] is in R^m
        ("gated_rnn_gate_size", "m", "n", {"m": 4, "n": 6}, 4),
        # seed 1.2.2(b): a[t] is in R^3 for AttentionRNN(2)
        ("attention_weights_size", "k + 1", "3", {"k": 2, "n": 5}, 3),
    ],
)
def test_named_references_of_the_seed(
    named: str,
    right: str,
    wrong: str,
    seed_point: dict[str, int] | None,
    seed_value: int | None,
) -> None:
    key = formula_key(None, named, None, [])
    assert key.compare(right)[1] == []
    assert key.compare(wrong)[1] != []
    if seed_point is not None:
        point = {n: Fraction(v) for n, v in seed_point.items()}
        assert key.reference(point) == seed_value


def test_named_reference_ranges_can_be_narrowed() -> None:
    key = formula_key(None, "attention_weights_size", {"k": [2, 2]}, [])
    assert key.compare("3")[1] == []


HOSTILE = [
    ("__import__('os')", "calling __import__ is not allowed"),
    ("__import__('os').system('true')", "calling this expression is not allowed"),
    ("().__class__.__bases__", "attribute access"),
    ("H.real", "attribute access"),
    ("lambda: H", "lambda"),
    ("[H for H in (1, 2)]", "comprehension"),
    ("sum(H for H in (1, 2))", "calling sum is not allowed"),
    ("9**9**9**9", "exponent 387420489 is larger than 64"),
    ("2**(H*H*H)", "is larger than 64"),
    ("(10**60)**60", "more than 4096 bits"),
    ("H\x00", "NUL byte"),
    ("H" * 10_000, "10,000 characters"),
    ("H" + " " * MAX_CHARS, f"the limit is {MAX_CHARS}"),
    ("\uff28 + 1", "FULLWIDTH LATIN CAPITAL LETTER H"),
    ("H\u200b+1", "ZERO WIDTH SPACE"),
    ("H + 1\nimport os", "control character"),
    ("H if K else S", "if/else"),
    ("H < K", "comparison"),
    ("H[0]", "indexing"),
    ("'H'", "is not a number"),
    ("True", "is not a number"),
    ("1j", "is not a number"),
    ("10000000000000", "12 digits"),
    ("floor(H, K)", "takes 1 argument"),
    ("floor(x=H)", "plain arguments"),
    ("max(*H)", "plain arguments"),
    ("floor", "is a function"),
    ("eval", "unknown name 'eval'"),
    ("H ^ 2", "write H**2"),
    ("H & K", "'&' is not allowed"),
    ("(H := 1)", "assignment"),
    ("-" * 60 + "H", "nested more than 40"),
    ("max(" + ",".join(["H"] * 200) + ")", "more than 200 parts"),
]


@pytest.mark.parametrize(
    ("text", "reason"), HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))]
)
def test_hostile_formulas_are_refused(conv_key: FormulaKey, text: str, reason: str) -> None:
    with pytest.raises(FormulaError) as refused:
        conv_key.compare(text)
    assert reason in refused.value.message


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("H + * 2", 5, "syntax error"),
        ("floor((H - K)/S", 6, "'(' was never closed"),
        ("H +", 4, "ends too early"),
        ("  H K", 5, "syntax error"),
        ("H + h", 5, "unknown name 'h'"),
        ("H + ceil(K, S)", 5, "takes 1 argument"),
        # The first error in reading order, with a hint for a name of the wrong case.
        ("floor((h + 2*k - 1)/s) + 1", 8, "unknown name 'h'; the variables are H, K, S"),
        ("x + s", 1, "unknown name 'x'"),
        ("h", 1, "(names are case-sensitive: 'H'?)"),
    ],
)
def test_errors_give_the_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(FormulaError) as error:
        parse(text, ["H", "K", "S"])
    assert error.value.column == column
    assert reason in error.value.message and f"at column {column}" in error.value.message


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({}, "at least one variable"),
        ({"H": [5, 1]}, "lowest <= highest"),
        ({"H": [1]}, "two numbers"),
        ({"floor": [1, 2]}, "cannot be a variable name"),
        ({"__class__": [1, 2]}, "is not a variable name"),
        ({f"v{i}": [1, 2] for i in range(9)}, "at most 8 variables"),
        ({"H": [0, 10**12]}, "within"),
    ],
)
def test_invalid_ranges_are_refused(variables: dict[str, list[int]], reason: str) -> None:
    with pytest.raises(FormulaError) as error:
        formula_key("1", None, variables, [])
    assert reason in error.value.message


def test_a_reference_defined_nowhere_is_refused() -> None:
    with pytest.raises(FormulaError, match="defined"):
        formula_key("1/(H - H)", None, {"H": [1, 3]}, [])


def test_constraints_compare_and_exclude_points() -> None:
    key = formula_key("H - K", None, {"H": [1, 5], "K": [1, 5]}, ["H >= K"])
    assert len(key.points) == 15
    assert key.compare("abs(H - K)")[1] == []


def test_named_and_reference_are_exclusive() -> None:
    with pytest.raises(FormulaError, match="exactly one"):
        formula_key("H", "conv_output_size", None, [])
    assert set(NAMED) == {
        "conv_output_size",
        "conv1d_output_length",
        "gated_rnn_gate_size",
        "attention_weights_size",
    }


def test_answers_are_parsed_before_a_verdict_is_reused() -> None:
    key = formula_key("H*10", None, {"H": [1, 9]}, [])
    assert key.compare("H*10") == key.compare("(H) * 10") == (9, [])
    with pytest.raises(FormulaError, match="syntax"):
        key.compare("H*1 0")


@pytest.mark.parametrize(
    ("answer", "agrees"), [("min(H)", True), ("max(H)", True), ("max(H + 1)", False)]
)
def test_min_and_max_of_one_argument_are_that_argument(answer: str, agrees: bool) -> None:
    """``min(a)`` is ``a``, as written on paper (Python's own ``min(a)`` would try to iterate
    over the number)."""
    key = formula_key("H", None, {"H": [1, 4]}, [])
    agree, disagree = key.compare(answer)
    assert agree == (4 if agrees else 0) and bool(disagree) != agrees


@pytest.mark.parametrize(
    ("text", "column", "hint"),
    [
        ("floor((H + 2P - D*(K-1) - 1)/S) + 1", 12, "write 2*P for 2 times P"),
        ("H + 0.5K", 7, "write 0.5*K for 0.5 times K"),
        ("  2D*(K - 1)", 3, "write 2*D for 2 times D"),
        ("H + 2P + 3K", 5, "write 2*P for 2 times P"),
    ],
)
def test_a_number_written_against_a_name_is_told_to_multiply(
    text: str, column: int, hint: str
) -> None:
    """Python reads 2P as one bad number ("invalid decimal literal"), which says nothing to a
    student who wrote it as on paper."""
    with pytest.raises(FormulaError) as error:
        parse(text, CONV_VARIABLES)
    assert error.value.column == column
    assert error.value.message == (
        f"syntax error: invalid decimal literal at column {column}; {hint} (multiplication needs *)"
    )


@pytest.mark.parametrize("text", ["H + * 2", "0x1G", "H + 2_P", "H not K"])
def test_other_syntax_errors_get_no_multiplication_hint(text: str) -> None:
    with pytest.raises(FormulaError) as error:
        parse(text, CONV_VARIABLES)
    assert "multiplication" not in error.value.message


@pytest.mark.parametrize(
    "text",
    [SEED_1_1B + "\r\n", SEED_1_1B + "\n", "\r\n" + SEED_1_1B, SEED_1_1B + " \t\r\n\r\n"],
    ids=["crlf", "lf", "leading-crlf", "mixed"],
)
def test_line_breaks_around_a_formula_are_whitespace(conv_key: FormulaKey, text: str) -> None:
    """A formula copied from a Windows file or a spreadsheet cell ends with a line break,
    which was refused as a control character where spaces and tabs were accepted."""
    agree, disagree = conv_key.compare(text)
    assert disagree == [] and agree == len(conv_key.points)


@pytest.mark.parametrize(
    ("text", "column"),
    [("H +\r\n 1", 4), ("H\r + 1\r\n", 2), ("\r\nH\x0b+ 1", 4), ("H\x1f\r\n", 2)],
)
def test_control_characters_inside_a_formula_are_still_refused(text: str, column: int) -> None:
    with pytest.raises(FormulaError) as error:
        parse(text, ["H"])
    assert "control character" in error.value.message and error.value.column == column


def test_a_formula_of_line_breaks_only_is_empty() -> None:
    with pytest.raises(FormulaError, match="the formula is empty"):
        parse("\r\n\t \n", ["H"])


def test_a_reference_that_is_not_whole_is_judged_within_the_tolerance() -> None:
    """H/3 answered H*0.3333333333333333 with rtol 1e-3 was wrong ("the reference is
    0.3333333333333333 and the answer 0.3333333333333333"): the request's tolerance was
    echoed but never used, and rationals were compared exactly."""
    key = formula_key("H/3", None, {"H": [1, 5]}, [])
    assert not key.exact
    assert key.compare("H*0.3333333333333333", rtol=1e-3) == (5, [])
    assert key.compare("H*0.3334", rtol=1e-3) == (5, [])
    agree, disagree = key.compare("H*0.33", rtol=1e-3)
    assert agree == 0 and disagree[0].point == {"H": 1} and disagree[0].given == 0.33


def test_a_formula_is_never_judged_more_strictly_than_float_agreement() -> None:
    """With no tolerance at all, a 16-digit decimal for 1/3 still agrees (to 1e-9 relative),
    as a float answer always did; a 4-digit one does not."""
    key = formula_key("H/3", None, {"H": [1, 5]}, [])
    assert key.compare("H*0.3333333333333333", rtol=0.0, atol=0.0) == (5, [])
    assert key.compare("H*0.3334", rtol=0.0, atol=0.0)[0] == 0


def test_the_absolute_tolerance_applies_where_the_reference_is_zero() -> None:
    key = formula_key("(H - 3)/7", None, {"H": [1, 5]}, [])
    assert key.compare("(H - 3)/7 + 0.0001", atol=1e-3) == (5, [])
    agree, disagree = key.compare("(H - 3)/7 + 0.0001", rtol=0.5)
    assert agree == 4 and disagree[0].point == {"H": 3}  # 1e-4 for 0: only atol reaches it


def test_whole_number_references_are_compared_exactly_whatever_the_tolerance(
    conv_key: FormulaKey,
) -> None:
    """Sizes: an answer off by a fraction is wrong even with a loose tolerance, and a float
    answer (from sqrt) within 1e-9 of the size is right."""
    assert conv_key.exact
    agree, disagree = conv_key.compare(SEED_1_1B + " + 0.0001", rtol=0.5, atol=0.5)
    assert agree == 0 and disagree[0].expected == 1 and disagree[0].given == 1.0001
    assert conv_key.compare(SEED_1_1B + " - 1 + sqrt(2)*sqrt(2)/2", rtol=0.5) == (
        len(conv_key.points),
        [],
    )


def test_a_verdict_is_reused_only_under_the_same_tolerance() -> None:
    """The checks of one key may carry different tolerances: the answer cache is per
    tolerance, or the first check's verdict would answer the others."""
    key = formula_key("H/3", None, {"H": [1, 5]}, [])
    assert key.compare("H*0.3334", rtol=1e-3)[0] == 5
    assert key.compare("H*0.3334", rtol=1e-6)[0] == 0
    assert key.compare("H*0.3334", atol=1e-3)[0] == 5


@pytest.mark.parametrize(
    ("text", "column", "hint"),
    [
        # Python's own words were "Perhaps you forgot a comma?", at the outer parenthesis.
        ("floor((H + 2 P - D (K - 1) - 1)/S) + 1", 14, "write 2*P for 2 times P"),
        ("H K", 3, "write H*K for H times K"),
        ("(H + 1) K", 9, "write (H + 1)*K for (H + 1) times K"),
        ("(H + 2*P - D*(K - 1) - 1 + H + H) S", 35, "write (...)*S for (...) times S"),
        # A call on either side is shown with its function and its arguments.
        ("sqrt(H) K", 9, "write sqrt(H)*K for sqrt(H) times K"),
        ("2 floor(H/2)", 3, "write 2*floor(H/2) for 2 times floor(H/2)"),
        (
            "floor(H/2) floor(K/2)",
            12,
            "write floor(H/2)*floor(K/2) for floor(H/2) times floor(K/2)",
        ),
    ],
)
def test_operands_side_by_side_are_told_to_multiply(text: str, column: int, hint: str) -> None:
    with pytest.raises(FormulaError) as error:
        parse(text, CONV_VARIABLES)
    assert error.value.column == column
    assert error.value.message == (
        f"syntax error: invalid syntax at column {column}; {hint} (multiplication needs *)"
    )


def test_operands_side_by_side_in_min_or_max_may_be_two_arguments() -> None:
    with pytest.raises(FormulaError) as error:
        parse("max(H K)", CONV_VARIABLES)
    assert error.value.message.endswith(
        "write H*K for H times K (multiplication needs *), or H, K for two arguments of max"
    )


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        # The homework's own notation: "calling D is not allowed" said nothing of a product.
        (
            "floor((H + 2*P - D(K - 1) - 1)/S) + 1",
            18,
            "calling D is not allowed (D is a variable) at column 18; write D*(K - 1) for D "
            "times (K - 1)",
        ),
        ("D (K - 1)", 1, "calling D is not allowed (D is a variable) at column 1; write D*(K - 1)"),
        ("2(K - 1)", 1, "calling 2 is not allowed (not a function) at column 1; write 2*(K - 1)"),
        (
            "(H + 1)(K - 1)",
            1,
            "calling (H + 1) is not allowed (not a function) at column 1; write (H + 1)*(K - 1)",
        ),
        ("sqrt(H)(K)", 1, "calling sqrt(H) is not allowed (not a function) at column 1"),
    ],
)
def test_a_product_written_as_a_call_is_told_to_multiply(
    text: str, column: int, message: str
) -> None:
    """Implicit products are refused, not read: nothing else multiplies without * (2P is
    refused), and a misspelt function must not become a product."""
    with pytest.raises(FormulaError) as error:
        parse(text, CONV_VARIABLES)
    assert error.value.column == column
    assert error.value.message.startswith(message)
    assert error.value.message.endswith("(multiplication needs *)")


@pytest.mark.parametrize(
    "text", ["Floor(H)", "X(K - 1)", "D(K, 1)", "__import__('os')(1)", "H.real(2)"]
)
def test_other_calls_get_no_multiplication_hint(text: str) -> None:
    """A misspelt or unknown function, several arguments, or what a formula cannot hold."""
    with pytest.raises(FormulaError) as error:
        parse(text, CONV_VARIABLES)
    assert "multiplication" not in error.value.message
    assert "is not allowed" in error.value.message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2**53 - 1, 2**53 - 1),
        (2**53, "9.0071992547409920e+15"),  # a JavaScript reader would show 2**53 as ...992
        (Fraction(1, 3), 1 / 3),
        (Fraction(1, 10**400), "1.0000000000000000e-400"),  # not 0: it is not zero
        (Fraction(3**2000, 7), "2.4969589310323594e+953"),
    ],
)
def test_report_values_are_shown_exactly_or_as_text(value: Any, shown: Any) -> None:
    from service.grading.formulas import _show

    assert _show(value) == shown


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        (
            "H_out = floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
            7,
            "syntax error: the formula is an equation at column 7; give only the right-hand "
            "side expression, without 'H_out ='",
        ),
        (
            "  H_{out}=H",
            10,
            "syntax error: the formula is an equation at column 10; give only the right-hand "
            "side expression, without 'H_{out} ='",
        ),
        (
            "H_out == H + 1",
            7,
            "the formula is an equation at column 7; give only the right-hand side expression, "
            "without 'H_out =='",
        ),
        (
            "\u230a(H + 2*P - D*(K - 1) - 1)/S\u230b + 1",
            1,
            "the character '\u230a' (LEFT FLOOR) is not allowed at column 1; write floor(...) "
            "for \u230a...\u230b",
        ),
        (
            "\u2308H/S\u2309 + \u230aK/2\u230b",
            1,
            "the character '\u2308' (LEFT CEILING) is not allowed at column 1; write floor(...) "
            "for \u230a...\u230b and ceil(...) for \u2308...\u2309",
        ),
    ],
    ids=["equation", "subscript-equation", "double-equals", "floor-brackets", "ceil-brackets"],
)
def test_an_equation_or_typeset_brackets_are_told_what_to_write(
    text: str, column: int, message: str
) -> None:
    with pytest.raises(FormulaError) as error:
        parse(text, "HKPSD")
    assert error.value.message == message and error.value.column == column


def test_a_constraint_written_with_one_equals_is_told_to_compare() -> None:
    with pytest.raises(FormulaError) as error:
        parse("H = K", "HK", "constraints.0", allow_compare=True)
    assert (
        error.value.message
        == "syntax error: '=' is not a comparison at column 3; write == to compare"
    )


def test_a_reference_defined_at_no_sampled_point_says_the_points_were_sampled() -> None:
    """Constraints that hold on a sliver of wide ranges: the points sampled miss it, which is
    not the same as the reference being defined nowhere."""
    names = "ABCDEFGH"
    ranges = {name: [1, 10**9] for name in names}
    chain = " > ".join(names)
    with pytest.raises(FormulaError) as error:
        formula_key("A + B", None, ranges, [chain])
    assert "at none of the" in str(error.value) and "points sampled from the ranges" in str(
        error.value
    )


def test_a_variable_name_is_told_what_it_may_be() -> None:
    with pytest.raises(FormulaError) as error:
        parse_ranges({"__class__": [1, 2]}, "variables")
    assert "starting with a letter" in str(error.value)
