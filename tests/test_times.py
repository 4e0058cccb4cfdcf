"""The one ISO 8601 parser: options, the X-Event-Time header and reports read times alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from churnops.times import parse_time


def test_a_trailing_z_an_offset_and_surrounding_space_are_read_as_the_same_instant() -> None:
    expected = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert parse_time(" 2026-12-01T09:30:00Z ") == expected
    assert parse_time("2026-12-01T10:30:00+01:00") == expected
    assert parse_time("2026-12-01T10:30:00+01:00").tzinfo == timezone(timedelta(hours=1))


def test_a_time_without_a_zone_is_utc_unless_a_zone_is_required() -> None:
    assert parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="has no time zone"):
        parse_time("2026-12-01T09:30:00", zone_required=True)


def test_text_that_is_no_time_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_time("yesterday")
