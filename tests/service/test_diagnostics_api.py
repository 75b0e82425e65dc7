"""POST /v1/diagnostics/loss-curve: the diagnosis as JSON, the plots, and bad curves as 4xx."""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from matplotlib.image import imread

from service.app import create_app
from service.examples import SEED_BATCH_ACCURACIES, SEED_BATCH_LOSSES
from service.plots import MAX_PLOTTED_EPOCHS
from service.routes.diagnostics import LossCurveRequest
from service.routing import FastJSONRoute, body_error_words, non_finite_hint
from service.settings import Settings

PATH = "/v1/diagnostics/loss-curve"
API_EXAMPLE = {"batch_losses": [[1.41, 1.38, 1.35], [1.1, 0.9, 3.4]], "num_classes": 4}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def small_budget() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(loss_curve_max_values=10))) as test_client:
        yield test_client


def test_api_example(client: TestClient) -> None:
    response = client.post(PATH, json=API_EXAMPLE | {"batch_accuracies": None})
    assert response.status_code == 200
    body = response.json()
    assert body["epoch_mean"] == pytest.approx([(1.41 + 1.38 + 1.35) / 3, (1.1 + 0.9 + 3.4) / 3])
    assert body["last_batch"] == [1.35, 3.4]
    assert body["spikes"] == [1]
    assert body["expected_initial_loss"] == pytest.approx(math.log(4))
    assert body["expected_initial_loss"] == pytest.approx(1.386, abs=5e-4)
    assert body["chance_accuracy"] == 0.25
    assert body["looks_like_last_batch_reporting"] is True
    assert body["spike_details"][0]["true_class_probability"] == pytest.approx(math.exp(-3.4))
    assert any("last-batch reporting" in f for f in body["findings"])


def test_an_accuracy_curve_sent_as_the_loss_is_flagged(client: TestClient) -> None:
    """A "loss" rising steadily from 0.25 to 0.92 for 4 classes: the accuracy column."""
    curve = [[round(0.25 + (0.92 - 0.25) * e / 9, 4)] * 3 for e in range(10)]
    body = client.post(PATH, json={"batch_losses": curve, "num_classes": 4}).json()
    assert any("this looks like accuracy" in f for f in body["findings"])
    assert not any("already after some training" in f for f in body["findings"])
    assert body["curve_flags"] == ["rising_loss", "looks_like_accuracy"]
    assert client.post(PATH, json=API_EXAMPLE).json()["curve_flags"] == []


def test_openapi_documents_the_curve_flags(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["LossCurveResponse"]
    flags = schema["properties"]["curve_flags"]
    assert flags["items"]["enum"] == ["rising_loss", "looks_like_accuracy", "rising_after_minimum"]
    for flag in flags["items"]["enum"]:
        assert f"`{flag}`" in flags["description"]


def test_png_plot(client: TestClient) -> None:
    body = {
        "batch_losses": SEED_BATCH_LOSSES,
        "batch_accuracies": SEED_BATCH_ACCURACIES,
        "num_classes": 4,
    }
    response = client.post(PATH, params={"format": "png"}, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    image = imread(io.BytesIO(response.content), format="png")
    height, width = image.shape[:2]
    assert width > height > 100  # two panels side by side


def _svg_texts(content: bytes) -> list[str]:
    """Labels and legend entries of a matplotlib SVG (it writes each text as a comment)."""
    root = ET.fromstring(content)
    assert root.tag == SVG + "svg"
    return [text.strip() for text in re.findall(r"<!--(.*?)-->", content.decode())]


def test_svg_plot_has_labelled_axes_and_legend(client: TestClient) -> None:
    response = client.post(PATH, params={"format": "svg"}, json=API_EXAMPLE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    texts = _svg_texts(response.content)
    for label in (
        "epoch",
        "cross-entropy loss (nats)",
        "epoch mean (all batches)",
        "last batch of the epoch",
        "chance: log 4 = 1.386",
        "spike",
    ):
        assert label in texts
    assert "accuracy" not in texts  # no accuracy panel without accuracies


def test_svg_with_accuracies_has_the_accuracy_panel(client: TestClient) -> None:
    body = API_EXAMPLE | {"batch_accuracies": [[0.2, 0.3, 0.25], [0.5, 0.6, 0.1]]}
    texts = _svg_texts(client.post(PATH, params={"format": "svg"}, json=body).content)
    assert "accuracy" in texts and "chance: 1/4 = 0.25" in texts


def _problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"batch_losses": [], "num_classes": 4}, ["body", "batch_losses"]),
        ({"batch_losses": [[1.0], []], "num_classes": 4}, ["body", "batch_losses", 1]),
        ({"batch_losses": [[1.0, "1.2"]], "num_classes": 4}, ["body", "batch_losses", 0, 1]),
        ({"batch_losses": [[1.0, None]], "num_classes": 4}, ["body", "batch_losses", 0, 1]),
        ({"batch_losses": [[1.0, True]], "num_classes": 4}, ["body", "batch_losses", 0, 1]),
        ({"batch_losses": [1.0, [2.0]], "num_classes": 4}, ["body", "batch_losses", 0]),
        ({"batch_losses": [[[1.0]]], "num_classes": 4}, ["body", "batch_losses", 0, 0]),
        ({"batch_losses": [[1.0]], "num_classes": 1}, ["body", "num_classes"]),
        ({"batch_losses": [[1.0]], "num_classes": 0}, ["body", "num_classes"]),
        ({"batch_losses": [[1.0]], "num_classes": 10**9 + 1}, ["body", "num_classes"]),
        ({"batch_losses": [[1.0]], "num_classes": 2.5}, ["body", "num_classes"]),
        ({"batch_losses": [[1.0]]}, ["body", "num_classes"]),
        ({"batch_losses": [[1.0]], "num_classes": 4, "classes": 4}, ["body", "classes"]),
        ({"batch_losses": [[-1.0]], "num_classes": 4}, ["body", "batch_losses", 0, 0]),
        # Finite, but the sum of the two would overflow a float64.
        (
            {"batch_losses": [[1.0, 6e307, 1.2e308]], "num_classes": 4},
            ["body", "batch_losses", 0, 1],
        ),
        (
            {"batch_losses": [[1.0], [1.0]], "batch_accuracies": [[0.5]], "num_classes": 4},
            ["body", "batch_accuracies"],
        ),
        (
            {"batch_losses": [[1.0]], "batch_accuracies": [[25]], "num_classes": 4},
            ["body", "batch_accuracies", 0, 0],
        ),
    ],
)
def test_bad_curves_are_422(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    problem = _problem(client.post(PATH, json=body))
    assert problem["errors"][0]["loc"] == loc


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(client: TestClient, literal: str) -> None:
    content = f'{{"batch_losses": [[1.0, {literal}]], "num_classes": 4}}'
    response = client.post(PATH, content=content, headers={"content-type": "application/json"})
    problem = _problem(response)
    assert problem["type"].endswith("/non-finite-number")
    column = content.index(literal) + 1
    assert f"`{literal}` at line 1 column {column} is not a JSON number" in problem["detail"]
    assert problem["errors"][0]["msg"] == problem["detail"]


def test_unknown_format_is_422(client: TestClient) -> None:
    _problem(client.post(PATH, params={"format": "jpeg"}, json=API_EXAMPLE))


def test_not_json_is_4xx(client: TestClient) -> None:
    response = client.post(
        PATH, content=b"{batch_losses", headers={"content-type": "application/json"}
    )
    _problem(response)


def test_over_the_value_budget_is_413(small_budget: TestClient) -> None:
    body = {"batch_losses": [[1.0] * 6, [1.0] * 5], "num_classes": 4}
    problem = _problem(small_budget.post(PATH, json=body), 413)
    assert "11" in problem["detail"] and "10" in problem["detail"]
    assert small_budget.post(PATH, json=API_EXAMPLE).status_code == 200


def test_openapi_declares_problems_plots_and_seed_examples(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][PATH]["post"]
    responses = operation["responses"]
    for status in ("413", "422"):
        assert "application/problem+json" in responses[status]["content"]
    assert {"application/json", "image/png", "image/svg+xml"} <= set(responses["200"]["content"])
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert "seed-1.3" in examples
    # The seed example is a valid request that shows the seed's spikes.
    diagnosis = client.post(PATH, json=examples["seed-1.3"]["value"]).json()
    assert diagnosis["spikes"] == [3, 6, 9]


def test_a_plot_of_more_epochs_than_it_can_show_is_a_413(client: TestClient) -> None:
    """1M one-value epochs were a 250 MB SVG after 45 s: plots stop at MAX_PLOTTED_EPOCHS,
    while the JSON diagnosis of the same curve is still given."""
    too_many = {"batch_losses": [[1.0]] * (MAX_PLOTTED_EPOCHS + 1), "num_classes": 4}
    for fmt in ("png", "svg"):
        response = client.post(PATH, params={"format": fmt}, json=too_many)
        assert response.status_code == 413, response.text[:200]
        assert "format=json" in response.json()["detail"]
    assert client.post(PATH, json=too_many).status_code == 200
    enough = {"batch_losses": [[1.0]] * 50, "num_classes": 4}
    assert client.post(PATH, params={"format": "svg"}, json=enough).status_code == 200


def test_a_loss_that_falls_and_climbs_back_is_flagged(client: TestClient) -> None:
    curve = [[v] for v in [1.42, 1.23, 1.09, 1.01, 1.0, 1.02, 1.06, 1.1, 1.14, 1.18, 1.22]]
    body = client.post(PATH, json={"batch_losses": curve, "num_classes": 4}).json()
    assert body["curve_flags"] == ["rising_after_minimum"]
    assert any("this is overfitting" in f for f in body["findings"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_loss_is_said_to_mean_a_diverged_training(
    client: TestClient, number: str
) -> None:
    """Besides asking for finite values: a NaN loss is what a diverged training logs."""
    content = f'{{"batch_losses": [[1.39], [0.9, {number}]], "num_classes": 4}}'
    response = client.post(PATH, content=content, headers={"content-type": "application/json"})
    problem = _problem(response)
    assert problem["type"].endswith("/non-finite-number")
    assert "only finite numbers are accepted" in problem["detail"]
    assert "usually means the training diverged: lower the learning rate" in problem["detail"]
    assert problem["errors"][0]["msg"] == problem["detail"]


@pytest.mark.parametrize(
    "content",
    [
        '{"batch_losses": [[1.39], [0.9]], "batch_accuracies": [[0.25], [NaN]], "num_classes": 4}',
        '{"batch_losses": [[1.39], [0.9]], "num_classes": Infinity}',
    ],
)
def test_the_non_finite_hint_covers_every_value_of_the_curve(
    client: TestClient, content: str
) -> None:
    """A NaN accuracy or an infinite class count is no NaN loss: the hint says a value."""
    response = client.post(PATH, content=content, headers={"content-type": "application/json"})
    problem = _problem(response)
    assert "A NaN or infinite value in a loss curve usually means" in problem["detail"]
    assert "A loss that is NaN" not in problem["detail"]


@pytest.mark.parametrize("above", [True, False])
def test_the_non_finite_hint_holds_above_or_under_the_routes_decorator(above: bool) -> None:
    """Put above the route's decorator, the mark comes after the route built its handler,
    which read the hint then: it was silently ignored (an included router builds its handlers
    again, which hid it there)."""
    app = create_app(Settings())
    app.router.route_class = FastJSONRoute  # the route is built here, and never included

    def endpoint(body: dict[str, float]) -> dict[str, float]:
        return body

    if above:
        non_finite_hint("the hint")(app.post("/p")(endpoint))
    else:
        app.post("/p")(non_finite_hint("the hint")(endpoint))
    with TestClient(app) as test_client:
        response = test_client.post(
            "/p", content='{"x": NaN}', headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["detail"].endswith(". the hint"), response.json()["detail"]


@pytest.mark.parametrize("above", [True, False])
def test_body_error_words_hold_above_or_under_the_routes_decorator(above: bool) -> None:
    """As the non-finite hint: the words are looked up when a body is refused, so a mark put
    after the route was built still rewords its errors."""
    app = create_app(Settings())
    app.router.route_class = FastJSONRoute

    def endpoint(body: dict[str, float]) -> dict[str, float]:
        return body

    def words(errors: Sequence[Any], body: Any) -> list[Any]:
        return [{**error, "msg": "reworded"} for error in errors]

    if above:
        body_error_words(words)(app.post("/p")(endpoint))
    else:
        app.post("/p")(body_error_words(words)(endpoint))
    with TestClient(app) as test_client:
        response = test_client.post("/p", json={"x": "not a number"})
    assert response.status_code == 422
    assert "reworded" in response.text, response.text


def test_the_hint_of_a_non_finite_loss_is_the_loss_curves_own(client: TestClient) -> None:
    content = '{"learning_rate": NaN}'
    response = client.post(
        "/v1/experiments/temporal-order",
        content=content,
        headers={"content-type": "application/json"},
    )
    problem = _problem(response)
    assert problem["type"].endswith("/non-finite-number")
    assert "training diverged" not in problem["detail"]


@pytest.mark.parametrize(
    ("body", "field", "nested"),
    [
        ({"batch_losses": [1.4, 1.2, 1.0]}, "batch_losses", "[[1.4], [1.2], [1.0]]"),
        (
            {"batch_losses": [[1.4], [1.2]], "batch_accuracies": [0.25, 0.5]},
            "batch_accuracies",
            "[[0.25], [0.5], [0.7]]",
        ),
    ],
)
def test_a_flat_list_is_told_one_list_per_epoch(
    client: TestClient, body: dict[str, Any], field: str, nested: str
) -> None:
    problem = _problem(client.post(PATH, json=body | {"num_classes": 4}))
    assert problem["errors"][0]["loc"] == ["body", field, 0]
    assert problem["errors"][0]["type"] == "list_type"
    assert f"{field} takes one list per epoch" in problem["detail"]
    assert f"{nested} for one value per epoch" in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"batch_losses": [1.0] * 5000},
        {"batch_losses": [[1.0]] * 10 + [["a"] * 5000]},
        {"batch_losses": [[1.0]], "batch_accuracies": [[2.0] * 5000]},
    ],
    ids=["flat", "strings", "accuracies"],
)
def test_a_curve_is_refused_at_its_first_fault_alone(
    client: TestClient, body: dict[str, Any]
) -> None:
    """A curve stops at its first error: 2 million values that are not what they should be
    made 2 million errors before any of the service's code ran (20 s and more of a worker's
    event loop). The first one is told, located."""
    problem = _problem(client.post(PATH, json=body | {"num_classes": 4}))
    assert len(problem["errors"]) == 1 and "more)" not in problem["detail"], problem["detail"]
    assert problem["errors"][0]["loc"][-1] == 0


def test_only_a_number_in_place_of_a_row_is_told_one_list_per_epoch(client: TestClient) -> None:
    """A row that is a string is no flat curve: pydantic's own words; and the flat-list words
    follow every row of a flat list, without a validator that runs on valid bodies."""
    problem = _problem(client.post(PATH, json={"batch_losses": ["a"], "num_classes": 4}))
    assert problem["errors"][0]["type"] == "list_type"
    assert "one list per epoch" not in problem["detail"]
    problem = _problem(client.post(PATH, json={"batch_losses": [[1.4], 1.2], "num_classes": 4}))
    assert problem["errors"][0]["loc"] == ["body", "batch_losses", 1]
    assert "batch_losses takes one list per epoch" in problem["detail"]
    for name in ("batch_losses", "batch_accuracies"):
        assert "Validator" not in repr(LossCurveRequest.model_fields[name].annotation)


def test_the_bound_of_a_loss_reads_1e100(client: TestClient) -> None:
    """Not the 101 digits pydantic writes for the float 1e100, in the 422 or the findings."""
    problem = _problem(client.post(PATH, json={"batch_losses": [[1e101]], "num_classes": 4}))
    assert problem["detail"].endswith("less than or equal to 1e+100"), problem["detail"]
    body = client.post(PATH, json={"batch_losses": [[1.4], [1e100]], "num_classes": 4}).json()
    text = " ".join(body["findings"])
    assert "(epoch 1: 1e+100)" in text and "exp(-1e+100)" in text
    assert not re.search(r"\d{20}", text), text
