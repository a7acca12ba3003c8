"""Verified organisations (MAPSTREAM_ORGS): naming a seller organisation is not speaking for it.

A stranger's plan that names a verified organisation stays out of its analytics and webhooks,
and the stranger may not see its portfolio or manage its webhooks, while the organisation's
own people (by email domain) may. An organisation not listed keeps the free-text rule.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from domain.model import Member, Plan
from domain.orgs import Organisations, parse_orgs
from server.settings import load_settings
from tests.support import auth, fresh_database, running_app, settings_for
from tests.test_webhooks import Receiver, command, new_plan, serving, until

SAM = "sam@northwind.example"  # Northwind's own seller
SUE = "sue@NorthWind.COM"  # Northwind's too: its second domain, any case
EVE = "eve@elsewhere.example"  # a stranger claiming to sell as Northwind
BEA = "bea@contoso.example"  # a buyer
ADMIN = "root@ops.example"


def test_parse_orgs_reads_names_and_domains_and_refuses_anything_else() -> None:
    orgs = parse_orgs(" Northwind = northwind.example, @NorthWind.com ;Contoso=contoso.example; ")
    assert orgs.domains == {
        "Northwind": frozenset({"northwind.example", "northwind.com"}),
        "Contoso": frozenset({"contoso.example"}),
    }
    assert parse_orgs("").domains == {}
    for bad, words in [
        ("Northwind", "is not 'Organisation=domain"),
        ("=northwind.example", "is not 'Organisation=domain"),
        ("Northwind=", "is not 'Organisation=domain"),
        ("Northwind=localhost", "is not an email domain"),
        ("Northwind=sam@northwind.example", "is not an email domain"),
        ("Northwind=a.example; Northwind=b.example", "listed twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_orgs(bad)


def test_load_settings_reads_mapstream_orgs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPSTREAM_ORGS", "Northwind=northwind.example")
    settings = load_settings(secrets=("s" * 32,))
    assert settings.orgs.domains == {"Northwind": frozenset({"northwind.example"})}
    monkeypatch.setenv("MAPSTREAM_ORGS", "Northwind")
    with pytest.raises(ValueError, match="MAPSTREAM_ORGS"):
        load_settings(secrets=("s" * 32,))


def test_who_speaks_for_an_organisation_and_which_plans_are_its_own() -> None:
    orgs = parse_orgs("Northwind=northwind.example,northwind.com")

    def plan(seller_org: str, *members: tuple[str, str, bool]) -> Plan:
        return Plan(
            id="p",
            seller_org=seller_org,
            members={e: Member(e, side, "owner", active=a) for e, side, a in members},  # type: ignore[arg-type]
        )

    assert orgs.speaks_for(SAM, "Northwind") and orgs.speaks_for(SUE, "Northwind")
    assert not orgs.speaks_for(EVE, "Northwind")
    assert orgs.speaks_for(EVE, "Fabrikam")  # not listed: the free-text rule
    assert orgs.owns(plan("Northwind", (SAM, "seller", True)), "Northwind")
    assert not orgs.owns(plan("Northwind", (EVE, "seller", True)), "Northwind")
    # a Northwind address on the buyer side, or one removed, does not make it Northwind's
    assert not orgs.owns(
        plan("Northwind", (EVE, "seller", True), (SAM, "buyer", True)), "Northwind"
    )
    assert not orgs.owns(plan("Northwind", (SAM, "seller", False)), "Northwind")
    assert orgs.owns(plan("Fabrikam", (EVE, "seller", True)), "Fabrikam")
    assert not orgs.owns(plan("Fabrikam", (EVE, "seller", True)), "Northwind")
    assert Organisations().owns(plan("Northwind", (EVE, "seller", True)), "Northwind")


async def test_a_stranger_naming_a_verified_organisation_reaches_neither_its_analytics_nor_its_webhooks(
    tmp_path: Path,
):
    receiver = Receiver()
    receiver.down = False  # /down answers 200
    async with fresh_database(schema=False) as db, serving(receiver) as hooks_url:
        settings = settings_for(
            db,
            tmp_path,
            admins=frozenset({ADMIN}),
            orgs=parse_orgs("Northwind=northwind.example,northwind.com"),
            webhook_admins_only=False,  # the organisation's own sellers manage its webhooks
            webhook_allow_private=True,  # the receiver is local
            webhook_poll=0.05,
        )
        async with (
            running_app(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            ours = await new_plan(http, "Northwind", SAM)
            theirs = await new_plan(http, "Northwind", EVE)  # naming it proves nothing
            elsewhere = await new_plan(http, "Fabrikam", EVE)  # not verified: free text

            async def analytics(who: str, org: str) -> httpx.Response:
                return await http.get("/analytics", params={"seller_org": org}, headers=auth(who))

            async def settled() -> bool:
                r = await analytics(ADMIN, "Fabrikam")
                return r.status_code == 200 and r.json()["plans"] == 1

            await until(settled, "the analytics projection did not catch up")
            assert (await analytics(EVE, "Northwind")).status_code == 403
            assert (await analytics(EVE, "Fabrikam")).status_code == 200
            r = await http.get("/webhooks", params={"seller_org": "Northwind"}, headers=auth(EVE))
            assert r.status_code == 403, r.text
            for who in (SAM, ADMIN):  # Northwind's portfolio holds its own plan only
                r = await analytics(who, "Northwind")
                assert r.status_code == 200 and r.json()["plans"] == 1, (who, r.text)

            r = await http.post(
                "/webhooks",
                json={"seller_org": "Northwind", "url": f"{hooks_url}/down", "events": ["*"]},
                headers=auth(SAM),
            )
            assert r.status_code == 201, r.text
            await command(
                http, theirs, "add_comment", EVE, item_id="plan", text="from the stranger"
            )
            await command(http, ours, "add_comment", SAM, item_id="plan", text="from Northwind")

            def texts() -> list[str]:
                return [g.json()["data"].get("text", "") for g in receiver.got]

            async def ours_arrived() -> bool:
                return "from Northwind" in texts()

            await until(ours_arrived, "Northwind's own event was not delivered")
            # the stranger's plan joins Northwind's once a Northwind seller is on its seller side
            await command(http, theirs, "add_member", EVE, email=SUE, side="seller", role="editor")
            await command(http, theirs, "add_comment", EVE, item_id="plan", text="with Sue aboard")

            async def joined() -> bool:
                return "with Sue aboard" in texts()

            await until(joined, "the plan with a Northwind seller was not delivered")
            await asyncio.sleep(0.3)  # anything else still on its way
            assert "from the stranger" not in texts()
            assert {g.json()["plan_id"] for g in receiver.got} == {ours, theirs}
            assert elsewhere not in {g.json()["plan_id"] for g in receiver.got}
