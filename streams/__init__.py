"""streams: secure publish/subscribe channels between security tools."""

from __future__ import annotations

from .errors import *  # noqa: F403
from .identity import Identity, PublicIdentity

__all__ = ["Identity", "PublicIdentity"]
