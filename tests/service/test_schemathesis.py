"""Every operation of the OpenAPI schema, fuzzed by schemathesis against the in-process app.

All of schemathesis' checks run (no server errors, documented status codes, content types,
headers and response schemas, authentication, schema-violating data refused, schema-valid data
accepted, ...) against the service as it is deployed: with API keys (the fuzzer sends an
instructor key, and checks that requests without it or with another are refused). The
allowances, each about something JSON Schema cannot express or a documented behaviour:

- for schema-valid data, 413 and 422 also count as accepted: a schema cannot say that a weight's
  channels must match the input's, or that a tensor's data must fill its shape, so a body that
  fits the schema may still be one the service must refuse, with a 4xx that says why;
- for schema-violating data, 413 also counts as rejected: a tensor declaring more elements than
  the budget is refused for that before its other fields are looked at;
- ``POST /v1/check/batch`` is not held to refusing schema-violating data as a whole: a batch
  judges each check on its own, and a check whose tensors are malformed gets an ``error`` (a
  422 problem detail) in its place while the others are judged, as API.md specifies. The same
  check schema is fuzzed with every check through ``POST /v1/check``, which refuses such a
  check with a 422, and ``tests/service/test_check_routes.py`` tests the errors in place.

``POST /v1/experiments/temporal-order`` trains a model: the fuzzed server's experiment caps
are tiny (one epoch of one batch of four sequences of at most 8 steps), so what is accepted
trains in milliseconds and the rest is refused by the caps (a 422 that names the cap);
``tests/service/test_experiments_api.py`` covers real runs by hand.

Examples per operation are bounded and generation is derandomised, so the run is fast and the
same on every CI run.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig

from service.app import create_app
from service.settings import Settings

KEY = "fuzzing-instructor-key-7d41c9"

CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"APIKey": {"api_key": KEY}}},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "413", "422"]},
            "negative_data_rejection": {
                "expected-statuses": [
                    *["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"],
                    *["428", "429"],
                ]
            },
        },
        "operations": [
            {
                "include-path": "/v1/check/batch",
                "checks": {"negative_data_rejection": {"enabled": False}},
            }
        ],
    }
)

SETTINGS = Settings(
    instructor_keys=SecretStr(KEY),
    variant_secret=SecretStr("fuzzing-variant-secret-2b8e5a"),
    experiment_max_epochs=1,
    experiment_max_batches=1,
    experiment_max_batch_size=4,
    experiment_max_length=8,
    experiment_max_hidden_size=4,
)

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(SETTINGS), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate()
