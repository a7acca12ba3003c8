"""Membership: who may read and change the plan, on which side and with which role."""

from __future__ import annotations

import msgspec

from domain.base import Command, Context, Event
from domain.errors import DomainError, Malformed, NotFound
from domain.model import Member, Plan, Role, Side


class AddMember(Command, frozen=True, tag="add_member"):
    """Give a known person access directly (invites are the other way in)."""

    permission = "manage"
    email: str
    side: Side
    role: Role
    name: str = ""


class JoinPlan(Command, frozen=True, tag="join_plan"):
    """Accepting an invite. The server checks the invite; the joiner is the actor."""

    server_only = True
    permission = "read"
    side: Side
    role: Role
    invite: str
    name: str = ""


class ChangeMemberRole(Command, frozen=True, tag="change_member_role"):
    permission = "manage"
    email: str
    role: Role


class RevokeMember(Command, frozen=True, tag="revoke_member"):
    permission = "manage"
    email: str


class MemberAdded(Event, frozen=True, tag="MemberAdded"):
    email: str
    side: Side
    role: Role
    name: str = ""
    invite: str = ""


class MemberRoleChanged(Event, frozen=True, tag="MemberRoleChanged"):
    email: str
    role: Role
    previous: Role


class MemberRevoked(Event, frozen=True, tag="MemberRevoked"):
    email: str


def _member(plan: Plan, email: str) -> Member:
    m = plan.member(email)
    if m is None:
        raise NotFound(f"{email} is not a member of this plan", item_id=email)
    return m


def _keep_an_owner(plan: Plan, email: str) -> None:
    owners = [m for m in plan.members.values() if m.active and m.role == "owner"]
    if len(owners) == 1 and owners[0].email == email:
        raise DomainError(
            "last_owner", "a plan keeps at least one owner: make someone else owner first"
        )


def add_member(plan: Plan, cmd: AddMember, ctx: Context) -> list[Event]:
    email = cmd.email.strip().lower()
    if "@" not in email or len(email) > 254:
        raise Malformed("`email` must be an email address", field="email")
    current = plan.member(email)
    if current is not None:
        if (current.side, current.role) == (cmd.side, cmd.role):
            return []
        raise DomainError(
            "already_member", f"{email} is already a member: change their role instead"
        )
    return [MemberAdded(email=email, side=cmd.side, role=cmd.role, name=cmd.name.strip())]


def join_plan(plan: Plan, cmd: JoinPlan, ctx: Context) -> list[Event]:
    email = ctx.actor
    current = plan.member(email)
    if current is not None:
        if current.side != cmd.side:
            raise DomainError(
                "already_member", f"{email} is already a member on the {current.side} side"
            )
        return []
    return [
        MemberAdded(
            email=email, side=cmd.side, role=cmd.role, name=cmd.name.strip(), invite=cmd.invite
        )
    ]


def change_member_role(plan: Plan, cmd: ChangeMemberRole, ctx: Context) -> list[Event]:
    email = cmd.email.strip().lower()  # members are keyed by the lower-cased address
    m = _member(plan, email)
    if m.role == cmd.role:
        return []
    if m.role == "owner":
        _keep_an_owner(plan, email)
    return [MemberRoleChanged(email=email, role=cmd.role, previous=m.role)]


def revoke_member(plan: Plan, cmd: RevokeMember, ctx: Context) -> list[Event]:
    email = cmd.email.strip().lower()
    m = _member(plan, email)
    if m.role == "owner":
        _keep_an_owner(plan, email)
    return [MemberRevoked(email=email)]


def member_added(plan: Plan, e: MemberAdded) -> Plan:
    member = Member(email=e.email, side=e.side, role=e.role, name=e.name)
    return msgspec.structs.replace(plan, members={**plan.members, e.email: member})


def member_role_changed(plan: Plan, e: MemberRoleChanged) -> Plan:
    m = msgspec.structs.replace(plan.members[e.email], role=e.role)
    return msgspec.structs.replace(plan, members={**plan.members, e.email: m})


def member_revoked(plan: Plan, e: MemberRevoked) -> Plan:
    m = msgspec.structs.replace(plan.members[e.email], active=False)
    return msgspec.structs.replace(plan, members={**plan.members, e.email: m})
