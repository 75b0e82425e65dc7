"""Formula answers, parsed and evaluated without running code.

A formula is parsed by ``ast.parse`` and every node is checked against an allow-list:
numbers, the request's variables, ``+ - * / // % **``, unary ``-`` and ``+``, and calls to
``floor``, ``ceil``, ``min``, ``max``, ``sqrt`` and ``abs``. Nothing is ever passed to
``eval``, ``exec`` or ``sympy.parse_expr``: the checked tree is compiled into Python closures
that can only do that arithmetic.

Limits keep hostile input cheap: at most ``MAX_CHARS`` characters (checked before parsing),
ASCII only (the multiplication, division and minus signs and the middle dot that typeset
solutions use are read as ``*``, ``/``, ``-`` and ``*``), at most ``MAX_NODES`` nodes nested
``MAX_DEPTH`` deep, integer literals of at most ``MAX_LITERAL_DIGITS`` digits, exponents of at
most ``MAX_EXPONENT`` in magnitude, and intermediate values of at most ``MAX_BITS`` bits.

Arithmetic is exact (``fractions.Fraction``) while the values are rational, which they are
wherever the variables are integers, unless ``sqrt`` of a non-square or a fractional power
makes them real (then ``float``). Two formulas are equivalent when they agree at every point
sampled from the variables' ranges (the whole grid when it is small; otherwise the corners,
every variable at and next to its edges, the grid of their plainest values, and random points)
where the reference is defined and its constraints hold. A reference whose values there are
all whole numbers (sizes, counts) must be matched exactly; any other within the check's
tolerance (``agrees``). A wrong answer is shown the plainest point where it disagrees, and
is diagnosed with the first of the key's ``mistakes`` (``formula_mistakes``) that it agrees
with at every point, if one does.

Example:
    >>> ref = parse("floor((H + 2*P - D*(K - 1) - 1)/S) + 1", ["H", "K", "P", "S", "D"])
    >>> ref({"H": 21, "K": 4, "P": 0, "S": 4, "D": 1})
    5
"""

from __future__ import annotations

import ast
import io
import itertools
import keyword
import math
import operator
import random
import re
import string
import tokenize
import unicodedata
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import cached_property
from typing import Any

from service.grading.errors import FormulaError

Number = int | Fraction | float
Point = Mapping[str, Number]
Evaluator = Callable[[Point], Any]

MAX_CHARS = 500
MAX_NODES = 200
MAX_DEPTH = 40
MAX_LITERAL_DIGITS = 12
MAX_EXPONENT = 64
MAX_BITS = 4096
MAX_VARIABLES = 8
MAX_RANGE = 10**9
MAX_POINTS = 400
FLOAT_RTOL = 1e-9
FLOAT_ATOL = 1e-12

# Students paste these from typeset solutions; each is one character, so positions are kept.
_TRANSLATE = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u00b7": "*", "\u2212": "-"})

_BINARY: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
# name -> (fewest, most) arguments; None: no upper bound.
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "floor": (1, 1),
    "ceil": (1, 1),
    "sqrt": (1, 1),
    "abs": (1, 1),
    "min": (1, None),
    "max": (1, None),
}


class Undefined(ArithmeticError):
    """The formula has no value at this point (division by zero, sqrt of a negative...)."""


def _refuse(message: str, where: str, column: int = 0, hint: str = "") -> FormulaError:
    at = f" at column {column}" if column else ""
    advice = f"; {hint}" if hint else ""
    return FormulaError(f"{message}{at}{advice}", where, column)


# A number written against a name, as on paper (2P, 0.5K): Python reads one bad literal.
_JUXTAPOSED = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)([A-Za-z]\w*)")


def _juxtaposition_hint(text: str, offset: int) -> str:
    """The advice for a number directly followed by a name, the one at ``offset`` (1-based)
    if any there, else the first; empty when the formula has none."""
    found = list(_JUXTAPOSED.finditer(text))
    if not found:
        return ""
    at = next((m for m in found if m.start() < offset <= m.end()), found[0])
    number, name = at.groups()
    return f"write {number}*{name} for {number} times {name} (multiplication needs *)"


_SHOWN_GROUP = 30
"""A parenthesized operand longer than this is shown as ``(...)`` in a hint."""


def _shorter(written: str) -> str:
    """A parenthesized operand as the hint shows it: whole, or ``(...)`` when long."""
    return written if len(written) <= _SHOWN_GROUP else "(...)"


def _operand(token: tokenize.TokenInfo) -> bool:
    """A number or a name (``not``, ``if`` and the other keywords are no operands)."""
    if token.type == tokenize.NAME:
        return not keyword.iskeyword(token.string)
    return token.type == tokenize.NUMBER


def _spaced_product(text: str, start: int, end: int) -> tuple[int, str] | None:
    """Two operands side by side with only spaces between them (``2 P``, ``H K``,
    ``(H + 1) K``), as on paper: the column (1-based) of the second, where the * is missing,
    and the advice, for the pair that overlaps columns ``start..end`` (where Python places
    the syntax error) if one does, else the first; None when the formula has no such pair.

    Only a name or a number can follow: ``D (K - 1)`` is valid syntax (a call), refused later
    with its own advice (``_call_hint``).
    """
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        ]
    except (tokenize.TokenError, SyntaxError):
        return None
    opened: list[int] = []  # the indices of the open parentheses
    groups: dict[int, int] = {}  # the index of a ")" -> that of its "("
    calls: dict[int, str] = {}  # the index of a "(" that opens a call -> the function's name
    # (column of the left operand, of the right one, index of the right one, the call that
    # they are inside)
    pairs: list[tuple[int, int, int, str]] = []
    for index, token in enumerate(tokens):
        if token.string == "(":
            opened.append(index)
            before = tokens[index - 1] if index else None
            if before is not None and before.type == tokenize.NAME:
                calls[index] = before.string
        elif token.string == ")" and opened:
            groups[index] = opened.pop()
        if index and _operand(token):
            left = tokens[index - 1]
            if _operand(left) or left.string == ")":
                first = tokens[groups.get(index - 1, index - 1)]
                inside = calls.get(opened[-1], "") if opened else ""
                pairs.append((first.start[1] + 1, token.start[1] + 1, index, inside))
    if not pairs:
        return None
    _, column, index, inside = next(
        (pair for pair in pairs if pair[0] <= max(end, start) and pair[1] >= start), pairs[0]
    )
    left = tokens[index - 1]
    shown = left.string
    if index - 1 in groups:
        opening = groups[index - 1]
        # A call's group is shown with its function: sqrt(H), not (H).
        begin = tokens[opening - 1] if opening in calls else tokens[opening]
        shown = _shorter(text[begin.start[1] : left.end[1]])
    right = tokens[index].string
    following = index + 1 < len(tokens) and tokens[index + 1].string == "("
    if following:  # a call on the right: floor(K/2), not floor
        closing = next((c for c, o in groups.items() if o == index + 1), None)
        if closing is not None:
            right = _shorter(text[tokens[index].start[1] : tokens[closing].end[1]])
    advice = f"write {shown}*{right} for {shown} times {right} (multiplication needs *)"
    if inside in ("min", "max"):
        advice += f", or {shown}, {right} for two arguments of {inside}"
    return column, advice


def _is_value(node: ast.AST, variables: Collection[str]) -> bool:
    """Whether ``node`` is what a formula may multiply: a variable, a number, arithmetic, or
    a call of one of its functions (not ``__import__('os').system``, which gets no advice)."""
    if isinstance(node, ast.Name):
        return node.id in variables
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    return isinstance(node, ast.BinOp | ast.UnaryOp)


def _call_hint(node: ast.Call, text: str) -> tuple[str, str] | None:
    """The callee and the advice for ``D(K - 1)``, ``2(K - 1)`` or ``(H + 1)(K - 1)``: a
    product written as on paper, which Python reads as a call. None where it cannot be one
    product (several arguments)."""
    if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
        return None
    written = ast.get_source_segment(text, node) or ""
    # The argument list is the last parenthesized group of the call's text.
    depth, opening = 0, len(written) - 1
    while opening >= 0:
        depth += {")": 1, "(": -1}.get(written[opening], 0)
        if depth == 0:
            break
        opening -= 1
    callee, group = written[:opening].rstrip(), written[opening:]
    if not callee or not group.startswith("("):
        return None
    return callee, f"write {callee}*{group} for {callee} times {group} (multiplication needs *)"


def _column(node: ast.AST, shift: int) -> int:
    return int(getattr(node, "col_offset", -1)) + 1 + shift


@dataclass(frozen=True)
class Formula:
    """A parsed, checked formula; call it with a point (variable -> value) to evaluate it."""

    text: str
    names: frozenset[str]
    evaluate: Evaluator = field(repr=False, compare=False)
    canonical: str = field(default="", repr=False, compare=False)
    """The parsed tree as text: the same for ``H+1`` and ``(H) + 1``."""
    calls: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """The functions it calls (``floor``, ``ceil``, ...)."""

    def __call__(self, point: Point) -> Any:
        """The value at ``point``; raises ``Undefined`` where there is none."""
        try:
            return self.evaluate(point)
        except (ZeroDivisionError, OverflowError, ValueError) as error:
            if isinstance(error, FormulaError):
                raise
            raise Undefined(str(error)) from None


def _clean(text: str, where: str) -> tuple[str, int]:
    """Length, control characters and non-ASCII refused; returns the text and its indent.

    The whitespace around the formula, line breaks included, is no part of it: a formula
    copied from a file or a spreadsheet cell ends with "\\r\\n". Inside it, a control
    character is refused (a tab is whitespace). Columns stay those of ``text``.
    """
    if len(text) > MAX_CHARS:
        raise _refuse(f"the formula has {len(text):,} characters; the limit is {MAX_CHARS}", where)
    body = text.strip(string.whitespace)
    indent = len(text) - len(text.lstrip(string.whitespace))
    for index, char in enumerate(body, start=indent + 1):
        if char == "\0":
            raise _refuse("the formula contains a NUL byte", where, index)
        if char < " " and char != "\t":
            raise _refuse(f"the formula contains the control character {char!r}", where, index)
    body = body.translate(_TRANSLATE)
    for index, char in enumerate(body, start=indent + 1):
        if not char.isascii():
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            hint = _bracket_hint(body)
            if hint:
                raise _refuse(f"the character {char!r} ({name}) is not allowed", where, index, hint)
            raise _refuse(
                f"the character {char!r} ({name}) is not allowed; write formulas in ASCII "
                "(letters, digits, + - * / // % ** and parentheses)",
                where,
                index,
            )
        if char == "^":
            raise _refuse("'^' is not a power here; write H**2 for a power", where, index)
    if not body:
        raise _refuse("the formula is empty", where)
    return body, indent


# The typeset floor and ceiling brackets, as pasted from a solution: each pair with the call to
# write instead.
_BRACKETS = (
    ("\u230a\u230b", "floor(...) for \u230a...\u230b"),
    ("\u2308\u2309", "ceil(...) for \u2308...\u2309"),
)


def _bracket_hint(text: str) -> str:
    """The advice for the floor and ceiling brackets of ``text``; empty when it has none."""
    calls = [call for pair, call in _BRACKETS if any(char in text for char in pair)]
    if not calls:
        return ""
    return f"write {' and '.join(calls)}"


# One "=" alone (not ==, <=, >= or !=): "H_out = floor(...)", an equation.
_ASSIGNMENT = re.compile(r"(?<![=<>!])=(?!=)")
# What an equation defines, as students write it: H_out, H_{out}, out, y.
_DEFINED = re.compile(r"[A-Za-z][\w{}]{0,19}")


def _equation_advice(left: str, right: str, sign: str) -> str:
    """The advice for an equation ``left sign right``: give the expression alone, without the
    name it defines (quoted when it is a name, on either side)."""
    if _DEFINED.fullmatch(left.strip()):
        return f"give only the right-hand side expression, without '{left.strip()} {sign}'"
    if _DEFINED.fullmatch(right.strip()):
        return f"give only the expression, without '{sign} {right.strip()}'"
    return f"give only the expression, without the {sign}"


def _equation_hint(text: str, allow_compare: bool) -> tuple[int, str, str] | None:
    """For ``text`` written with a lone "=": its column (1-based), the message and the
    advice; None when it has none. A formula is an expression alone, and a constraint
    compares with ==."""
    found = _ASSIGNMENT.search(text)
    if found is None:
        return None
    column = found.start() + 1
    if allow_compare:
        return column, "'=' is not a comparison", "write == to compare"
    advice = _equation_advice(text[: found.start()], text[found.end() :], "=")
    return column, "the formula is an equation", advice


def _syntax(text: str, shift: int, where: str, allow_compare: bool = False) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        offset = error.offset or 0
        column = offset + shift if 0 < offset <= len(text) else len(text) + shift + 1
        place = "" if 0 < offset <= len(text) else " (the formula ends too early)"
        message = (error.msg or "invalid syntax").removesuffix(".")
        equation = _equation_hint(text, allow_compare)
        if equation is not None:
            position, what, hint = equation
            raise _refuse(f"syntax error: {what}", where, position + shift, hint) from None
        hint = _juxtaposition_hint(text, offset) if message == "invalid decimal literal" else ""
        if message.startswith("invalid syntax"):
            # "2 P" or "(H + 1) K": Python suggests a forgotten comma, which a formula has
            # nowhere but in min and max.
            found = _spaced_product(text, offset, error.end_offset or offset)
            if found is not None:
                position, hint = found
                message, place, column = "invalid syntax", "", position + shift
        raise _refuse(f"syntax error: {message}{place}", where, column, hint) from None
    except (ValueError, RecursionError, MemoryError):
        raise _refuse("the formula cannot be parsed", where) from None
    return tree


def _check_tree(
    tree: ast.Expression,
    text: str,
    variables: Collection[str],
    where: str,
    shift: int,
    allow_compare: bool,
) -> frozenset[str]:
    """Every node on the allow-list, sizes within limits; returns the variables used."""
    used: set[str] = set()
    stack: list[tuple[ast.AST, int, ast.AST | None]] = [(tree.body, 1, None)]
    count = 0
    while stack:
        node, depth, parent = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _refuse(f"the formula has more than {MAX_NODES} parts", where)
        if depth > MAX_DEPTH:
            raise _refuse(f"the formula is nested more than {MAX_DEPTH} deep", where)
        column = _column(node, shift)
        children: list[ast.AST] = []
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise _refuse(f"the operator {_op_text(node.op)} is not allowed", where, column)
            children = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise _refuse(f"the operator {_op_text(node.op)} is not allowed", where, column)
            children = [node.operand]
        elif isinstance(node, ast.Constant):
            _check_constant(node.value, where, column)
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise _refuse(f"{node.id} is a function: call it as {node.id}(...)", where, column)
            if node.id not in variables:
                known = ", ".join(sorted(variables)) or "none"
                cased = [v for v in sorted(variables) if v.lower() == node.id.lower()]
                hint = f" (names are case-sensitive: {cased[0]!r}?)" if cased else ""
                raise _refuse(
                    f"unknown name {node.id!r}; the variables are {known}{hint}", where, column
                )
            used.add(node.id)
        elif isinstance(node, ast.Call):
            children = _check_call(node, text, variables, where, column)
        elif isinstance(node, ast.Compare) and allow_compare and parent is None:
            if not all(type(op) in _COMPARE for op in node.ops):
                raise _refuse("only < <= > >= == != compare here", where, column)
            children = [node.left, *node.comparators]
        elif isinstance(node, ast.Compare) and parent is None and _is_equation(node):
            # "H_out == floor(...)": an equation written with Python's equality.
            left = ast.get_source_segment(text, node.left) or ""
            right = ast.get_source_segment(text, node.comparators[0]) or ""
            sign = text.find("==", int(getattr(node.left, "end_col_offset", 0) or 0))
            raise _refuse(
                "the formula is an equation",
                where,
                sign + 1 + shift if sign >= 0 else column,
                _equation_advice(left, right, "=="),
            )
        else:
            raise _refuse(_not_allowed(node), where, column)
        # Left to right: the error reported is the first one in reading order.
        stack.extend((child, depth + 1, node) for child in reversed(children))
    return frozenset(used)


def _is_equation(node: ast.Compare) -> bool:
    """``a == b``: one ``==``, which a formula (not a constraint) has only as an equation."""
    return len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)


def _check_constant(value: Any, where: str, column: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"{value!r:.20} is not a number", where, column)
    if isinstance(value, int) and value >= 10**MAX_LITERAL_DIGITS:
        raise _refuse(f"numbers are limited to {MAX_LITERAL_DIGITS} digits", where, column)
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) < 1e12):
        raise _refuse(f"the number {value!r} is out of range", where, column)


def _check_call(
    node: ast.Call, text: str, variables: Collection[str], where: str, column: int
) -> list[ast.AST]:
    func = node.func
    if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
        # D(K - 1) is the homework's D times (K - 1). It is refused with the product to
        # write rather than read as one: nothing else here multiplies without * (2P is
        # refused the same way), and a misspelt function, Floor(H), must not become a product.
        if _is_value(func, variables):
            found = _call_hint(node, text)
            if found is not None:
                callee, hint = found
                why = f"{callee} is a variable" if isinstance(func, ast.Name) else "not a function"
                raise _refuse(f"calling {callee} is not allowed ({why})", where, column, hint)
        callee = func.id if isinstance(func, ast.Name) else "this expression"
        allowed = ", ".join(FUNCTIONS)
        raise _refuse(
            f"calling {callee} is not allowed; the functions are {allowed}", where, column
        )
    name = func.id
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise _refuse(f"{name}(...) takes plain arguments only", where, column)
    fewest, most = FUNCTIONS[name]
    if len(node.args) < fewest or (most is not None and len(node.args) > most):
        wanted = f"{fewest}" if fewest == most else f"at least {fewest}"
        raise _refuse(
            f"{name}(...) takes {wanted} argument(s), got {len(node.args)}", where, column
        )
    return list(node.args)


def _op_text(op: ast.AST) -> str:
    symbols = {
        ast.BitXor: "^",
        ast.BitAnd: "&",
        ast.BitOr: "|",
        ast.LShift: "<<",
        ast.RShift: ">>",
        ast.MatMult: "@",
        ast.Invert: "~",
        ast.Not: "not",
    }
    return repr(symbols.get(type(op), type(op).__name__))


def _not_allowed(node: ast.AST) -> str:
    kinds = {
        ast.Attribute: "attribute access (a.b)",
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.Subscript: "indexing (a[b])",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.IfExp: "if/else",
        ast.NamedExpr: "an assignment (:=)",
        ast.JoinedStr: "a string",
    }
    what = kinds.get(type(node), type(node).__name__)
    return f"{what} is not allowed in a formula (only numbers, variables, arithmetic and calls)"


def parse(
    text: str,
    variables: Collection[str],
    where: str = "answer",
    *,
    allow_compare: bool = False,
) -> Formula:
    """Parse and check a formula over ``variables``.

    Args:
        text: the formula, e.g. ``"floor((H - K)/S) + 1"``.
        variables: the names it may use.
        where: the field path named in errors.
        allow_compare: accept one comparison at the top (for constraints such as ``H >= K``).

    Returns:
        The checked ``Formula``.

    Raises:
        FormulaError: a syntax error (with its column), a refused node, or a limit exceeded.
    """
    cleaned, shift = _clean(text, where)
    tree = _syntax(cleaned, shift, where, allow_compare)
    names = _check_tree(tree, cleaned, variables, where, shift, allow_compare)
    calls = frozenset(
        node.func.id
        for node in ast.walk(tree.body)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    )
    return Formula(text, names, _compile(tree.body, where, shift), ast.dump(tree.body), calls)


def _exact(value: int | Fraction) -> int | Fraction:
    """An integral fraction as an int: integer arithmetic is many times faster."""
    return value.numerator if isinstance(value, Fraction) and value.denominator == 1 else value


def _bits(value: int | Fraction) -> int:
    if isinstance(value, int):
        return value.bit_length()
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def _bounded(value: Any, where: str) -> Any:
    if isinstance(value, int | Fraction):
        if _bits(value) > MAX_BITS:
            raise _refuse(f"an intermediate value has more than {MAX_BITS} bits", where)
        return _exact(value)
    if not math.isfinite(value):
        raise Undefined("the value overflows")
    return value


def _power(base: Any, exponent: Any, where: str, column: int) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise _refuse(
            f"the exponent {_show(exponent)} is larger than {MAX_EXPONENT} in magnitude",
            where,
            column,
        )
    if isinstance(exponent, int):
        if base == 0 and exponent < 0:
            raise Undefined("0 to a negative power")
        if isinstance(base, int | Fraction):
            if _bits(base) * abs(exponent) > MAX_BITS:
                raise _refuse(f"a power has more than {MAX_BITS} bits", where, column)
            return _bounded(Fraction(base) ** exponent, where)
        return _bounded(float(base) ** exponent, where)
    if base < 0:
        raise Undefined("a fractional power of a negative number")
    if base == 0 and exponent < 0:
        raise Undefined("0 to a negative power")
    return _bounded(float(base) ** float(exponent), where)


def _divide(left: Any, right: Any, op: str) -> Any:
    if right == 0:
        raise Undefined("division by zero")
    exact = isinstance(left, int | Fraction) and isinstance(right, int | Fraction)
    if op == "/":
        return Fraction(left) / right if exact else left / right
    if op == "//":
        both_int = isinstance(left, int) and isinstance(right, int)
        return left // right if both_int else _floor(left / right)
    return left % right


def _floor(value: int | Fraction | float) -> int:
    return math.floor(value)


def _ceil(value: int | Fraction | float) -> int:
    return math.ceil(value)


def _sqrt(value: Any) -> Any:
    if value < 0:
        raise Undefined("sqrt of a negative number")
    if isinstance(value, int | Fraction):
        fraction = Fraction(value)
        num, den = math.isqrt(fraction.numerator), math.isqrt(fraction.denominator)
        if num * num == fraction.numerator and den * den == fraction.denominator:
            return _exact(Fraction(num, den))
    return math.sqrt(value)


def _min(*values: Any) -> Any:
    """``min(a, b, ...)``; ``min(a)`` is ``a`` (Python's ``min`` would iterate over ``a``)."""
    return min(values)


def _max(*values: Any) -> Any:
    """``max(a, b, ...)``; ``max(a)`` is ``a``."""
    return max(values)


_CALLS: dict[str, Callable[..., Any]] = {
    "floor": _floor,
    "ceil": _ceil,
    "abs": abs,
    "sqrt": _sqrt,
    "min": _min,
    "max": _max,
}


def _compile(node: ast.AST, where: str, shift: int) -> Evaluator:
    """The checked tree as nested closures (the tree holds nothing but allowed nodes)."""
    column = _column(node, shift)
    if isinstance(node, ast.Constant):
        constant = node.value if isinstance(node.value, int) else _exact(Fraction(repr(node.value)))
        return lambda _: constant
    if isinstance(node, ast.Name):
        name = node.id
        return lambda point: point[name]
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, where, shift)
        if isinstance(node.op, ast.USub):
            return lambda point: -operand(point)
        return operand
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        function = _CALLS[node.func.id]
        args = [_compile(arg, where, shift) for arg in node.args]
        return lambda point: function(*(arg(point) for arg in args))
    if isinstance(node, ast.Compare):
        return _compile_compare(node, where, shift)
    assert isinstance(node, ast.BinOp)
    left, right = _compile(node.left, where, shift), _compile(node.right, where, shift)
    symbol = _BINARY[type(node.op)]
    if symbol == "**":
        return lambda point: _power(left(point), right(point), where, column)
    if symbol in ("/", "//", "%"):
        return lambda point: _bounded(_divide(left(point), right(point), symbol), where)
    arithmetic = {"+": operator.add, "-": operator.sub, "*": operator.mul}[symbol]
    return lambda point: _bounded(arithmetic(left(point), right(point)), where)


def _compile_compare(node: ast.Compare, where: str, shift: int) -> Evaluator:
    terms = [_compile(t, where, shift) for t in (node.left, *node.comparators)]
    tests = [_COMPARE[type(op)] for op in node.ops]

    def compare(point: Point) -> bool:
        values = [term(point) for term in terms]
        return all(test(a, b) for test, a, b in zip(tests, values, values[1:], strict=False))

    return compare


SHOWN_DIGITS = 17
"""Significant digits of a value shown in scientific notation (a float's round trip)."""
EXACT_INTEGERS = 2**53
"""Integers from this on are shown in scientific notation: a JSON reader (JavaScript's) holds
them as floats, and would show another integer; ``MAX_BITS`` lets a value reach 1,233
digits."""


def _show(value: Any) -> int | float | str:
    """A value for a report: an int when integral and exact as a float, else a float; a value
    beyond a float's range or too small for one (not 0, but 0.0 as a float), or a larger
    integer, as text in scientific notation."""
    if isinstance(value, int | Fraction) and _exact(value) == int(value):
        if abs(int(value)) < EXACT_INTEGERS:
            return int(value)
        return _scientific(Fraction(value))
    if isinstance(value, Fraction):
        try:
            shown = float(value)
        except OverflowError:
            return _scientific(value)
        return shown if shown != 0 else _scientific(value)
    if isinstance(value, float):
        return value
    return str(value)


def _scientific(value: Fraction) -> str:
    with localcontext() as context:
        context.prec = SHOWN_DIGITS
        return f"{Decimal(value.numerator) / Decimal(value.denominator):.16e}"


def same_value(a: Any, b: Any) -> bool:
    """Exact equality for rationals; otherwise agreement to ``FLOAT_RTOL``."""
    if isinstance(a, int | Fraction) and isinstance(b, int | Fraction):
        return bool(a == b)
    try:
        return math.isclose(float(a), float(b), rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
    except OverflowError:
        return bool(a == b)


def is_integer(value: Any) -> bool:
    """Whether a value of a reference is a whole number (a size, a count)."""
    if isinstance(value, int):
        return True
    if isinstance(value, Fraction):
        return value.denominator == 1
    return isinstance(value, float) and value.is_integer()


def _within(expected: Any, given: Any, rtol: float, atol: float) -> bool:
    """``|given - expected| <= atol + rtol * |expected|``, exactly where both are rational
    (a float tolerance is a binary fraction, so ``Fraction`` holds it without rounding)."""
    if isinstance(expected, int | Fraction) and isinstance(given, int | Fraction):
        bound = Fraction(atol) + Fraction(rtol) * abs(Fraction(expected))
        return abs(Fraction(given) - Fraction(expected)) <= bound
    try:
        return abs(float(given) - float(expected)) <= atol + rtol * abs(float(expected))
    except OverflowError:
        return False


def agrees(
    expected: Any, given: Any, rtol: float = 0.0, atol: float = 0.0, *, exact: bool = False
) -> bool:
    """Whether an answer's value at one point agrees with the reference's there.

    ``exact``: the reference is whole-numbered (see ``FormulaKey.exact``), and its value is
    compared exactly: a size off by a fraction is wrong whatever the tolerance, and only a
    float answer (from ``sqrt``) within ``FLOAT_RTOL`` of it counts. Otherwise the check's
    tolerance applies at the point, ``|given - expected| <= atol + rtol * |expected|``, and
    never more strictly than the ``FLOAT_RTOL`` agreement of two floats:
    ``H*0.3333333333333333`` for ``H/3`` is right. There is no key scale (the tensor rule's
    ``floor``) for a formula: its values are many points, not one tensor.
    """
    if same_value(expected, given):
        return True
    if exact:
        return False
    return _within(expected, given, max(rtol, FLOAT_RTOL), max(atol, FLOAT_ATOL))


@dataclass(frozen=True)
class Range:
    """The values one variable takes: integers ``lo..hi`` or reals in ``[lo, hi]``."""

    lo: Fraction
    hi: Fraction
    integer: bool

    @cached_property
    def plain(self) -> int | Fraction:
        """The value of least magnitude (0 where the range holds it)."""
        return _exact(min(max(Fraction(0), self.lo), self.hi))

    def edges(self) -> list[Fraction]:
        if self.integer:
            return sorted({self.lo, min(self.lo + 1, self.hi), max(self.hi - 1, self.lo), self.hi})
        return sorted({self.lo, self.hi})

    def size(self) -> int:
        return int(self.hi - self.lo) + 1 if self.integer else MAX_POINTS + 1

    def draw(self, rng: random.Random) -> Fraction:
        if self.integer:
            return Fraction(rng.randint(int(self.lo), int(self.hi)))
        # Six decimals keep exact arithmetic on real variables small.
        return Fraction(str(round(rng.uniform(float(self.lo), float(self.hi)), 6)))


def parse_ranges(variables: Mapping[str, Sequence[Any]], where: str) -> dict[str, Range]:
    """``{"H": [1, 64], "r": [0.5, 2.0]}`` as ranges; integer bounds make integer variables."""
    if not variables:
        raise _refuse("give at least one variable with its range, e.g. {'H': [1, 64]}", where)
    if len(variables) > MAX_VARIABLES:
        raise _refuse(f"at most {MAX_VARIABLES} variables", where)
    ranges = {}
    for name, bounds in variables.items():
        place = f"{where}.{name}"
        if not name.isidentifier() or not name.isascii() or name.startswith("_"):
            raise _refuse(
                f"{name!r:.40} is not a variable name (ASCII letters, digits and _, starting "
                "with a letter)",
                place,
            )
        if name in FUNCTIONS or len(name) > 32:
            raise _refuse(f"{name!r} cannot be a variable name", place)
        if len(bounds) != 2 or not all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
        ):
            raise _refuse("a range is [lowest, highest], two numbers", place)
        lo, hi = bounds
        if not all(math.isfinite(b) and abs(b) <= MAX_RANGE for b in bounds) or lo > hi:
            raise _refuse(f"the range must have lowest <= highest within +-{MAX_RANGE:.0e}", place)
        integer = isinstance(lo, int) and isinstance(hi, int)
        ranges[name] = Range(Fraction(lo), Fraction(hi), integer)
    return ranges


def _plain_values(bounds: Range, count: int) -> list[Fraction]:
    """The ``count`` plainest values of a range: those of least magnitude (0, 1, 2... for
    ``0..64``; 1, 2, 3... for ``1..64``); a real variable's one value of least magnitude."""
    nearest = Fraction(bounds.plain)
    if not bounds.integer:
        return [nearest]
    lo, hi, start = int(bounds.lo), int(bounds.hi), int(nearest)
    near = range(max(lo, start - count), min(hi, start + count) + 1)
    return [Fraction(v) for v in sorted(near, key=lambda v: (abs(v), -v))[:count]]


def plainness(point: Point, ranges: Mapping[str, Range]) -> tuple[int, Number]:
    """How far from an ordinary point ``point`` is, for choosing the counterexample a student
    is shown: how many variables are off their plainest value (a dilation 1, a padding 0),
    then how far off they are in all."""
    off, distance = 0, Fraction(0)
    for name, value in point.items():
        bounds = ranges.get(name)
        if bounds is None:
            continue
        plain, gap = bounds.plain, Fraction(0)
        if isinstance(value, int) and isinstance(plain, int):
            gap = Fraction(abs(value - plain))
        else:  # a real variable's float as the fraction it is: exact, comparable with the rest
            gap = abs(Fraction(value) - plain)
        off += gap > 0
        distance += gap
    return off, _exact(distance)


def sample_points(ranges: Mapping[str, Range], limit: int = MAX_POINTS) -> list[dict[str, Number]]:
    """Deterministic points of the ranges: the whole grid when it has at most ``limit``
    points; otherwise the corners, each variable at and next to its edges, the grid of each
    variable's plainest values (small sizes, a dilation 1, a padding 0: where a counterexample
    is easiest to follow, and where off-by-one mistakes show), then random."""
    names = sorted(ranges)
    if math.prod(ranges[n].size() for n in names) <= limit:
        grids = [
            [ranges[n].lo + i for i in range(int(ranges[n].hi - ranges[n].lo) + 1)] for n in names
        ]
        return [
            {n: _exact(v) for n, v in zip(names, values, strict=True)}
            for values in itertools.product(*grids)
        ]
    rng = random.Random(zlib.crc32(repr(sorted(ranges.items())).encode()))
    points: list[dict[str, Fraction]] = []
    if 2 ** len(names) <= limit // 4:
        corners = itertools.product(*[(ranges[n].lo, ranges[n].hi) for n in names])
        points += [dict(zip(names, values, strict=True)) for values in corners]
    for name in names:
        for edge in ranges[name].edges():
            for _ in range(2):
                points.append({n: ranges[n].draw(rng) for n in names} | {name: edge})
    # As many plainest values of each variable as keep their grid within limit // 8 points;
    # with too many variables for two each, the plainest point and each variable moved alone.
    count = 1
    while (count + 1) ** len(names) <= limit // 8:
        count += 1
    plain = [_plain_values(ranges[n], max(count, 3)) for n in names]
    if count > 1:
        grid = itertools.product(*[values[:count] for values in plain])
        points += [dict(zip(names, values, strict=True)) for values in grid]
    else:
        base = {n: values[0] for n, values in zip(names, plain, strict=True)}
        points.append(base)
        for name, values in zip(names, plain, strict=True):
            points += [base | {name: value} for value in values[1:]]
    seen: set[tuple[Fraction, ...]] = set()
    unique = []
    for point in points:
        key = tuple(point[n] for n in names)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    tries = 0
    while len(unique) < limit and tries < 4 * limit:
        tries += 1
        point = {n: ranges[n].draw(rng) for n in names}
        key = tuple(point[n] for n in names)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return [{n: _exact(v) for n, v in point.items()} for point in unique[:limit]]


@dataclass(frozen=True)
class Named:
    """A built-in reference formula from the homework."""

    expression: str
    variables: dict[str, tuple[int, int]]
    constraints: tuple[str, ...]
    source: str
    question: str
    """What it is the answer to, without the answer: the public API docs list it (several
    of these are the key of a problem that is the same for every student)."""


NAMED: dict[str, Named] = {
    "conv_output_size": Named(
        "floor((H + 2*P - D*(K - 1) - 1)/S) + 1",
        {"H": (1, 64), "K": (1, 8), "P": (0, 4), "S": (1, 4), "D": (1, 4)},
        ("H + 2*P >= D*(K - 1) + 1",),
        "seed 1.1(b): output size of a convolution with padding P, stride S, dilation D",
        "1.1(b): the output size of a convolution of input size H, kernel K, padding P, "
        "stride S and dilation D",
    ),
    "conv1d_output_length": Named(
        "floor((L - K)/S) + 1",
        {"L": (1, 64), "K": (1, 8), "S": (1, 4)},
        ("L >= K",),
        "seed 1.1(c)(i): output length of a 1-D convolution without padding or dilation",
        "1.1(c)(i): the output length of a 1-D convolution of input length L, kernel K and "
        "stride S, without padding or dilation",
    ),
    "gated_rnn_gate_size": Named(
        "m",
        {"m": (1, 64), "n": (1, 64)},
        (),
        "seed 1.2.1(b): c[t] is in R^m (W_c is m x n, W_h is m x m)",
        "1.2.1(b): the dimension of the gate c[t] of a gated RNN of state size m and input size n",
    ),
    "attention_weights_size": Named(
        "k + 1",
        {"k": (1, 32), "n": (1, 64)},
        (),
        "seed 1.2.2(b)-(c): a[t] has one weight per query-key pair, k + 1 (3 for k = 2)",
        "1.2.2(b): the number of attention weights a[t] of AttentionRNN(k) of size n",
    ),
}


@dataclass(frozen=True)
class Disagreement:
    """A point where two formulas differ, with both values (``given`` is None if undefined)."""

    point: dict[str, int | float]
    expected: int | float | str
    given: int | float | str | None
    reason: str


@dataclass(frozen=True)
class Mistake:
    """A common wrong version of a reference (one mistake, or several made together) and what
    it is: an answer that agrees with it wherever the reference is checked is diagnosed so."""

    diagnoses: tuple[tuple[str, str], ...]
    """The ``(code, message)`` of each mistake made, each message as said of that mistake
    alone (``told`` words them as a student is told them)."""
    value: Callable[[Point], Any]
    """Its value at a point of the key; None where it has none."""
    writes: frozenset[str] = frozenset()
    """The functions an answer that makes it writes where the reference does not (``ceil``
    for a rounding up): two mistakes can give the same formula, one by writing such a
    function and the other without (ceil(N/S) is floor((N - 1)/S) + 1), and the answer's own
    calls tell which it made."""


def told(found: Sequence[tuple[tuple[str, str], ...]]) -> tuple[tuple[str, str], ...]:
    """The diagnoses of the mistakes an answer agrees with, each as ``Mistake.diagnoses``,
    as they are told: one mistake as it is; several made together each saying so (they are
    otherwise read as alternatives); and where several mistakes (or several ways of making
    the same number of them) each give the answer, none stated as a fact, as the other
    checks tell theirs (``diagnosis.alternatives``): only one of them can be the student's,
    and nothing tells which. A mistake that every way makes is still told as made.

    Example:
        >>> told([(("a", "You did A."),), (("b", "You did B."),)])[1]
        ('b', 'Your answer fits 2 mistakes; if yours is this one, you did B.')
    """
    if not found:
        return ()
    if len(found) == 1 and len(found[0]) == 1:
        return found[0]
    made, ways = len(found[0]), len(found)
    everywhere = set.intersection(*({code for code, _ in way} for way in found))
    result: list[tuple[str, str]] = []
    # What every way makes first: it is told as made, the rest as what may have been.
    in_order = [d for way in found for d in way if d[0] in everywhere]
    in_order += [d for way in found for d in way if d[0] not in everywhere]
    for code, message in in_order:
        if any(code == seen for seen, _ in result):
            continue  # made every way: told once
        if made == 1:
            lead = f"Your answer fits {ways} mistakes; if yours is this one, "
        elif code in everywhere:
            lead = f"Your answer makes {made} mistakes together; this is one of them: "
        else:
            lead = (
                f"Your answer makes {made} mistakes together, and {ways} ways of making them "
                "fit it; if this is one of yours, "
            )
        lowered = message[0].lower() + message[1:] if message.startswith("You ") else message
        result.append((code, lead + lowered))
    return tuple(result)


@dataclass(frozen=True)
class Judgement:
    """An answer against a key: how many points agree, where it does not (plainest points
    first), and the diagnoses of the mistakes it agrees with at every point, if any, as they
    are told (``told``)."""

    agree: int
    disagree: list[Disagreement]
    diagnoses: tuple[tuple[str, str], ...] = ()


@dataclass
class FormulaKey:
    """A reference formula evaluated once at its valid points, ready to judge many answers."""

    reference: Formula
    ranges: dict[str, Range]
    points: list[dict[str, Number]]
    values: list[Any]
    constraints: tuple[str, ...]
    name: str | None = None
    exact: bool = False
    """Whether every value of the reference is a whole number (a size, a count, as the conv
    shape formulas give): then answers must equal it exactly, whatever the tolerance. Decided
    for the whole reference rather than per point: ``H/3`` is 1 at ``H = 3``, and an answer
    ``H*0.3333333333333333`` within the tolerance elsewhere is within it there too."""
    mistakes: tuple[Mistake, ...] = ()
    """The common wrong versions of the reference, simplest first, that a wrong answer is
    compared with (``formula_mistakes``); none for a reference with no known mistakes."""
    _cache: dict[tuple[str, float, float], Judgement] = field(default_factory=dict)
    _mistaken: list[list[Any]] = field(default_factory=list, repr=False)
    """Each mistake's values at the first points, as far as answers have needed them."""

    def compare(
        self, answer: str, where: str = "answer", *, rtol: float = 0.0, atol: float = 0.0
    ) -> tuple[int, list[Disagreement]]:
        """How many valid points agree, and where they do not (plainest points first): see
        ``judge``."""
        judged = self.judge(answer, where, rtol=rtol, atol=atol)
        return judged.agree, judged.disagree

    def judge(
        self, answer: str, where: str = "answer", *, rtol: float = 0.0, atol: float = 0.0
    ) -> Judgement:
        """How many valid points agree, where they do not, and the mistake a wrong answer
        agrees with at every point.

        Values agree as ``agrees`` says: whole numbers exactly, others within ``rtol`` and
        ``atol``; an answer agrees with a mistake by the same rule. Where they disagree, the
        points are given plainest first (``plainness``): a counterexample with a dilation 1
        and small sizes is one a student can follow. Answers that parse to the same tree (a
        class writes the same formula many ways of spacing) are evaluated once per
        tolerance: the checks of one key may each carry their own.
        """
        formula = parse(answer, self.ranges, where)
        cached = (formula.canonical, rtol, atol)
        if cached in self._cache:
            return self._cache[cached]
        agree = 0
        disagree: list[tuple[Point, Disagreement]] = []
        given_values: list[Any] = []
        for point, expected in zip(self.points, self.values, strict=True):
            try:
                given = formula(point)
            except Undefined as error:
                disagree.append((point, _disagreement(point, expected, None, str(error))))
                given_values.append(None)
                continue
            given_values.append(given)
            if agrees(expected, given, rtol, atol, exact=self.exact):
                agree += 1
            else:
                disagree.append((point, _disagreement(point, expected, given, "different values")))
        disagree.sort(key=lambda d: (plainness(d[0], self.ranges), str(d[1].point)))
        diagnoses: tuple[tuple[str, str], ...] = ()
        if disagree:
            diagnoses = self._mistake_of(given_values, formula.calls, rtol, atol)
        result = Judgement(agree, [d for _, d in disagree[:3]], diagnoses)
        if len(self._cache) < 4096:
            self._cache[cached] = result
        return result

    def _mistake_of(
        self, given: Sequence[Any], calls: frozenset[str], rtol: float, atol: float
    ) -> tuple[tuple[str, str], ...]:
        """The diagnoses, as told, of the likeliest mistakes that agree with ``given`` (an
        answer's values at the points, None where it has none; ``calls``, the functions it
        calls) at every point: the first that does, and every other as likely that does too
        (``told`` words them as alternatives); none when no mistake does.

        Likeliest is first those made by writing a function the answer writes (a ceil, for
        an answer that calls ceil), then the fewest mistakes made: the same formula is one
        mistake for an answer without a ceil and two for one with it (``floor((N - 2)/S) +
        1``, the 1 taken away twice, is ``ceil((N - 1)/S)``, a ceil with the + 1 left out),
        and the student is told what they wrote. A mistake's values are computed as far as an
        answer needs them, and kept for the next answer: most wrong answers part from most
        mistakes at the first few points. A mistake that agrees with the reference everywhere
        (a ceil where every quotient is whole) is never reached: the answer that agrees with
        it everywhere is right.
        """
        if len(self._mistaken) != len(self.mistakes):
            self._mistaken = [[] for _ in self.mistakes]

        def likeliness(mistake: Mistake) -> tuple[bool, int]:
            written = bool(mistake.writes) and mistake.writes <= calls
            return not written, len(mistake.diagnoses)

        # Stable: the order of the key's mistakes (simplest first) within each likeliness.
        ranked = sorted(
            zip(self.mistakes, self._mistaken, strict=True), key=lambda m: likeliness(m[0])
        )
        found: list[tuple[tuple[str, str], ...]] = []
        rank: tuple[bool, int] | None = None
        for mistake, values in ranked:
            if rank is not None and likeliness(mistake) != rank:
                break  # less likely than those found
            for index, (point, answer) in enumerate(zip(self.points, given, strict=True)):
                if index == len(values):
                    values.append(_value_of(mistake, point))
                value = values[index]
                if answer is None or value is None:
                    break
                if not agrees(value, answer, rtol, atol, exact=self.exact):
                    break
            else:
                found.append(mistake.diagnoses)
                rank = likeliness(mistake)
        return told(found)


def _value_of(mistake: Mistake, point: Point) -> Any:
    """A mistake's value at a point; None where it has none."""
    try:
        return mistake.value(point)
    except (ArithmeticError, ValueError):
        return None


def _disagreement(point: Point, expected: Any, given: Any, reason: str) -> Disagreement:
    shown = {name: _show(value) for name, value in sorted(point.items())}
    return Disagreement(
        {k: v for k, v in shown.items() if not isinstance(v, str)},
        _show(expected),
        None if given is None else _show(given),
        reason,
    )


def formula_key(
    reference: str | None,
    named: str | None,
    variables: Mapping[str, Sequence[Any]] | None,
    constraints: Sequence[str],
) -> FormulaKey:
    """Parse the reference (an expression or a named one), sample its valid points, evaluate.

    Raises:
        FormulaError: the reference, a range or a constraint is invalid, or the reference is
            defined at no sampled point.
    """
    all_constraints = tuple(constraints)
    if (reference is None) == (named is None):
        raise _refuse("give exactly one of `reference` (an expression) or `named`", "reference")
    if named is not None:
        if named not in NAMED:
            raise _refuse(
                f"there is no named formula {named!r}; there are {', '.join(NAMED)}",
                "named",
            )
        builtin = NAMED[named]
        reference = builtin.expression
        variables = {**builtin.variables, **(variables or {})}
        all_constraints = builtin.constraints + all_constraints
    assert reference is not None
    ranges = parse_ranges(variables or {}, "variables")
    formula = parse(reference, ranges, "reference")
    checks = [
        parse(text, ranges, f"constraints.{i}", allow_compare=True)
        for i, text in enumerate(all_constraints)
    ]
    points, values = [], []
    sampled = sample_points(ranges)
    for point in sampled:
        try:
            if not all(check(point) for check in checks):
                continue
            value = formula(point)
        except Undefined:
            continue
        points.append(point)
        values.append(value)
    if not points:
        raise _refuse(
            f"the reference is defined (and its constraints hold) at none of the {len(sampled)} "
            "points sampled from the ranges: narrow the ranges to where it is, or loosen the "
            "constraints",
            "reference",
        )
    exact = all(is_integer(value) for value in values)
    return FormulaKey(formula, ranges, points, values, all_constraints, named, exact)
