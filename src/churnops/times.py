"""Reading a time: every ISO 8601 time churnops is given (`--as-of`, `--since`, `--until`, the
X-Event-Time header) or reads back from its own reports goes through one parser with one rule.
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str, zone_required: bool = False) -> datetime:
    """``text`` (ISO 8601, surrounding space and a trailing ``Z`` allowed) as an aware time; one
    without a zone is UTC, or a ValueError when ``zone_required`` (a header from another
    machine, whose clock's zone cannot be guessed)."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is not None:
        return moment
    if zone_required:
        raise ValueError(f"{text!r} has no time zone")
    return moment.replace(tzinfo=UTC)
