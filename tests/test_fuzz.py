"""Fuzzing: schemathesis drives the live server from its OpenAPI document; hypothesis throws
garbage frames at the socket. Neither may crash it, answer 500, or leak anything."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.tokens import verify
from tests.support import SECRET, ServerProcess, auth, token

SELLER = "fuzz@seller.example"


@pytest.fixture(scope="module")
async def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    proc = await ServerProcess(database_url, tmp_path_factory.mktemp("fuzz")).start()
    yield proc
    await proc.stop()


async def test_openapi_document_lists_every_route(server: ServerProcess):
    from server.app import create_app
    from tests.support import settings_for

    async with httpx.AsyncClient(base_url=server.url) as http:
        doc = (await http.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text
    app = create_app(settings_for("postgresql://unused", Path("/tmp")))
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        for method in methods - {"HEAD"}:
            if path in ("/openapi.json", "/docs"):
                continue
            assert (path, method.lower()) in documented, (path, method)
    commands = {
        ref["$ref"].rsplit("/", 1)[1] for ref in doc["components"]["schemas"]["Command"]["oneOf"]
    }
    assert "AddMilestoneCommand" in commands and len(commands) >= 20


async def test_schemathesis_finds_no_server_error(server: ServerProcess, tmp_path: Path):
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post(
            "/plans",
            json={"title": "Fuzz", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        assert r.status_code == 201
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "12",
        "--seed",
        "7",
        "--header",
        f"Authorization: Bearer {token(SELLER)}",
        "--report-dir",
        str(tmp_path),
    ]
    result = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # and the server is still healthy afterwards
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.dictionaries(
        st.sampled_from(
            [
                "op",
                "plan_id",
                "since",
                "command_id",
                "type",
                "data",
                "token",
                "item_id",
                "expected_version",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=20),
            st.booleans(),
            st.lists(st.integers(), max_size=3),
        ),
        max_size=6,
    ).map(json.dumps),
    st.sampled_from(["subscribe", "command", "presence", "unsubscribe", "auth", "ping"]).flatmap(
        lambda op: st.fixed_dictionaries(
            {"op": st.just(op)},
            optional={"plan_id": st.text(max_size=70), "since": st.integers(), "data": st.text()},
        ).map(json.dumps)
    ),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=8))
async def test_garbage_frames_never_crash_the_socket_or_leak(
    server: ServerProcess, batch: list[str | bytes]
):
    async def run() -> None:
        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token("stranger@x.example")}))
            assert json.loads(await ws.recv())["op"] == "ready"
            for frame in batch:
                await ws.send(frame)
            await ws.send(json.dumps({"op": "ping"}))
            try:
                async with asyncio.timeout(5):
                    while True:
                        m = json.loads(await ws.recv())
                        assert m["op"] in ("error", "reject", "pong", "ready", "unsubscribed"), m
                        if m["op"] == "pong":
                            break
            except ConnectionClosed as exc:
                # only a protocol-level close (bad UTF-8 text, auth refresh for another user)
                assert exc.rcvd is None or exc.rcvd.code in (1007, 4001), exc
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/healthz")).status_code == 200

    await run()


def test_rotated_secrets_are_accepted_and_tampered_tokens_refused():
    from server.tokens import Unauthorized, issue

    old, new = SECRET, "a-brand-new-secret-that-is-long-enough-1234"
    assert verify(issue("a@b.example", old, 60), (new, old)).email == "a@b.example"
    assert verify(issue("a@b.example", new, 60), (new, old)).email == "a@b.example"
    with pytest.raises(Unauthorized):
        verify(issue("a@b.example", old, 60), (new,))
    head, body, sig = issue("a@b.example", new, 60).split(".")
    with pytest.raises(Unauthorized):
        verify(f"{head}.{body[:-2]}xx.{sig}", (new,))
