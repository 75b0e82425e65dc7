"""Convolutions of the homework's part 1.1: output-size arithmetic and the conv references.

Output size (seed 1.1(a)-(b)), per spatial dimension, with effective kernel
``K_eff = D(K - 1) + 1``::

    out = floor((in + 2P - D(K - 1) - 1) / S) + 1                 # convolution
    out = (in - 1) S - 2P + D(K - 1) + output_padding + 1          # transposed convolution

The layer is the cross-correlation of seed 1.1(c)(i), ``y[f, i] = sum_c sum_m W[f, c, m]
x[c, S i + D m] + b[f]`` (0-based; the seed writes the same thing 1-based as ``2i - 1 + m``).
Inputs are unbatched, as in the seed: ``x`` is ``(C, L)`` or ``(C, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from models.errors import InvalidConfig, LimitExceeded, ModelError, ShapeMismatch
from models.limits import Limits

Padding = tuple[int, ...] | str


@dataclass
class DimStep:
    """The worked computation of one spatial dimension's output size.

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which
    doubles the cost of a shape answer (thousands per grading run); nothing mutates one.
    """

    dimension: int
    formula: str
    substitution: str
    result: int
    effective_kernel: int
    padded_input: int
    """What the kernel slides over: ``in + 2P`` for a convolution; for a transposed one, the
    input of the stride-1 convolution that computes it, ``(in - 1) S + 1 + 2(D(K - 1) - P) +
    output_padding`` (zeros between the entries and on the ends), so ``out = padded - K_eff +
    1``."""


MAX_SIZE = 2**31 - 1
"""Largest size, kernel, stride, padding or dilation accepted: far past any real layer, and
small enough that every step of the arithmetic stays exact in a float64."""


def _per_dim(value: Any, dims: int, name: str, minimum: int, where: str) -> tuple[int, ...]:
    """An int or a list with one int per dimension, as a tuple of ``dims`` ints.

    ``type(v) is int`` (not ``isinstance``) refuses booleans in one test; this runs several
    times on every shape request, so it stays free of generators, and an int or a list of
    ints in range (the common cases) return at once.
    """
    if type(value) is int and minimum <= value <= MAX_SIZE:
        return (value,) * dims
    if type(value) is list and len(value) == dims:
        for v in value:
            if type(v) is not int or not minimum <= v <= MAX_SIZE:
                break  # the general path below says what is wrong
        else:
            return tuple(value)
    if type(value) is int:
        values: tuple[int, ...] = (value,) * dims
    elif type(value) in (list, tuple) and set(map(type, value)) <= _INT:
        values = tuple(value)
    else:
        raise InvalidConfig(f"{name} must be an integer or a list of integers", where)
    if len(values) != dims:
        raise InvalidConfig(
            f"{name} has {len(values)} entries but there are {dims} spatial dimensions", where
        )
    if values and min(values) < minimum:
        d = next(d for d, v in enumerate(values) if v < minimum)
        raise InvalidConfig(
            f"{name} must be at least {minimum}, got {values[d]} in dimension {d}", where
        )
    if values and max(values) > MAX_SIZE:
        d = next(d for d, v in enumerate(values) if v > MAX_SIZE)
        raise InvalidConfig(
            f"{name} must be at most {MAX_SIZE}, got {values[d]} in dimension {d}", where
        )
    return values


_INT = {int}


def parse_padding(value: Any, dims: int, where: str = "padding") -> Padding:
    """``"valid"``, ``"same"``, an int, or one int per dimension."""
    if isinstance(value, str):
        if value not in ("valid", "same"):
            raise InvalidConfig(
                f"padding must be 'valid', 'same' or integers, got {value!r}", where
            )
        return value
    return _per_dim(value, dims, "padding", 0, where)


def explicit_padding(
    padding: Padding, kernel: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """(left, right) padding per dimension; ``same`` puts the odd element on the right, as torch."""
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    assert isinstance(padding, tuple)
    return tuple((p, p) for p in padding)


def conv_output_size(
    input_size: Sequence[int],
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    *,
    transposed: bool = False,
    output_padding: Any = 0,
) -> list[DimStep]:
    """Output size of a (transposed) convolution, with the worked steps per dimension.

    Args:
        input_size: the spatial sizes (1 to 3 of them).
        kernel_size, stride, padding, dilation, output_padding: an int for every dimension or
            a list with one per dimension; ``padding`` may also be ``"valid"`` or ``"same"``.
        transposed: compute a transposed convolution's output size.

    Returns:
        One ``DimStep`` per dimension.

    Raises:
        InvalidConfig: a value out of range; ShapeMismatch: the output would be empty.

    Example:
        >>> [s.result for s in conv_output_size([21, 12], [4, 5], stride=4)]
        [5, 2]
    """
    if not isinstance(input_size, list | tuple) or not 1 <= len(input_size) <= 3:
        raise InvalidConfig("input_size must list 1 to 3 spatial sizes", "input_size")
    dims = len(input_size)
    sizes = _per_dim(list(input_size), dims, "input_size", 1, "input_size")
    kernel = _per_dim(kernel_size, dims, "kernel_size", 1, "kernel_size")
    strides = _per_dim(stride, dims, "stride", 1, "stride")
    dilations = _per_dim(dilation, dims, "dilation", 1, "dilation")
    pad = parse_padding(padding, dims)
    out_pad = _per_dim(output_padding, dims, "output_padding", 0, "output_padding")
    if not transposed and any(out_pad):
        raise InvalidConfig(
            "output_padding applies to transposed convolutions only", "output_padding"
        )
    if pad == "same" and (transposed or any(s != 1 for s in strides)):
        raise InvalidConfig("padding 'same' needs stride 1 and no transposition", "padding")
    # None stands for 'same', whose padding depends on the kernel of each dimension.
    pads: list[int | None] = (
        list(pad) if not isinstance(pad, str) else [None if pad == "same" else 0] * dims
    )
    steps = []
    for d in range(dims):
        n, k, s, p, dil, op = sizes[d], kernel[d], strides[d], pads[d], dilations[d], out_pad[d]
        k_eff = dil * (k - 1) + 1
        if transposed:
            steps.append(_transposed_step(d, n, k, s, p or 0, dil, op, k_eff))
        else:
            steps.append(_conv_step(d, n, k, s, p, dil, k_eff))
    return steps


def _conv_step(d: int, n: int, k: int, s: int, p: int | None, dil: int, k_eff: int) -> DimStep:
    if p is None:
        total = dil * (k - 1)
        return DimStep(
            d,
            "out = in (padding 'same' with stride 1 pads D(K - 1) in total)",
            f"pads {total // 2} before and {total - total // 2} after; out = {n}",
            n,
            k_eff,
            n + total,
        )
    padded = n + 2 * p
    if k_eff > padded:
        raise ShapeMismatch(
            f"effective kernel {k_eff} (= {dil}*({k} - 1) + 1) is larger than the padded "
            f"input {padded} (= {n} + 2*{p}) in dimension {d}, so the output would be empty",
            "kernel_size",
        )
    numerator = n + 2 * p - dil * (k - 1) - 1
    result = numerator // s + 1
    return DimStep(
        d,
        "out = floor((in + 2P - D(K - 1) - 1) / S) + 1",
        f"floor(({n} + 2*{p} - {dil}*({k} - 1) - 1) / {s}) + 1 = floor({numerator}/{s}) + 1"
        f" = floor({_decimal(numerator, s)}) + 1 = {result}",
        result,
        k_eff,
        padded,
    )


def _transposed_step(
    d: int, n: int, k: int, s: int, p: int, dil: int, op: int, k_eff: int
) -> DimStep:
    if op >= max(s, dil):
        raise InvalidConfig(
            f"output_padding {op} must be smaller than the stride or the dilation in dimension {d}",
            "output_padding",
        )
    result = (n - 1) * s - 2 * p + dil * (k - 1) + op + 1
    if result < 1:
        raise ShapeMismatch(
            f"padding 2*{p} removes at least as much as the transposed convolution produces "
            f"({result + 2 * p}) in dimension {d}, so the output would be empty",
            "padding",
        )
    # What a stride-1 convolution with the same kernel slides over to give this output: the
    # input with S - 1 zeros between its entries, D(K - 1) - P more on each end (fewer where
    # P is larger: cropped) and output_padding at the end. Then out = padded - K_eff + 1.
    padded = (n - 1) * s + 1 + 2 * (dil * (k - 1) - p) + op
    return DimStep(
        d,
        "out = (in - 1) S - 2P + D(K - 1) + output_padding + 1",
        f"({n} - 1)*{s} - 2*{p} + {dil}*({k} - 1) + {op} + 1 = {result}",
        result,
        k_eff,
        padded,
    )


def _decimal(numerator: int, denominator: int) -> str:
    """``numerator / denominator`` (``numerator >= 0``: the padded input holds the kernel) to 4
    decimals, or to as many more as it takes for what is shown to have the quotient's floor
    and, unless the quotient is whole, not to look whole.

    The steps show the quotient that is then floored: 59999/30000 rounded to 4 places is
    2.0000, and "floor(2) + 1 = 2" contradicts itself (1.99997 is shown instead); 1/30000 is
    0.00003, not 0. Each place divides the rounding error by 10, so the loop ends once that
    error is below the quotient's distance to an integer: after about log10(denominator) + 1
    places at most. Integer arithmetic (sizes up to 2**31 - 1 need more digits than a float
    holds), and no Fraction: this runs for every dimension of every shape request.
    """
    whole, remainder = divmod(numerator, denominator)
    places, unit = 4, 10**4
    while True:
        # Rounded half up: floor(numerator * unit / denominator + 1/2).
        scaled = (2 * numerator * unit + denominator) // (2 * denominator)
        digits, fraction = divmod(scaled, unit)
        if digits == whole and (remainder == 0 or fraction != 0):
            break
        places, unit = places + 1, unit * 10
    if fraction == 0:
        return str(digits)
    return f"{digits}.{fraction:0{places}d}".rstrip("0")


@dataclass(frozen=True)
class ConvConfig:
    """Configuration of a conv layer: per-dimension stride and dilation, and padding."""

    dims: int
    stride: tuple[int, ...]
    padding: Padding
    dilation: tuple[int, ...]


def parse_conv_config(config: Mapping[str, Any], dims: int) -> ConvConfig:
    """Validate ``{"stride", "padding", "dilation"}`` for a ``dims``-dimensional conv."""
    unknown = set(config) - {"stride", "padding", "dilation"}
    if unknown:
        raise InvalidConfig(
            f"unknown config key(s) {sorted(unknown)}; a conv takes stride, padding, dilation",
            f"config.{sorted(unknown)[0]}",
        )
    stride = _per_dim(config.get("stride", 1), dims, "stride", 1, "config.stride")
    dilation = _per_dim(config.get("dilation", 1), dims, "dilation", 1, "config.dilation")
    padding = parse_padding(config.get("padding", 0), dims, "config.padding")
    if padding == "same" and any(s != 1 for s in stride):
        raise InvalidConfig("padding 'same' needs stride 1", "config.padding")
    return ConvConfig(dims, stride, padding, dilation)


def conv_output_shapes(
    config: ConvConfig, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Check that weight, bias and x fit together and give y's shape, allocating nothing."""
    dims = config.dims
    weight, x = shapes["weight"], shapes["x"]
    if len(weight) != dims + 2:
        raise ShapeMismatch(
            f"weight must have rank {dims + 2} ([F, C, {', '.join(_kernel_symbols(dims))}]), "
            f"got shape {list(weight)}",
            "params.weight",
        )
    if len(x) != dims + 1:
        raise ShapeMismatch(
            f"x must have rank {dims + 1} (unbatched, channels first), got shape {list(x)}",
            "inputs.x",
        )
    filters, channels, kernel = weight[0], weight[1], weight[2:]
    if x[0] != channels:
        raise ShapeMismatch(
            f"x has {x[0]} channels but weight expects {channels} (weight shape {list(weight)})",
            "inputs.x",
        )
    bias = shapes.get("bias")
    if bias is not None and bias != (filters,):
        raise ShapeMismatch(
            f"bias must have shape [{filters}] (one per filter), got {list(bias)}", "params.bias"
        )
    try:
        steps = conv_output_size(
            list(x[1:]),
            list(kernel),
            list(config.stride),
            _padding_arg(config),
            list(config.dilation),
        )
    except ShapeMismatch as error:
        raise ShapeMismatch(error.message, "params.weight") from None
    return {"y": (filters, *(s.result for s in steps))}


def _padding_arg(config: ConvConfig) -> Any:
    return config.padding if isinstance(config.padding, str) else list(config.padding)


def _kernel_symbols(dims: int) -> list[str]:
    return ["K"] if dims == 1 else ["KH", "KW"]


def padded_input_shape(
    config: ConvConfig, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[int, ...] | None:
    """The shape ``[C, *(in + P_left + P_right)]`` of x with its zero padding, from the declared
    shapes; ``None`` when weight and x do not have the ranks of this conv (``conv_output_shapes``
    says what is wrong with them)."""
    weight, x = shapes.get("weight", ()), shapes.get("x", ())
    if len(weight) != config.dims + 2 or len(x) != config.dims + 1:
        return None
    pads = explicit_padding(config.padding, weight[2:], config.dilation)
    return (x[0], *(n + left + right for n, (left, right) in zip(x[1:], pads, strict=True)))


def check_shape_limits(
    config: ConvConfig, shapes: Mapping[str, tuple[int, ...]], limits: Limits
) -> None:
    """Refuse a padding (or, with ``'same'``, a dilation) whose padded input is over the
    per-tensor element budget, and a kernel whose unfolded input is over the workspace
    budget, before anything is allocated.

    The padded input is a tensor the passes may build whole: the forward pass pads x itself
    when ``'same'`` pads one side more than the other, the closed-form dy/dweight reads
    windows of the padded x, and torch's own convolutions may pad internally. Its size comes
    from the config, not from the tensors sent, so the budgets on those do not bound it: a
    3-element x with dilation 2**20 and ``'same'`` would pad to 2**40 elements. It is held to
    the same limit as a tensor of the request, whatever the operation, so that a forward pass
    is refused exactly when its backward pass or Jacobian would be.

    The matrix torch's CPU convolution unfolds x into (``conv_workspace_elements``) is held
    to ``limits.max_conv_workspace_bytes`` the same way, for every operation.

    Raises:
        LimitExceeded: the padded input would have more than ``limits.max_tensor_elements``,
            or the unfolded input more than ``limits.max_conv_workspace_bytes``.
    """
    padded = padded_input_shape(config, shapes)
    if padded is None:
        return
    numel = math.prod(padded)
    if numel <= limits.max_tensor_elements:
        _check_workspace(config, shapes, limits)
        return
    x, kernel = shapes["x"], shapes["weight"][2:]
    if config.padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, config.dilation, strict=True)]
        how = (
            f"padding 'same' with dilation {list(config.dilation)} and kernel {list(kernel)} "
            f"pads D(K - 1) = {totals} per dimension, before and after together"
        )
        where, change = "config.dilation", "lower the dilation or give a smaller padding"
    else:
        how = f"padding {_padding_arg(config)} on both sides"
        where, change = "config.padding", "lower the padding (and the dilation it makes room for)"
    raise LimitExceeded(
        f"{how}, so the padded input x would have shape {list(padded)}, {numel:,} elements "
        f"(x is {list(x)}); the limit max_tensor_elements is {limits.max_tensor_elements:,}: "
        f"{change}",
        where,
    )


WORKSPACE_ITEMSIZE = 8
"""Bytes an element of the unfolded input is counted at: a float64's, whatever the request's
dtype, so that a request is refused alike on every device and in either dtype."""


def conv_workspace_elements(
    config: ConvConfig, shapes: Mapping[str, tuple[int, ...]]
) -> int | None:
    """Elements of the matrix torch's CPU convolution unfolds x into (im2col): one column of
    ``C * prod(K)`` taps per output position, ``C * prod(K) * prod(out)`` in all, for the one
    element of the batch (x is unbatched). ``None`` when the shapes do not fit together
    (``conv_output_shapes`` says why).

    torch builds it for float64 on the CPU (and for float32 where oneDNN is not used), in the
    forward pass and again, one at a time, for each gradient of the backward pass; the
    Jacobians are written in closed form (``conv_jacobians``) without it.
    """
    try:
        y = conv_output_shapes(config, shapes)["y"]
    except ModelError:
        return None
    return math.prod(shapes["weight"][1:]) * math.prod(y[1:])


def _check_workspace(
    config: ConvConfig, shapes: Mapping[str, tuple[int, ...]], limits: Limits
) -> None:
    """Refuse a convolution whose unfolded input is over ``max_conv_workspace_bytes``.

    A body of a few megabytes (x ``[1, 700, 700]``, a 24 x 24 kernel) unfolds into 2 GB, and
    a ``[1, 1000, 1000]`` x with a 64 x 64 kernel into 28.8 GB: the budgets on the tensors
    sent do not bound it, the kernel's size multiplies it.
    """
    elements = conv_workspace_elements(config, shapes)
    if elements is None:
        return
    size = elements * WORKSPACE_ITEMSIZE
    if size <= limits.max_conv_workspace_bytes:
        return
    weight = shapes["weight"]
    taps = math.prod(weight[1:])
    positions = elements // taps
    dims = config.dims
    taps_symbol = "C*K" if dims == 1 else "C*KH*KW"
    out_symbol = "L_out" if dims == 1 else "H_out*W_out"
    raise LimitExceeded(
        f"this conv{dims}d unfolds x {list(shapes['x'])} into a matrix of {taps_symbol} x "
        f"{out_symbol} = {taps:,} x {positions:,} = {elements:,} elements (weight "
        f"{list(weight)}, stride {list(config.stride)}, dilation {list(config.dilation)}), "
        f"{size:,} bytes at {WORKSPACE_ITEMSIZE} bytes each; the limit "
        f"max_conv_workspace_bytes is {limits.max_conv_workspace_bytes:,}: use a smaller "
        "kernel or x, or a larger stride",
        "params.weight",
    )


def conv_flops(config: ConvConfig, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Floating-point operations of the forward pass, from the declared shapes.

    Each output element takes a multiply and an add per kernel tap over every input channel:
    ``2 * numel(y) * C * prod(K)``, the count ``torch.utils.flop_counter`` uses (the bias add,
    one per output element, is left out like there).
    """
    y = conv_output_shapes(config, shapes)["y"]
    taps = math.prod(shapes["weight"][1:])  # C * prod(K)
    return 2 * math.prod(y) * taps


def conv_forward(config: ConvConfig, args: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """y = conv(x, weight) + bias, unbatched."""
    weight, x, bias = args["weight"], args["x"], args.get("bias")
    conv = F.conv1d if config.dims == 1 else F.conv2d
    pads = explicit_padding(config.padding, weight.shape[2:], config.dilation)
    if any(left != right for left, right in pads):
        # F.conv*d accepts only symmetric padding; 'same' with an even effective kernel is not.
        flat = [p for pair in reversed(pads) for p in pair]
        x = F.pad(x, flat)
        pads = tuple((0, 0) for _ in pads)
    y = conv(
        x,
        weight,
        bias,
        stride=config.stride,
        padding=tuple(left for left, _ in pads),
        dilation=config.dilation,
    )  # (F, *spatial_out)
    return {"y": y}
