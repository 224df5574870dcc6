"""Range checks of the configuration dataclasses (``CoreConfig``, ``AnchorConfig``, brokerless's
``EndpointConfig``): a value out of range is refused where the caller made the mistake, naming the field and the
value, rather than met later as a spinning loop, a hang or unbounded memory."""

from __future__ import annotations

import math

from .errors import LocalProtocolError

#: The default ceiling of an integer field: what a u64 on the wire, an int64 socket option or a deadline added to
#: a millisecond clock still holds.
INT_CEILING = (1 << 63) - 1


def check_ints(owner: str, obj: object, floors: dict[str, int], ceilings: dict[str, int] | None = None) -> None:
    """Raise :class:`LocalProtocolError` for a field of ``obj`` named in ``floors`` that is not an integer (a bool
    is not one), is below its floor, or above its ceiling (``ceilings``, else :data:`INT_CEILING`)."""
    for name, least in floors.items():
        value = getattr(obj, name)
        most = INT_CEILING if ceilings is None else ceilings.get(name, INT_CEILING)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise LocalProtocolError(f"{owner}.{name} must be an integer from {least} to {most}, not {value!r}")


def check_rate(owner: str, name: str, value: object) -> None:
    """A token bucket's rate, per second: a finite number above 0 (0 lets nothing through, ever; inf, NaN and an
    integer too large for a float break the bucket's arithmetic)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            rate = float(value)
        except OverflowError:  # an int beyond a float's range
            rate = math.inf
        if 0 < rate < math.inf:
            return
    raise LocalProtocolError(f"{owner}.{name} must be a finite number above 0, not {value!r}")


def check_order(owner: str, obj: object, low: str, high: str) -> None:
    """Raise :class:`LocalProtocolError` unless field ``high`` of ``obj`` is at least field ``low`` (a backoff's
    ceiling and its first delay)."""
    lo, hi = getattr(obj, low), getattr(obj, high)
    if hi < lo:
        raise LocalProtocolError(f"{owner}.{high} ({hi}) must be at least {low} ({lo})")
