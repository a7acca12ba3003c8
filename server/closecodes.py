"""WebSocket close codes of the hub protocol, in one place."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    SERVER_RESTARTING = 1012  # reconnect and resume with `since`
    UNAUTHORIZED = 4001  # token missing, invalid or expired: get a new token
    FORBIDDEN = 4003  # access to a subscribed plan was revoked
    TOO_SLOW = 4008  # the send queue overflowed: reconnect and resume with `since`
