"""Pure: when a daily or weekly digest is due, in the subscriber-facing time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from watcher.config import WEEKDAYS, ScheduleSettings


def current_slot(now: datetime, frequency: str, schedule: ScheduleSettings) -> datetime | None:
    """The latest digest time at or before `now` (UTC), or None for `immediate`."""
    if frequency == "immediate":
        return None
    local = now.astimezone(ZoneInfo(schedule.timezone))
    hour, minute = (int(p) for p in schedule.digest_time.split(":"))
    slot = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if frequency == "weekly":
        slot -= timedelta(days=(local.weekday() - WEEKDAYS.index(schedule.weekly_day)) % 7)
    if slot > local:
        slot -= timedelta(days=7 if frequency == "weekly" else 1)
    return slot.astimezone(UTC)


def is_due(now: datetime, frequency: str, schedule: ScheduleSettings, last_slot: datetime | None) -> bool:
    slot = current_slot(now, frequency, schedule)
    return slot is None or last_slot is None or last_slot < slot
