"""Variants: the seed is HMAC-SHA256(secret, "assignment/problem/student") as documented, the
draws follow the file's distributions, and references resolve to the drawn values."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
import torch

from service.grading.catalogue import AssignmentFileError, load_catalogue, parse_assignment
from service.grading.checker import spec_validator
from service.grading.schema import GivenSpec
from service.grading.variants import draw_given, given_names, make_variant, resolve, variant_seed
from service.settings import Settings
from tests.grading.sample import SAMPLE

SECRET = b"a-secret-of-thirty-two-bytes-...."


def test_the_seed_is_the_documented_hmac() -> None:
    # What a TA can recompute offline with any HMAC implementation.
    mac = hmac.new(SECRET, b"cnn-rnn/1.1c-i/alice", hashlib.sha256).hexdigest()
    assert variant_seed(SECRET, "cnn-rnn", "1.1c-i", "alice") == int(mac[:16], 16)


def test_every_part_of_the_message_changes_the_seed() -> None:
    seeds = {
        variant_seed(SECRET, "cnn-rnn", "1.1c-i", "alice"),
        variant_seed(SECRET[::-1], "cnn-rnn", "1.1c-i", "alice"),
        variant_seed(SECRET, "cnn-rnn2", "1.1c-i", "alice"),
        variant_seed(SECRET, "cnn-rnn", "1.1c-ii", "alice"),
        variant_seed(SECRET, "cnn-rnn", "1.1c-i", "alicE"),
    }
    assert len(seeds) == 5


def generator(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_integers_cover_low_to_high_inclusive() -> None:
    spec = GivenSpec(shape=[4000], distribution="uniform", low=-3, high=3, integer=True)
    values = draw_given(spec, generator())
    assert values.dtype == torch.float64
    assert set(values.tolist()) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}


def test_decimals_round_and_stay_in_range() -> None:
    spec = GivenSpec(shape=[50, 40], distribution="uniform", low=-1, high=1, decimals=1)
    values = draw_given(spec, generator())
    assert values.shape == (50, 40)
    assert torch.equal(torch.round(values * 10), values * 10)
    assert values.min() >= -1 and values.max() <= 1


def test_normal_has_the_mean_and_spread_asked_for() -> None:
    values = draw_given(
        GivenSpec(shape=[4096], distribution="normal", mean=5, std=0.5), generator()
    )
    assert abs(values.mean().item() - 5) < 0.05 and abs(values.std().item() - 0.5) < 0.05
    rounded = draw_given(
        GivenSpec(shape=[100], distribution="normal", std=3, integer=True), generator()
    )
    assert torch.equal(rounded, torch.round(rounded))


def test_a_fixed_value_is_the_same_for_everyone() -> None:
    spec = GivenSpec(value=[[1, 2], [3, 4]])
    assert torch.equal(draw_given(spec, generator(1)), draw_given(spec, generator(2)))
    assert draw_given(spec, generator()).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_the_draw_is_torchs_generator_seeded_with_the_hmac() -> None:
    problem = parse_assignment(SAMPLE, "sample.toml").problems[0]
    variant = make_variant(SECRET, "sample", problem, "alice")
    again = torch.Generator().manual_seed(variant_seed(SECRET, "sample", "p1", "alice"))
    expected = torch.randint(-3, 4, (2, 3), generator=again, dtype=torch.float64)
    assert torch.equal(variant.given["v"], expected)
    # the reference holds the same numbers, as ints since the tensor is integer-valued
    assert variant.expected == {"op": "value", "value": expected.to(torch.int64).tolist()}
    assert isinstance(variant.expected["value"][0][0], int)


def test_resolve_replaces_references_at_any_depth_and_nothing_else() -> None:
    spec = {
        "op": "forward",
        "params": {"w": {"given": "w"}},
        "input_size": [{"given": "h"}, 5],
        "config": {"given": "not-a-reference", "k": 2},
    }
    resolved = resolve(spec, {"w": [[1.5]], "h": 21})
    assert resolved == {
        "op": "forward",
        "params": {"w": [[1.5]]},
        "input_size": [21, 5],
        "config": {"given": "not-a-reference", "k": 2},
    }
    assert spec["params"] == {"w": {"given": "w"}}  # the file's spec is left as it was


@pytest.mark.parametrize("student", ["alice", "bob", "ÉLÈVE 42", "a/b/c"])
def test_any_student_id_draws_reproducibly(student: str) -> None:
    problem = parse_assignment(SAMPLE, "sample.toml").problems[0]
    first = make_variant(SECRET, "sample", problem, student)
    second = make_variant(SECRET, "sample", problem, student)
    assert torch.equal(first.given["v"], second.given["v"])


def test_a_models_arguments_are_named_after_their_given_tensors() -> None:
    """The feedback says dy/dW, as the statement does, where the spec binds weight to W."""
    spec = {
        "op": "jacobian",
        "model": "conv1d",
        "params": {"weight": {"given": "W"}},
        "inputs": {"x": {"given": "x"}},
        "grad_outputs": {"y": {"given": "dl_dy"}},
        "of": "y",
        "wrt": "x",
    }
    assert given_names(spec) == {"weight": "W"}  # x is x; an upstream gradient is no name
    assert given_names({**spec, "params": {"weight": [[[1.0]]]}}) == {}
    assert given_names({"op": "value", "value": {"given": "W"}}) == {}


NAMED_JACOBIAN = """
id = "named"
title = "Names of a file's own"

[[problems]]
id = "j"
title = "dy/dW"
statement = "f_W(x) = W * x: give df/dW."
points = 1
answer_kind = "tensor"

[problems.given.W]
shape = [1, 1, 2]
distribution = "uniform"
low = -1
high = 1
decimals = 1

[problems.given.x]
shape = [1, 4]
distribution = "uniform"
low = -1
high = 1
decimals = 1

[problems.expected]
op = "jacobian"
model = "conv1d"
params = { weight = { given = "W" } }
inputs = { x = { given = "x" } }
of = "y"
wrt = "weight"
names = NAMES
"""


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ('{ y = "f_W" }', {"weight": "W", "y": "f_W"}),
        ('{ weight = "Wt" }', {"weight": "Wt"}),  # the file's own name wins
    ],
)
def test_an_assignment_file_may_name_a_models_tensors_itself(
    names: str, expected: dict[str, str]
) -> None:
    problem = parse_assignment(NAMED_JACOBIAN.replace("NAMES", names), "named.toml").problems[0]
    variant = make_variant(SECRET, "named", problem, "alice")
    assert variant.expected["names"] == expected


def test_an_assignment_file_that_names_two_tensors_alike_does_not_load(tmp_path: Path) -> None:
    """y called W beside the weight given as W: the feedback would say dW/dW."""
    (tmp_path / "named.toml").write_text(NAMED_JACOBIAN.replace("NAMES", '{ y = "W" }'))
    validate = spec_validator(Settings())
    with pytest.raises(AssignmentFileError) as raised:
        load_catalogue([(tmp_path, "mine")], SECRET, validate)
    assert str(raised.value) == (
        "mine/named.toml: problems[0] (j).expected: names.weight: weight cannot be called 'W': "
        "y is called that too (names.y), and the label and the diagnoses would name the two "
        "alike; give each tensor a name of its own"
    )
    (tmp_path / "named.toml").write_text(NAMED_JACOBIAN.replace("NAMES", '{ y = "f_W" }'))
    assert load_catalogue([(tmp_path, "mine")], SECRET, validate).assignments
