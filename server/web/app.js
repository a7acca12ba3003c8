// The Mapstream reference web client: log in (token or invite link), see a plan as a
// timeline of milestones with owners, due dates and health, edit items inline, and watch
// other people's changes, presence and the audit trail arrive live.
//
// Live model: the socket says *that* the plan changed (an event with its version); the client
// then re-reads the plan, its health and the audit trail over HTTP. Simple and always equal
// to what the server holds: the client never folds events itself.

import { Api, ApiError, tokenUser } from "./api.js";
import { $, daysBetween, formatDay, formatTime, h, humanize, initials, replace } from "./dom.js";
import { LiveFeed } from "./live.js";

const STATUSES = ["not_started", "in_progress", "blocked", "done"];
const EDIT_ROLES = new Set(["owner", "editor"]);
const FLAG_LABELS = {
  overdue: "overdue",
  due_soon: "due soon",
  slipped: "slipped",
  no_owner: "no owner",
  no_definition_of_done: "no definition of done",
  critical_dependency_late: "critical dependency late",
};
const TOKEN_KEY = "mapstream.token";
const PLAN_KEY = "mapstream.plan";

const ui = {
  token: null,
  email: null,
  api: null,
  feed: null,
  planId: null,
  plan: null,
  health: null,
  audit: [],
  auditComplete: true,
  viewers: [],
  editing: null, // {kind: "item"|"milestone", id, form, original}
  seenAudit: new Set(),
};

// -- start-up and login ----------------------------------------------------------------

function boot() {
  $("#signout").addEventListener("click", signOut);
  $("#switch-plan").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("#switch-plan-id").value.trim();
    if (id) openPlan(id);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && ui.editing) closeEditor();
  });
  window.addEventListener("hashchange", route);
  route();
}

function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function route() {
  const params = hashParams();
  const invite = params.get("invite");
  if (invite) return showInvite(invite);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin();
  signIn(token);
  const planId = params.get("plan") || sessionStorage.getItem(PLAN_KEY) || "demo";
  if (planId !== ui.planId || !ui.feed) openPlan(planId);
}

function show(section) {
  for (const id of ["login", "invite", "plan"]) $(`#${id}`).hidden = id !== section;
  $("#session").hidden = section !== "plan";
}

function showLogin(message) {
  stopFeed();
  show("login");
  const form = $("#login-form");
  $("#login-plan").value = sessionStorage.getItem(PLAN_KEY) || hashParams().get("plan") || "demo";
  setText($("#login-error"), message || "");
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const invite = $("#login-invite").value.trim();
    if (invite) {
      const code = invite.includes("invite=") ? invite.split("invite=")[1].split("&")[0] : invite;
      location.hash = `invite=${encodeURIComponent(code)}`;
      return;
    }
    const token = $("#login-token").value.trim();
    if (!token || !tokenUser(token)) {
      setText($("#login-error"), "Paste a token (mapstream token EMAIL prints one) or an invite link.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    signIn(token);
    openPlan($("#login-plan").value.trim() || "demo");
  };
}

function showInvite(code) {
  stopFeed();
  show("invite");
  setText($("#invite-error"), "");
  $("#invite-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const button = $("#invite-form button");
    button.disabled = true;
    try {
      const answer = await new Api(null).acceptInvite(
        code,
        $("#invite-name").value.trim(),
        $("#invite-email").value.trim(),
      );
      sessionStorage.setItem(TOKEN_KEY, answer.token);
      history.replaceState(null, "", `#plan=${encodeURIComponent(answer.plan_id)}`);
      signIn(answer.token);
      openPlan(answer.plan_id);
    } catch (exc) {
      setText($("#invite-error"), explain(exc));
    } finally {
      button.disabled = false;
    }
  };
}

function signIn(token) {
  ui.token = token;
  ui.email = tokenUser(token)?.email || null;
  ui.api = new Api(token);
  setText($("#me"), ui.email || "");
}

function signOut() {
  stopFeed();
  sessionStorage.removeItem(TOKEN_KEY);
  ui.token = ui.email = ui.api = ui.plan = ui.planId = null;
  history.replaceState(null, "", location.pathname);
  showLogin("Signed out.");
}

// -- one plan, live ---------------------------------------------------------------------

async function openPlan(planId) {
  stopFeed();
  Object.assign(ui, { planId, plan: null, health: null, audit: [], viewers: [], editing: null });
  ui.seenAudit = new Set();
  sessionStorage.setItem(PLAN_KEY, planId);
  if (hashParams().get("plan") !== planId) {
    history.replaceState(null, "", `#plan=${encodeURIComponent(planId)}`);
  }
  $("#switch-plan-id").value = planId;
  show("plan");
  replace($("#plan-head"), h("p", { class: "muted" }, `Loading plan ${planId}…`));
  replace($("#strip"));
  replace($("#milestones"));
  replace($("#audit-rows"));
  renderPresence();
  try {
    applyPlan(await ui.api.plan(planId));
  } catch (exc) {
    return planFailed(exc);
  }
  refreshSide();
  ui.feed = new LiveFeed(ui.token, planId, {
    ready: (user) => {
      ui.email = user;
      setText($("#me"), user);
    },
    snapshot: (version, state) => applyPlan({ plan_id: planId, version, state }),
    event: () => refresh(),
    live: () => {},
    presence: (viewers) => {
      ui.viewers = viewers;
      renderPresence();
      renderPlan();
    },
    status: (state) => {
      const conn = $("#conn");
      conn.dataset.state = state;
      setText(conn, { live: "live", connecting: "connecting…", offline: "reconnecting…" }[state]);
    },
    fatal: (code, reason) => {
      if (code === "unauthorized") {
        sessionStorage.removeItem(TOKEN_KEY);
        return showLogin(`Your token was refused: ${reason || "sign in again"}.`);
      }
      toast(`Live updates stopped: ${reason || code}`, "error");
    },
  });
  ui.feed.start();
}

function stopFeed() {
  if (ui.feed) ui.feed.stop();
  ui.feed = null;
}

function planFailed(exc) {
  if (exc instanceof ApiError && exc.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(`Your token was refused: ${exc.message}`);
  }
  replace(
    $("#plan-head"),
    h("p", { class: "error", role: "alert" }, explain(exc)),
    h("p", { class: "muted" }, "Check the plan id above, or sign out and use another token."),
  );
}

/** A plan answer (HTTP or socket snapshot): keep the newest only. */
function applyPlan(answer) {
  if (answer.plan_id !== ui.planId) return;
  if (ui.plan && answer.version < ui.plan.version) return;
  ui.plan = answer.state;
  document.title = `${ui.plan.title} · Mapstream`;
  renderPlan();
}

// Refreshes are coalesced: a burst of events costs one read in flight and one after it.
const refresher = coalesce(async () => {
  const planId = ui.planId;
  const answer = await ui.api.plan(planId);
  if (planId === ui.planId) applyPlan(answer);
  refreshSide();
});

function refresh() {
  refresher().catch((exc) => toast(explain(exc), "error"));
}

function refreshSide() {
  healthLoader().catch(() => {});
  auditLoader().catch(() => {});
}

const healthLoader = coalesce(async () => {
  const planId = ui.planId;
  const health = await ui.api.health(planId);
  if (planId !== ui.planId || (ui.health && health.version < ui.health.version)) return;
  ui.health = health;
  renderPlan();
});

const auditLoader = coalesce(async () => {
  const planId = ui.planId;
  const version = ui.plan?.version ?? 1;
  const page = await ui.api.audit(planId, version);
  if (planId !== ui.planId) return;
  ui.audit = page.rows;
  ui.auditComplete = page.complete;
  renderAudit();
  if (!page.complete) setTimeout(() => auditLoader().catch(() => {}), 500);
});

function coalesce(task) {
  let running = null;
  let again = false;
  const run = () => {
    if (running) {
      again = true;
      return running;
    }
    running = task().finally(() => {
      running = null;
      if (again) {
        again = false;
        run();
      }
    });
    return running;
  };
  return run;
}

// -- health, per milestone --------------------------------------------------------------

function findingsByItem() {
  const map = new Map();
  for (const f of ui.health?.findings || []) {
    if (!map.has(f.item_id)) map.set(f.item_id, []);
    map.get(f.item_id).push(f);
  }
  return map;
}

const RANK = { on_track: 0, at_risk: 1, stalled: 2 };

/** The same rule as the server's plan status, applied to one item's findings. */
function levelOf(item, findings) {
  if (item.status === "done") return "done";
  let level = "on_track";
  for (const f of findings) {
    let l = "on_track";
    if (f.code === "overdue") {
      const late = item.due && ui.health ? daysBetween(item.due, ui.health.as_of) : 1;
      l = late >= 7 ? "stalled" : "at_risk";
    } else if (f.code === "critical_dependency_late") {
      l = "at_risk";
    }
    if (RANK[l] > RANK[level]) level = l;
  }
  return level;
}

function worst(levels) {
  let level = "on_track";
  for (const l of levels) if (l !== "done" && RANK[l] > RANK[level]) level = l;
  return level;
}

// -- rendering ----------------------------------------------------------------------------

function me() {
  return ui.plan?.members?.[ui.email] || null;
}

function canEdit() {
  const member = me();
  return Boolean(member && EDIT_ROLES.has(member.role) && !ui.plan.status.startsWith("closed"));
}

function stakeholderName(id) {
  const s = ui.plan.stakeholders[id];
  return s ? s.name : id;
}

function renderPlan() {
  if (!ui.plan) return;
  // an open editor survives the re-render, focus and caret included
  const active = document.activeElement;
  const keepFocus = ui.editing && ui.editing.form.contains(active) ? active : null;
  const caret = keepFocus && "selectionStart" in keepFocus ? [keepFocus.selectionStart, keepFocus.selectionEnd] : null;

  renderHead();
  renderStrip();
  renderMilestones();

  if (ui.editing && !ui.editing.form.isConnected) closeEditor();
  if (keepFocus && keepFocus.isConnected) {
    keepFocus.focus();
    if (caret && typeof keepFocus.setSelectionRange === "function") {
      try {
        keepFocus.setSelectionRange(caret[0], caret[1]);
      } catch {
        // date and select inputs have no caret
      }
    }
  }
}

function renderHead() {
  const plan = ui.plan;
  const health = ui.health;
  const member = me();
  const planFindings = (health?.findings || []).filter((f) => f.item_id === "plan");
  const endorsement = plan.endorsements?.[plan.endorsements.length - 1];
  replace(
    $("#plan-head"),
    h(
      "div",
      { class: "head-row" },
      h("h1", { id: "plan-title" }, plan.title),
      h("span", { class: `pill plan-status status-${plan.status}` }, humanize(plan.status)),
      health &&
        h(
          "span",
          { class: `health-badge health-${health.status}`, id: "plan-health", title: "plan health" },
          humanize(health.status),
        ),
    ),
    h(
      "p",
      { class: "orgs" },
      `${plan.buyer_org} (buyer) × ${plan.seller_org} (seller) · ${plan.kind} plan · version ${plan.version}`,
      member && ` · you are ${member.name || ui.email}, ${member.side} ${member.role}`,
    ),
    plan.value_statement && h("p", { class: "value" }, plan.value_statement),
    h(
      "div",
      { class: "facts" },
      plan.compelling_event &&
        fact("Compelling event", `${plan.compelling_event.name}, ${formatDay(plan.compelling_event.date)}`),
      health && health.slack_days !== null && fact("Slack", `${health.slack_days} days`),
      health?.projected_finish && fact("Projected finish", formatDay(health.projected_finish)),
      health && fact("Slipped", `${health.total_slip_days} days in total`),
      plan.cadence?.next_review && fact("Next review", formatDay(plan.cadence.next_review)),
      endorsement &&
        fact("Endorsed", `by ${plan.members[endorsement.by]?.name || endorsement.by} at v${endorsement.version}`),
    ),
    planFindings.length > 0 &&
      h(
        "ul",
        { class: "plan-findings" },
        planFindings.map((f) => h("li", { class: `flag flag-${f.code}` }, f.message)),
      ),
  );
}

function fact(label, value) {
  return h("span", { class: "fact" }, h("span", { class: "fact-label" }, label), value);
}

function renderStrip() {
  const plan = ui.plan;
  const today = ui.health?.as_of || new Date().toISOString().slice(0, 10);
  const milestones = plan.milestone_order.map((id) => plan.milestones[id]).filter(Boolean);
  const dates = milestones.map((m) => m.due).filter(Boolean);
  if (plan.compelling_event) dates.push(plan.compelling_event.date);
  dates.push(today);
  dates.sort();
  const start = shiftDay(dates[0], -4);
  const end = shiftDay(dates[dates.length - 1], 4);
  const span = Math.max(1, daysBetween(start, end));
  const at = (d) => `${((daysBetween(start, d) / span) * 100).toFixed(2)}%`;
  const findings = findingsByItem();

  const ticks = [];
  for (let d = firstOfNextMonth(start); d < end; d = firstOfNextMonth(d)) {
    ticks.push(
      h("span", { class: "tick", style: `left:${at(d)}` }, formatDay(d).replace(/^1 /, "").replace(/ \d{4}$/, "")),
    );
  }
  let previous = null; // a dot too close to the one before it is lifted above the track
  const dots = milestones.map((m, i) => {
    if (!m.due) return null;
    const level = milestoneLevel(m, findings);
    const pct = (daysBetween(start, m.due) / span) * 100;
    const lifted = previous !== null && !previous.lifted && Math.abs(pct - previous.pct) < 2.5;
    previous = { pct, lifted };
    return h(
      "a",
      {
        class: ["dot", `health-${level}`, lifted && "lifted"],
        href: `#plan=${encodeURIComponent(ui.planId)}`,
        style: `left:${at(m.due)}`,
        title: `${i + 1}. ${m.title} (${formatDay(m.due)}, ${humanize(level)})`,
        onclick: (ev) => {
          ev.preventDefault();
          document.querySelector(`[data-milestone-id="${CSS.escape(m.id)}"]`)?.scrollIntoView({ behavior: "smooth" });
        },
      },
      String(i + 1),
    );
  });
  replace(
    $("#strip"),
    h(
      "div",
      { class: "strip-track" },
      ticks,
      h("span", { class: "today", style: `left:${at(today)}`, title: `today, ${formatDay(today)}` }, "today"),
      plan.compelling_event &&
        h(
          "span",
          {
            class: "goal",
            style: `left:${at(plan.compelling_event.date)}`,
            title: `${plan.compelling_event.name}, ${formatDay(plan.compelling_event.date)}`,
          },
          plan.compelling_event.name,
          " ⚑",
        ),
      dots,
    ),
  );
}

function shiftDay(iso, days) {
  return new Date(Date.parse(`${iso}T00:00:00Z`) + days * 86400000).toISOString().slice(0, 10);
}

function firstOfNextMonth(iso) {
  const d = new Date(`${iso}T00:00:00Z`);
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)).toISOString().slice(0, 10);
}

function itemsOf(milestoneId) {
  return Object.values(ui.plan.action_items).filter((a) => a.milestone_id === milestoneId);
}

function milestoneLevel(m, findings) {
  if (m.status === "done") return "done";
  const own = levelOf(m, findings.get(m.id) || []);
  return worst([own, ...itemsOf(m.id).map((a) => levelOf(a, findings.get(a.id) || []))]);
}

function renderMilestones() {
  const plan = ui.plan;
  const findings = findingsByItem();
  const editable = canEdit();
  const cards = plan.milestone_order.map((id, i) => {
    const m = plan.milestones[id];
    if (!m) return null;
    const level = milestoneLevel(m, findings);
    const items = itemsOf(m.id);
    const slipDays = m.slips.reduce((sum, s) => sum + (s.from_due ? daysBetween(s.from_due, s.to_due) : 0), 0);
    const editingThis = ui.editing?.kind === "milestone" && ui.editing.id === m.id;
    return h(
      "article",
      { class: `milestone health-${level}`, dataset: { milestoneId: m.id } },
      editingThis
        ? ui.editing.form
        : h(
            "div",
            { class: "ms-head" },
            h("span", { class: "ms-num" }, String(i + 1)),
            h("h3", { class: "ms-title" }, m.title),
            h("span", { class: `pill status-${m.status} ms-status` }, humanize(m.status)),
            viewersOn(m.id),
            editable &&
              h("button", { class: "edit", type: "button", title: "Edit milestone", onclick: () => openEditor("milestone", m.id) }, "Edit"),
          ),
      h(
        "div",
        { class: "ms-meta" },
        ownerChip(m.owner, "ms-owner"),
        h("span", { class: "ms-due", dataset: { due: m.due || "" } }, `due ${formatDay(m.due)}`, m.deadline === "hard" ? " (hard)" : ""),
        m.slips.length > 0 &&
          h(
            "span",
            { class: "flag flag-slipped", title: m.slips.map((s) => `${formatDay(s.from_due)} → ${formatDay(s.to_due)}: ${s.reason}`).join("\n") },
            `slipped ${m.slips.length}× (+${slipDays} days)`,
          ),
        flags(findings.get(m.id), ["slipped"]),
        m.status !== "done" && h("span", { class: `health-label health-${level}` }, humanize(level)),
      ),
      m.outcome && h("p", { class: "outcome" }, h("span", { class: "fact-label" }, "Done when"), m.outcome),
      items.length > 0 &&
        h(
          "ul",
          { class: "items" },
          items.map((a) => itemRow(a, findings, editable)),
        ),
    );
  });
  replace($("#milestones"), cards.length ? cards : h("p", { class: "muted empty" }, "No milestones yet."));
}

function itemRow(a, findings, editable) {
  const level = levelOf(a, findings.get(a.id) || []);
  if (ui.editing?.kind === "item" && ui.editing.id === a.id) {
    return h("li", { class: `item editing health-${level}`, dataset: { itemId: a.id } }, ui.editing.form);
  }
  return h(
    "li",
    { class: `item health-${level}`, dataset: { itemId: a.id } },
    h("span", { class: "item-dot", title: humanize(level) }),
    h(
      "span",
      { class: "item-main" },
      h("span", { class: "item-title" }, a.title),
      a.visibility === "internal" && h("span", { class: "flag flag-internal", title: "only your side sees this item" }, "internal"),
      flags(findings.get(a.id), []),
      viewersOn(a.id),
    ),
    ownerChip(a.owner, "item-owner"),
    h("span", { class: "item-due", dataset: { due: a.due || "" } }, formatDay(a.due)),
    h("span", { class: "item-status-cell" }, h("span", { class: `pill status-${a.status} item-status` }, humanize(a.status))),
    editable && h("button", { class: "edit", type: "button", title: "Edit action item", onclick: () => openEditor("item", a.id) }, "Edit"),
  );
}

function ownerChip(owner, cls) {
  if (!owner) return h("span", { class: `owner none ${cls}` }, "no owner");
  const s = ui.plan.stakeholders[owner];
  return h(
    "span",
    { class: `owner side-${s?.side || "unknown"} ${cls}`, title: s ? `${s.title || s.persona} (${s.side})` : owner },
    h("span", { class: "avatar small" }, initials(s?.name || owner)),
    s?.name || owner,
  );
}

function flags(list, skip) {
  return (list || [])
    .filter((f) => FLAG_LABELS[f.code] && !skip.includes(f.code))
    .map((f) => h("span", { class: `flag flag-${f.code}`, title: f.message }, FLAG_LABELS[f.code]));
}

function viewersOn(itemId) {
  const others = uniqueViewers().filter((v) => v.item_id === itemId && v.user !== ui.email);
  if (!others.length) return null;
  return h(
    "span",
    { class: "item-viewers" },
    others.map((v) => h("span", { class: `avatar small side-${v.side}`, title: `${nameOf(v.user)} is here` }, initials(nameOf(v.user)))),
  );
}

function nameOf(email) {
  return ui.plan?.members?.[email]?.name || email;
}

function uniqueViewers() {
  const byUser = new Map();
  for (const v of ui.viewers) if (!byUser.has(v.user) || v.item_id) byUser.set(v.user, v);
  return [...byUser.values()];
}

function renderPresence() {
  const viewers = uniqueViewers();
  replace(
    $("#presence"),
    viewers.length > 0 && h("span", { class: "presence-label" }, "Here now"),
    viewers.map((v) => {
      const where = v.item_id && ui.plan ? ` · on '${ui.plan.milestones[v.item_id]?.title || ui.plan.action_items[v.item_id]?.title || v.item_id}'` : "";
      return h(
        "span",
        {
          class: `avatar side-${v.side}${v.user === ui.email ? " me" : ""}`,
          dataset: { user: v.user },
          title: `${nameOf(v.user)} (${v.side})${v.user === ui.email ? " · you" : ""}${where}`,
        },
        initials(nameOf(v.user)),
      );
    }),
  );
}

function renderAudit() {
  const rows = [...ui.audit].reverse();
  const fresh = ui.seenAudit.size > 0;
  replace(
    $("#audit-rows"),
    rows.map((row) => {
      const isNew = fresh && !ui.seenAudit.has(row.version);
      return h(
        "li",
        { class: ["audit-row", isNew && "new"], dataset: { version: String(row.version) } },
        h("div", { class: "audit-meta" }, h("span", { class: "v" }, `v${row.version}`), formatTime(row.at)),
        h("div", { class: "audit-summary" }, row.summary),
      );
    }),
  );
  for (const row of rows) ui.seenAudit.add(row.version);
  setText($("#audit-state"), ui.auditComplete ? "" : "catching up…");
}

// -- inline editing -------------------------------------------------------------------------

function openEditor(kind, id) {
  if (ui.editing) closeEditor();
  const item = kind === "item" ? ui.plan.action_items[id] : ui.plan.milestones[id];
  if (!item) return;
  const original = { title: item.title, status: item.status, owner: item.owner || "", due: item.due || "" };
  const stakeholders = Object.values(ui.plan.stakeholders).filter((s) => s.active);
  const reasonRow = h(
    "label",
    { class: "reason", hidden: true },
    "Why the date moves",
    h("input", { name: "reason", placeholder: "kept in the history, e.g. waiting for the SOC 2 report", maxlength: "2000" }),
  );
  const form = h(
    "form",
    { class: "editor", dataset: { editor: id }, autocomplete: "off" },
    h("label", { class: "wide" }, "Title", h("input", { name: "title", value: item.title, required: true, maxlength: "200" })),
    h(
      "label",
      {},
      "Status",
      h(
        "select",
        { name: "status" },
        STATUSES.map((s) => h("option", { value: s, selected: s === item.status }, humanize(s))),
      ),
    ),
    h(
      "label",
      {},
      "Owner",
      h(
        "select",
        { name: "owner" },
        h("option", { value: "", selected: !item.owner }, "no owner"),
        stakeholders.map((s) => h("option", { value: s.id, selected: s.id === item.owner }, `${s.name} (${s.side})`)),
      ),
    ),
    h("label", {}, "Due", h("input", { name: "due", type: "date", value: item.due || "" })),
    reasonRow,
    h("p", { class: "editor-error", role: "alert" }),
    h(
      "div",
      { class: "editor-buttons" },
      h("button", { type: "submit", class: "primary" }, "Save"),
      h("button", { type: "button", onclick: closeEditor }, "Cancel"),
    ),
  );
  form.elements.status.value = item.status;
  form.elements.owner.value = item.owner || "";
  form.elements.due.addEventListener("input", () => {
    reasonRow.hidden = form.elements.due.value === original.due;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    save();
  });
  ui.editing = { kind, id, form, original };
  renderPlan();
  form.elements.title.focus();
  ui.feed?.presence(id);
}

function closeEditor() {
  if (!ui.editing) return;
  ui.editing = null;
  ui.feed?.presence(null);
  renderPlan();
}

/** The commands for what *this user* changed in the form (others' changes are not undone). */
function commandsFor(kind, id, original, values) {
  const update = {};
  if (values.title !== original.title) update.title = values.title;
  if (values.owner !== original.owner) update.owner = values.owner || null;
  const commands = [];
  const statusChanged = values.status !== original.status;
  if (kind === "milestone" && statusChanged && values.status !== "done") update.status = values.status;
  if (Object.keys(update).length) {
    commands.push([kind === "item" ? "update_action_item" : "update_milestone", { id, ...update }]);
  }
  if (values.due !== original.due) {
    if (!values.due) throw new Error("A due date cannot be removed; pick a new date.");
    if (!values.reason) throw new Error("Say why the date moves: the reason is kept in the plan's history.");
    commands.push([
      kind === "item" ? "reschedule_action_item" : "reschedule_milestone",
      { id, due: values.due, reason: values.reason },
    ]);
  }
  if (statusChanged && kind === "item") commands.push(["set_action_item_status", { id, status: values.status }]);
  if (statusChanged && kind === "milestone" && values.status === "done") commands.push(["complete_milestone", { id }]);
  return commands;
}

async function save() {
  if (!ui.editing) return;
  const { kind, id, form, original } = ui.editing;
  const values = Object.fromEntries(
    ["title", "status", "owner", "due", "reason"].map((n) => [n, form.elements[n].value.trim()]),
  );
  const error = $(".editor-error", form);
  let commands;
  try {
    commands = commandsFor(kind, id, original, values);
  } catch (exc) {
    setText(error, exc.message);
    return;
  }
  if (!commands.length) return closeEditor();
  for (const el of form.elements) el.disabled = true;
  let version = null;
  try {
    for (const [type, data] of commands) {
      version = (await ui.api.command(ui.planId, type, data)).version;
    }
  } catch (exc) {
    for (const el of form.elements) el.disabled = false;
    setText(error, explain(exc));
    return;
  }
  if (ui.editing?.form === form) closeEditor();
  toast(`Saved: version ${version}`);
  refresh();
}

// -- small helpers ----------------------------------------------------------------------

function setText(el, text) {
  el.textContent = text;
}

function explain(exc) {
  if (exc instanceof ApiError) {
    const rule = exc.detail.rule ? ` (${exc.detail.rule})` : "";
    return `${exc.message}${rule}`;
  }
  return exc?.message || String(exc);
}

let toastTimer = null;
function toast(message, kind = "info") {
  const el = $("#toast");
  el.className = `toast ${kind}`;
  setText(el, message);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 4000);
}

boot();
