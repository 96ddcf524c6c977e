"""Pure: when daily and weekly digests fall due. Every moment is given (no real clock); times are UTC
unless a comment says otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from watcher.config import Frequency, ScheduleSettings
from watcher.timing import current_slot, is_due

DAILY, WEEKLY = Frequency.DAILY, Frequency.WEEKLY


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def slot(now: str, zone: str, at: str, frequency: Frequency = DAILY, day: str = "mon") -> datetime | None:
    schedule = ScheduleSettings(digest_time=at, timezone=zone, weekly_day=day)
    return current_slot(utc(now), frequency, schedule)


# (zone, digest_time, now, the slot): each row is one a plausible wrong implementation gets wrong.
DAILY_ROWS = [
    pytest.param("UTC", "08:00", "2026-11-25 08:00", "2026-11-25 08:00", id="at-the-time-itself"),
    pytest.param("UTC", "08:00", "2026-11-25 07:59", "2026-11-24 08:00", id="a-minute-before-is-yesterdays"),
    # 07:30 on the 25th in Shanghai, still the 24th in UTC: the day is the local one
    pytest.param("Asia/Shanghai", "07:00", "2026-11-24 23:30", "2026-11-24 23:00", id="shanghai-a-day-ahead-of-utc"),
    pytest.param("Asia/Shanghai", "08:00", "2026-11-24 23:59", "2026-11-24 00:00", id="shanghai-a-minute-before"),
    # 19:30 on the 25th in New York, already the 26th in UTC
    pytest.param("America/New_York", "20:00", "2026-11-26 00:30", "2026-11-25 01:00", id="new-york-a-day-behind-utc"),
    pytest.param("America/New_York", "08:00", "2026-07-01 12:00", "2026-07-01 12:00", id="new-york-summer-time"),
    pytest.param("Europe/London", "08:00", "2026-07-01 07:30", "2026-07-01 07:00", id="london-summer-time"),
    pytest.param("Europe/London", "08:00", "2026-11-25 08:00", "2026-11-25 08:00", id="london-winter-time"),
    # On the days the clocks change, 08:00 is 08:00 on the wall clock, not eight elapsed hours after midnight.
    pytest.param("Europe/London", "08:00", "2026-03-29 07:00", "2026-03-29 07:00", id="london-08:00-on-the-short-day"),
    pytest.param("Europe/London", "08:00", "2026-10-25 08:00", "2026-10-25 08:00", id="london-08:00-on-the-long-day"),
]

# Clocks go back: 01:00-02:00 happens twice (London 25 Oct 2026 at 02:00 BST; New York 1 Nov 2026 at
# 02:00 EDT). A digest_time in that hour is its first occurrence, and stays the day's one slot.
FALL_BACK_ROWS = [
    pytest.param("Europe/London", "2026-10-25 00:10", "2026-10-24 00:30", id="london-01:10-BST-before-it"),
    pytest.param("Europe/London", "2026-10-25 00:30", "2026-10-25 00:30", id="london-01:30-BST-the-slot"),
    pytest.param("Europe/London", "2026-10-25 01:10", "2026-10-25 00:30", id="london-01:10-GMT-the-repeat"),
    pytest.param("Europe/London", "2026-10-25 01:30", "2026-10-25 00:30", id="london-01:30-GMT-no-second-slot"),
    pytest.param("Europe/London", "2026-10-26 01:29", "2026-10-25 00:30", id="london-next-night-before-it"),
    pytest.param("Europe/London", "2026-10-26 01:30", "2026-10-26 01:30", id="london-next-night-01:30-GMT"),
    pytest.param("America/New_York", "2026-11-01 05:10", "2026-10-31 05:30", id="new-york-01:10-EDT-before-it"),
    pytest.param("America/New_York", "2026-11-01 05:30", "2026-11-01 05:30", id="new-york-01:30-EDT-the-slot"),
    pytest.param("America/New_York", "2026-11-01 06:10", "2026-11-01 05:30", id="new-york-01:10-EST-the-repeat"),
    pytest.param("America/New_York", "2026-11-01 06:30", "2026-11-01 05:30", id="new-york-01:30-EST-no-second-slot"),
]

# Clocks go forward: London 29 Mar 2026 01:00 GMT → 02:00 BST, New York 8 Mar 2026 02:00 EST → 03:00 EDT.
# A digest_time in the skipped hour falls an hour later by the wall clock (London 02:30 BST, New York
# 03:30 EDT), and never before the moment it names.
SPRING_FORWARD_ROWS = [
    pytest.param("Europe/London", "01:30", "2026-03-29 00:50", "2026-03-28 01:30", id="london-00:50-GMT-before-it"),
    pytest.param("Europe/London", "01:30", "2026-03-29 01:10", "2026-03-28 01:30", id="london-02:10-BST-not-yet"),
    pytest.param("Europe/London", "01:30", "2026-03-29 01:30", "2026-03-29 01:30", id="london-02:30-BST-the-slot"),
    pytest.param("America/New_York", "02:30", "2026-03-08 07:10", "2026-03-07 07:30", id="new-york-03:10-EDT-not-yet"),
    pytest.param("America/New_York", "02:30", "2026-03-08 07:30", "2026-03-08 07:30", id="new-york-03:30-EDT-the-slot"),
]


@pytest.mark.parametrize(("zone", "at", "now", "expected"), DAILY_ROWS)
def test_daily_slot(zone: str, at: str, now: str, expected: str) -> None:
    assert slot(now, zone, at) == utc(expected)


@pytest.mark.parametrize(("zone", "now", "expected"), FALL_BACK_ROWS)
def test_daily_slot_in_the_hour_that_happens_twice(zone: str, now: str, expected: str) -> None:
    assert slot(now, zone, "01:30") == utc(expected)


@pytest.mark.parametrize(("zone", "at", "now", "expected"), SPRING_FORWARD_ROWS)
def test_daily_slot_in_the_hour_that_is_skipped(zone: str, at: str, now: str, expected: str) -> None:
    assert slot(now, zone, at) == utc(expected)


def digests_sent(zone: str, at: str, start: datetime, days: int) -> list[datetime]:
    """When a daily subscriber enrolled at `start` gets digests, the sender running every 5 minutes for
    `days` (as delivery does it: due when the current slot is past the last slot handled)."""
    schedule = ScheduleSettings(digest_time=at, timezone=zone)
    now, end = start, start + timedelta(days=days)
    last = current_slot(now, DAILY, schedule)
    sent = []
    while now < end:
        now += timedelta(minutes=5)
        current = current_slot(now, DAILY, schedule)
        assert current is not None and current <= now, f"at {now} the slot {current} is still to come"
        if is_due(now, DAILY, schedule, last):
            sent.append(now)
            last = current
    return sent


@pytest.mark.parametrize(
    ("zone", "at", "start", "expected"),
    [
        pytest.param("Europe/London", "01:30", "2026-10-24 00:00", ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"], id="london-clocks-back"),
        pytest.param("America/New_York", "01:30", "2026-10-31 04:00", ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"], id="new-york-clocks-back"),
        pytest.param("Europe/London", "01:30", "2026-03-28 00:00", ["2026-03-28 01:30", "2026-03-29 01:30", "2026-03-30 00:30"], id="london-clocks-forward"),
        pytest.param("America/New_York", "02:30", "2026-03-07 06:00", ["2026-03-07 07:30", "2026-03-08 07:30", "2026-03-09 06:30"], id="new-york-clocks-forward"),
    ],
)  # fmt: skip
def test_one_digest_a_day_across_a_clock_change(zone: str, at: str, start: str, expected: list[str]) -> None:
    assert digests_sent(zone, at, utc(start), days=3) == [utc(e) for e in expected]


# Wednesday 25 November 2026, 12:00 UTC: the latest 08:00 on each weekday.
@pytest.mark.parametrize(
    ("day", "expected"),
    [("mon", "2026-11-23"), ("tue", "2026-11-24"), ("wed", "2026-11-25"), ("thu", "2026-11-19"),
     ("fri", "2026-11-20"), ("sat", "2026-11-21"), ("sun", "2026-11-22")],
)  # fmt: skip
def test_weekly_slot_on_each_weekday(day: str, expected: str) -> None:
    assert slot("2026-11-25 12:00", "UTC", "08:00", WEEKLY, day) == utc(f"{expected} 08:00")


@pytest.mark.parametrize(
    ("zone", "at", "day", "now", "expected"),
    [
        pytest.param("UTC", "08:00", "wed", "2026-11-25 07:59", "2026-11-18 08:00", id="before-the-time-on-the-day-is-last-week"),
        # Monday 07:30 in Shanghai is still Sunday in UTC: the weekday is the local one
        pytest.param("Asia/Shanghai", "07:00", "mon", "2026-11-22 23:30", "2026-11-22 23:00", id="shanghai-weekday-ahead-of-utc"),
        pytest.param("America/New_York", "20:00", "wed", "2026-11-26 00:30", "2026-11-19 01:00", id="new-york-weekday-behind-utc"),
        pytest.param("Europe/London", "01:30", "sun", "2026-10-25 01:30", "2026-10-25 00:30", id="london-clocks-back-no-second-slot"),
        pytest.param("Europe/London", "01:30", "sun", "2026-03-29 01:10", "2026-03-22 01:30", id="london-clocks-forward-not-yet"),
    ],
)  # fmt: skip
def test_weekly_slot(zone: str, at: str, day: str, now: str, expected: str) -> None:
    assert slot(now, zone, at, WEEKLY, day) == utc(expected)


def test_immediate_has_no_slot_and_is_always_due() -> None:
    schedule = ScheduleSettings()
    now = utc("2026-11-25 08:00")
    assert current_slot(now, Frequency.IMMEDIATE, schedule) is None
    assert is_due(now, Frequency.IMMEDIATE, schedule, None)
    assert is_due(now, Frequency.IMMEDIATE, schedule, now)


@pytest.mark.parametrize(
    ("last_slot", "due"),
    [
        pytest.param(None, True, id="never-had-one"),
        pytest.param("2026-11-24 08:00", True, id="had-yesterdays"),
        pytest.param("2026-11-25 08:00", False, id="had-todays"),
    ],
)
def test_daily_is_due_once_per_slot(last_slot: str | None, due: bool) -> None:
    schedule = ScheduleSettings(digest_time="08:00")
    assert is_due(utc("2026-11-25 09:00"), DAILY, schedule, utc(last_slot) if last_slot else None) is due
