"""Every operation of the OpenAPI schema, fuzzed by schemathesis against the in-process app.

All of schemathesis' checks run (no server errors, documented status codes, content types,
headers and response schemas, schema-violating data refused, schema-valid data accepted, ...),
with two allowances, both about budgets and semantics that JSON Schema cannot express:

- for schema-valid data, 413 and 422 also count as accepted: a schema cannot say that a weight's
  channels must match the input's, or that a tensor's data must fill its shape, so a body that
  fits the schema may still be one the service must refuse, with a 4xx that says why;
- for schema-violating data, 413 also counts as rejected: a tensor declaring more elements than
  the budget is refused for that before its other fields are looked at.

Examples per operation are bounded and generation is derandomised, so the run is fast and the
same on every CI run.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from service.app import create_app
from service.settings import Settings

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "413", "422"]},
            "negative_data_rejection": {
                "expected-statuses": [
                    *["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"],
                    *["428", "429"],
                ]
            },
        },
    }
)

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings()), config=CONFIG)


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
