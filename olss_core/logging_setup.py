"""The one logging configuration of every process: text or JSON lines, secrets redacted.

``configure_logging(settings)`` puts a single handler on the root logger; the loggers of the
libraries (uvicorn's included, which the gateway starts with ``log_config=None``) propagate to
it. ``OLSS_LOG_FORMAT=json`` writes one JSON object per line (``ts``, ``level``, ``logger``,
``message``, plus the ``extra`` fields a call passes). Every line passes ``Redactor`` first:
the configured API keys, bearer tokens and secret-looking query parameters become ``***``,
whatever logger wrote them and at whatever level.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from olss_core.settings import Settings

REDACTED = "***"
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|token|key|secret|password)=)[^&\s\"']+"),
    re.compile(r"(?i)(://[^:/@\s]*:)[^@\s]+(?=@)"),
)
"""Bearer tokens, ``?api_key=...``-style query parameters and passwords in URLs."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


class Redactor(logging.Filter):
    """Replaces secrets in a record's message (its arguments merged in) by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for name, value in _extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the extra fields, the error."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extra_fields(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a call passed with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


def configure_logging(settings: Settings) -> None:
    """Replace the root logger's handlers by one stderr handler in ``OLSS_LOG_FORMAT``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(Redactor(settings.api_keys))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
