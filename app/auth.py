"""Who sent a request, and which jobs they may see.

With ``OLSS_API_KEYS`` set, each job records the digest of the key that created it
(``JobRecord.owner``); every other key gets 404 for it, as for a job that does not exist.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """A request's bearer key (empty without auth)."""

    key: str = ""

    @property
    def owner(self) -> str | None:
        """The digest stored with the jobs this caller makes (None without auth)."""
        if not self.key:
            return None
        return hashlib.sha256(f"owner\n{self.key}".encode()).hexdigest()

    def may_see(self, owner: str | None) -> bool:
        """A job is visible to the key that made it; every job is, without auth."""
        mine = self.owner
        return owner is None or mine is None or secrets.compare_digest(owner, mine)
