"""The API's documentation, served offline: ``/openapi.json``, Swagger UI at ``/docs`` and
ReDoc at ``/redoc``, with their scripts and styles from the ``fastapi-offline`` package (no CDN).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.deps import FleetDep, SettingsDep
from app.openapi import deployment_openapi

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = files("fastapi_offline") / "static"
OPENAPI_PATH = "/openapi.json"

router = APIRouter(include_in_schema=False)


@router.get(OPENAPI_PATH)
async def openapi(request: Request, settings: SettingsDep, fleet: FleetDep) -> JSONResponse:
    """The OpenAPI document for this deployment and the models it serves now."""
    return JSONResponse(deployment_openapi(request.app, settings, await fleet.get()))


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=OPENAPI_PATH,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
