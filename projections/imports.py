"""Import: the items CSV (`projections.exports.csv_table`, or a seller's own sheet with the
same columns) read back into the commands a person would have typed.

Pure: bytes in, commands out, then the commands decided against an empty plan in memory.
Every bad row is reported with its line number, the column and a stable code; nothing is
built while any row is bad. The server appends what `decide_import` returns in one go.

The columns are those of the export: `kind, id, milestone, title, owner, owner_side, due,
status, deadline, slips, visibility` (any order; `kind` and `title` are required, unknown
columns are ignored, `slips` is history and is not imported).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, cast, get_args

import msgspec

from domain import action_items as ai
from domain import milestones as ms
from domain import stakeholders as sh
from domain.base import Context, Event, Recorded
from domain.decider import decide, evolve
from domain.errors import DomainError, MapstreamError
from domain.model import ItemStatus, Plan, Side
from domain.plans import CreatePlan
from domain.rules import MAX_TITLE
from domain.visibility import audience
from projections.exports import _FORMULA_STARTS, CSV_COLUMNS

REQUIRED_COLUMNS = ("kind", "title")
MAX_ID = 200
MAX_REPORTED = 1000  # row errors listed in one answer (`errors_total` counts them all)

ImportCommand = (
    sh.AddStakeholder
    | ms.AddMilestone
    | ms.UpdateMilestone
    | ms.CompleteMilestone
    | ai.AddActionItem
    | ai.SetActionItemStatus
)

_STATUSES: tuple[str, ...] = get_args(ItemStatus)
_SIDES: tuple[str, ...] = ("buyer", "seller")
# a decider's `field` and the column it came from
_FIELD_COLUMN = {"title": "title", "owner": "owner", "name": "owner", "id": "id"}


class RowError(msgspec.Struct, frozen=True):
    """One bad cell or row: `line` is the file's line (1 is the header), as an editor counts."""

    line: int
    column: str
    code: str
    message: str


class ImportInvalid(MapstreamError):
    """At least one row is bad: `rows` says where and why; nothing was imported."""

    code = "import_invalid"

    def __init__(self, rows: list[RowError]) -> None:
        rows = sorted(rows, key=lambda r: r.line)
        bad_lines = len({r.line for r in rows})
        super().__init__(
            f"{bad_lines} line{'s' if bad_lines != 1 else ''} of the file "
            f"{'are' if bad_lines != 1 else 'is'} not right: nothing was imported",
            rows=rows[:MAX_REPORTED],
            errors_total=len(rows),
        )
        self.rows = rows


@dataclass(frozen=True)
class Sheet:
    """What a valid file asks for: the commands in the order they are decided, each with
    the line it came from."""

    commands: list[tuple[int, ImportCommand]]
    milestones: int
    action_items: int
    stakeholders: int
    ignored_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Built:
    """The plan an import creates, and its events with the only side that may see each."""

    plan: Plan
    events: list[tuple[Event, Side | None]]


@dataclass
class _Row:
    line: int
    kind: str
    id: str
    milestone: str
    title: str
    owner: str
    owner_side: str
    due: date | None
    status: str
    deadline: str
    visibility: str


def uncell(text: str) -> str:
    """Undo the export's guard against spreadsheet formulas (`projections.exports._cell`):
    one leading `'` is dropped only where the export would have added it, before a formula
    character or another `'`. A hand-written "'Tis the season" is kept as is."""
    if text.startswith("'") and text[1:].startswith((*_FORMULA_STARTS, "'")):
        return text[1:]
    return text


def _word(text: str) -> str:
    """`In Progress`, `in-progress` and `in_progress` alike."""
    return re.sub(r"[\s-]+", "_", text.strip().lower())


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "stakeholder"


class _Reader:
    """Collects every problem of every row before giving up."""

    def __init__(self) -> None:
        self.errors: list[RowError] = []

    def bad(self, line: int, column: str, code: str, message: str) -> None:
        self.errors.append(RowError(line, column, code, message))

    def header(self, names: list[str], line: int) -> tuple[dict[str, int], list[str]]:
        columns: dict[str, int] = {}
        ignored: list[str] = []
        for index, raw in enumerate(names):
            name = _word(raw.lstrip("\ufeff"))
            if not name:
                continue
            if name in columns:
                self.bad(line, name, "duplicate_column", f"the column `{name}` appears twice")
            elif name in CSV_COLUMNS:
                columns[name] = index
            else:
                ignored.append(raw.strip())
        for name in REQUIRED_COLUMNS:
            if name not in columns:
                self.bad(
                    line,
                    name,
                    "missing_column",
                    f"the header has no `{name}` column; the columns are " + ", ".join(CSV_COLUMNS),
                )
        return columns, ignored

    def row(self, line: int, cells: dict[str, str]) -> _Row:
        def text(column: str, *, required: bool = False, limit: int = MAX_TITLE) -> str:
            value = uncell(cells.get(column, "")).strip()
            if required and not value:
                self.bad(line, column, "required", f"`{column}` must not be empty")
            elif len(value) > limit:
                self.bad(line, column, "too_long", f"`{column}` is longer than {limit} characters")
            return value

        def choice(column: str, allowed: tuple[str, ...], default: str) -> str:
            value = _word(cells.get(column, ""))
            if not value:
                return default
            if value not in allowed:
                self.bad(
                    line,
                    column,
                    "invalid_value",
                    f"`{column}` is {cells[column].strip()!r}; use one of: " + ", ".join(allowed),
                )
                return default
            return value

        kind = ""
        if not cells.get("kind", "").strip():
            self.bad(line, "kind", "required", "`kind` must be milestone or action_item")
        else:
            kind = choice("kind", ("milestone", "action_item"), "")
        item_id = text("id", limit=MAX_ID)
        if item_id and (item_id == "plan" or not item_id.isprintable()):
            self.bad(
                line,
                "id",
                "invalid_id",
                "an id is printable text and not the word 'plan' (or leave it empty)",
            )
        owner = text("owner")
        owner_side = ""
        if owner:
            if not cells.get("owner_side", "").strip():
                self.bad(
                    line,
                    "owner_side",
                    "required",
                    f"say whether {owner!r} is on the buyer or the seller side",
                )
            else:
                owner_side = choice("owner_side", _SIDES, "")
        due = None
        raw_due = cells.get("due", "").strip()
        if raw_due:
            try:
                due = date.fromisoformat(raw_due)
            except ValueError:
                self.bad(
                    line, "due", "invalid_date", f"`due` is {raw_due!r}: write it as YYYY-MM-DD"
                )
        row = _Row(
            line=line,
            kind=kind,
            id=item_id,
            milestone=text("milestone", limit=MAX_ID),
            title=text("title", required=True),
            owner=owner,
            owner_side=owner_side,
            due=due,
            status=choice("status", _STATUSES, "not_started"),
            deadline=choice("deadline", ("hard", "soft"), ""),
            visibility=choice("visibility", ("shared", "internal"), ""),
        )
        if kind == "milestone":
            if row.visibility == "internal":
                self.bad(
                    line,
                    "visibility",
                    "not_applicable",
                    "a milestone is seen by both sides: only action items can be internal",
                )
            if row.milestone and row.id and row.milestone != row.id:
                self.bad(
                    line,
                    "milestone",
                    "milestone_mismatch",
                    f"on a milestone row, `milestone` is its own id ({row.id!r}) or empty",
                )
        elif kind == "action_item" and row.deadline:
            self.bad(
                line,
                "deadline",
                "not_applicable",
                "only milestones have a hard or soft deadline: leave it empty",
            )
        return row


def _records(text: str, reader: _Reader) -> list[tuple[int, list[str]]]:
    """The non-blank records of the file, each with the line it starts on."""
    out: list[tuple[int, list[str]]] = []
    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    end = 0
    try:
        for record in records:
            start, end = end + 1, records.line_num
            if any(cell.strip() for cell in record):
                out.append((start, record))
    except csv.Error as exc:
        # a quote left open runs to the end of the file: name the line the record starts on
        reader.bad(end + 1, "", "bad_csv", f"the record starting here is not valid CSV: {exc}")
    return out


def parse(data: bytes, new_id: Callable[[], str]) -> Sheet:
    """Read the file; raise ImportInvalid with every bad row, or answer the commands.

    `new_id` names the rows without an id (the server passes its id generator)."""
    reader = _Reader()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        reader.bad(line, "", "not_utf8", "the file is not UTF-8 text: save it as CSV UTF-8")
        raise ImportInvalid(reader.errors) from None
    records = _records(text, reader)
    if not records:
        if not reader.errors:
            reader.bad(1, "", "empty_file", "the file is empty: it needs a header row")
        raise ImportInvalid(reader.errors)
    header_line, names = records[0]
    columns, ignored = reader.header(names, header_line)
    if reader.errors:
        raise ImportInvalid(reader.errors)
    rows: list[_Row] = []
    for line, record in records[1:]:
        extra = [c for i, c in enumerate(record) if i >= len(names) and c.strip()]
        if extra:
            reader.bad(
                line,
                "",
                "extra_cells",
                f"the row has {len(record)} cells but the header has {len(names)} columns",
            )
        cells = {name: record[i] if i < len(record) else "" for name, i in columns.items()}
        rows.append(reader.row(line, cells))
    sheet = _plan(rows, reader, new_id)
    if reader.errors:
        raise ImportInvalid(reader.errors)
    return Sheet(
        commands=sheet.commands,
        milestones=sheet.milestones,
        action_items=sheet.action_items,
        stakeholders=sheet.stakeholders,
        ignored_columns=ignored,
    )


def _plan(rows: list[_Row], reader: _Reader, new_id: Callable[[], str]) -> Sheet:
    """Ids, milestones and owners resolved across rows; the commands in deciding order."""
    seen: dict[str, int] = {}
    for row in rows:
        if not row.id:
            continue
        if row.id in seen:
            reader.bad(
                row.line,
                "id",
                "duplicate_id",
                f"the id {row.id!r} is already used on line {seen[row.id]}",
            )
        else:
            seen[row.id] = row.line
    for row in rows:
        if not row.id:
            row.id = new_id()
            while row.id in seen:
                row.id = new_id()
            seen[row.id] = row.line
    milestone_ids = {row.id for row in rows if row.kind == "milestone"}
    above = ""
    for row in rows:
        if row.kind == "milestone":
            above = row.id
        elif row.kind == "action_item":
            if row.milestone:
                if row.milestone not in milestone_ids:
                    reader.bad(
                        row.line,
                        "milestone",
                        "unknown_milestone",
                        f"no milestone row has the id {row.milestone!r}",
                    )
            elif above:
                row.milestone = above
            else:
                reader.bad(
                    row.line,
                    "milestone",
                    "no_milestone",
                    "an action item belongs to a milestone: name its id in `milestone`, "
                    "or put the item below its milestone's row",
                )

    owners: dict[tuple[str, str], str] = {}
    add_people: list[tuple[int, ImportCommand]] = []
    for row in rows:
        key = (row.owner, row.owner_side)
        if not row.owner or not row.owner_side or key in owners:
            continue
        base = _slug(row.owner)
        sid, n = base, 1
        while sid in seen or sid == "plan":
            n += 1
            sid = f"{base}-{n}"
        seen[sid] = row.line
        owners[key] = sid
        side: Side = "buyer" if row.owner_side == "buyer" else "seller"
        add_people.append((row.line, sh.AddStakeholder(name=row.owner, side=side, id=sid)))

    adds: list[tuple[int, ImportCommand]] = []
    items: list[tuple[int, ImportCommand]] = []
    statuses: list[tuple[int, ImportCommand]] = []
    for row in rows:
        owner = owners.get((row.owner, row.owner_side))
        if row.kind == "milestone":
            adds.append(
                (
                    row.line,
                    ms.AddMilestone(
                        title=row.title,
                        id=row.id,
                        owner=owner,
                        due=row.due,
                        deadline="hard" if row.deadline == "hard" else "soft",
                    ),
                )
            )
            if row.status == "done":
                statuses.append((row.line, ms.CompleteMilestone(id=row.id)))
            elif row.status != "not_started":
                statuses.append(
                    (row.line, ms.UpdateMilestone(id=row.id, status=_status(row.status)))
                )
        elif row.kind == "action_item":
            items.append(
                (
                    row.line,
                    ai.AddActionItem(
                        milestone_id=row.milestone,
                        title=row.title,
                        id=row.id,
                        owner=owner,
                        due=row.due,
                        visibility="internal" if row.visibility == "internal" else "shared",
                    ),
                )
            )
            if row.status != "not_started":
                statuses.append(
                    (row.line, ai.SetActionItemStatus(id=row.id, status=_status(row.status)))
                )
    return Sheet(
        commands=[*add_people, *adds, *items, *statuses],
        milestones=len(adds),
        action_items=len(items),
        stakeholders=len(add_people),
    )


def _status(word: str) -> ItemStatus:
    assert word in _STATUSES  # checked when the row was read
    return cast(ItemStatus, word)


def _row_error(line: int, exc: MapstreamError) -> RowError:
    column = _FIELD_COLUMN.get(str(exc.extra.get("field", "")), "")
    code = exc.rule if isinstance(exc, DomainError) else exc.code
    return RowError(line, column, code, exc.message)


def decide_import(plan_id: str, create: CreatePlan, sheet: Sheet, ctx: Context) -> Built:
    """Create the plan and decide every command on the plan the ones before it leave, as
    a person typing them would: all or nothing. A refused plan field (title, orgs) raises
    its own error; a refused row raises ImportInvalid naming its line."""
    plan = Plan(id=plan_id)
    out: list[tuple[Event, Side | None]] = []

    def record(events: list[Event]) -> None:
        nonlocal plan
        for event in events:
            out.append((event, audience(plan, event)))
            plan = evolve(plan, Recorded(plan.version + 1, ctx.actor, ctx.now, event))

    record(decide(plan, create, ctx))
    for line, command in sheet.commands:
        try:
            events = decide(plan, command, ctx)
        except MapstreamError as exc:
            raise ImportInvalid([_row_error(line, exc)]) from exc
        record(events)
    return Built(plan, out)


def summary(sheet: Sheet) -> dict[str, Any]:
    return {
        "milestones": sheet.milestones,
        "action_items": sheet.action_items,
        "stakeholders": sheet.stakeholders,
        "ignored_columns": sheet.ignored_columns,
    }
