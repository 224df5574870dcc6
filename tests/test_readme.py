"""The public surface and README.md, which is what a new user reads first: the package exports every error and
event its modules declare public."""

from __future__ import annotations

import streams
from streams import errors, events


def test_every_error_and_event_is_exported_from_streams() -> None:
    """``streams.__all__`` is the public API (its docstring): an error a caller has to catch, or raise from its own
    policy, and an event a party yields, must be importable from there."""
    exported = set(streams.__all__)
    assert sorted(set(errors.__all__) - exported) == []
    assert sorted(set(events.__all__) - exported) == []
    for name in streams.__all__:
        assert hasattr(streams, name), name
