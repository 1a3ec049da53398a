"""olss-serve gateway: the HTTP API. Imports no torch (see docs/ARCHITECTURE.md)."""
