"""Plots of a diagnosed loss curve, as PNG or SVG bytes (matplotlib, Agg backend).

Figures are built with ``matplotlib.figure.Figure`` on their own Agg canvas, never through
``pyplot``: no global figure registry or backend switch, so concurrent requests in the thread
pool share no state and no display is ever needed.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from service.grading.loss_curve import CurveDiagnosis

PlotFormat = Literal["png", "svg"]
MAX_PLOTTED_EPOCHS = 10_000
"""Most epochs one plot draws: about ten times its width in pixels. Every epoch is a marker
and a segment of each curve, so 1M epochs were a 250 MB SVG and 45 s of drawing."""
MEDIA_TYPES: dict[PlotFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}

_MEAN_STYLE: dict[str, Any] = {
    "color": "tab:blue",
    "marker": "o",
    "markersize": 3,
    "linewidth": 1.8,
}
_LAST_STYLE: dict[str, Any] = {
    "color": "tab:orange",
    "marker": ".",
    "linestyle": "--",
    "linewidth": 1.2,
}
_CHANCE_STYLE: dict[str, Any] = {"color": "gray", "linestyle": ":", "linewidth": 1.2}


def _loss_axes(ax: Axes, diagnosis: CurveDiagnosis) -> None:
    epochs = list(range(len(diagnosis.epoch_mean)))
    ax.plot(epochs, diagnosis.epoch_mean, label="epoch mean (all batches)", **_MEAN_STYLE)
    ax.plot(epochs, diagnosis.last_batch, label="last batch of the epoch", **_LAST_STYLE)
    ax.axhline(
        diagnosis.expected_initial_loss,
        label=f"chance: log {diagnosis.num_classes} = {diagnosis.expected_initial_loss:.3f}",
        **_CHANCE_STYLE,
    )
    if diagnosis.spikes:
        ax.scatter(
            diagnosis.spikes,
            [diagnosis.last_batch[e] for e in diagnosis.spikes],
            s=90,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            zorder=3,
            label="spike",
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("Loss")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _accuracy_axes(
    ax: Axes, diagnosis: CurveDiagnosis, means: list[float], lasts: list[float]
) -> None:
    epochs = list(range(len(means)))
    ax.plot(epochs, means, label="epoch mean (all batches)", **_MEAN_STYLE)
    ax.plot(epochs, lasts, label="last batch of the epoch", **_LAST_STYLE)
    ax.axhline(
        diagnosis.chance_accuracy,
        label=f"chance: 1/{diagnosis.num_classes} = {diagnosis.chance_accuracy:.3g}",
        **_CHANCE_STYLE,
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def render(diagnosis: CurveDiagnosis, fmt: PlotFormat) -> bytes:
    """The loss curves (and the accuracy curves when given) side by side, as the seed plots.

    Args:
        diagnosis: from ``service.grading.loss_curve.diagnose``.
        fmt: ``png`` or ``svg``.

    Returns:
        The encoded image.
    """
    with_accuracy = diagnosis.accuracy_epoch_mean is not None
    figure = Figure(figsize=(11 if with_accuracy else 6.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, *rest = figure.subplots(1, 2 if with_accuracy else 1, squeeze=False)[0]
    _loss_axes(loss_ax, diagnosis)
    if rest and diagnosis.accuracy_epoch_mean and diagnosis.accuracy_last_batch:
        _accuracy_axes(
            rest[0], diagnosis, diagnosis.accuracy_epoch_mean, diagnosis.accuracy_last_batch
        )
    buffer = io.BytesIO()
    # No creation date in the metadata, so the same curve gives the same bytes.
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    figure.savefig(buffer, format=fmt, dpi=100, metadata=metadata)
    return buffer.getvalue()
