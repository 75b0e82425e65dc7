"""The key of a tensor check: the reference of ``forward``, ``backward``, ``jacobian``,
``state_jacobians`` or ``value``, computed once and kept with what produced it, so that a
diagnosis can recompute it with a mistake made.

Everything goes through the registry and ``service.compute.prepare``: a check computes
exactly what the model endpoints answer, for any registered model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from models import autodiff
from models.errors import ModelError, UnknownName
from models.registry import MODELS, ReferenceModel, get_model
from service.compute import (
    Prepared,
    check_jacobian_budget,
    check_state_jacobian_budget,
    closed_form_flops,
    closed_form_seconds,
    computing,
    decode_grad_outputs,
    estimated_seconds,
    new_budget,
    prepare,
    vector_jacobian_products,
)
from service.gate import ComputeGate
from service.grading.errors import GradingError
from service.grading.schemas import (
    BackwardExpected,
    ForwardExpected,
    JacobianExpected,
    ModelExpected,
    StateJacobiansExpected,
    ValueExpected,
)
from service.metrics import compute_timer
from service.problems import Problem
from service.settings import Settings
from service.tensors import decode

Tensors = dict[str, torch.Tensor]


@dataclass
class ModelSource:
    """How a key was computed: the op on a prepared model request, and the selected tensor.

    ``tensors`` holds every tensor the op answered (all outputs, all gradients, every tensor
    of the state Jacobians) by name, on the CPU in float64: the "other" answers a student may
    have given by mistake.
    """

    op: str
    prepared: Prepared
    settings: Settings
    select: str
    tensors: Tensors
    of: str = ""
    wrt: str = ""
    grad_outputs: Tensors = field(default_factory=dict)
    seconds: float = 0.0
    """How long the key itself took to compute."""
    spent: float = 0.0
    """How long the diagnoses' recomputations have taken so far."""
    _outputs: Tensors | None = field(default=None, repr=False, compare=False)
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """What several mistakes derive from the key's run alike, worked out once (by name)."""

    @property
    def model(self) -> ReferenceModel:
        return self.prepared.model

    def _affordable(self, estimate: float) -> bool:
        """Whether a recomputation of about ``estimate`` seconds still fits: the key and all
        its diagnoses' recomputations together stay within the compute deadline, so a
        diagnosis never makes a check take much longer than its key was allowed to."""
        deadline = self.settings.compute_deadline_seconds
        return self.seconds + self.spent + estimate <= deadline

    def compute(
        self, args: Mapping[str, torch.Tensor], prepared: Prepared | None = None, scale: float = 1
    ) -> torch.Tensor | None:
        """The same op and selection on other arguments (``None`` if it cannot be computed,
        or would take longer than what is left of the deadline: it takes as long as the key,
        ``scale`` times that where it answers ``scale`` times the elements), of ``prepared``
        where given (another config of the model)."""
        if not self._affordable(self.seconds * scale):
            return None
        started = time.perf_counter()
        prepared = prepared or self.prepared
        try:
            tensors = _run(self.op, prepared, dict(args), self.of, self.wrt, self.grad_outputs)
        except (ModelError, RuntimeError):
            return None
        finally:
            self.spent += time.perf_counter() - started
        tensor = tensors.get(self.select)
        return None if tensor is None else on_cpu(tensor)

    def compute_config(
        self, config: Any, shape: tuple[int, ...], args: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """The same op and selection with another config of the model (a conv's stride left
        out, say), on the key's arguments or ``args``; ``None`` as ``compute``. ``shape`` is
        what ``selected_shape`` says it answers, which the caller has compared with an
        answer's first: the answer bounds what this computes."""
        key = self.tensors.get(self.select)
        scale = max(1.0, math.prod(shape) / max(1, key.numel() if key is not None else 1))
        changed = dataclasses.replace(self.prepared, config=config)
        return self.compute(self.prepared.args if args is None else args, changed, scale)

    def selected_shape(self, config: Any) -> tuple[int, ...] | None:
        """The shape ``compute_config`` would answer, from the declared shapes alone (``None``
        where the config does not fit them, or the op is not ``forward`` or ``jacobian``: the
        others are given tensors, ``backward``'s gradient of y, shaped for the key's config)."""
        try:
            outputs = self.model.output_shapes(config, self.prepared.arg_shapes)
        except ModelError:
            return None
        if self.op == "forward":
            return outputs.get(self.select)
        if self.op == "jacobian" and self.of in outputs:
            return outputs[self.of] + self.prepared.arg_shapes[self.wrt]
        return None

    def jacobian(self, of: str, wrt: str) -> torch.Tensor | None:
        """d(of)/d(wrt) on the key's arguments, or ``None`` when over budget, estimated longer
        than what is left of the deadline, or not defined."""
        products = math.prod(self.prepared.output_shapes[of])
        if not self._affordable(estimated_seconds(self.prepared, products, self.settings)):
            return None
        started = time.perf_counter()
        try:
            check_jacobian_budget(self.prepared, of, wrt, self.settings)
            result, _ = autodiff.jacobian(
                self.model, self.prepared.config, self.prepared.args, of, wrt
            )
        except (ModelError, Problem, RuntimeError):
            return None
        finally:
            self.spent += time.perf_counter() - started
        return on_cpu(result)

    def forward(self) -> Tensors:
        """Every output of the model on the key's arguments (computed once: several mistakes
        read ``h``, ``c`` or ``a``)."""
        if self._outputs is None:
            with torch.no_grad():
                outputs = self.model.forward(self.prepared.config, self.prepared.args)
            self._outputs = {name: on_cpu(t) for name, t in outputs.items()}
        return self._outputs


@dataclass
class TensorKey:
    """A reference tensor (CPU, float64) with what it is, for reports and diagnoses."""

    tensor: torch.Tensor
    label: str
    axes: tuple[str, ...]
    source: ModelSource | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    """What the question calls the model's arguments and outputs (``weight`` -> ``W``)."""

    def axis(self, index: int) -> str:
        return self.axes[index] if index < len(self.axes) else f"axis {index}"

    def called(self, name: str) -> str:
        """An argument or output as the question calls it: what the student read."""
        return self.names.get(name, name)


def on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the keys hold theirs: detached, on the CPU, float64, contiguous."""
    return tensor.detach().to(device="cpu", dtype=torch.float64).contiguous()


def _run(
    op: str, prepared: Prepared, args: Tensors, of: str, wrt: str, grad_outputs: Tensors
) -> dict[str, Any]:
    """Every tensor an op answers, by name, on ``args``."""
    model, config = prepared.model, prepared.config
    if op == "forward":
        with torch.no_grad():
            return dict(model.forward(config, args))
    if op == "backward":
        _, grads, extras = autodiff.backward(model, config, args, grad_outputs)
        return {**grads, **extras}
    if op == "jacobian":
        result, _ = autodiff.jacobian(model, config, args, of, wrt)
        return {"jacobian": result}
    assert model.state_jacobians is not None
    with torch.no_grad():
        return dict(model.state_jacobians(config, args))


def _pick(select: str | None, tensors: Mapping[str, Any], what: str, model: str) -> str:
    """The selected tensor's name: ``select``, or the only tensor there is."""
    names = [n for n, t in tensors.items() if isinstance(t, torch.Tensor)]
    if select is None:
        if len(names) == 1:
            return names[0]
        raise GradingError(
            f"{model}'s {what} has several tensors ({', '.join(names)}); "
            "say which one the answer is with `select`",
            "select",
        )
    name = select.removeprefix("grads.")
    if name not in tensors:
        raise UnknownName(
            f"{model}'s {what} has no {select!r}; `select` one of {', '.join(names)}", "select"
        )
    if name not in names:
        raise GradingError(
            f"{select!r} of {model}'s {what} is not a tensor; `select` one of {', '.join(names)}",
            "select",
        )
    return name


def model_key(
    expected: ModelExpected, settings: Settings, gate: ComputeGate, spent: float = 0.0
) -> TensorKey:
    """Compute the reference of a model op once, the way the model endpoints do: the same
    budgets, and under the same compute deadline and device slot (``computing``).

    ``spent``: seconds the request's keys before this one took; the deadline covers them too
    (a batch's keys share it), so a key estimated longer than what is left is refused.

    Raises:
        ModelError, GradingError, Problem: what the model endpoints would refuse, with
            ``where`` relative to ``expected``.
    """
    model = get_model(expected.model)
    if isinstance(expected, StateJacobiansExpected) and model.state_jacobians is None:
        having = [m.name for m in MODELS.values() if m.state_jacobians is not None]
        raise GradingError(
            f"{model.name} has no state Jacobians (it is not recurrent); the models that have "
            f"them: {', '.join(having) or 'none'}",
            "op",
        )
    _check_names(model, expected.names)
    prepared = prepare(model.name, expected, settings)
    of = wrt = ""
    grad_outputs: Tensors = {}
    if isinstance(expected, JacobianExpected):
        check_jacobian_budget(prepared, expected.of, expected.wrt, settings)
        of, wrt = expected.of, expected.wrt
    if isinstance(expected, BackwardExpected):
        grad_outputs = decode_grad_outputs(prepared, expected.grad_outputs)
    if isinstance(expected, StateJacobiansExpected):
        check_state_jacobian_budget(prepared, settings)
    products = vector_jacobian_products(prepared, expected.op, of, wrt)
    # Timed under the label of the endpoint the op stands for, beside the endpoints' own.
    with (
        computing(
            prepared,
            settings,
            gate,
            vector_jacobian_products=products,
            closed_form=closed_form_flops(prepared, expected.op, of, wrt),
            closed_form_seconds=closed_form_seconds(prepared, expected.op),
            spent=spent,
        ),
        compute_timer(model.name, expected.op.replace("_", "-"), prepared.device),
    ):
        started = time.perf_counter()
        tensors = _run(expected.op, prepared, prepared.args, of, wrt, grad_outputs)
        seconds = time.perf_counter() - started
    select = getattr(expected, "select", None)
    what = {"forward": "forward pass", "backward": "backward pass"}.get(
        expected.op, expected.op.replace("_", " ")
    )
    name = _pick(select, tensors, what, model.name)
    everything = {n: on_cpu(t) for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    key = everything[name]
    if not bool(torch.isfinite(key).all()):
        raise GradingError(
            f"the reference {name} has non-finite values (the computation overflows); "
            "choose smaller weights or inputs",
            "",
        )
    source = ModelSource(
        expected.op, prepared, settings, name, everything, of, wrt, grad_outputs, seconds
    )
    return TensorKey(
        key,
        _label(expected, name),
        _axes(model, expected, name),
        source,
        dict(expected.names),
    )


def _check_names(model: ReferenceModel, names: Mapping[str, str]) -> None:
    """Every renamed tensor is one of the model's (a misspelt key would rename nothing), and
    every tensor keeps a name of its own: the label and the diagnoses name tensors by these
    names alone, so weight called x would make dy/dx of the Jacobian against x answered for
    dy/dweight read "This is dy/dx, ...; the question asks for dy/dx". A name is refused if it
    is another tensor's name here or the model's own name of another tensor (a swap, weight
    called x and x called weight, reads as the question about the other one)."""
    kinds = {
        **{spec.name: "output" for spec in model.outputs},
        **{spec.name: "input" for spec in model.inputs},
        **{spec.name: "parameter" for spec in model.params},
    }
    known = [spec.name for spec in (*model.arguments, *model.outputs)]
    for name in names:
        if name not in known:
            raise UnknownName(
                f"{model.name} has no argument or output {name!r} to name; it has "
                f"{', '.join(known)}",
                f"names.{name}",
            )
    for name, called in names.items():
        for other in known:
            if other == name:
                continue
            if called == other:
                why = f"that is {model.name}'s own name of its {kinds[other]} {other}"
            elif called == names.get(other):
                why = f"{other} is called that too (names.{other})"
            else:
                continue
            raise GradingError(
                f"{name} cannot be called {called!r}: {why}, and the label and the diagnoses "
                "would name the two alike; give each tensor a name of its own",
                f"names.{name}",
            )


def _label(expected: ModelExpected, name: str) -> str:
    called = expected.names.get
    if isinstance(expected, JacobianExpected):
        return f"d{called(expected.of, expected.of)}/d{called(expected.wrt, expected.wrt)}"
    if isinstance(expected, BackwardExpected):
        # In the homework's words: a student never sees the field's name.
        return f"dl/d{called(name, name)}" if name != "state_grads" else "dl/dh[t] through time"
    if isinstance(expected, ForwardExpected):
        return f"output {called(name, name)}"
    if name == "jacobians":
        return "jacobians (dh[t]/dh[t-1] for every t)"
    return called(name, name)


def _axes(model: ReferenceModel, expected: ModelExpected, name: str) -> tuple[str, ...]:
    """A name for each axis of the key, from the model's symbolic shapes where it has them."""
    if isinstance(expected, JacobianExpected):
        out = model.output(expected.of).shape
        arg = model.argument(expected.wrt).shape
        of = expected.names.get(expected.of, expected.of)
        wrt = expected.names.get(expected.wrt, expected.wrt)
        return tuple(f"{of}:{s}" for s in out) + tuple(f"{wrt}:{s}" for s in arg)
    if isinstance(expected, ForwardExpected):
        return model.output(name).shape
    if isinstance(expected, BackwardExpected):
        for spec in (*model.arguments, *model.extras):
            if spec.name == name:
                return spec.shape
        return ()
    if name == "jacobians":
        return ("T", "h[t]", "h[t-1]")
    return ()


def value_key(expected: ValueExpected, settings: Settings) -> TensorKey:
    """A key given directly (``"value"``), decoded with the request's budgets."""
    array = decode(expected.value, "value", new_budget(settings))
    tensor = torch.from_numpy(array.astype("float64", copy=True))
    return TensorKey(tensor, expected.label or "the value", ())
