"""Who may do what in a plan: one table, used by the decider, the HTTP API and the hub."""

from __future__ import annotations

from domain.base import Permission
from domain.errors import Forbidden, NotFound
from domain.model import Member, Plan, Role

ALLOWED: dict[Role, frozenset[Permission]] = {
    "owner": frozenset({"read", "comment", "edit", "manage"}),
    "editor": frozenset({"read", "comment", "edit"}),
    "commenter": frozenset({"read", "comment"}),
    "viewer": frozenset({"read"}),
}


def can(member: Member | None, permission: Permission) -> bool:
    return member is not None and member.active and permission in ALLOWED[member.role]


def authorize(plan: Plan, email: str, permission: Permission) -> Member:
    """The caller's membership, or Forbidden. Callers turn a non-member into 404 themselves."""
    member = plan.member(email)
    if member is None:
        # to a non-member the plan does not exist: its id reveals nothing
        raise NotFound(f"no plan {plan.id!r} that you can see")
    if permission not in ALLOWED[member.role]:
        raise Forbidden(f"a {member.role} cannot {permission} this plan", role=member.role)
    return member
