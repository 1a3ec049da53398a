"""Schemathesis hooks of the OpenAPI runs (``SCHEMATHESIS_HOOKS=<this module>``).

An ``Idempotency-Key`` promises "the same key means the same request": generated cases reuse a
few short keys ("0", "00") with different bodies, which the gateway rightly refuses (422,
tested in tests/app/test_gateway_limits.py). Each generated key is made unique per case, so
the run checks the schema, not that promise.
"""

from __future__ import annotations

import uuid

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """Every phase's cases pass here just before their request is sent."""
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and headers[name]:
            headers[name] = f"{str(headers[name])[:200]}-{uuid.uuid4().hex}"
