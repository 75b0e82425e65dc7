"""The tensor wire format: the three request forms, the response forms, and what is refused."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from service.problems import Problem
from service.tensors import Budget, decode, encode, to_torch


def budget() -> Budget:
    return Budget(max_tensor=100, max_request=150, max_rank=4)


def b64(values: list[float], dtype: str = "<f8") -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


@pytest.mark.parametrize(
    "value",
    [
        [[1, 2], [3, 4]],
        {"shape": [2, 2], "data": [1, 2, 3, 4]},
        {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0], "datatype": "FP64"},
        {"shape": [2, 2], "datatype": "FP64", "b64": b64([1, 2, 3, 4])},
        {"shape": [2, 2], "data": [[1, 2], [3, 4]]},  # nested, as answers write it
    ],
)
def test_the_three_forms_decode_to_the_same_array(value: Any) -> None:
    array = decode(value, "x", budget())
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, [[1.0, 2.0], [3.0, 4.0]])


def test_fp32_forms_keep_their_precision() -> None:
    array = decode({"shape": [3], "datatype": "FP32", "b64": b64([1, 2, 3], "<f4")}, "x", budget())
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [1, 2, 3])


def test_a_bare_number_is_a_0d_tensor() -> None:
    assert decode(2.5, "x", budget()).shape == ()


def test_response_forms_round_trip() -> None:
    tensor = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    as_json = encode(tensor)
    assert as_json["shape"] == [2, 3] and as_json["datatype"] == "FP64"
    np.testing.assert_array_equal(as_json["data"], tensor.numpy())
    as_b64 = encode(tensor, "b64")
    assert "data" not in as_b64
    np.testing.assert_array_equal(decode(as_b64, "x", budget()), tensor.numpy())


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 1, 3)])
def test_an_answers_tensor_is_taken_back_as_it_came(shape: tuple[int, ...]) -> None:
    """A tensor read from an answer (a student's given ``W``, a model's output) is sent back
    as is: its ``data`` nested as its shape, a bare number for a 0-d tensor."""
    tensor = torch.arange(1, 1 + math.prod(shape), dtype=torch.float32).reshape(shape) / 4
    for encoding in ("json", "b64"):
        sent = orjson.loads(
            orjson.dumps(encode(tensor, encoding), option=orjson.OPT_SERIALIZE_NUMPY)
        )
        array = decode(sent, "params.weight", budget())
        assert array.dtype == np.float32 and array.shape == shape
        np.testing.assert_array_equal(array, tensor.numpy())


def test_non_finite_results_are_explicit_strings_not_nulls() -> None:
    out = encode(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]))
    assert out["nonfinite"] == 3
    assert out["data"] == [1.0, "NaN", "Infinity", "-Infinity"]


def refused(value: Any, b: Budget | None = None) -> Problem:
    with pytest.raises(Problem) as caught:
        decode(value, "params.weight", b or budget())
    return caught.value


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ([[1, 2], [3]], 422, "params.weight[1] has 1 entries but 2"),
        ([[1, 2], [3, [4]]], 422, "params.weight[1][1] is a list"),
        ([[1, 2], 3], 422, "params.weight[1] is a number where a list"),
        ([1, "2"], 422, "params.weight[1] is a string"),
        ([1, None], 422, "params.weight[1] is null"),
        ([True, 1], 422, "params.weight[0] is a boolean"),
        ([1, float("nan")], 422, "element [1] is nan"),
        ([1, float("inf")], 422, "element [1] is inf"),
        ([1, 10**400], 422, "too large"),
        ("abc", 422, "got a string"),
        (None, 422, "got null"),
        ([], 422, "empty"),
        ([[]], 422, "empty"),
        ([[[[[1]]]]], 413, "rank limit 4"),
        (
            {"shape": [2, 2], "data": [1, 2, 3]},
            422,
            "`data` has 3 numbers but shape [2, 2] needs 4",
        ),
        ({"shape": [2], "data": [1, "x"]}, 422, "is a string"),
        (
            {"shape": [3, 2], "data": [[1, 2, 3], [4, 5, 6]]},
            422,
            "`data` is nested as [2, 3] but `shape` is [3, 2]: nest it as the shape, or give "
            "every entry in one flat list",
        ),
        # Told as a mismatch, not as 30 elements over a budget of 15.
        ({"shape": [1, 5, 3], "data": [[[1, 2, 3]] * 5] * 2}, 422, "nested as [2, 5, 3]"),
        ({"shape": [2, 2], "data": [[1, 2], [3]]}, 422, "params.weight.data[1] has 1 entries"),
        ({"shape": [2, 2], "data": [[1, 2], [3, True]]}, 422, "data[1][1] is a boolean"),
        ({"shape": [2], "data": 3}, 422, "`data` must be a list of numbers (flat, or nested"),
        ({"shape": [], "data": "x"}, 422, "got a string"),
        # A tensor object is no 0-d tensor's number: nested ones recursed to a 500.
        ({"shape": [], "data": {"shape": [], "data": 3}}, 422, "got an object"),
        ({"shape": [2], "data": [[1], [2]]}, 422, "`data` is nested as [2, 1] but `shape` is [2]"),
        ({"shape": [], "data": [[5]]}, 422, "`data` is nested as [1, 1] but `shape` is []"),
        ({"shape": [4], "data": [[1, 2], [3, 4]]}, 422, "is nested as [2, 2] but `shape` is [4]"),
        ({"shape": [2], "data": [1, float("nan")]}, 422, "only finite"),
        ({"shape": [2, 2], "b64": b64([1, 2, 3])}, 422, "needs 32"),
        ({"shape": [1, 2], "b64": "AAAAAAAAAAA="}, 422, "holds about 8 bytes"),  # "=" pads
        ({"shape": [1, 2], "b64": "AAAAAAAAAA=="}, 422, "holds about 7 bytes"),
        ({"shape": [1], "b64": "!!!!!!!!!!!="}, 422, "not valid base64: '!' at position 0"),
        # Not a multiple of 4 characters: the fault named, not a byte count (base64 of 40
        # bytes is 56 characters ending in "==").
        (
            {"shape": [1, 5], "b64": b64([1, 2, 3, 4, 5]).rstrip("=")},
            422,
            "`b64` has 54 characters, not a multiple of 4 as base64 is: its `=` padding is "
            "missing; shape [1, 5] of FP64 needs 40 bytes, 56 characters of base64, `==` included",
        ),
        (
            {"shape": [1, 5], "b64": b64([1, 2, 3, 4, 5])[:-1]},
            422,
            "`b64` has 55 characters, not a multiple of 4 as base64 is: its `=` padding is "
            "incomplete (1 of 2), as if the string were cut short; shape [1, 5] of FP64 needs "
            "40 bytes",
        ),
        (
            {"shape": [1, 5], "b64": b64([1, 2, 3, 4, 5])[:-3]},
            422,
            "53 characters, not a multiple of 4 as base64 is: the string is cut short, or "
            "characters are missing",
        ),
        (
            {"shape": [1, 5], "b64": b64([1, 2, 3, 4, 5]) + "A"},
            422,
            "57 characters, not a multiple of 4 as base64 is: the string has characters too many",
        ),
        (
            {"shape": [1, 6], "datatype": "FP32", "b64": b64([1, 2, 3, 4, 5, 6], "<f4")[:-1]},
            422,
            "31 characters, not a multiple of 4 as base64 is: the string is cut short",
        ),
        # A wrapped or spaced string: its size is off by the whitespace, which is named.
        (
            {"shape": [2], "b64": b64([1, 2])[:8] + " " + b64([1, 2])[8:]},
            422,
            "a space at position 8",
        ),
        ({"shape": [2], "b64": b64([1, 2])[:12] + "\n" + b64([1, 2])[12:]}, 422, "a line break"),
        ({"shape": [1], "b64": b64([1])[:4] + " " + b64([1])[5:]}, 422, "a space at position 4"),
        ({"shape": [1], "b64": b64([float("nan")])}, 422, "only finite"),
        ({"shape": [2], "data": [1, 2], "b64": b64([1, 2])}, 422, "exactly one of"),
        ({"shape": [2]}, 422, "exactly one of"),
        ({"data": [1, 2]}, 422, "needs `shape`"),
        ({"shape": [2], "data": [1, 2], "dtype": "x"}, 422, "unknown field"),
        ({"shape": [2], "data": [1, 2], "datatype": "INT8"}, 422, "FP64 or FP32"),
        ({"shape": [-1], "data": []}, 422, "negative"),
        ({"shape": [0], "data": []}, 422, "empty"),
        ({"shape": "2", "data": [1, 2]}, 422, "list of non-negative integers"),
        ({"shape": [True], "data": [1]}, 422, "list of non-negative integers"),
        ({"shape": [1, 1, 1, 1, 1], "data": [1]}, 413, "rank 5"),
        ([list(range(11))] * 11, 413, "121 elements"),
        ({"shape": [10**9, 10**9], "b64": ""}, 413, "limit per tensor is 100"),
    ],
)
def test_bad_tensors_are_refused_with_where_and_why(value: Any, status: int, words: str) -> None:
    problem = refused(value)
    assert problem.status == status
    assert words in problem.detail
    assert problem.detail.startswith("params.weight")


def test_tensor_objects_nested_as_data_are_refused_without_recursing() -> None:
    """A tensor object as a 0-d tensor's ``data``, nested 400 deep, was decoded object by
    object until Python's recursion limit: a 500 any caller could send."""
    value: Any = 3
    for _ in range(400):
        value = {"shape": [], "data": value}
    problem = refused(value)
    assert problem.status == 422 and "got an object" in problem.detail


def deep(levels: int) -> Any:
    """A list nested ``levels`` deep: past what ``repr`` can write before Python's limit."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [1000, 3000, 100_000])
@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("shape", "`shape` must be a list of non-negative integers; a list is not one"),
        ("a size in shape", "`shape` must be a list of non-negative integers; a list is not one"),
        ("datatype", "`datatype` must be FP64 or FP32, got a list"),
        ("an entry of data", "params.weight.data[1] is a list where a number was expected"),
        ("an entry of a list", "params.weight[0][1] is a list where a number was expected"),
    ],
)
def test_a_value_nested_past_the_recursion_limit_is_refused_by_its_kind(
    where: str, words: str, levels: int
) -> None:
    """A list a thousand levels deep in a tensor's ``shape`` or ``datatype`` was quoted with
    ``repr``, which raised RecursionError: a 500 from a 2 KB body. It is named by its kind."""
    value = {
        "shape": {"shape": deep(levels), "b64": ""},
        "a size in shape": {"shape": [1, deep(levels)], "b64": ""},
        "datatype": {"shape": [1], "datatype": deep(levels), "data": [1]},
        "an entry of data": {"shape": [2], "data": [1, deep(levels)]},
        "an entry of a list": [[1, deep(levels)]],
    }[where]
    problem = refused(value)
    assert problem.status == 422 and words in problem.detail, problem.detail


@pytest.mark.parametrize(
    "value",
    [
        {"shape": [1, list(range(2_000_000))], "b64": ""},
        {"shape": [1, "3" * 2_000_000], "b64": ""},
        {"shape": [1], "datatype": "F" * 2_000_000, "data": [1]},
        {"shape": [1], "datatype": {str(i): i for i in range(100_000)}, "data": [1]},
        [[1, "x" * 2_000_000]],
        [[1, {str(i): i for i in range(100_000)}]],
    ],
    ids=["list in shape", "string in shape", "datatype", "object datatype", "string", "object"],
)
def test_a_huge_value_is_quoted_in_a_few_characters(value: Any) -> None:
    """What a message quotes is cut before it is written: the repr of a 2M-entry list in
    ``shape`` was built in full (a second for 20M) to show its first 40 characters."""
    problem = refused(value)
    assert problem.status == 422
    assert len(problem.detail) < 200, problem.detail


@pytest.mark.parametrize("rows", [3, 1_000_000])
def test_a_ragged_last_row_is_named_as_in_a_small_list(rows: int) -> None:
    """The place of a defect was written for every entry on the way to it (15 s and 1 GB for
    4M rows); only the defect's own place is written now, the message as before."""
    value: list[Any] = [[0]] * (rows - 1) + [[0, 0]]
    problem = refused(value, Budget(10**7, 10**7, 4))
    assert problem.detail == (
        f"params.weight: ragged list: params.weight[{rows - 1}] has 2 entries but 1 were "
        "expected from the first row at that depth"
    )
    value = [0] * rows + [None]
    assert refused(value, Budget(10**7, 10**7, 4)).detail == (
        f"params.weight[{rows}] is null, not a number"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([[1, "NaN"], [2]], "params.weight[0][1] is NaN"),  # before the ragged row
        ([[1, 2], [3]], "params.weight[1] has 1 entries but 2"),
        ([[1, 2], 3, [4, None]], "params.weight[1] is a number where a list of 2"),
        ([[[1], [2]], [[3], [4, 5]]], "params.weight[1][1] has 2 entries but 1"),
        ([[1, 2], [3, True]], "params.weight[1][1] is a boolean True, not a number"),
        ([[1.0, 2**60], [3, None]], "params.weight[0][1] is an integer too large"),
        ([[1e300, 2], [3, {"a": 1}]], "params.weight[1][1] is an object, not a number"),
    ],
)
def test_the_first_defect_in_row_major_order_is_named(value: Any, words: str) -> None:
    assert words in refused(value).detail


def test_the_request_budget_adds_up_tensors() -> None:
    b = budget()
    decode([0.0] * 100, "params.a", b)
    problem = refused([0.0] * 60, b)
    assert problem.status == 413 and "160 elements" in problem.detail


def test_declared_budget_is_checked_before_decoding_the_payload() -> None:
    # A huge declared shape with a tiny (and invalid) payload is refused for its size.
    problem = refused({"shape": [10**6], "data": [1]})
    assert problem.status == 413


FLOAT32_MAX = float(np.finfo(np.float32).max)
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "value",
    [
        [[1.0, 2.0], [3.0, -1e39]],
        {"shape": [2, 2], "data": [1.0, 2.0, 3.0, -1e39]},
        {"shape": [2, 2], "datatype": "FP64", "b64": b64([1.0, 2.0, 3.0, -1e39])},
    ],
    ids=["nested", "data", "b64"],
)
def test_a_value_past_float32_is_refused_when_float32_is_asked_in_every_form(value: Any) -> None:
    """-1e39 is a finite float64 that float32 rounds to -inf: refused naming the tensor, the
    element in its declared shape and the value as sent, whatever the form (a nested list was
    computed as -inf)."""
    array = decode(value, "params.weight", budget())
    with pytest.raises(Problem) as info:
        to_torch(array, CPU, torch.float32, "params.weight")
    assert info.value.status == 422
    assert info.value.detail.startswith("params.weight: element [1, 1] is -1e+39")
    assert "outside the range of float32" in info.value.detail
    assert to_torch(array, CPU, torch.float64, "params.weight")[1, 1] == -1e39


def test_fp32_data_past_float32_is_refused_as_sent_without_a_numpy_warning() -> None:
    """The FP32 datatype casts on decoding: the same message, and numpy's overflow warning
    (an error under this suite's settings) silenced."""
    problem = refused({"shape": [1, 2], "data": [1.0, 1e39], "datatype": "FP32"})
    assert problem.status == 422
    assert "element [0, 1] is 1e+39, outside the range of float32" in problem.detail
    assert "FP64" in problem.detail


def test_values_that_float32_rounds_to_a_finite_number_are_kept() -> None:
    """The largest float32, and a float64 just past it that rounds down to it, are finite."""
    edge = [FLOAT32_MAX, -FLOAT32_MAX, float(np.nextafter(FLOAT32_MAX, np.inf))]
    tensor = to_torch(decode(edge, "x", budget()), CPU, torch.float32, "x")
    assert tensor.dtype == torch.float32
    assert tensor.tolist() == [FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX]
