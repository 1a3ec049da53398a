"""Reusable test helpers: service process launchers and schedule fixtures."""
