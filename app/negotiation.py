"""Proactive content negotiation by the ``Accept`` header (RFC 9110 §12.5.1).

Each media range carries a quality ``q`` (default 1; ``q=0`` means "not acceptable"). An
offered type takes the quality of the most specific range that matches it (``image/png`` over
``image/*`` over ``*/*``); the server picks the offered type of highest quality, breaking ties
by its own order of preference. A request without ``Accept`` accepts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

from app.errors import NotAcceptable

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class MediaRange:
    """One element of ``Accept``: ``type/subtype`` (either may be ``*``) and its quality."""

    type: str
    subtype: str
    q: float

    def matches(self, media_type: str) -> int | None:
        """How specifically this range matches ``media_type`` (2 exact .. 0 ``*/*``), or None."""
        kind, _, sub = media_type.partition("/")
        if self.type == "*":
            return 0
        if self.type != kind:
            return None
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == sub else None


def _quality(params: list[str]) -> float | None:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0 <= q <= 1 else None
    return 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of ``header``; malformed elements are skipped; none: ``*/*``."""
    if header is None or not header.strip():
        return [MediaRange("*", "*", 1.0)]
    ranges = []
    for element in header.split(","):
        media, *params = element.split(";")
        kind, slash, sub = media.strip().lower().partition("/")
        q = _quality(params)
        if slash and kind and sub and q is not None and not (kind == "*" and sub != "*"):
            ranges.append(MediaRange(kind, sub, q))
    return ranges


def quality(media_type: str, ranges: Sequence[MediaRange]) -> float:
    """The quality ``ranges`` give ``media_type``: that of the most specific match, else 0."""
    best: tuple[int, float] | None = None
    for media_range in ranges:
        specificity = media_range.matches(media_type)
        if specificity is not None and (best is None or specificity > best[0]):
            best = (specificity, media_range.q)
    return best[1] if best else 0.0


def best_match(offered: Sequence[str], accept: str | None) -> str | None:
    """The offered type ``accept`` likes best (ties: earlier in ``offered``), or None."""
    ranges = parse_accept(accept)
    scored = [(quality(media_type, ranges), -n, media_type) for n, media_type in
              enumerate(offered)]
    q, _, media_type = max(scored, default=(0.0, 0, ""))
    return media_type if q > 0 else None


def require_acceptable(offered: Sequence[str], accept: str | None) -> str:
    """``best_match``, or ``NotAcceptable`` naming what the route can send."""
    chosen = best_match(offered, accept)
    if chosen is None:
        raise NotAcceptable(f"Accept: {accept} takes none of {', '.join(offered)}")
    return chosen


async def accepts_json(accept: Annotated[str | None, Header(include_in_schema=False)] = None
                       ) -> None:
    """Dependency of the JSON routes: 406 unless ``Accept`` takes ``application/json``."""
    require_acceptable([JSON], accept)


AcceptsJson = Depends(accepts_json)
