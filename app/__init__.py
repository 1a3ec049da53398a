"""olss-serve gateway: HTTP API, settings, the Redis protocol, metrics and the ``olss`` CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("olss-serve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
