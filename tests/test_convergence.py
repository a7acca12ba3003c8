"""Convergence under co-editing load: 50 live clients, half buyer and half seller, edit one
plan with `expected_version`, rebase on every conflict, and end byte-identical to the
server's fold as their side may see it, and to each other.

Each client folds the stream it receives over its own socket with the domain's pure `evolve`
(the very fold the server uses); an event of the other side's internal item arrives as a
`Redacted` placeholder, which moves only the version, the time and that side's activity.
Commands are drawn from a seeded generator among those the client's own decider accepts on
its view, so any refusal but `version_conflict` is a disagreement between client and server.
A quarter of the clients send their commands over HTTP, the rest over their socket.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from domain.base import Context, Recorded
from domain.decider import decide, decode_event, fold, schema_version_of
from domain.errors import MapstreamError
from domain.model import Plan, Side
from domain.visibility import view_for
from server.codec import decode_command_data
from server.plans import recorded
from server.store import Store
from tests.support import ServerProcess, auth, token

pytestmark = pytest.mark.slow

SEED = 20261126
CLIENTS_PER_SIDE = 25
COMMANDS_PER_CLIENT = 6
OWNER = "seller-00@northwind.example"
STATUSES = ("not_started", "in_progress", "blocked", "done")


class EventIn(msgspec.Struct, frozen=True):
    version: int
    type: str
    recorded_at: datetime
    actor: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")  # none in a Redacted placeholder


class Frame(msgspec.Struct, frozen=True):
    op: str
    plan_id: str | None = None
    event: EventIn | None = None
    command_id: str | None = None
    version: int | None = None
    code: str | None = None
    current_version: int | None = None


class PlanOut(msgspec.Struct, frozen=True):
    version: int
    state: Plan


_frames = msgspec.json.Decoder(Frame)
_plan_out = msgspec.json.Decoder(PlanOut)
_encode = msgspec.json.encode


def other(side: Side) -> Side:
    return "buyer" if side == "seller" else "seller"


@dataclass
class Client:
    """One co-editor: a socket, the fold of what it received, and a seeded command mix."""

    email: str
    side: Side
    rng: random.Random
    via_http: bool
    plan_id: str
    state: Plan = field(default_factory=Plan)
    ws: ClientConnection | None = None
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    replies: dict[str, asyncio.Future[Frame]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # gaps, duplicates, odd refusals
    first: tuple[str, dict[str, Any]] | None = None  # a command to start with
    redacted: int = 0
    conflicts: int = 0
    applied: int = 0
    made: int = 0
    acked: list[str] = field(default_factory=list)  # command ids

    def __post_init__(self) -> None:
        self.state = Plan(id=self.plan_id)

    # -- the fold of the stream -------------------------------------------------------

    def apply(self, e: EventIn) -> None:
        if e.version != self.state.version + 1:
            self.problems.append(f"got version {e.version} after {self.state.version}")
            return
        if e.type == "Redacted":
            # the other side's internal item: its place in the stream, nothing more
            self.redacted += 1
            side = other(self.side)
            self.state = msgspec.structs.replace(
                self.state,
                version=e.version,
                updated_at=e.recorded_at,
                last_activity={**self.state.last_activity, side: e.recorded_at},
            )
        else:
            event = decode_event(e.type, schema_version_of(e.type), bytes(e.data))
            self.state = fold([Recorded(e.version, e.actor, e.recorded_at, event)], self.state)
        self.moved.set()

    async def read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                frame = _frames.decode(raw)
                if frame.op == "event" and frame.event is not None:
                    self.apply(frame.event)
                elif frame.op in ("ack", "reject") and frame.command_id in self.replies:
                    self.replies.pop(frame.command_id).set_result(frame)
                elif frame.op == "error":
                    self.problems.append(f"error frame: {raw!r}")
        except Exception as exc:  # say why, instead of leaving the others waiting
            self.problems.append(f"reader stopped: {exc!r}")
            raise

    async def at_least(self, version: int, timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout):
                while self.state.version < version:
                    self.moved.clear()
                    await self.moved.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.email} is at version {self.state.version}, not {version}: {self.problems}"
            ) from None

    # -- commands -----------------------------------------------------------------------

    def accepts(self, kind: str, data: dict[str, Any]) -> bool:
        """Whether this client's own decider, on its view, takes the command (and changes
        something): it then must not be refused for any reason but a stale version."""
        ctx = Context(self.email, datetime.now(UTC), self.state.member(self.email))
        try:
            command = decode_command_data(kind, "probe", _encode(data))
            return bool(decide(self.state, command, ctx))
        except MapstreamError:
            return False

    def propose(self) -> tuple[str, dict[str, Any]]:
        rng, s = self.rng, self.state
        for _ in range(100):
            self.made += 1
            name = f"{self.email.split('@')[0]}-{self.made}"
            milestones = sorted(s.milestones)
            open_ms = sorted(k for k, m in s.milestones.items() if m.status != "done")
            items = sorted(s.action_items)
            due = (date(2027, 1, 4) + timedelta(days=rng.randrange(300))).isoformat()
            kind = rng.choice(
                ["add_milestone", "add_action_item", "add_comment", "add_comment"]
                + ["update_milestone", "reschedule_milestone"] * bool(open_ms)
                + ["complete_milestone"] * (len(open_ms) > 3)
                + ["set_action_item_status", "update_action_item"] * bool(items)
            )
            data: dict[str, Any]
            match kind:
                case "add_milestone":
                    data = {"id": name, "title": f"Milestone {name}", "due": due}
                case "update_milestone":
                    data = {"id": rng.choice(open_ms), "title": f"Renamed by {name}"}
                case "reschedule_milestone":
                    data = {"id": rng.choice(open_ms), "due": due, "reason": f"slip {name}"}
                case "complete_milestone":
                    data = {"id": rng.choice(open_ms)}
                case "add_action_item":
                    if not milestones:
                        continue
                    data = {
                        "id": name,
                        "milestone_id": rng.choice(milestones),
                        "title": f"Do {name}",
                        "visibility": rng.choice(["shared", "shared", "internal"]),
                    }
                case "set_action_item_status":
                    data = {"id": rng.choice(items), "status": rng.choice(STATUSES)}
                case "update_action_item":
                    data = {"id": rng.choice(items), "notes": f"notes {name}"}
                case _:
                    target = rng.choice(["plan", *items, *milestones])
                    data = {"item_id": target, "text": f"{name} says hi @{OWNER}"}
            if self.accepts(kind, data):
                return kind, data
        raise AssertionError(f"{self.email}: no valid command in 100 draws")

    async def send(
        self, http: httpx.AsyncClient, kind: str, data: dict[str, Any], command_id: str
    ) -> Frame:
        expected = self.state.version
        if self.via_http:
            r = await http.post(
                f"/plans/{self.plan_id}/commands",
                json={
                    "type": kind,
                    "data": data,
                    "command_id": command_id,
                    "expected_version": expected,
                },
                headers=auth(self.email),
            )
            body = r.json()
            if r.status_code == 200:
                return Frame("ack", command_id=command_id, version=body["version"])
            error = body["error"]
            return Frame(
                "reject",
                command_id=command_id,
                code=error["code"],
                current_version=error.get("current_version"),
            )
        assert self.ws is not None
        reply: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.replies[command_id] = reply
        await self.ws.send(
            json.dumps(
                {
                    "op": "command",
                    "plan_id": self.plan_id,
                    "command_id": command_id,
                    "type": kind,
                    "data": data,
                    "expected_version": expected,
                }
            )
        )
        async with asyncio.timeout(20):
            return await reply

    async def edit(self, http: httpx.AsyncClient, commands: int) -> None:
        for _ in range(commands):
            kind, data = self.first or self.propose()
            self.first = None
            command_id = self.new_id()
            while True:
                await asyncio.sleep(self.rng.random() * 0.02)
                # checked on the very state whose version goes out as expected_version (no
                # await in between): the stream may have moved while we slept
                if not self.accepts(kind, data):
                    kind, data = self.propose()
                    command_id = self.new_id()
                reply = await self.send(http, kind, data, command_id)
                if reply.op == "ack":
                    assert reply.version is not None
                    self.applied += 1
                    self.acked.append(command_id)
                    await self.at_least(reply.version)  # read my own write before the next
                    break
                if reply.code != "version_conflict":
                    self.problems.append(f"{kind} {data} refused: {reply.code}")
                    break
                # rebase: catch up to where the server is, then retry (if still valid)
                self.conflicts += 1
                assert reply.current_version is not None
                await self.at_least(reply.current_version)

    def new_id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128)).hex


@pytest.fixture(scope="module")
async def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    proc = await ServerProcess(database_url, tmp_path_factory.mktemp("converge")).start()
    yield proc
    await proc.stop()


async def start_plan(http: httpx.AsyncClient, emails: list[tuple[str, Side]]) -> tuple[str, int]:
    """The plan, every client an editor of it, and a first milestone. (plan id, version)"""
    body = {"title": "Co-editing", "buyer_org": "Contoso", "seller_org": "Northwind"}
    r = await http.post("/plans", json={**body, "side": "seller"}, headers=auth(OWNER))
    assert r.status_code == 201, r.text
    plan_id: str = r.json()["plan_id"]
    commands: list[tuple[str, dict[str, Any]]] = [
        ("add_member", {"email": email, "side": side, "role": "editor"})
        for email, side in emails
        if email != OWNER
    ]
    commands.append(("add_milestone", {"id": "kickoff", "title": "Kickoff"}))
    for kind, data in commands:
        r = await http.post(
            f"/plans/{plan_id}/commands",
            json={"type": kind, "data": data, "command_id": uuid.uuid4().hex},
            headers=auth(OWNER),
        )
        assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return plan_id, version


async def test_fifty_co_editors_with_expected_versions_converge_on_the_servers_fold(
    server: ServerProcess, store: Store
):
    people: list[tuple[str, Side]] = [
        (f"{side}-{n:02}@{'northwind' if side == 'seller' else 'contoso'}.example", side)
        for n in range(CLIENTS_PER_SIDE)
        for side in ("seller", "buyer")
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        plan_id, start = await start_plan(http, people)
        clients = [
            Client(email, side, random.Random(f"{SEED}-{n}"), n % 4 == 3, plan_id)
            for n, (email, side) in enumerate(people)
        ]
        for c in clients[:2]:  # each side surely keeps an internal item
            title = f"{c.side}'s private step"
            c.first = (
                "add_action_item",
                {"id": f"{c.side}-private", "milestone_id": "kickoff", "title": title,
                 "visibility": "internal"},
            )  # fmt: skip
        readers: list[asyncio.Task[None]] = []
        try:
            for c in clients:
                c.ws = await connect(server.ws_url, max_size=2**24)
                await c.ws.send(json.dumps({"op": "auth", "token": token(c.email)}))
                assert json.loads(await c.ws.recv())["op"] == "ready"
                # from version 0: each client's state is purely the fold of what it received
                await c.ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": 0}))
                readers.append(asyncio.create_task(c.read()))
            await asyncio.gather(*(c.at_least(start) for c in clients))

            async with asyncio.timeout(120):
                await asyncio.gather(*(c.edit(http, COMMANDS_PER_CLIENT) for c in clients))
                # each side's last word is internal: the other side's time and activity then
                # come from a placeholder alone
                for c in clients[:2]:
                    c.first = ("update_action_item", {"id": f"{c.side}-private", "notes": "done"})
                    await c.edit(http, 1)

            events = await store.read_stream(plan_id)
            final = events[-1].version
            await asyncio.gather(*(c.at_least(final) for c in clients))
            seen = {
                side: _plan_out.decode(
                    (await http.get(f"/plans/{plan_id}", headers=auth(email))).content
                )
                for email, side in people[:2]
            }
        finally:
            for c in clients:
                if c.ws is not None:
                    await c.ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    assert [p for c in clients for p in c.problems] == []
    commands = len(clients) * COMMANDS_PER_CLIENT + 2  # and the two closing words
    assert sum(c.applied for c in clients) == commands
    # every acknowledged command appended exactly one event: none lost, none applied twice
    assert sorted(e.command_id or "" for e in events[start:]) == sorted(
        a for c in clients for a in c.acked
    )
    assert final == start + commands  # one event per command
    assert sum(c.conflicts for c in clients) > 0  # they really did edit concurrently

    truth = fold((recorded(e) for e in events), plan_id=plan_id)
    views = {side: _encode(view_for(truth, side)) for side in ("buyer", "seller")}
    assert views["buyer"] != views["seller"]  # both sides kept internal items
    for c in clients:
        assert c.state.version == final
        assert _encode(c.state) == views[c.side], c.email
        assert c.redacted > 0, c.email  # the other side's internal items arrived as placeholders
    for side in ("buyer", "seller"):
        mine = {_encode(c.state) for c in clients if c.side == side}
        assert len(mine) == 1  # byte-identical to each other
        assert seen[side].version == final
        assert _encode(seen[side].state) == views[side]  # and to what the server serves
