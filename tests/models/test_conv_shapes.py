"""Output-size arithmetic: the seed's worked answers, then PyTorch's own shapes as the oracle."""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from models.conv import conv_output_size
from models.errors import InvalidConfig, ModelError, ShapeMismatch


def sizes(*args: object, **kwargs: object) -> list[int]:
    return [s.result for s in conv_output_size(*args, **kwargs)]  # type: ignore[arg-type]


def test_seed_1_1a_is_5_by_2() -> None:
    steps = conv_output_size([21, 12], [4, 5], stride=4, padding=0)
    assert [s.result for s in steps] == [5, 2]
    # The worked steps show the seed's substitution: floor(4.25) + 1 and floor(1.75) + 1.
    assert "floor(4.25) + 1 = 5" in steps[0].substitution
    assert "floor(1.75) + 1 = 2" in steps[1].substitution
    assert steps[0].formula == "out = floor((in + 2P - D(K - 1) - 1) / S) + 1"


@pytest.mark.parametrize(
    ("h", "k", "p", "s", "d"),
    [(32, 3, 1, 1, 1), (32, 3, 1, 1, 2), (28, 5, 2, 2, 3), (7, 3, 0, 2, 1), (100, 7, 3, 3, 4)],
)
def test_seed_1_1b_dilated_formula(h: int, k: int, p: int, s: int, d: int) -> None:
    # Seed 1.1(b): H_out = floor((H + 2P - D(K - 1) - 1) / S) + 1, written out independently.
    expected = (h + 2 * p - d * (k - 1) - 1) // s + 1
    assert sizes([h, h], k, s, p, d) == [expected, expected]
    effective = d * (k - 1) + 1
    assert conv_output_size([h], k, s, p, d)[0].effective_kernel == effective


def test_seed_1_1c_length_7_kernel_3_stride_2_is_3() -> None:
    assert sizes([7], 3, 2) == [3]


def torch_conv_size(
    dims: int,
    size: list[int],
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
) -> list[int]:
    """PyTorch's own output shape, computed on meta tensors (no memory, no arithmetic)."""
    x = torch.empty(1, 1, *size, device="meta")
    if transposed:
        w = torch.empty(1, 1, *kernel, device="meta")
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
        y = fn(
            x, w, stride=stride, padding=padding, dilation=dilation, output_padding=output_padding
        )
    else:
        w = torch.empty(1, 1, *kernel, device="meta")
        fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
        y = fn(x, w, stride=stride, padding=padding, dilation=dilation)
    return list(y.shape[2:])


def test_sizes_agree_with_pytorch_on_random_configurations() -> None:
    rng = random.Random(1234)
    checked = refused = 0
    for _ in range(400):
        dims = rng.randint(1, 3)
        transposed = rng.random() < 0.3
        size = [rng.randint(1, 30) for _ in range(dims)]
        kernel = [rng.randint(1, 7) for _ in range(dims)]
        stride = [rng.randint(1, 4) for _ in range(dims)]
        padding = [rng.randint(0, 3) for _ in range(dims)]
        dilation = [rng.randint(1, 3) for _ in range(dims)]
        output_padding = (
            [rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation, strict=True)]
            if transposed
            else [0] * dims
        )
        args = (dims, size, kernel, stride, padding, dilation, transposed, output_padding)
        try:
            expected = torch_conv_size(*args)
        except RuntimeError:
            expected = None
        if expected is not None and min(expected) < 1:
            expected = None
        if expected is None:
            with pytest.raises(ModelError):
                conv_output_size(
                    size,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    transposed=transposed,
                    output_padding=output_padding,
                )
            refused += 1
        else:
            got = sizes(
                size,
                kernel,
                stride,
                padding,
                dilation,
                transposed=transposed,
                output_padding=output_padding,
            )
            assert got == expected, args
            checked += 1
    assert checked > 250 and refused > 20  # both branches were really exercised


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("size", [[5], [9, 4], [6, 7, 8]])
@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_keeps_the_size_like_pytorch(size: list[int], dilation: int) -> None:
    dims = len(size)
    x = torch.empty(1, 1, *size, device="meta")
    w = torch.empty(1, 1, *([4] * dims), device="meta")
    fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    expected = list(fn(x, w, padding="same", dilation=dilation).shape[2:])
    assert sizes(size, 4, 1, "same", dilation) == expected == size


def test_valid_padding_is_zero() -> None:
    assert sizes([10], 3, 1, "valid") == sizes([10], 3, 1, 0) == [8]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (
            {"input_size": [5], "kernel_size": 5, "dilation": 2, "padding": 1},
            ShapeMismatch,
            "effective kernel 9",
        ),
        ({"input_size": [5], "kernel_size": 0}, InvalidConfig, "kernel_size must be at least 1"),
        ({"input_size": [5], "kernel_size": 3, "stride": 0}, InvalidConfig, "stride"),
        ({"input_size": [5], "kernel_size": 3, "stride": -1}, InvalidConfig, "stride"),
        ({"input_size": [5], "kernel_size": 3, "dilation": 0}, InvalidConfig, "dilation"),
        ({"input_size": [5], "kernel_size": 3, "padding": -1}, InvalidConfig, "padding"),
        ({"input_size": [5, 5], "kernel_size": [3]}, InvalidConfig, "2 spatial dimensions"),
        ({"input_size": [], "kernel_size": 3}, InvalidConfig, "1 to 3"),
        ({"input_size": [1, 2, 3, 4], "kernel_size": 3}, InvalidConfig, "1 to 3"),
        ({"input_size": [0], "kernel_size": 1}, InvalidConfig, "input_size"),
        (
            {"input_size": [8], "kernel_size": 3, "stride": 2, "padding": "same"},
            InvalidConfig,
            "stride 1",
        ),
        ({"input_size": [8], "kernel_size": 3, "padding": "full"}, InvalidConfig, "'valid'"),
        ({"input_size": [8], "kernel_size": 3, "output_padding": 1}, InvalidConfig, "transposed"),
        (
            {
                "input_size": [8],
                "kernel_size": 3,
                "stride": 2,
                "output_padding": 2,
                "transposed": True,
            },
            InvalidConfig,
            "smaller than the stride",
        ),
        (
            {"input_size": [1], "kernel_size": 1, "padding": 3, "transposed": True},
            ShapeMismatch,
            "empty",
        ),
    ],
)
def test_invalid_configurations_say_why(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    size = kwargs.pop("input_size")
    kernel = kwargs.pop("kernel_size")
    with pytest.raises(error, match=words):
        conv_output_size(size, kernel, **kwargs)  # type: ignore[arg-type]


SHOWN_QUOTIENT = re.compile(r"= floor\((-?[\d.]+)\) \+ 1 = ")


def test_a_large_stride_is_not_rounded_across_an_integer_in_the_steps() -> None:
    """Input 60000, kernel 1, stride 30000: 59999/30000 to 4 places is 2.0000, and the step
    read "floor(59999/30000) + 1 = floor(2) + 1 = 2"."""
    step = conv_output_size([60000], 1, stride=30000)[0]
    assert step.result == 2
    assert "floor(59999/30000) + 1 = floor(1.99997) + 1 = 2" in step.substitution
    tiny = conv_output_size([2], 1, stride=30000)[0].substitution
    assert "floor(1/30000) + 1 = floor(0.00003) + 1 = 1" in tiny


def test_the_shown_quotient_always_has_the_floor_of_the_step() -> None:
    """Over strides up to the largest size: what is shown floors to the true floor, and looks
    whole only where the quotient is whole. Short quotients keep 4 places (17/4 is 4.25)."""
    rng = random.Random(0)
    cases = [(rng.randint(1, 2**31 - 1), rng.randint(1, 2**31 - 1)) for _ in range(300)]
    # Just below a multiple of the stride: (size - 1)/stride is a whole number less a little.
    cases += [(s * q, s) for s in (3, 7, 9999, 30000, 2**28) for q in (1, 5)]
    cases += [(2**31 - 1, 2**31 - 2), (2**31 - 1, 2**30 + 1)]
    for size, stride in cases:
        step = conv_output_size([size], 1, stride=stride)[0]
        found = SHOWN_QUOTIENT.search(step.substitution)
        assert found, step.substitution
        shown, numerator = Fraction(found.group(1)), size - 1
        assert math.floor(shown) == numerator // stride == step.result - 1, step.substitution
        assert (shown.denominator == 1) == (numerator % stride == 0), step.substitution
    assert "floor(0.6667)" in conv_output_size([3], 1, stride=3)[0].substitution


def test_a_padding_that_removes_exactly_the_whole_output_is_said_to_remove_that_much() -> None:
    """(2 - 1)*3 + 3*(1 - 1) + 2 + 1 = 6 is produced and 2*3 = 6 removed: it said "removes
    more than the transposed convolution produces (6)"."""
    with pytest.raises(ShapeMismatch) as error:
        conv_output_size([2], 1, 3, 3, 3, transposed=True, output_padding=2)
    assert error.value.message.startswith(
        "padding 2*3 removes at least as much as the transposed convolution produces (6) "
        "in dimension 0"
    )


def test_a_transposed_steps_padded_input_is_what_a_stride_1_convolution_slides_over() -> None:
    """It was the input size itself. It is the input of the stride-1 convolution that computes
    the transposed one (S - 1 zeros between the entries, D(K - 1) - P on each end,
    output_padding at the end): that convolution, run with the flipped kernel, gives PyTorch's
    conv_transpose1d to the last digit, on a padded input of exactly that size."""
    rng = random.Random(7)
    checked = 0
    for _ in range(80):
        n, k, s, d = rng.randint(1, 9), rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 3)
        p = rng.randint(0, d * (k - 1))  # a padding the stuffed input is padded, not cropped, by
        op = rng.randint(0, max(s, d) - 1)
        try:
            step = conv_output_size([n], k, s, p, d, transposed=True, output_padding=op)[0]
        except ShapeMismatch:
            continue  # no output
        checked += 1
        x = torch.arange(1.0, n + 1, dtype=torch.float64).reshape(1, 1, n)
        w = torch.arange(1.0, k + 1, dtype=torch.float64).reshape(1, 1, k)
        stuffed = torch.zeros(1, 1, (n - 1) * s + 1, dtype=torch.float64)
        stuffed[..., ::s] = x
        edge = d * (k - 1) - p
        padded = F.pad(stuffed, (edge, edge + op))
        assert padded.shape[-1] == step.padded_input
        assert step.result == step.padded_input - step.effective_kernel + 1
        as_convolution = F.conv1d(padded, w.flip(-1), dilation=d)
        transposed = F.conv_transpose1d(x, w, stride=s, padding=p, dilation=d, output_padding=op)
        torch.testing.assert_close(as_convolution, transposed, rtol=0, atol=0)
    assert checked > 50
    # A padding beyond D(K - 1) crops instead: the relation still holds.
    cropped = conv_output_size([9], 2, 3, 2, 1, transposed=True)[0]
    assert cropped.padded_input == 8 * 3 + 1 + 2 * (1 - 2) == cropped.result + 1
