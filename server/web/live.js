// The live hub (README "The live hub"): one socket, `auth` first, `subscribe` to the plan,
// then every later version arrives as an `event`, in order. After any drop we reconnect and
// resume with `since` = the last version applied, so nothing is missed or applied twice.

const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_FORBIDDEN = 4003;

export class LiveFeed {
  /**
   * handlers: ready(user), snapshot(version, state), event(event), live(version),
   * presence(viewers), status("connecting" | "live" | "offline"), fatal(code, reason)
   */
  constructor(token, planId, handlers) {
    this.token = token;
    this.planId = planId;
    this.on = handlers;
    this.version = null; // the last version applied: where a resume starts
    this.itemId = null;
    this.socket = null;
    this.stopped = false;
    this.backoff = 250;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "bye");
    this.socket = null;
  }

  /** Tell the others which item we are on (null: just viewing the plan). */
  presence(itemId) {
    this.itemId = itemId || null;
    this.send({ op: "presence", plan_id: this.planId, ...(this.itemId ? { item_id: this.itemId } : {}) });
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN && this.subscribed) {
      this.socket.send(JSON.stringify(message));
    }
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    this.socket = socket;
    this.subscribed = false;
    this.on.status?.("connecting");
    socket.addEventListener("open", () => socket.send(JSON.stringify({ op: "auth", token: this.token })));
    socket.addEventListener("message", (msg) => this.receive(socket, msg.data));
    socket.addEventListener("close", (ev) => this.closed(socket, ev));
  }

  receive(socket, raw) {
    if (socket !== this.socket) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    switch (msg.op) {
      case "ready":
        if (!this.subscribed) {
          this.on.ready?.(msg.user);
          const since = this.version === null ? {} : { since: this.version };
          socket.send(JSON.stringify({ op: "subscribe", plan_id: this.planId, ...since }));
        }
        break;
      case "snapshot":
        if (msg.plan_id !== this.planId) break;
        this.version = msg.version;
        this.on.snapshot?.(msg.version, msg.state);
        break;
      case "event":
        if (msg.plan_id !== this.planId) break;
        if (this.version !== null && msg.event.version <= this.version) break; // never twice
        this.version = msg.event.version;
        this.on.event?.(msg.event);
        break;
      case "live":
        if (msg.plan_id !== this.planId) break;
        this.subscribed = true;
        this.backoff = 250;
        this.on.status?.("live");
        this.on.live?.(msg.version);
        if (this.itemId) this.presence(this.itemId);
        break;
      case "presence":
        if (msg.plan_id === this.planId) this.on.presence?.(msg.viewers || []);
        break;
      case "error":
        if (msg.plan_id === this.planId && !this.subscribed) {
          // the subscribe itself was refused (not a member, no such plan): retrying won't help
          this.stopped = true;
          this.on.fatal?.(msg.code, msg.message);
          socket.close(1000, "refused");
        }
        break;
      default:
        break; // pong, ack, reject, unsubscribed
    }
  }

  closed(socket, ev) {
    if (socket !== this.socket) return;
    this.subscribed = false;
    this.on.presence?.([]);
    if (this.stopped) return;
    if (ev.code === CLOSE_UNAUTHORIZED || ev.code === CLOSE_FORBIDDEN) {
      this.stopped = true;
      this.on.fatal?.(ev.code === CLOSE_UNAUTHORIZED ? "unauthorized" : "forbidden", ev.reason);
      return;
    }
    // 1012 restart, 4008 too slow, network loss: come back and resume from this.version
    this.on.status?.("offline");
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 5000);
  }
}
