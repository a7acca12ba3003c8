"""Signed, expiring bearer tokens (JWT, HS256) naming a user by email.

Signing uses PyJWT rather than hand-rolled HMAC. The first secret signs; every listed secret
verifies, so a secret can be rotated without logging everyone out.
"""

from __future__ import annotations

import time

import jwt

from domain.errors import MapstreamError

_ALGORITHM = "HS256"
_ISSUER = "mapstream"


class Unauthorized(MapstreamError):
    code = "unauthorized"


def issue(email: str, secret: str, ttl_seconds: int, *, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    payload = {
        "sub": email.strip().lower(),
        "iat": issued,
        "exp": issued + ttl_seconds,
        "iss": _ISSUER,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


class Identity:
    __slots__ = ("email", "expires_at")

    def __init__(self, email: str, expires_at: int) -> None:
        self.email = email
        self.expires_at = expires_at


def verify(token: str, secrets: tuple[str, ...]) -> Identity:
    """The identity in `token`, or Unauthorized saying why (expired, tampered, malformed)."""
    if not token:
        raise Unauthorized("a bearer token is required: get one with `mapstream token EMAIL`")
    last: Exception | None = None
    for secret in secrets:
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "sub", "iat"]},
            )
            return Identity(str(claims["sub"]), int(claims["exp"]))
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired: ask for a new one") from exc
        except jwt.InvalidSignatureError as exc:
            last = exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from exc
    raise Unauthorized(
        "the token's signature does not match: it was tampered with or revoked"
    ) from last
