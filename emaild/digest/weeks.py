"""
ISO weeks as the digest part names them (C{"2026-W48"}), and when a week's
update is due.

The update labelled week W is sent in week W at C{[digest] weekday} /
C{[digest] hour} (UTC) and covers the seven days before that moment.
"""

from __future__ import annotations

import datetime
import re

UTC = datetime.timezone.utc
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_LABEL = re.compile(r"^(\d{4})-W(\d{2})$")


class WeekError(ValueError):
    pass


def label_of(when: datetime.datetime | datetime.date) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(label: str) -> tuple[int, int]:
    match = _LABEL.match(label.strip()) if isinstance(label, str) else None
    if not match:
        raise WeekError(f"a week looks like 2026-W48, got {label!r}")
    year, week = int(match.group(1)), int(match.group(2))
    try:
        datetime.date.fromisocalendar(year, week, 1)
    except ValueError:
        raise WeekError(f"{year} has no week {week}") from None
    return year, week


def scheduled_at(label: str, weekday: str, hour: int) -> datetime.datetime:
    """
    When week C{label}'s update is due (UTC).
    """
    year, week = parse_week(label)
    day = datetime.date.fromisocalendar(year, week, WEEKDAYS.index(weekday) + 1)
    return datetime.datetime.combine(day, datetime.time(hour), UTC)


def window(label: str, weekday: str, hour: int) -> tuple[datetime.datetime, datetime.datetime]:
    """
    The (start, end) of the activity week C{label}'s update covers.
    """
    end = scheduled_at(label, weekday, hour)
    return end - datetime.timedelta(days=7), end


def utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, UTC)


def due_week(now: float, weekday: str, hour: int) -> str | None:
    """
    The week whose update is due at C{now} (this ISO week once its send
    time has passed), else None.
    """
    label = label_of(utc(now))
    return label if utc(now) >= scheduled_at(label, weekday, hour) else None


def next_week_to_send(now: float, weekday: str, hour: int) -> str:
    """
    The week of the next update not yet due: staff notes go there by default.
    """
    current = utc(now)
    label = label_of(current)
    if current < scheduled_at(label, weekday, hour):
        return label
    return label_of(current + datetime.timedelta(days=7))
