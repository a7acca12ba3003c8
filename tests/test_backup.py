"""`mapstream backup` / `restore`: a restored database holds the same events, byte for byte,
verifies, and rebuilds every projection; a damaged backup or a non-empty target writes nothing."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from domain.comments import AddComment
from domain.errors import Malformed
from server.backup import CorruptBackup, TargetNotEmpty, backup, check, restore
from server.database import apply_schema
from server.plans import PlanService
from server.store import Store
from server.tools import verify_with_head
from server.webhooks import Snapshot
from tests.support import (
    auth,
    cli_env,
    create_database,
    drop_database,
    fresh_database,
    mapstream,
    running_app,
    settings_for,
    with_database,
)
from tests.test_webhooks import Receiver, serving

SELLER = "sam.seller@northwind.example"
BUYER = "ramesh.iyer@contoso.example"
COLLEAGUE = "priya@contoso.example"
OTHER_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

# what must survive a restore exactly (transaction_id is the restoring transaction's)
EVENTS = """SELECT plan_id, version, position, type, schema_version, data::text AS data, actor,
    command_id, command_first, correlation_id, recorded_at, audience, data_digest, hash
    FROM events ORDER BY position"""
AUDIT = """SELECT plan_id, version, position, recorded_at, type, actor, actor_name, items,
    audience, row::text AS row FROM audit_trail ORDER BY plan_id, version"""
ANALYTICS = """SELECT plan_id, version, seller_org, seller_members, figures::text AS figures
    FROM analytics_plans ORDER BY plan_id"""
PLANS = "SELECT plan_id, version, head_hash, created_at, updated_at FROM plans ORDER BY plan_id"
INVITES = "SELECT row_to_json(t)::text AS r FROM invites t ORDER BY plan_id, invite_id"
TEMPLATES = "SELECT row_to_json(t)::text AS r FROM templates t ORDER BY template_id"


async def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r.values()) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def command(
    http: httpx.AsyncClient, plan_id: str, type_: str, who: str = SELLER, **data: Any
) -> int:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    r = await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
    assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return version


async def new_plan(http: httpx.AsyncClient, title: str) -> str:
    body = {"title": title, "buyer_org": "Contoso", "seller_org": "Northwind", "side": "seller"}
    r = await http.post("/plans", json=body, headers=auth(SELLER))
    assert r.status_code == 201, r.text
    plan_id: str = r.json()["plan_id"]
    await command(http, plan_id, "add_member", email=BUYER, side="buyer", role="editor")
    await command(
        http, plan_id, "add_stakeholder", id="ramesh", name="Ramesh Iyer", side="buyer", email=BUYER
    )
    await command(
        http, plan_id, "add_milestone", id="security", title="Security sign-off", owner="ramesh",
        due="2026-06-16",
    )  # fmt: skip
    return plan_id


async def build(http: httpx.AsyncClient) -> list[str]:
    """Three plans with internal items of both sides, slips, comments, a fork, an accepted
    invite and a saved template: every kind of row a backup must carry."""
    won = await new_plan(http, "Contoso evaluates Northwind")
    await command(
        http, won, "add_action_item", id="discount", milestone_id="security",
        title="Prepare discount approval", visibility="internal",
    )  # fmt: skip
    await command(
        http, won, "add_action_item", who=BUYER, id="budget", milestone_id="security",
        title="Confirm budget line", visibility="internal",
    )  # fmt: skip
    await command(http, won, "add_comment", item_id="discount", text="20% is the ceiling")
    await command(
        http, won, "reschedule_milestone", who=BUYER, id="security", due="2026-06-23",
        reason="waiting for the SOC 2 report",
    )  # fmt: skip
    await command(http, won, "set_action_item_status", who=BUYER, id="budget", status="done")
    await command(http, won, "tag_version", name="sent to procurement")
    await command(http, won, "activate_plan")
    await command(http, won, "close_plan", outcome="won", reason="signed")
    r = await http.post(f"/plans/{won}/fork", json={"title": "Kickoff"}, headers=auth(SELLER))
    assert r.status_code == 201, r.text
    kickoff: str = r.json()["plan_id"]
    busy = await new_plan(http, "Fabrikam evaluates Northwind")
    for n in range(40):
        await command(
            http,
            busy,
            "add_comment",
            who=(SELLER, BUYER)[n % 2],
            item_id="plan",
            text=f"note {n} @{BUYER}",
        )
    r = await http.post(
        f"/plans/{busy}/invites", json={"side": "buyer", "role": "commenter"}, headers=auth(SELLER)
    )
    assert r.status_code == 201, r.text
    r = await http.post(
        f"/invites/{r.json()['code']}/accept", json={"name": "Priya", "email": COLLEAGUE}
    )
    assert r.status_code == 200, r.text
    r = await http.post(
        f"/plans/{busy}/invites", json={"side": "buyer", "role": "viewer"}, headers=auth(SELLER)
    )
    assert r.status_code == 201, r.text  # an open one
    r = await http.post(
        f"/plans/{busy}/save-as-template", json={"name": "Fabrikam shape"}, headers=auth(SELLER)
    )
    assert r.status_code == 201, r.text
    return [won, kickoff, busy]


async def settled(url: str, timeout: float = 30) -> None:
    """Wait until the server's projections have applied every event of the database."""
    async with asyncio.timeout(timeout):
        while True:
            counts = await fetch(
                url,
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_trail),"
                " (SELECT count(*) FROM analytics_plans WHERE (plan_id, version) IN"
                "   (SELECT plan_id, version FROM plans)), (SELECT count(*) FROM plans)",
            )
            events, audit, analytics, plans = counts[0]
            if events == audit and analytics == plans:
                return
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def source(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, list[str]]]:
    """A database a server has filled through the API: (url, plan ids)."""
    async with fresh_database() as url:
        async with (
            running_app(settings_for(url, tmp_path_factory.mktemp("backup-source"))) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            plan_ids = await build(http)
            await settled(url)
        yield url, plan_ids


@pytest.fixture(scope="module")
async def backup_file(
    source: tuple[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    url, _ = source
    path = tmp_path_factory.mktemp("backup") / "mapstream.jsonl.gz"
    done = await mapstream(cli_env(url, path.parent), "backup", str(path), "--progress-every", "25")
    assert done.returncode == 0, done.stderr
    assert "backup: 25/" in done.stderr and "backup: 50/" in done.stderr  # a line per 25 events
    assert "2 invites" in done.stdout and "1 templates" in done.stdout
    return path


@pytest.fixture(scope="module")
async def blank() -> AsyncIterator[str]:
    """A blank database that every refused restore must leave blank."""
    async with fresh_database(schema=False) as url:
        yield url


async def test_a_restored_database_has_the_same_events_verifies_and_rebuilds_every_projection(
    source: tuple[str, list[str]], backup_file: Path, tmp_path: Path
):
    src, plan_ids = source
    async with fresh_database(schema=False) as dst:
        done = await mapstream(
            cli_env(dst, tmp_path), "restore", str(backup_file), "--progress-every", "25"
        )
        assert done.returncode == 0, done.stderr
        assert "restore: 25/" in done.stderr and "every chain verifies as stored" in done.stderr
        for projection in ("audit", "snapshots", "analytics"):
            assert f"{projection}: rebuilding from position 0" in done.stderr

        events = await fetch(src, EVENTS)
        assert len(events) > 60
        assert await fetch(dst, EVENTS) == events  # data text, hashes, positions: all of it
        for sql in (INVITES, TEMPLATES, PLANS, AUDIT, ANALYTICS):
            assert await fetch(dst, sql) == await fetch(src, sql), sql

        pools = [await asyncpg.create_pool(u, min_size=1, max_size=2) for u in (src, dst)]
        try:
            stores = [Store(p) for p in pools]
            for plan_id in plan_ids:
                verdict = await verify_with_head(stores[1], plan_id)
                assert verdict.ok, verdict
                states = [
                    msgspec.json.encode(await PlanService(s).current(plan_id)) for s in stores
                ]
                assert states[0] == states[1]
        finally:
            for p in pools:
                await p.close()

        # a server on the restored database serves each side's view and takes new commands
        async with (
            running_app(settings_for(dst, tmp_path)) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            won = plan_ids[0]
            r = await http.get(f"/plans/{won}", headers=auth(BUYER))
            assert r.status_code == 200
            assert "discount" not in r.text and "budget" in r.text
            busy = plan_ids[2]
            before = max(e[2] for e in events)
            version = await command(http, busy, "add_comment", item_id="plan", text="after")
            r = await http.get(f"/plans/{busy}/events?since={version - 1}", headers=auth(SELLER))
            assert r.json()["events"][0]["position"] > before
            r = await http.get(f"/plans/{busy}/verify", headers=auth(SELLER))
            assert r.json()["ok"] is True


async def test_restoring_into_a_database_that_holds_data_is_refused_and_changes_nothing(
    source: tuple[str, list[str]], backup_file: Path, tmp_path: Path
):
    src, _ = source
    before = [await fetch(src, sql) for sql in (EVENTS, PLANS, INVITES, AUDIT)]
    done = await mapstream(cli_env(src, tmp_path), "restore", str(backup_file))
    assert done.returncode == 1
    assert "restore refused [not_empty]" in done.stderr
    assert "events (" in done.stderr and "nothing was written" in done.stderr
    assert [await fetch(src, sql) for sql in (EVENTS, PLANS, INVITES, AUDIT)] == before


def lines_of(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).splitlines(keepends=True)


def with_checksum(lines: list[bytes]) -> list[bytes]:
    """Recompute the end line's checksum, as a careful forger would."""
    end = json.loads(lines[-1])
    end["sha256"] = hashlib.sha256(b"".join(lines[:-1])).hexdigest()
    return [*lines[:-1], json.dumps(end).encode() + b"\n"]


def first(lines: list[bytes], t: str, **match: Any) -> int:
    for n, line in enumerate(lines):
        d = json.loads(line)
        if d["t"] == t and all(d.get(k) == v for k, v in match.items()):
            return n
    raise AssertionError(f"no {t} line with {match}")


def edit(lines: list[bytes], n: int, change: Callable[[dict[str, Any]], None]) -> list[bytes]:
    d = json.loads(lines[n])
    change(d)
    return [*lines[:n], json.dumps(d).encode() + b"\n", *lines[n + 1 :]]


def flip_data_byte(lines: list[bytes]) -> list[bytes]:
    n = first(lines, "event", type="MilestoneAdded")
    i = lines[n].index(b"Security")
    return [*lines[:n], lines[n][:i] + b"Z" + lines[n][i + 1 :], *lines[n + 1 :]]


def change_title(d: dict[str, Any]) -> None:
    d["data"] = d["data"].replace("Security", "Insecurity")


def change_hash(d: dict[str, Any]) -> None:
    d["hash"] = ("0" if d["hash"][0] != "0" else "1") + d["hash"][1:]


def share_internal(d: dict[str, Any]) -> None:
    d["audience"] = None  # show the seller's discount note to the buyer


def drop_last_event(lines: list[bytes]) -> list[bytes]:
    """Cut a plan's last event and fix every count: only the recorded head can tell."""
    n = max(i for i, line in enumerate(lines) if json.loads(line)["t"] == "event")
    lines = lines[:n] + lines[n + 1 :]
    lines = edit(lines, 0, lambda d: d.update(events=d["events"] - 1))
    return with_checksum(edit(lines, len(lines) - 1, lambda d: d.update(events=d["events"] - 1)))


CORRUPTIONS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str]] = {
    "a flipped byte in an event": (flip_data_byte, "(body altered)"),
    "an edited event, checksum recomputed": (
        lambda ls: with_checksum(edit(ls, first(ls, "event", type="MilestoneAdded"), change_title)),
        "(body altered)",
    ),
    "an edited hash, checksum recomputed": (
        lambda ls: with_checksum(edit(ls, first(ls, "event", version=2), change_hash)),
        "version 2 (hash mismatch)",
    ),
    "an internal event made shared, checksum recomputed": (
        lambda ls: with_checksum(
            edit(ls, first(ls, "event", type="ActionItemAdded", audience="seller"), share_internal)
        ),
        "audience None is not the one its content implies ('seller')",
    ),
    "the last event cut, counts fixed": (drop_last_event, "but the plan recorded version"),
    "an edited invite row": (
        lambda ls: edit(
            ls, first(ls, "row", table="invites"), lambda d: d["row"].update(role="owner")
        ),
        "checksum does not match",
    ),
    "no end line": (lambda ls: ls[:-1], "incomplete"),
    "an event line cut in half": (lambda ls: [*ls[:-3], ls[-3][:40]], "damaged"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_a_damaged_backup_is_detected_and_nothing_is_written(
    corruption: str, backup_file: Path, blank: str, tmp_path: Path
):
    mutate, message = CORRUPTIONS[corruption]
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(b"".join(mutate(lines_of(backup_file)))))
    with pytest.raises(CorruptBackup) as offline:
        check(damaged)
    assert message in offline.value.message
    with pytest.raises(CorruptBackup) as restoring:
        await restore(settings_for(blank, tmp_path), damaged)
    assert restoring.value.message == offline.value.message
    assert await fetch(blank, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []


async def test_a_file_that_is_not_an_intact_backup_is_refused(
    backup_file: Path, blank: str, tmp_path: Path
):
    raw = await asyncio.to_thread(backup_file.read_bytes)
    cases = {
        "cut.gz": (raw[: len(raw) // 2], CorruptBackup, "cut short"),
        "flipped.gz": (raw[:-12] + bytes([raw[-12] ^ 0xFF]) + raw[-11:], CorruptBackup, ""),
        "proof.json": (b'{"format": "mapstream-proof/1"}\n', Malformed, "not gzip"),
        "other.gz": (gzip.compress(b'{"hello": 1}\n'), Malformed, "not a Mapstream backup"),
    }
    for name, (body, error, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(error) as refused:
            await restore(settings_for(blank, tmp_path), path)
        assert message in refused.value.message, name
    with pytest.raises(Malformed, match="no such file"):
        await restore(settings_for(blank, tmp_path), tmp_path / "missing.gz")
    assert await fetch(blank, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []


async def test_a_backup_taken_while_plans_are_being_edited_is_one_consistent_snapshot(
    tmp_path: Path,
):
    """Plan heads and events come from one snapshot: appends racing the backup never leave
    a chain that ends past (or before) the head its plan row recorded."""
    async with fresh_database(schema=False) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await apply_schema(conn)
            service = PlanService(Store(pool))
            from domain.comments import AddComment
            from domain.plans import CreatePlan

            plan_ids = [f"race-{n}" for n in range(4)]
            for plan_id in plan_ids:
                create = CreatePlan(title="Race", buyer_org="B", seller_org="S", side="seller")
                await service.handle(plan_id, create, SELLER)
            stop = asyncio.Event()
            written = 0

            async def writer(plan_id: str) -> None:
                nonlocal written
                while not stop.is_set():
                    await service.handle(plan_id, AddComment(item_id="plan", text="x"), SELLER)
                    written += 1

            writers = [asyncio.create_task(writer(p)) for p in plan_ids]
            try:
                for n in range(3):
                    path = tmp_path / f"race-{n}.jsonl.gz"
                    header = await backup(settings_for(url, tmp_path), path)
                    assert check(path).events == header.events  # every chain ends at its head
            finally:
                stop.set()
                await asyncio.gather(*writers)
            assert written > 0 and header.events > len(plan_ids)
        finally:
            await pool.close()


async def test_restore_refuses_a_target_with_any_data_even_without_events(
    backup_file: Path, tmp_path: Path
):
    async with fresh_database(schema=False) as url:
        conn = await asyncpg.connect(url)
        try:
            await apply_schema(conn)
            await conn.execute(
                "INSERT INTO templates (template_id, created_by, body) VALUES ('t', 'a@b.c', '{}')"
            )
        finally:
            await conn.close()
        with pytest.raises(TargetNotEmpty, match=r"templates \(1 rows\)"):
            await restore(settings_for(url, tmp_path), backup_file)
        assert await fetch(url, "SELECT count(*) FROM events") == [(0,)]


async def test_a_backup_restores_into_the_other_postgresql_major_version(
    source: tuple[str, list[str]], backup_file: Path, tmp_path: Path
):
    """The file is portable: written from one major version (the embedded 18, or
    DATABASE_URL's), restored into another (MAPSTREAM_OTHER_DATABASE_URL, by default the
    machine's PostgreSQL 15)."""
    src, _ = source
    other = os.environ.get("MAPSTREAM_OTHER_DATABASE_URL", OTHER_POSTGRES)
    try:
        conn = await asyncpg.connect(other, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no other PostgreSQL at {other}: {exc}")
    try:
        major = conn.get_server_version().major
    finally:
        await conn.close()
    ours = int((await fetch(src, "SHOW server_version_num"))[0][0]) // 10000
    if major == ours:
        pytest.skip(f"{other} is PostgreSQL {major} too")
    name = await create_database(other)
    url = with_database(other, name)
    try:
        await restore(settings_for(url, tmp_path), backup_file)
        for sql in (EVENTS, PLANS, INVITES, AUDIT, ANALYTICS):
            assert await fetch(url, sql) == await fetch(src, sql), sql
    finally:
        await drop_database(other, name)


# -- webhook subscriptions in a new cluster ----------------------------------------------------


async def test_a_restored_webhook_subscription_gets_the_events_of_the_new_cluster(
    tmp_path: Path,
):
    """The backup comes from a cluster whose transaction ids are far above this one's (its
    subscription's created_snapshot is edited to say so): the restored subscription still
    owes every event appended after the restore, and the one the outbox had not applied when
    the backup was taken, and is not sent again what it had been sent."""
    receiver = Receiver()
    receiver.down = False  # every route answers 200

    def comments() -> list[str]:
        return [g.json()["data"]["text"] for g in receiver.got]

    async def until(text: str) -> None:
        async with asyncio.timeout(15):
            while text not in comments():
                await asyncio.sleep(0.02)

    def hooked(url: str) -> Any:
        return settings_for(
            url,
            tmp_path,
            webhook_allow_private=True,
            webhook_admins_only=False,
            webhook_poll=0.05,
            webhook_backoff=0.05,
            webhook_backoff_max=0.2,
        )

    async with fresh_database(schema=False) as src, fresh_database(schema=False) as dst:
        async with serving(receiver) as receiver_url:
            hook_url = f"{receiver_url}/hook"
            async with (
                running_app(hooked(src)) as base,
                httpx.AsyncClient(base_url=base, timeout=10) as http,
            ):
                plan_id = await new_plan(http, "Contoso evaluates Northwind")
                async with asyncio.timeout(15):  # who manages the org's webhooks: analytics
                    while (
                        await http.get(
                            "/webhooks", params={"seller_org": "Northwind"}, headers=auth(SELLER)
                        )
                    ).status_code != 200:
                        await asyncio.sleep(0.02)
                r = await http.post(
                    "/webhooks",
                    json={"seller_org": "Northwind", "url": hook_url, "events": ["CommentAdded"]},
                    headers=auth(SELLER),
                )
                assert r.status_code == 201, r.text
                await command(http, plan_id, "add_comment", item_id="plan", text="sent")
                await until("sent")
            # the server is down: the outbox has not applied this one when the backup is taken
            pool = await asyncpg.create_pool(src, min_size=1, max_size=2)
            assert pool is not None
            try:
                await PlanService(Store(pool)).handle(
                    plan_id, AddComment(item_id="plan", text="pending"), SELLER
                )
            finally:
                await pool.close()

            path = tmp_path / "backup.jsonl.gz"
            await backup(settings_for(src, tmp_path), path, out=io.StringIO())
            lines = lines_of(path)
            n = first(lines, "row", table="webhook_subscriptions")
            future = "900000000:900000000:"  # the old cluster's xids: far above this one's
            edited = tmp_path / "future.jsonl.gz"
            edited.write_bytes(
                gzip.compress(
                    b"".join(
                        with_checksum(
                            edit(lines, n, lambda d: d["row"].update(created_snapshot=future))
                        )
                    )
                )
            )
            await restore(settings_for(dst, tmp_path), edited, out=io.StringIO())

            conn = await asyncpg.connect(dst)
            try:
                async with conn.transaction():
                    restored = Snapshot.parse(
                        await conn.fetchval("SELECT created_snapshot FROM webhook_subscriptions")
                    )
                    later = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
                    restoring = int(
                        await conn.fetchval(
                            "SELECT transaction_id::text FROM events WHERE plan_id = $1 LIMIT 1",
                            plan_id,
                        )
                    )
            finally:
                await conn.close()
            assert not restored.saw(later)  # a transaction after the restore is owed
            assert restored.saw(restoring - 1) and not restored.saw(restoring)

            async with (
                running_app(hooked(dst)) as base,
                httpx.AsyncClient(base_url=base, timeout=10) as http,
            ):
                await until("pending")
                await command(http, plan_id, "add_comment", item_id="plan", text="after")
                await until("after")
            assert sorted(comments()) == ["after", "pending", "sent"]  # each once
