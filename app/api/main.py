"""The gateway's router: every resource router in one place."""

from fastapi import APIRouter
from fastapi.routing import APIRoute

from app.api.routes import (
    a1111,
    docs,
    generate,
    health,
    info,
    jobs,
    metrics,
    openai_images,
    signed_images,
)

ROUTERS = tuple(module.router for module in (
    generate, jobs, health, info, metrics, docs, openai_images, a1111, signed_images,
))
api_router = APIRouter()
for router in ROUTERS:
    api_router.include_router(router)


def allowed_methods(path: str) -> list[str]:
    """Every method some route takes at ``path`` (a 405's ``Allow`` header)."""
    return sorted({
        method for router in ROUTERS for route in router.routes
        if isinstance(route, APIRoute) and route.path_regex.match(path)
        for method in route.methods
    })
