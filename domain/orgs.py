"""Verified seller organisations: who speaks for an organisation, and which plans are its own.

A plan names its seller organisation as free text (`seller_org`), and anyone who may create a
plan can name any. For the organisations an operator lists in MAPSTREAM_ORGS with their email
domains ("Northwind=northwind.example,northwind.com; Contoso=contoso.example"), that text is
not enough: a plan counts as the organisation's (its analytics, its webhooks) only while one
of its seller-side members has an address at one of those domains, and only such people may
see its portfolio or manage its webhooks. Organisations not listed keep the free-text rule.
"""

from __future__ import annotations

import msgspec

from domain.model import Plan


def email_domain(email: str) -> str:
    return email.rpartition("@")[2].lower()


class Organisations(msgspec.Struct, frozen=True):
    """Each verified organisation's email domains (exact organisation names)."""

    domains: dict[str, frozenset[str]] = msgspec.field(default_factory=dict)

    def verified(self, org: str) -> bool:
        return org in self.domains

    def speaks_for(self, email: str, org: str) -> bool:
        """Whether `email` may act for `org`: anyone for an organisation not listed."""
        domains = self.domains.get(org)
        return domains is None or email_domain(email) in domains

    def owns(self, plan: Plan, org: str) -> bool:
        """Whether `plan` counts as `org`'s: it names `org`, and if `org` is verified, one of
        its active seller-side members speaks for it."""
        if plan.seller_org != org:
            return False
        domains = self.domains.get(org)
        if domains is None:
            return True
        return any(
            m.active and m.side == "seller" and email_domain(m.email) in domains
            for m in plan.members.values()
        )


def parse_orgs(text: str) -> Organisations:
    """`Name=domain,domain; Name=domain`; a clear ValueError for anything else."""
    domains: dict[str, frozenset[str]] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        name, eq, listed = entry.partition("=")
        name = name.strip()
        found = frozenset(d.strip().lower().lstrip("@") for d in listed.split(",") if d.strip())
        if not eq or not name or not found:
            raise ValueError(
                f"MAPSTREAM_ORGS: {entry!r} is not 'Organisation=domain[,domain...]'"
                " (entries separated by ';')"
            )
        bad = sorted(d for d in found if "@" in d or "." not in d or " " in d)
        if bad:
            raise ValueError(f"MAPSTREAM_ORGS: {bad[0]!r} of {name!r} is not an email domain")
        if name in domains:
            raise ValueError(f"MAPSTREAM_ORGS: {name!r} is listed twice")
        domains[name] = found
    return Organisations(domains)
