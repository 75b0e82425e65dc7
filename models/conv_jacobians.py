"""Closed-form Jacobians of the conv layers (seed 1.1(c)(ii)-(iii)), by index arithmetic.

The layer is ``y[f, o] = sum_c sum_k W[f, c, k] x[c, S o + D k - P_left] + b[f]`` with ``o``
and ``k`` multi-indices over the spatial dimensions (0-based; positions outside the input
read the zero padding). Each partial derivative is therefore a copy of one argument placed
at computed indices, with no arithmetic at all::

    dy[f, o] / dW[g, c, k] = [f = g] xpad[c, S o + D k]      (a window of the input)
    dy[f, o] / dx[c, p]    = W[f, c, k]  where p = S o + D k - P_left, 0 <= p < in
    dy[f, o] / db[g]       = [f = g]

Building them this way costs one pass over the (mostly zero) Jacobian, instead of one
backward pass per output entry as reverse-mode autodiff needs: for a conv1d with 16 channels,
length 128, 16 filters of kernel 5 (dy/dx has 4M entries) it is tens of times faster than
``torch.func.jacrev``. That pass is the cost that remains, done as one pass over memory
(``fill``).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.conv import ConvConfig, explicit_padding
from models.zeroed_buffers import Strided, Taken, contiguous_strides, take_zeroed


def conv_jacobian(
    config: ConvConfig, args: Mapping[str, torch.Tensor], of: str, wrt: str
) -> torch.Tensor | None:
    """d(of)/d(wrt) of a conv layer in closed form, or ``None`` where there is none.

    Args:
        config: the layer's stride, padding and dilation.
        args: ``weight`` (F, C, *K), ``x`` (C, *N) and optionally ``bias`` (F,).
        of: the output (only ``"y"``).
        wrt: ``"weight"``, ``"x"`` or ``"bias"``.

    Returns:
        The Jacobian shaped ``y.shape + args[wrt].shape``, on the arguments' device and dtype.

    Example:
        >>> cfg = ConvConfig(1, (2,), (0,), (1,))
        >>> w, x = torch.ones(1, 1, 2), torch.arange(5.0).reshape(1, 5)
        >>> conv_jacobian(cfg, {"weight": w, "x": x}, "y", "weight").shape
        torch.Size([1, 2, 1, 1, 2])
    """
    if not covers(of, wrt, args):
        return None
    weight, x = args["weight"], args["x"]
    pads = explicit_padding(config.padding, weight.shape[2:], config.dilation)
    if wrt == "weight":
        return jacobian_wrt_weight(weight, x, config.stride, config.dilation, pads)
    if wrt == "x":
        return jacobian_wrt_input(weight, x, config.stride, config.dilation, pads)
    if wrt == "bias":
        return jacobian_wrt_bias(weight, x, config.stride, config.dilation, pads)
    return None


def covers(of: str, wrt: str, arguments: Collection[str]) -> bool:
    """Whether ``conv_jacobian`` answers d(of)/d(wrt) given arguments of these names: the
    output ``y`` against the weight, the input or a bias that is given."""
    return of == "y" and wrt in arguments and wrt in ("weight", "x", "bias")


_NUMPY_DTYPES = frozenset({torch.float64, torch.float32})
CHUNK_BYTES = 2 << 20
"""Zeroed and written a block of filters at a time, about this many bytes (see ``fill``)."""

Placement = tuple[torch.Tensor, torch.Tensor]
"""``(view, source)``: a strided view of a Jacobian and the values it takes (broadcast), both
with the filter dimension first (the source's may be 1); ``view[f]`` lies in ``jac[f]``."""


def new_jacobian(like: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, Taken | None]:
    """A contiguous tensor for a Jacobian of ``shape``, in ``like``'s dtype and device.

    Returns:
        A buffer of the pool (see ``models.zeroed_buffers``) and its lease, or a tensor of
        its own, uninitialised, and ``None``.
    """
    taken = take_zeroed(shape, like)
    if taken is None:
        return like.new_empty(tuple(shape)), None
    return taken.tensor, taken


def fill(
    jac: torch.Tensor, placements: Sequence[Placement], recycled: Taken | None = None
) -> torch.Tensor:
    """Zero ``jac`` and write each placement.

    A recycled Jacobian (``recycled`` given and not ``fresh``, see ``new_jacobian``) is zeros
    outside the regions its previous holder wrote: those are set back to zero, unless they
    are the very regions written now (the same shapes and settings), and the placements are
    written. That costs the entries that are not zero, a few percent of the whole pass
    described next, which a new buffer of the pool takes like any new tensor.

    The Jacobians are mostly zeros, and writing them is nearly all the work: a pass over
    memory, bound by its bandwidth. So the fill uses the worker's intra-op threads, as every
    other computation of the worker does. With several, torch zeroes the whole Jacobian and
    copies the entries that are not zero, each spread over the threads: on a 16-core machine
    numpy's one-thread fill of the benchmark's conv1d (53 MB) took 2.8 ms where torch's zeros
    took 0.3 ms. With one thread (a worker per core, the steadiest when cores are shared:
    threads that wait for one another wait for the slowest), numpy fills a block of about
    ``CHUNK_BYTES`` at a time: the block is zeroed, then its entries that are not zero are
    written while its lines are still in the cache (zeroing all first and writing the band
    after would fetch every line of the band back from memory); 1.3 times torch's zeros alone.
    Elsewhere (a GPU, a dtype numpy lacks, tensors that require grad) torch does both in one
    pass each. Either way the result records no autograd graph.

    Args:
        jac: the Jacobian, uninitialised (or recycled), its first dimension the filters.
        placements: where its entries that are not zero go.
        recycled: ``jac``'s lease, where the pool gave it, or ``None``.

    Returns:
        ``jac``, filled.
    """
    if recycled is None:
        return _fill_whole(jac, placements)
    regions = [
        (tuple(view.shape), view.stride(), int(view.storage_offset())) for view, _ in placements
    ]
    if recycled.fresh:
        _fill_whole(jac, placements)
        recycled.written_whole(regions)  # only now: a fill cut short leaves it as new
        return jac
    recycled.will_write(regions)
    with torch.no_grad():
        for target, values in placements:
            target.copy_(values)
    return jac


def _fill_whole(jac: torch.Tensor, placements: Sequence[Placement]) -> torch.Tensor:
    """``fill`` of a tensor written whole, zeros included (see there)."""
    one_thread = torch.get_num_threads() == 1
    if one_thread and jac.device.type == "cpu" and jac.dtype in _NUMPY_DTYPES:
        try:
            arrays = [(v.numpy(), s.numpy()) for v, s in placements]
        except RuntimeError:  # tensors numpy cannot share: requiring grad, under torch.func
            pass
        else:
            whole = jac.numpy()
            step = max(1, CHUNK_BYTES // max(1, whole[0].nbytes))
            for lo in range(0, jac.shape[0], step):
                block = slice(lo, lo + step)
                whole[block].fill(0)
                for view, source in arrays:
                    np.copyto(view[block], source if source.shape[0] == 1 else source[block])
            return jac
    # No graph is recorded, as on the numpy path: a Jacobian here is an answer, not a step of
    # a computation to differentiate (and the views were taken before any write). Only a
    # source that requires grad would record one; the check is cheaper than entering
    # no_grad, whose Python is a tenth of a small Jacobian's time.
    if torch.is_grad_enabled() and any(values.requires_grad for _, values in placements):
        with torch.no_grad():
            return _fill_whole(jac, placements)
    jac.zero_()
    for target, values in placements:
        target.copy_(values)  # broadcast over the filters where the source has one
    return jac


def output_size(
    size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> tuple[int, ...]:
    """Spatial output size: ``floor((in + P_left + P_right - D(K - 1) - 1) / S) + 1``."""
    return tuple(
        (n + left + right - d * (k - 1) - 1) // s + 1
        for n, k, s, d, (left, right) in zip(size, kernel, stride, dilation, pads, strict=True)
    )


def windows(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """``xpad[c, S o + D k]`` for every output position o and tap k, shaped (1, *O, C, *K).

    One strided view of the (padded) input, nothing copied: o moves by S and k by D along
    each spatial dimension. The leading 1 broadcasts it over the filters. A single view
    rather than ``unfold`` and slicing: on a GPU each view is a dispatch of its own, and
    those dispatches, not the copies, are most of a small Jacobian's time.
    """
    flat_pads = [p for pair in reversed(pads) for p in pair]
    padded = F.pad(x, flat_pads) if any(flat_pads) else x  # (C, *Npad)
    zero = [(0, 0)] * len(kernel)
    out = output_size(padded.shape[1:], kernel, stride, dilation, zero)
    steps = padded.stride()
    spatial = steps[1:]
    return padded.as_strided(
        (1, *out, padded.shape[0], *kernel),
        (
            0,
            *(s * step for s, step in zip(stride, spatial, strict=True)),
            steps[0],
            *(d * step for d, step in zip(dilation, spatial, strict=True)),
        ),
        padded.storage_offset(),
    )


def jacobian_wrt_weight(
    weight: torch.Tensor,
    x: torch.Tensor,
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """dy/dW, shaped (F, *O, F, C, *K): the input window of o on the diagonal f = g."""
    filters, kernel = weight.shape[0], tuple(weight.shape[2:])
    patches = windows(x, kernel, stride, dilation, pads)  # (1, *O, C, *K)
    dims = len(kernel)
    out = patches.shape[1 : 1 + dims]
    jac, recycled = new_jacobian(weight, (filters, *out, filters, *patches.shape[1 + dims :]))
    # The f = g diagonal, a strided view (F, *O, C, *K): f moves along both filter dimensions.
    steps = jac.stride()
    diagonal = jac.as_strided(
        (filters, *out, *patches.shape[1 + dims :]),
        (steps[0] + steps[1 + dims], *steps[1 : 1 + dims], *steps[2 + dims :]),
        jac.storage_offset(),
    )
    return fill(jac, [(diagonal, patches)], recycled)


def jacobian_wrt_bias(
    weight: torch.Tensor,
    x: torch.Tensor,
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """dy/db, shaped (F, *O, F): ones on the diagonal f = g."""
    filters, kernel = weight.shape[0], tuple(weight.shape[2:])
    out = output_size(x.shape[1:], kernel, stride, dilation, pads)
    jac = weight.new_zeros((filters, *out, filters))  # small: F * O * F entries
    jac.diagonal(dim1=0, dim2=1 + len(out)).fill_(1)
    return jac


def jacobian_wrt_input(
    weight: torch.Tensor,
    x: torch.Tensor,
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """dy/dx, shaped (F, *O, C, *N): ``W[f, c, k]`` placed at ``p = S o + D k - P_left``
    (where to, see ``input_placements``)."""
    shape, parts = input_placements(
        tuple(weight.shape),
        weight.stride(),
        tuple(x.shape[1:]),
        tuple(stride),
        tuple(dilation),
        tuple((left, right) for left, right in pads),
    )
    jac, recycled = new_jacobian(weight, shape)  # contiguous, as the placements assume
    base = weight.storage_offset()
    placements = [
        (jac.as_strided(*view), weight.as_strided(size, steps, base + offset))
        for view, (size, steps, offset) in parts
    ]
    return fill(jac, placements, recycled)


InputPlan = tuple[tuple[int, ...], tuple[tuple[Strided, Strided], ...]]
"""dy/dx's shape, and each placement as (its view of the contiguous Jacobian, the view of
the weight that it takes, the offset relative to the weight's own)."""

PlanKey = tuple[
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[tuple[int, int], ...],
]
"""``input_placements``'s arguments: the weight's shape and strides, the input's size, the
stride, the dilation and the padding."""

_INPUT_PLANS: dict[PlanKey, InputPlan] = {}
PLANS_KEPT = 256
"""Plans kept for reuse (those of a few placements only; see ``input_placements``)."""


def input_placements(
    weight_shape: tuple[int, ...],
    weight_steps: tuple[int, ...],
    size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
) -> InputPlan:
    """Where the weight's entries go in dy/dx, shaped (F, *O, C, *N).

    The entries (f, o, c, p(o, k)) form a strided view of the Jacobian: p moves by S when o
    moves by 1 and by D when k does, so o's stride is ``stride(o) + S stride(p)``, k's is
    ``D stride(p)``, and ``-P_left stride(p)`` is a constant offset. Where every tap of o
    lands inside the input (the interior) the whole kernel is one strided copy of ``W``,
    written tap after tap along memory; near a padded border, where some taps read padding
    (no derivative), each tap is copied over the output positions it reaches.

    Only integers go in, so a plan is kept and reused by the next request of the same shapes
    (those of a few placements: a padded 2-D kernel has one per tap and border). Working it
    out is Python, as long as the copies themselves for a small Jacobian on a GPU.
    """
    key: PlanKey = (weight_shape, weight_steps, size, stride, dilation, pads)
    plan = _INPUT_PLANS.get(key)
    if plan is None:
        plan = _input_plan(key)
        if len(plan[1]) <= 16:
            if len(_INPUT_PLANS) >= PLANS_KEPT:
                _INPUT_PLANS.clear()  # start over: atomic, unlike evicting one among threads
            _INPUT_PLANS[key] = plan
    return plan


def _input_plan(key: PlanKey) -> InputPlan:
    weight_shape, weight_steps, size, stride, dilation, pads = key
    filters, channels, kernel = weight_shape[0], weight_shape[1], weight_shape[2:]
    dims = len(kernel)
    out = output_size(size, kernel, stride, dilation, pads)
    shape = (filters, *out, channels, *size)
    strides = contiguous_strides(shape)
    o_steps = [strides[1 + d] + stride[d] * strides[2 + dims + d] for d in range(dims)]
    p_steps = [strides[2 + dims + d] for d in range(dims)]
    parts: list[tuple[Strided, Strided]] = []

    def reach(d: int, shift: int) -> tuple[int, int]:
        """The range of o with ``0 <= S o + shift < N`` in dimension d."""
        first = max(0, -(shift // stride[d]))
        return first, max(first, min(out[d], (size[d] - 1 - shift) // stride[d] + 1))

    def place(box: Sequence[tuple[int, int]], taps: Sequence[slice | int]) -> None:
        """Place ``W[:, :, taps]`` at the output positions in ``box``."""
        sizes = [hi - lo for lo, hi in box]
        if min(sizes, default=1) <= 0:
            return
        offset, source_offset = 0, 0
        tap_sizes, tap_steps, source_steps = [], [], []
        for d, ((lo, _), tap) in enumerate(zip(box, taps, strict=True)):
            first_tap = tap if isinstance(tap, int) else 0
            offset += lo * o_steps[d] + (dilation[d] * first_tap - pads[d][0]) * p_steps[d]
            source_offset += first_tap * weight_steps[2 + d]
            if isinstance(tap, slice):
                tap_sizes.append(kernel[d])
                tap_steps.append(dilation[d] * p_steps[d])
                source_steps.append(weight_steps[2 + d])
        view = (
            (filters, *sizes, channels, *tap_sizes),
            (strides[0], *o_steps, strides[1 + dims], *tap_steps),
            offset,
        )
        # W[:, :, taps] as (F, 1.., C, *tap_sizes), broadcast over the output positions.
        source = (
            (filters, *([1] * dims), channels, *tap_sizes),
            (weight_steps[0], *([0] * dims), weight_steps[1], *source_steps),
            source_offset,
        )
        parts.append((view, source))

    # Per dimension: the interior (every tap inside) and the borders on either side of it.
    segments = []
    for d in range(dims):
        lo = reach(d, -pads[d][0])[0]
        hi = max(lo, reach(d, dilation[d] * (kernel[d] - 1) - pads[d][0])[1])
        segments.append([(0, lo, False), (lo, hi, True), (hi, out[d], False)])
    for segment in itertools.product(*segments):
        box = [(lo, hi) for lo, hi, _ in segment]
        if any(hi <= lo for lo, hi in box):
            continue  # an empty border (no padding there): nothing to place, tap by tap
        if all(inside for _, _, inside in segment):
            place(box, [slice(None)] * dims)
            continue
        for tap in itertools.product(*(range(k) for k in kernel)):
            reached = [reach(d, dilation[d] * tap[d] - pads[d][0]) for d in range(dims)]
            clipped = [
                (max(lo, r_lo), min(hi, r_hi))
                for (lo, hi), (r_lo, r_hi) in zip(box, reached, strict=True)
            ]
            place(clipped, tap)
    return shape, tuple(parts)
