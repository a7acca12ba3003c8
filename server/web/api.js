// The HTTP API as the client uses it: bearer token, JSON in and out, errors as ApiError
// carrying the server's stable `code` (see README "Errors").

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || "http_error";
    this.detail = error || {};
  }
}

/** A fresh idempotency key per command: a retry with the same key appends nothing. */
export function newCommandId() {
  if (globalThis.crypto?.randomUUID) return `web-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** The user a token names (display only: the server checks the signature). */
export function tokenUser(token) {
  try {
    const part = token.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return { email: String(claims.sub || ""), expires: Number(claims.exp || 0) };
  } catch {
    return null;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      throw new ApiError(0, { code: "network", message: `the server cannot be reached (${exc.message})` });
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data?.error);
    return data;
  }

  plan(planId) {
    return this.request("GET", `/plans/${encodeURIComponent(planId)}`);
  }

  health(planId) {
    return this.request("GET", `/plans/${encodeURIComponent(planId)}/health`);
  }

  /** The latest `limit` rows of the audit trail this side may read. */
  audit(planId, version, limit = 60) {
    const from = Math.max(1, version - limit + 1);
    return this.request("GET", `/plans/${encodeURIComponent(planId)}/audit?from=${from}&limit=${limit}`);
  }

  command(planId, type, data) {
    return this.request("POST", `/plans/${encodeURIComponent(planId)}/commands`, {
      type,
      data,
      command_id: newCommandId(),
    });
  }

  acceptInvite(code, name, email) {
    return this.request("POST", `/invites/${encodeURIComponent(code)}/accept`, { name, email });
  }
}
