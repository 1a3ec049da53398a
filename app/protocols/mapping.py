"""Turn a protocol's fields into a ``GenerateRequest``, with errors in the protocol's names.

A protocol's body is checked by its own schema first, then mapped onto ``GenerateRequest``,
which the one validation path (``app.validation``) takes from there. Any error on the way names
the field the client sent: ``num_images`` is ``n`` to an OpenAI client, ``batch_size`` to an
A1111 one (``names``: our field -> theirs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from app.errors import InvalidRequest, ServiceError
from app.schemas import GenerateRequest


def generate_request(values: dict[str, Any], names: dict[str, str]) -> GenerateRequest:
    """``GenerateRequest`` of ``values`` (``None`` values left out: the model's defaults), or
    ``InvalidRequest`` naming each bad field as ``names`` says."""
    try:
        return GenerateRequest.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        parts = [
            f"{names.get(str(item['loc'][0]), item['loc'][0]) if item['loc'] else 'body'}: "
            f"{item['msg']}"
            for item in error.errors()
        ]
        raise InvalidRequest("; ".join(parts)) from None


@contextmanager
def named_as(names: dict[str, str]) -> Iterator[None]:
    """Re-raise an error of the block naming its field as the protocol does."""
    try:
        yield
    except ServiceError as error:
        raise error.renamed(names) from None
