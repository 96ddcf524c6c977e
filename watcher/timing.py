"""Pure: when a daily or weekly digest is due, in the subscriber-facing time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from watcher.config import WEEKDAYS, Frequency, ScheduleSettings


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    # fold=0: on the night the clocks go back, a time that happens twice is its first occurrence,
    # so that day still has one slot; a time skipped when they go forward falls an hour later.
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def current_slot(now: datetime, frequency: Frequency, schedule: ScheduleSettings) -> datetime | None:
    """The latest digest time at or before `now` (UTC), or None for `immediate`."""
    if frequency is Frequency.IMMEDIATE:
        return None
    zone = ZoneInfo(schedule.timezone)
    hour, minute = (int(p) for p in schedule.digest_time.split(":"))
    clock = time(hour, minute)
    step = timedelta(days=7 if frequency is Frequency.WEEKLY else 1)
    day = now.astimezone(zone).date()
    if frequency is Frequency.WEEKLY:
        day -= timedelta(days=(day.weekday() - WEEKDAYS.index(schedule.weekly_day)) % 7)
    slot = _at(day, clock, zone)
    return slot if slot <= now else _at(day - step, clock, zone)


def is_due(now: datetime, frequency: Frequency, schedule: ScheduleSettings, last_slot: datetime | None) -> bool:
    slot = current_slot(now, frequency, schedule)
    return slot is None or last_slot is None or last_slot < slot
