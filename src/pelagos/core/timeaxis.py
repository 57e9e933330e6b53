"""Model time and calendar dates, one way for every model: ``model.epoch`` is the date of model time 0
(``None``: the model has no calendar); a time given by a user is a number of model seconds or an ISO date.

Used by the run loop, the configuration and the observation reader alike, so that a date means the same
everywhere and every message shows times the same way.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import torch

from .errors import ObservationError, PelagosError


def model_epoch(model: Any) -> _dt.datetime | None:
    """The calendar date of model time 0 (``model.epoch``; a column's forcing epoch), or ``None``."""
    epoch = getattr(model, "epoch", None)
    if epoch is None:
        epoch = getattr(getattr(model, "forcing", None), "epoch", None)
    return epoch


def parse_date(s: str) -> _dt.datetime:
    """An ISO date-time (``T`` or space; a time zone is converted to UTC and dropped)."""
    t = _dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    if t.tzinfo is not None:
        t = t.astimezone(_dt.UTC).replace(tzinfo=None)
    return t


def model_time(
    model: Any, when: Any, *, what: str = "time", error: type[PelagosError] = ObservationError
) -> float:
    """Model time (s) of ``when``: a number (model seconds), an ISO date string, a ``datetime`` or a numpy
    ``datetime64`` (dates need the model's epoch). Raises ``error`` (an observation or a configuration error)
    saying what was wrong."""
    if isinstance(when, bool):
        raise error(f"{what} {when!r} is neither model seconds nor an ISO date")
    if isinstance(when, (int, float)):
        if not math.isfinite(float(when)):
            raise error(f"{what} {when!r} is not a finite number of seconds")
        return float(when)
    if torch.is_tensor(when) and when.numel() == 1:
        return model_time(model, float(when), what=what, error=error)
    if type(when).__name__ == "datetime64":
        when = when.astype("datetime64[us]").astype(_dt.datetime)
        if isinstance(when, int):  # numpy gives an int for out-of-range dates
            raise error(f"{what} {when!r} is not a representable date") from None
    if isinstance(when, str):
        s = when.strip()
        try:
            return model_time(model, float(s), what=what, error=error)
        except ValueError:
            pass
        try:
            when = parse_date(s)
        except ValueError:
            raise error(
                f"{what} {when!r} is neither model seconds nor an ISO date (e.g. 1998-03-22 06:00:00)"
            ) from None
    if isinstance(when, _dt.date) and not isinstance(when, _dt.datetime):
        when = _dt.datetime(when.year, when.month, when.day)
    if isinstance(when, _dt.datetime):
        epoch = model_epoch(model)
        if epoch is None:
            raise error(
                f"{what} {when.isoformat(sep=' ')} is a date but {type(model).__name__} has no epoch (no "
                "date for model time 0); give model seconds instead"
            )
        if when.tzinfo is not None:
            when = when.astimezone(_dt.UTC).replace(tzinfo=None)
        return (when - epoch).total_seconds()
    raise error(f"{what} {when!r} is neither model seconds nor an ISO date")


def format_time(model_or_epoch: Any, t: float) -> str:
    """``t`` (model s) as a date ``YYYY-MM-DD HH:MM:SS`` when there is an epoch, else ``"model time <t>"``."""
    epoch = (
        model_or_epoch if isinstance(model_or_epoch, _dt.datetime) or model_or_epoch is None
        else model_epoch(model_or_epoch)
    )  # fmt: skip
    if epoch is None:
        return f"model time {t:g}"
    d = epoch + _dt.timedelta(seconds=float(t))
    return d.strftime("%Y-%m-%d %H:%M:%S") + (f".{d.microsecond:06d}" if d.microsecond else "")
