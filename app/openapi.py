"""The OpenAPI schema the gateway serves: FastAPI's, narrowed to what this deployment accepts.

FastAPI derives the schema from the routes and pydantic models, which know only the static
rules. ``deployment_openapi`` adds the configured limits (prompt length, steps, images, guidance,
sizes) and, for each model served now, its own: ``GenerateRequest`` becomes a choice of
variants, each naming the model and its largest width and height: one per calibrated OLSS
guidance scale (its step counts, guidance within the tolerance) and one for the diffusers
samplers. So a request valid by the schema is accepted (short of a full queue or a lost
worker), and ``app.validation`` enforces the same limits on each request. Every error response
is declared as the error JSON, also on the event stream's route; the bearer security scheme is
kept only when ``OLSS_API_KEYS`` is set."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from app.errors import ErrorBody
from app.fleet import Fleet
from app.negotiation import JSON
from app.schemas import SIZE_STEP
from app.validation import ModelLimits
from olss_core.guidance import GUIDANCE_TOLERANCE
from olss_core.protocol import WorkerInfo
from olss_core.samplers import OLSS
from olss_core.settings import Settings

REQUEST_SCHEMA = "GenerateRequest"
ERROR_BODY_REF = f"#/components/schemas/{ErrorBody.__name__}"
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
"""FastAPI's default 422 body, which this gateway never sends (its handler sends ErrorBody)."""
Schema = dict[str, Any]


def _value_schema(prop: Schema) -> Schema:
    """The non-null branch of an optional property (``anyOf: [X, null]``), else the property."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return prop


def _constrain(properties: Schema, name: str, **constraints: Any) -> None:
    _value_schema(properties[name]).update(constraints)


def _round_up(value: int) -> int:
    return -(-value // SIZE_STEP) * SIZE_STEP


def _with_limits(request: Schema, settings: Settings) -> Schema:
    """``request`` with the configured limits of every field."""
    request = copy.deepcopy(request)
    properties = request["properties"]
    _constrain(properties, "prompt", maxLength=settings.max_prompt_chars)
    _constrain(properties, "negative_prompt", maxLength=settings.max_prompt_chars)
    _constrain(properties, "steps", maximum=settings.max_steps)
    _constrain(properties, "num_images", maximum=settings.max_num_images)
    _constrain(properties, "guidance_scale", maximum=settings.max_guidance_scale)
    for side, limit in (("width", settings.max_width), ("height", settings.max_height)):
        _constrain(properties, side, minimum=_round_up(settings.min_size), maximum=limit)
    return request


def _variant(
    base: Schema, worker: WorkerInfo, settings: Settings, model_required: bool,
    olss_guidance: float | None,
) -> Schema:
    """``base`` for one model and one scheduler family: the OLSS schedules calibrated at
    guidance ``olss_guidance`` (steps: theirs; guidance: within the tolerance of
    ``olss_core.guidance``), or, with None, the diffusers samplers."""
    variant = copy.deepcopy(base)
    properties = variant["properties"]
    limits = ModelLimits.of(worker, settings)
    _constrain(properties, "width", maximum=limits.max_width)
    _constrain(properties, "height", maximum=limits.max_height)
    _constrain(properties, "model", enum=sorted({worker.model, worker.model_key}))
    required = list(variant["required"])
    if model_required:
        required.append("model")
    if olss_guidance is not None:
        steps = sorted({s.steps for s in worker.schedules if s.guidance_scale == olss_guidance})
        _constrain(properties, "steps", enum=steps)
        _constrain(properties, "guidance_scale",
                   minimum=max(0.0, olss_guidance - GUIDANCE_TOLERANCE),
                   maximum=min(settings.max_guidance_scale, olss_guidance + GUIDANCE_TOLERANCE))
        properties["scheduler"]["enum"] = [OLSS]
        family = f"{OLSS} at guidance {olss_guidance:g}"
    else:
        properties["scheduler"]["enum"] = [n for n in worker.schedulers if n != OLSS]
        properties["scheduler"].pop("default", None)
        required.append("scheduler")
        family = "samplers"
    variant["required"] = required
    variant["title"] = f"{base['title']} ({worker.model_key}, {family})"
    return variant


def request_schema(request: Schema, settings: Settings, fleet: Fleet) -> Schema:
    """The ``GenerateRequest`` schema for ``settings`` and the models ``fleet`` serves."""
    base = _with_limits(request, settings)
    groups = fleet.by_model()
    if not groups:
        return base
    variants = []
    for infos in groups.values():
        worker = infos[0]
        default = settings.model
        is_default = worker.serves(default) if default is not None else len(groups) == 1
        families: list[float | None] = sorted({s.guidance_scale for s in worker.schedules})
        if any(name != OLSS for name in worker.schedulers):
            families.append(None)
        variants += [_variant(base, worker, settings, not is_default, g) for g in families]
    return {"title": base["title"], "description": base.get("description", ""),
            "anyOf": variants}


def deployment_openapi(app: FastAPI, settings: Settings, fleet: Fleet) -> Schema:
    """The OpenAPI document of ``app`` for ``settings`` and the models served now."""
    document = copy.deepcopy(app.openapi())
    schemas = document["components"]["schemas"]
    schemas[REQUEST_SCHEMA] = request_schema(schemas[REQUEST_SCHEMA], settings, fleet)
    for operations in document["paths"].values():
        for operation in operations.values():
            if not settings.api_keys:
                operation.pop("security", None)
            for parameter in operation.get("parameters", ()):
                # An optional header is absent, never the text "null": drop the null branch.
                parameter["schema"] = {**parameter["schema"], **_value_schema(parameter["schema"])}
                parameter["schema"].pop("anyOf", None)
            for status, response in operation["responses"].items():
                if int(status) >= 400:  # every error is ErrorBody JSON (``app.errors``)
                    response["content"] = {JSON: {"schema": {"$ref": ERROR_BODY_REF}}}
    for unused in FASTAPI_ERROR_SCHEMAS:
        schemas.pop(unused, None)
    if not settings.api_keys:
        document["components"].pop("securitySchemes", None)
    return document
