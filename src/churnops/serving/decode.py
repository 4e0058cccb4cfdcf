"""Reading a scoring request, apart from the web layer: its JSON body validated against the
serving version's schema, its request id and its event time. Each function takes the raw values
(the body's bytes, a header's text) so that it is testable without HTTP; the routes pass them in.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from churnops.errors import EventTimeError, UnsupportedMediaTypeError
from churnops.times import parse_time

REQUEST_ID_HEADER = "X-Request-ID"
EVENT_TIME_HEADER = "X-Event-Time"
# NB: how far ahead of this machine's clock an event time may be (clock skew between machines).
MAX_EVENT_TIME_AHEAD = 300.0

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def echoable(value: Any) -> Any:
    """``value`` with every non-finite number replaced by its text, so a 422 body can echo the
    input as JSON (``1e400`` parses to inf, which JSON cannot carry)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray):
        # NB: pydantic hands back the raw body when it is not UTF-8 (a \xff in a string).
        return bytes(value[:200]).decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: echoable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [echoable(v) for v in value]
    return value


def validated(
    adapter: TypeAdapter[dict[str, Any]], content_type: str | None, body: bytes
) -> dict[str, Any]:
    """Parse and validate a JSON body in one pass (pydantic-core); errors become FastAPI's
    field-level 422, located under ``body`` as for declared request models."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        # NB: a web page may post text/plain to a loopback API without a CORS preflight.
        raise UnsupportedMediaTypeError(
            f"request bodies must be sent as Content-Type: application/json, not "
            f"{media or 'none'!r}"
        )
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"]), "input": echoable(e.get("input"))} for e in errors]
        ) from None


def request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is at most 128 safe characters, else a new one."""
    if given is not None and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def event_time(given: str | None) -> float | None:
    """The X-Event-Time header as epoch seconds: when the customer's data was observed, for
    replaying past traffic (`churnops simulate`, a backfill); None when absent."""
    if given is None:
        return None
    try:
        moment = parse_time(given, zone_required=True)
    except ValueError:
        raise EventTimeError(
            f"{EVENT_TIME_HEADER} must be an ISO 8601 time with a zone, e.g. "
            f"2026-12-01T09:30:00Z; got {given[:64]!r}"
        ) from None
    seconds = moment.timestamp()
    if seconds < 0:
        raise EventTimeError(
            f"{EVENT_TIME_HEADER} {given[:64]!r} is before 1970-01-01T00:00:00Z; the prediction "
            "store keeps event times from then on"
        )
    if seconds > time.time() + MAX_EVENT_TIME_AHEAD:
        raise EventTimeError(f"{EVENT_TIME_HEADER} {given[:64]!r} is in the future")
    return seconds
