"""The gateway's router: every resource router in one place."""

from fastapi import APIRouter

from app.api.routes import generate, health, info, jobs, metrics

api_router = APIRouter()
for module in (generate, jobs, health, info, metrics):
    api_router.include_router(module.router)
