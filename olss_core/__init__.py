"""The torch-free ground floor of olss-serve: the wire contract, settings, metrics, version.

``app`` (the gateway), ``workers`` and ``schedules`` import it; it imports none of them.
See docs/ARCHITECTURE.md for the layers and what each may import.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("olss-serve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
