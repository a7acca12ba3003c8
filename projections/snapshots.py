"""Snapshots: the fold of a plan cached every `EVERY` versions, so history loads fast.

The state of a plan at version N is the fold of its first N events; a snapshot lets a reader
start from the nearest cached fold at or below N and fold only the events after it. A
snapshot is only ever a cache, and a checked one:

- it carries the hash of the event at its version, and is used only when that hash is the
  stored event's hash (it belongs to this chain, at this version);
- it carries the fingerprint of the `Plan` struct's JSON schema it was encoded with; when the
  decider's state changes shape the fingerprint changes, old snapshots are ignored and the
  snapshot projection (its checkpoint is named after the fingerprint) rebuilds them from
  position 0;
- `mapstream verify` folds each plan and compares it with every snapshot it has.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from domain.decider import evolve
from domain.model import Plan
from projections.runner import LogEvent
from projections.states import Loader, PlanStates, recorded_of

log = logging.getLogger(__name__)

EVERY = 100
# Bump when `evolve` changes what a stored state means without changing its shape.
FOLD_REVISION = 1

_encoder = msgspec.json.Encoder()


def _without_descriptions(schema: Any) -> Any:
    """Docstrings enter msgspec's schema as `description`; they do not change the shape."""
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema


def fingerprint(state_type: type[Any] = Plan, revision: int = FOLD_REVISION) -> str:
    """A short hash of the state's JSON schema: equal fingerprints decode the same JSON."""
    schema = _without_descriptions(msgspec.json.schema(state_type))
    body = _encoder.encode([revision, schema])
    return hashlib.sha256(body).hexdigest()[:16]


SCHEMA = fingerprint()


class SnapshotRow(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    schema: str
    hash: str  # the hash of the plan's event at `version`
    state: str  # the Plan at `version`, msgspec JSON


# Below `4 * every`, a plan whose events add up to at most this much also gets a snapshot
# every `every // 4` versions.
DENSE_BYTES = 256 * 1024


def is_due(version: int, every: int = EVERY, *, small: bool = False) -> bool:
    """A snapshot at every `every`-th version, and four times as often early on if `small`.

    Folding an event costs a few times more than reading it, so a fold of up to `every - 1`
    events stays within twice a raw read of the events only well past `every`; denser early
    snapshots cover the versions before. Only for small plans: a plan of large events would
    write many large states at once, and the live sockets of the same process pay for it."""
    if version % every == 0:
        return True
    return small and version < 4 * every and version % max(every // 4, 1) == 0


def checkpoint_name(schema: str = SCHEMA) -> str:
    """One checkpoint per fingerprint: a new state shape starts its snapshots from zero."""
    return f"snapshots:{schema}"


def encode_state(plan: Plan) -> str:
    return _encoder.encode(plan).decode()


class SnapshotProjection:
    """Log events -> a snapshot of each plan every `every` versions."""

    def __init__(
        self,
        load: Loader,
        *,
        every: int = EVERY,
        capacity: int = 1024,
        schema: str = SCHEMA,
        dense_bytes: int = DENSE_BYTES,
    ) -> None:
        if every < 1:
            raise ValueError("snapshots need every >= 1")
        self.every = every
        self.schema = schema
        self.dense_bytes = dense_bytes
        self.states = PlanStates(load, capacity)
        self._bytes: dict[str, int] = {}  # event data seen per plan, for plans seen from v1

    def reset(self) -> None:
        self.states.reset()
        self._bytes.clear()

    def _small(self, e: LogEvent) -> bool:
        """Whether the plan's events so far add up to at most `dense_bytes` (unknown: no)."""
        seen = 0 if e.version == 1 else self._bytes.pop(e.plan_id, None)
        if seen is None or e.version >= 4 * self.every:
            return False
        seen += len(e.data)
        self._bytes[e.plan_id] = seen
        return seen <= self.dense_bytes

    async def project(self, events: Sequence[LogEvent]) -> list[SnapshotRow]:
        rows: list[SnapshotRow] = []
        for e in events:
            try:
                before = await self.states.before(e)
                after = evolve(before, recorded_of(e))
            except Exception as exc:  # a history this code cannot fold: no snapshot for it
                log.info("snapshots: cannot fold %s v%s: %s", e.plan_id, e.version, exc)
                self.states.forget(e.plan_id)
                continue
            self.states.advance(after)
            await asyncio.sleep(0)  # a batch is CPU work: let the sockets of this process run
            if is_due(e.version, self.every, small=self._small(e)):
                rows.append(
                    SnapshotRow(e.plan_id, e.version, self.schema, e.hash, encode_state(after))
                )
        return rows
