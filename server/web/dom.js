// Building DOM nodes without markup strings: every piece of data becomes a text node or a
// property, so a title like `<img onerror=…>` is shown, never run. No innerHTML anywhere.

/**
 * h("li", {class: "item", dataset: {itemId: "poc"}, onclick: fn}, "text", childNode, [more])
 * Strings and numbers become text nodes; null/undefined/false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") el.style.cssText = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "selected" || key === "disabled") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace all children of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

const DAY_FORMAT = new Intl.DateTimeFormat("en-GB", {
  day: "numeric", month: "short", year: "numeric", timeZone: "UTC",
});
const TIME_FORMAT = new Intl.DateTimeFormat("en-GB", {
  day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
});

/** "2026-12-01" -> "1 Dec 2026" (a plan date is a calendar day, not an instant). */
export function formatDay(iso) {
  if (!iso) return "no date";
  return DAY_FORMAT.format(new Date(`${iso}T00:00:00Z`));
}

/** An ISO-8601 instant in the reader's time zone. */
export function formatTime(iso) {
  return iso ? TIME_FORMAT.format(new Date(iso)) : "";
}

/** Whole days from `a` to `b` (both "YYYY-MM-DD"). */
export function daysBetween(a, b) {
  return Math.round((Date.parse(`${b}T00:00:00Z`) - Date.parse(`${a}T00:00:00Z`)) / 86400000);
}

export function initials(name) {
  const words = String(name || "?").replace(/@.*/, "").split(/[\s._-]+/).filter(Boolean);
  return ((words[0] || "?")[0] + (words.length > 1 ? words[words.length - 1][0] : "")).toUpperCase();
}

export function humanize(word) {
  return String(word || "").replaceAll("_", " ");
}
