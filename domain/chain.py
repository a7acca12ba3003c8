"""The per-plan hash chain an auditor can recompute from the stored events alone.

    data_digest = SHA-256(canonical JSON of [type, actor, data])
    hash        = SHA-256(previous hash | plan_id | version | recorded_at | data_digest)

The body enters only as a digest, so a redacted event (content withheld) still verifies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

import msgspec

GENESIS = "0" * 64

_encoder = msgspec.json.Encoder()


def timestamp(at: datetime) -> str:
    """The one text form of a time that enters a hash: UTC, microseconds, `+00:00`."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def data_digest(event_type: str, actor: str, data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    body = _encoder.encode([event_type, actor, msgspec.Raw(raw)])
    return hashlib.sha256(body).hexdigest()


def event_hash(
    previous: str, plan_id: str, version: int, recorded_at: datetime, digest: str
) -> str:
    text = f"{previous}|{plan_id}|{version}|{timestamp(recorded_at)}|{digest}"
    return hashlib.sha256(text.encode()).hexdigest()


class StoredLink(Protocol):
    """An event as stored, read back or written to a file: its JSON `data` as text (None when
    withheld)."""

    @property
    def version(self) -> int: ...
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def data_digest(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def data(self) -> str | None: ...


class Link(msgspec.Struct, frozen=True):
    """What verification needs of one stored event (data may be withheld: digest suffices)."""

    plan_id: str
    version: int
    recorded_at: datetime
    data_digest: str
    hash: str
    type: str = ""
    actor: str = ""
    data: msgspec.Raw | None = None

    @classmethod
    def of(cls, plan_id: str, e: StoredLink) -> Link:
        data = e.data
        return cls(
            plan_id=plan_id,
            version=e.version,
            recorded_at=e.recorded_at,
            data_digest=e.data_digest,
            hash=e.hash,
            type=e.type,
            actor=e.actor,
            data=None if data is None else msgspec.Raw(data.encode()),
        )


class Verdict(msgspec.Struct, frozen=True):
    ok: bool
    version: int
    head_hash: str
    broken_at: int | None = None
    reason: str = ""


def verify(links: Iterable[Link]) -> Verdict:
    """Recompute the chain; the first event whose digest, hash or version is off breaks it."""
    previous = GENESIS
    expected_version = 1
    for link in links:
        if link.version != expected_version:
            return Verdict(False, expected_version - 1, previous, link.version, "version gap")
        if link.data is not None:
            if data_digest(link.type, link.actor, bytes(link.data)) != link.data_digest:
                return Verdict(False, link.version - 1, previous, link.version, "body altered")
        computed = event_hash(
            previous, link.plan_id, link.version, link.recorded_at, link.data_digest
        )
        if computed != link.hash:
            return Verdict(False, link.version - 1, previous, link.version, "hash mismatch")
        previous = link.hash
        expected_version += 1
    return Verdict(True, expected_version - 1, previous)
