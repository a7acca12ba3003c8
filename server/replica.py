"""Read replica: plan reads served by a PostgreSQL streaming replica, without stale surprises.

`GET /plans/{id}`, `GET /plans/{id}/events` and `GET /plans/{id}/audit` read from the replica
(`DATABASE_REPLICA_URL`) when it can answer them correctly; otherwise from the primary. Three
rules decide, in this order:

1. **Freshness bound.** A monitor samples the primary's flushed WAL position and the replica's
   replayed position every ~100 ms. The replica is used only while it has replayed everything
   the primary had flushed `max_lag` ago (`MAPSTREAM_REPLICA_MAX_LAG_MS`). So no read from the
   replica is older than that bound: in particular a revoked member loses access on the replica
   at most `max_lag` (plus one sample) after the revocation, as on the primary.
2. **Read-your-writes.** A read needs at least version N of the plan, where N is the larger of
   the version the client asks for (`X-Mapstream-Min-Version: N` or `?min_version=N`: the
   `version` of a command answer or ack, works across instances) and the last version this
   instance itself appended to the plan (so a client on one instance always reads its own
   writes without doing anything). A replica behind N is polled for up to
   `MAPSTREAM_REPLICA_WAIT_MS`, then the primary answers.
3. **Negative answers and failures go to the primary.** "No such plan", "not a member" or "no
   such version" from the replica may only mean it has not caught up: the primary decides. A
   replica that fails (down, restarting, a query cancelled by recovery) makes the read retry
   on the primary; the monitor brings the replica back when it answers again.

Every such response says where it was read: `X-Mapstream-Read: replica` or `primary`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from domain.errors import Forbidden, Malformed, MapstreamError, NotFound
from domain.model import Plan, Side
from server.codec import check_plan_id
from server.database import redact
from server.errors import database_down
from server.plans import PlanService
from server.settings import Settings
from server.store import Store

log = logging.getLogger(__name__)

MIN_VERSION_HEADER = "x-mapstream-min-version"
SOURCE_HEADER = "X-Mapstream-Read"

_POLL_SECONDS = 0.005  # how often a read-your-writes wait asks the replica again
_PROBE_TIMEOUT = 2.0  # a monitor probe that takes longer counts as a failure
_READ_SECONDS = 1.0  # a replica read (beyond the read-your-writes wait) that takes longer fails
_MAX_SAMPLES = 20_000  # primary positions the replica has not replayed yet (oldest dropped)
_MAX_WRITTEN = 100_000  # plans this instance remembers writing to (oldest dropped)

# What a route does once it knows which copy to read: the service over it, the plan, the side.
Render = Callable[[PlanService, Plan, Side], Awaitable[Response]]


class ReadRouter:
    """Chooses, per read, between the replica and the primary. One per process."""

    def __init__(
        self,
        primary: PlanService,
        replica: PlanService | None = None,
        *,
        wait: float = 0.2,
        max_lag: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.wait = wait
        self.max_lag = max_lag
        self.interval = min(0.1, max_lag / 4)
        self.clock = clock
        self._healthy = False
        self._fresh_as_of: float | None = None  # the replica has all the primary flushed by then
        self._samples: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)
        self._written: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._was_usable = False

    @classmethod
    async def open(cls, settings: Settings, primary: PlanService) -> ReadRouter:
        """The router of `settings`: without a replica URL every read goes to the primary."""
        if not settings.replica_url:
            return cls(primary)
        if settings.replica_max_lag_ms < 100 or settings.replica_wait_ms < 0:
            raise SystemExit(
                "MAPSTREAM_REPLICA_MAX_LAG_MS must be at least 100 and "
                "MAPSTREAM_REPLICA_WAIT_MS at least 0"
            )
        # min_size=0: a replica that is down at start-up is not an error, reads use the primary
        pool = await asyncpg.create_pool(
            settings.replica_url,
            min_size=0,
            max_size=settings.pool_max,
            timeout=5,  # connecting: a replica that does not answer is skipped, not waited on
            command_timeout=30,
            server_settings={"application_name": "mapstream-replica"},
        )
        assert pool is not None
        log.info("reads may use the replica at %s", redact(settings.replica_url))
        return cls(
            primary,
            PlanService(Store(pool)),
            wait=settings.replica_wait_ms / 1000,
            max_lag=settings.replica_max_lag_ms / 1000,
        )

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.store.pool.close()

    # -- what this instance wrote ----------------------------------------------------------

    def wrote(self, plan_id: str, version: int) -> None:
        """Remember an append of this instance: its reads of the plan need that version."""
        now = self.clock()
        self._written[plan_id] = (version, now)
        self._written.move_to_end(plan_id)
        # An entry older than max_lag is on any usable replica already (rule 1): drop it.
        while self._written:
            oldest = next(iter(self._written.values()))
            if now - oldest[1] <= self.max_lag and len(self._written) <= _MAX_WRITTEN:
                break
            self._written.popitem(last=False)

    def needed(self, plan_id: str, asked: int) -> int:
        """The least version of `plan_id` a read may answer with."""
        written = self._written.get(plan_id)
        return asked if written is None else max(asked, written[0])

    # -- the replica's health ----------------------------------------------------------------

    def usable(self) -> bool:
        """The replica answers, and has everything the primary flushed `max_lag` ago."""
        ok = (
            self.replica is not None
            and self._healthy
            and self._fresh_as_of is not None
            and self.clock() - self._fresh_as_of <= self.max_lag
        )
        if ok != self._was_usable:
            self._was_usable = ok
            log.info("reads %s the replica", "use" if ok else "no longer use")
        return ok

    def failed(self, exc: BaseException) -> None:
        """A read on the replica failed: use the primary until the monitor says otherwise."""
        log.warning("replica read failed, using the primary: %s", exc)
        if database_down(exc):
            self._healthy = False

    async def run(self) -> None:
        """Sample the primary's and the replica's WAL positions until cancelled."""
        if self.replica is None:
            return
        while True:
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT):
                    await self._probe(self.replica.store)
            except Exception as exc:  # down, restarting, promoted: all mean "not now"
                if self._healthy:
                    log.warning("replica unavailable, reads use the primary: %s", exc)
                self._healthy = False
            await asyncio.sleep(self.interval)

    async def _probe(self, replica: Store) -> None:
        # The time is taken before the primary is asked: whatever committed before it has its
        # commit record at or below the flushed position the primary answers.
        at = self.clock()
        flushed = await self.primary.store.wal_flushed()
        replayed = await replica.wal_replayed()
        if replayed is None:
            # not a standby (never was, or promoted): its positions say nothing about ours
            raise RuntimeError("DATABASE_REPLICA_URL is not a standby in recovery")
        self._samples.append((at, flushed))
        while self._samples and self._samples[0][1] <= replayed:
            self._fresh_as_of = self._samples.popleft()[0]
        self._healthy = True

    async def caught_up(self, plan_id: str, version: int) -> bool:
        """Wait up to `wait` for the replica to have `version` of the plan."""
        assert self.replica is not None
        deadline = self.clock() + self.wait
        while True:
            if await self.replica.store.plan_version(plan_id) >= version:
                return True
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(_POLL_SECONDS)


def min_version(request: Request) -> int:
    """The version the client needs at least: `X-Mapstream-Min-Version` or `?min_version`."""
    found = 0
    for raw in (request.headers.get(MIN_VERSION_HEADER), request.query_params.get("min_version")):
        if raw is None or raw == "":
            continue
        if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**31 - 1:
            raise Malformed(
                "`min_version` (or X-Mapstream-Min-Version) must be a whole number: "
                "the `version` of a command answer",
                field="min_version",
            )
        found = max(found, int(raw))
    return found


async def serve_read(request: Request, user: str, render: Render) -> Response:
    """Answer a plan read from the replica when it may (see the module doc), else the primary."""
    from server.http import plan_for_member

    router: ReadRouter = request.app.state.reads
    plan_id = check_plan_id(request.path_params["plan_id"])
    needed = router.needed(plan_id, min_version(request))
    replica = router.replica
    if replica is not None and router.usable():
        try:
            # a partitioned replica hangs rather than fails: bound its part of the read
            async with asyncio.timeout(_READ_SECONDS + router.wait):
                plan, side = await plan_for_member(request, user, replica)
                if plan.version >= needed or await router.caught_up(plan_id, needed):
                    if plan.version < needed:
                        plan, side = await plan_for_member(request, user, replica)
                    response = await render(replica, plan, side)
                    response.headers[SOURCE_HEADER] = "replica"
                    return response
        except (NotFound, Forbidden):
            pass  # perhaps not replayed yet: the primary decides
        except MapstreamError:
            raise  # bad input: the primary would say the same
        except Exception as exc:
            router.failed(exc)
    plan, side = await plan_for_member(request, user, router.primary)
    response = await render(router.primary, plan, side)
    response.headers[SOURCE_HEADER] = "primary"
    return response
