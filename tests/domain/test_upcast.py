"""Schema evolution: old event shapes are lifted when read, and fold as the new shape would."""

from __future__ import annotations

import msgspec
import pytest

from domain.action_items import ActionItemStatusChanged
from domain.decider import EVENT_TYPES, decode_event, schema_version_of
from domain.errors import DomainError
from domain.milestones import MilestoneAdded
from domain.model import ItemStatus
from domain.upcast import UPCASTERS
from tests.domain.support import PLAN, action_item, given, milestone, records

V1_DOING = b'{"type":"ActionItemStatusChanged","id":"a1","status":"doing"}'


def test_a_schema_1_status_change_reads_as_schema_2():
    event = decode_event("ActionItemStatusChanged", 1, V1_DOING)
    assert event == ActionItemStatusChanged(id="a1", status="in_progress", previous=None)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("todo", "not_started"),
        ("doing", "in_progress"),
        ("blocked", "blocked"),
        ("done", "done"),
    ],
)
def test_every_schema_1_status_has_a_schema_2_word(old: str, new: ItemStatus):
    body = msgspec.json.encode({"type": "ActionItemStatusChanged", "id": "a1", "status": old})
    assert decode_event("ActionItemStatusChanged", 1, body) == ActionItemStatusChanged(
        id="a1", status=new
    )


def test_folding_a_schema_1_event_gives_the_state_the_schema_2_event_gives():
    history = (*PLAN, milestone("m1"), action_item("a1"))
    upcast = decode_event("ActionItemStatusChanged", 1, V1_DOING)
    current = ActionItemStatusChanged(id="a1", status="in_progress", previous="not_started")
    from_v1 = given(*history, upcast)
    from_v2 = given(*history, current)
    assert from_v1 == from_v2
    assert from_v1.action_items["a1"].status == "in_progress"


def test_a_current_schema_body_is_read_as_it_is():
    body = msgspec.json.encode(ActionItemStatusChanged(id="a1", status="done", previous="blocked"))
    assert schema_version_of("ActionItemStatusChanged") == 2
    assert decode_event("ActionItemStatusChanged", 2, body) == ActionItemStatusChanged(
        id="a1", status="done", previous="blocked"
    )


def test_every_older_schema_version_has_an_upcaster_to_the_current_one():
    for name, cls in EVENT_TYPES.items():
        for version in range(1, cls.schema_version):
            assert (name, version) in UPCASTERS, f"{name} v{version} cannot be read"


def test_a_stored_body_with_a_field_this_version_does_not_know_still_reads():
    body = b'{"type":"MilestoneAdded","id":"m1","title":"Kickoff","colour":"green"}'
    assert decode_event("MilestoneAdded", 1, body) == MilestoneAdded(id="m1", title="Kickoff")


def test_a_schema_version_without_an_upcaster_is_an_error_not_a_guess():
    with pytest.raises(LookupError):
        decode_event("ActionItemStatusChanged", 0, V1_DOING)


def test_an_unknown_event_type_is_refused():
    with pytest.raises(DomainError) as info:
        decode_event("PlanExploded", 1, b"{}")
    assert info.value.rule == "unknown_event"


def test_a_whole_stored_stream_with_old_rows_folds_like_a_new_one():
    old_rows = [
        (
            "ActionItemStatusChanged",
            1,
            b'{"type":"ActionItemStatusChanged","id":"a1","status":"todo"}',
        ),
        (
            "ActionItemStatusChanged",
            1,
            b'{"type":"ActionItemStatusChanged","id":"a1","status":"done"}',
        ),
    ]
    history = (*PLAN, milestone("m1"), action_item("a1"))
    read = [decode_event(t, v, body) for t, v, body in old_rows]
    plan = given(*history, *read)
    assert plan.action_items["a1"].status == "done"
    assert plan.version == len(records((*history, *read)))
