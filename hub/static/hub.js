// hub.js: one stream per browser for the hub's channels. An ES module, no build step.
//
//   import { subscribe } from "/static/hub.js";
//   const sub = subscribe(["news"], { onEvent: (e) => show(e.id, e.type, e.data) });
//
// Why fetch() and not EventSource: EventSource cannot send headers (the token would
// sit in the URL), cannot tell a 401 from a network error (so it retries an expired
// token forever, or gives up for good), and hides where exactly it stopped reading.
// Reading the response body of fetch() gives the status code, an Authorization header,
// and an exact cursor: a stream aborted between two events resumes at the next one.
//
// Why Web Locks + BroadcastChannel and not a SharedWorker: a worker cannot call a
// page's getToken(), needs a script of its own (and room in a site's CSP), and is
// not there in every browser on phones. One tab per set of channels holds a Web Lock
// and the stream; it posts every event on a BroadcastChannel to the other tabs. When
// it closes, the browser hands the lock to the next tab at once; when it freezes it
// lets go first (the "freeze" event), and if it goes silent anyway a visible tab
// steals the lock after LEADER_SILENCE_MS. Every tab drops an id it has seen, so a
// hand-over shows every event once. Web Locks need a secure context (https or
// localhost): elsewhere every tab has a stream of its own.
//
// SSE frames do not say which channel an event came from, so tabs share a stream only
// when they follow the same set of channels; each distinct set has a stream of its own.

/** Send a heartbeat to the other tabs this often while holding the stream. */
const BEAT_MS = 500;
/** A visible tab takes the stream over after this much silence from its holder. */
const LEADER_SILENCE_MS = 1500;
/** Events the holder keeps for a tab that comes back (a reload) to catch up from. */
const RING = 1000;
/** Ids each tab remembers to drop repeats (publisher-chosen Mercure ids do not sort). */
const SEEN = 2048;
/** A stream that sent nothing for this long (3 of the hub's 15 s heartbeats) is left. */
const STALL_MS = 45000;
/** Reconnect delays: the hub's retry: hint at first, doubling up to MAX_DELAY_MS. */
const MAX_DELAY_MS = 30000;
/** How long a returning tab waits for the holder's catch-up, and how many times. */
const HELLO_MS = 700;
const HELLO_TRIES = 3;
const HUB_ID = /^(\d{1,15})-(\d{1,20})(?:\.([0-9a-z]{1,13}))?$/;

/**
 * Follow `channels`: returns a handle with `setChannels(channels)` and `close()`.
 * handlers: onEvent(event), onReset(reason, channels, info), onState(state, info).
 * options: hub (base URL), door ("native" | "mercure"), getToken, lastEventId, share,
 * credentials, stallMs. See docs/javascript.md.
 */
export function subscribe(channels, handlers = {}, options = {}) {
  return new Subscription(channels, handlers, options);
}

/** The claims of a JWT (no check of its signature: that is the hub's job). */
export function decodeToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

class Subscription {
  constructor(channels, handlers, options) {
    this.handlers = handlers;
    this.options = options;
    this.group = null;
    this.setChannels(channels);
  }

  get channels() { return this.group ? this.group.channels.slice() : []; }
  get lastEventId() { return this.group ? this.group.lastId : null; }
  get state() { return this.group ? this.group.state : "closed"; }
  /** True while this tab holds the stream its group shares. */
  get leader() { return Boolean(this.group && this.group.leading); }

  setChannels(channels) {
    const names = [...new Set(channels)].sort();
    if (!names.length) throw new TypeError("subscribe() needs at least one channel");
    const key = groupKey(names, this.options);
    if (this.group && this.group.key === key) return;
    this._leave();
    let group = GROUPS.get(key);
    if (!group) {
      group = new Group(key, names, this.options);
      GROUPS.set(key, group);
      group.members.add(this);
      group.start();
    } else {
      group.members.add(this);
    }
    this.group = group;
    this._call("onState", group.state, group.info);
  }

  close() {
    if (this._leave()) this._call("onState", "closed", {});
  }

  _leave() {
    const group = this.group;
    this.group = null;
    if (!group) return false;
    group.members.delete(this);
    if (!group.members.size) {
      GROUPS.delete(group.key);
      group.stop();
    }
    return true;
  }

  _call(name, ...args) {
    const handler = this.handlers[name];
    if (!handler) return;
    try {
      handler(...args);
    } catch (err) {
      setTimeout(() => { throw err; }); // reported, without stopping the other tabs' events
    }
  }
}

const GROUPS = new Map();

function groupKey(channels, options) {
  const hub = new URL(options.hub || new URL("../", import.meta.url)).href;
  return JSON.stringify([hub, options.door || "native", channels]);
}

/** The hub's own ids (`<ms>-<seq>.<h>`) sort; a Mercure publisher's chosen ids do not. */
function compareIds(a, b) {
  const x = HUB_ID.exec(a || ""), y = HUB_ID.exec(b || "");
  if (!x || !y) return NaN;
  // h is a 64-bit number in base 36, too big for a Number: compare its digits.
  const h = x[3] || "0", k = y[3] || "0";
  const byH = h.length - k.length || (h < k ? -1 : h > k ? 1 : 0);
  return Number(x[1]) - Number(y[1]) || Number(x[2]) - Number(y[2]) || byH;
}

class Group {
  constructor(key, channels, options) {
    this.key = key;
    this.channels = channels;
    this.options = options;
    [this.hub, this.door] = JSON.parse(key);
    this.members = new Set();
    this.tab = Math.random().toString(36).slice(2);
    this.storageKey = "hub.js cursor " + key;
    this.lastId = options.lastEventId || readStorage(this.storageKey);
    this.seen = new Set();
    this.seenOrder = [];
    this.ring = [];
    this.state = "connecting";
    this.info = {};
    this.opened = false;
    this.leading = false;
    this.stopped = false;
    this.held = null; // events held while a returning tab waits for its catch-up
    this.token = null;
    this.delay = 0;
    this.lastBeat = 0;
    this.onLifecycle = (e) => this.lifecycle(e);
    // Back online: retry now, or leave a stream that may have died with the old network.
    this.onOnline = () => (this.wake ? this.wake() : this.restart("online"));
  }

  start() {
    const shared = this.options.share !== false && globalThis.navigator && navigator.locks &&
      typeof BroadcastChannel === "function";
    addEventListener("online", this.onOnline);
    if (!shared) {
      this.lead();
      return;
    }
    this.bc = new BroadcastChannel("hub.js " + this.key);
    this.bc.onmessage = (e) => this.message(e.data);
    for (const type of ["freeze", "resume", "pagehide", "pageshow"]) {
      addEventListener(type, this.onLifecycle);
      document.addEventListener(type, this.onLifecycle);
    }
    this.lockName = "hub.js " + this.key;
    this.follow();
  }

  stop() {
    this.stopped = true;
    this.abdicate();
    if (this.pending) this.pending.abort();
    if (this.catchUp) this.catchUp.abort();
    clearInterval(this.watchdog);
    removeEventListener("online", this.onOnline);
    for (const type of ["freeze", "resume", "pagehide", "pageshow"]) {
      removeEventListener(type, this.onLifecycle);
      document.removeEventListener(type, this.onLifecycle);
    }
    if (this.bc) this.bc.close();
  }

  // -- following: waiting for the lock, hearing events from the tab that holds it ---

  follow() {
    if (this.stopped) return;
    this.lastBeat = performance.now();
    this.pending = new AbortController();
    this.acquire({ signal: this.pending.signal });
    clearInterval(this.watchdog);
    const silence = LEADER_SILENCE_MS * (1 + Math.random() / 2);
    this.watchdog = setInterval(() => {
      // Only a visible tab steals: hidden tabs' timers are throttled, so a hidden
      // holder may beat late; a visible one takes over and stays.
      if (!this.leading && document.visibilityState === "visible" &&
          performance.now() - this.lastBeat > silence) {
        this.steal();
      }
    }, 250);
    if (this.lastId) {
      // Back from a reload or a freeze: catch up from the holder's recent events,
      // holding back the live ones meanwhile.
      if (!this.held) this.held = [];
      clearTimeout(this.helloTimer);
      this.hello(0);
    }
  }

  hello(tries) {
    if (!this.held) return;
    if (tries === HELLO_TRIES) {
      // Nobody answered (the holder hangs?): read from the hub up to the first event
      // held back, if any.
      if (this.held.length && this.held[0].id) this.fetchCatchUp(this.held[0].id);
      else this.release([]);
      return;
    }
    this.post({ t: "hello", from: this.tab, cursor: this.lastId });
    this.helloTimer = setTimeout(() => this.hello(tries + 1), HELLO_MS);
  }

  steal() {
    if (this.pending) this.pending.abort();
    this.pending = null;
    this.acquire({ steal: true });
  }

  acquire(options) {
    let granted = false;
    navigator.locks.request(this.lockName, options, () => {
      granted = true;
      return this.hold();
    }).catch((err) => {
      if (err.name !== "AbortError") throw err;
      // Stolen by a tab that heard nothing from us for too long: follow it.
      if (granted && this.leading) this.abdicate(true);
    });
  }

  hold() {
    // The lock is ours until the promise we return settles; a steal breaks it (the
    // request's promise rejects then, and lead() notices through this.lease).
    if (this.stopped) return undefined;
    clearInterval(this.watchdog);
    // Streaming from this tab's cursor replays what a catch-up would have brought.
    clearTimeout(this.helloTimer);
    this.held = null;
    if (this.catchUp) this.catchUp.abort();
    return new Promise((resolve) => {
      this.lease = resolve;
      this.lead();
    });
  }

  message(msg) {
    if (msg.t === "beat" || msg.t === "state") {
      if (msg.from === this.tab) return;
      this.lastBeat = performance.now();
      if (!this.leading) this.setState(msg.state, msg.info, false);
    } else if (msg.t === "event") {
      this.lastBeat = performance.now();
      if (this.held) this.held.push(msg.event);
      else this.accept(msg.event);
    } else if (msg.t === "hello" && this.leading) {
      this.post({ t: "catchup", to: msg.from, ...this.since(msg.cursor) });
    } else if (msg.t === "catchup" && msg.to === this.tab && this.held && !this.catchUp) {
      clearTimeout(this.helloTimer);
      if (msg.found) this.release(msg.events);
      else this.fetchCatchUp(msg.upTo);
    }
  }

  since(cursor) {
    // Nothing to compare with (the holder has no cursor yet), or the tab is ahead.
    if (!this.lastId || cursor === this.lastId || compareIds(cursor, this.lastId) > 0) {
      return { found: true, events: [] };
    }
    const at = this.ring.findIndex((e) => e.id === cursor);
    if (at >= 0) return { found: true, events: this.ring.slice(at + 1) };
    return { found: false, upTo: this.lastId };
  }

  release(events) {
    clearTimeout(this.helloTimer);
    const held = this.held;
    this.held = null;
    for (const e of events.concat(held || [])) this.accept(e);
  }

  async fetchCatchUp(upTo) {
    // The holder's recent events do not reach back to this tab's cursor: read the
    // missed ones from the hub on a short stream of our own, up to where the holder is.
    const catchUp = this.catchUp = new AbortController();
    const limit = setTimeout(() => catchUp.abort(), 10000);
    try {
      const response = await this.open(catchUp.signal, false);
      if (!response || !response.ok) return;
      await readEvents(response, (event) => {
        this.accept(event);
        if (event.id === upTo || compareIds(event.id, upTo) >= 0 || event.type === "hub.reset") {
          catchUp.abort();
        }
      });
    } catch (err) {
      if (err.name !== "AbortError") this.info = { error: String(err) };
    } finally {
      clearTimeout(limit);
      this.catchUp = null;
      if (this.held) this.release([]);
    }
  }

  lifecycle(e) {
    if (e.type === "freeze" || (e.type === "pagehide" && e.persisted)) {
      // Frozen, or into the back/forward cache: let another tab hold the stream.
      if (this.pending) this.pending.abort();
      clearInterval(this.watchdog);
      this.abdicate();
      this.frozen = true;
    } else if ((e.type === "resume" || e.type === "pageshow") && this.frozen) {
      this.frozen = false;
      this.follow();
    }
  }

  // -- holding the stream -----------------------------------------------------------

  post(msg) {
    if (this.bc && !this.stopped) this.bc.postMessage(msg);
  }

  abdicate(rejoin = false) {
    if (!this.leading) return;
    this.leading = false;
    clearInterval(this.beat);
    clearTimeout(this.refresh);
    if (this.current) this.current.abort();
    if (this.wake) this.wake();
    if (this.lease) this.lease();
    this.lease = null;
    if (rejoin) this.follow();
  }

  async lead() {
    this.leading = true;
    if (this.bc) {
      const beat = () =>
        this.post({ t: "beat", from: this.tab, state: this.state, info: this.info });
      beat();
      this.beat = setInterval(beat, BEAT_MS);
    }
    let fresh = false;
    let authFailures = 0;
    while (this.leading && !this.stopped) {
      this.current = new AbortController();
      let response = null;
      try {
        response = await this.open(this.current.signal, fresh);
      } catch (err) {
        if (!this.leading) break;
        this.setState(this.opened ? "reconnecting" : "connecting", { error: String(err) });
      }
      fresh = false;
      if (response && (response.status === 401 || response.status === 403)) {
        fresh = true; // ask for a new token instead of retrying the old one
        authFailures += 1;
        const detail = await response.text().catch(() => "");
        this.setState(this.opened ? "reconnecting" : "connecting",
                      { error: `${response.status}: ${detail.slice(0, 200)}` });
      } else if (response && !response.ok) {
        const detail = await response.text().catch(() => "");
        if (response.status < 500 && response.status !== 429) {
          this.setState("closed", { error: `${response.status}: ${detail.slice(0, 200)}` });
          this.abdicate();
          break;
        }
        this.setState("reconnecting", { error: `${response.status}: ${detail.slice(0, 200)}` });
      } else if (response) {
        this.delay = 0;
        authFailures = 0;
        const why = await this.read(response);
        if (!this.leading) break;
        if (why) {
          // A fresh token, a new network, or a silent stream: reconnect at once, from
          // the cursor.
          if (why === "stalled") this.setState("reconnecting", { error: "no data for a while" });
          continue;
        }
        this.setState("reconnecting", { error: "the stream ended" });
      }
      // The first 401 is most likely an expired token: the fresh one is tried at once.
      if (this.leading && !(fresh && authFailures === 1)) await this.backoff();
    }
  }

  async open(signal, fresh) {
    let token = null;
    const getToken = this.options.getToken;
    if (getToken) {
      const cached = !fresh && this.token && this.token.until > Date.now();
      token = cached ? this.token.value : await getToken();
      if (!this.leading && signal === (this.current && this.current.signal)) return null;
      this.token = token ? { value: token, until: expiry(token) } : null;
    }
    const url = new URL(this.door === "mercure" ? ".well-known/mercure" : "events", this.hub);
    const name = this.door === "mercure" ? "topic" : "channel";
    for (const c of this.channels) url.searchParams.append(name, c);
    const headers = { Accept: "text/event-stream" };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    if (token) headers.Authorization = "Bearer " + token;
    const sent = this.sent = this.lastId;
    const response = await fetch(url, {
      headers, signal, cache: "no-store", credentials: this.options.credentials || "same-origin",
    });
    if (response.ok && this.door === "mercure" && sent && sent !== "earliest" &&
        response.headers.get("Last-Event-ID") === "earliest") {
      // Mercure's way of saying that it does not know the cursor any more.
      this.dispatchReset({ reason: "unknown", message: `${sent} is not in the hub's history`,
                           channels: this.channels });
    } else if (response.ok && !sent && this.door === "mercure") {
      // Joined live: the newest id is where this stream starts (the native door says
      // so in the stream itself); a hand-over or reconnect resumes from there.
      const newest = response.headers.get("Last-Event-ID");
      if (newest && newest !== "earliest") {
        this.receive({ id: newest, type: "message", data: null });
      }
    }
    return response;
  }

  async read(response) {
    // Why this side ends the stream (else the hub or the network ended it).
    this.why = null;
    if (this.token && this.token.until) {
      // Not sooner than half a second: a token that is nearly spent is not a reason to spin.
      const wait = Math.max(500, this.token.until - Date.now());
      this.refresh = setTimeout(async () => {
        // Ask first, switch after: the old stream runs until the new token is here.
        try {
          const value = await this.options.getToken();
          this.token = { value, until: expiry(value) };
        } catch (err) {
          this.info = { error: "getToken: " + err };
        }
        this.restart("refresh");
      }, wait);
    }
    // A connection that died without a word (a phone changing networks) sends nothing,
    // not even the hub's heartbeats: leave it after STALL_MS of silence.
    let heard = performance.now();
    const stall = setInterval(() => {
      if (performance.now() - heard > (this.options.stallMs || STALL_MS)) this.restart("stalled");
    }, 1000);
    // Resumed: the hub was given a cursor, so it replayed what this group missed.
    this.setState("open", { resumed: this.opened || Boolean(this.sent) });
    this.opened = true;
    try {
      await readEvents(response, (event) => this.receive(event), (ms) => { this.retry = ms; },
                       () => { heard = performance.now(); });
    } catch (err) {
      if (err.name !== "AbortError") this.info = { error: String(err) };
    } finally {
      clearTimeout(this.refresh);
      clearInterval(stall);
    }
    return this.why;
  }

  restart(why) {
    if (!this.leading || !this.current || this.why) return;
    this.why = why;
    this.current.abort();
  }

  backoff() {
    // Full jitter around an exponential delay, starting at the hub's retry: hint.
    const base = this.retry || 1000;
    this.delay = Math.min(MAX_DELAY_MS, this.delay ? this.delay * 2 : base);
    const wait = this.delay / 2 + Math.random() * this.delay / 2;
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); this.wake = null; resolve(); };
      const timer = setTimeout(() => {
        if (navigator.onLine === false) return; // offline: wait for the online event
        done();
      }, wait);
      this.wake = done;
    });
  }

  receive(event) {
    if (this.accept(event)) this.post({ t: "event", event });
  }

  // -- every tab ----------------------------------------------------------------------

  accept(event) {
    const id = event.id;
    if (id) {
      if (this.seen.has(id) || compareIds(id, this.lastId) <= 0) return false;
      this.seen.add(id);
      this.seenOrder.push(id);
      if (this.seenOrder.length > SEEN) this.seen.delete(this.seenOrder.shift());
      this.lastId = id;
      writeStorage(this.storageKey, id);
      this.ring.push(event);
      if (this.ring.length > RING) this.ring.shift();
    }
    if (event.type === "hub.reset") {
      let info = {};
      try { info = JSON.parse(event.data); } catch { /* a reset all the same */ }
      this.dispatchReset(info);
    } else if (event.data !== null && !event.type.startsWith("hub.")) {
      const copy = { id: event.id, type: event.type, data: event.data };
      for (const m of this.members) m._call("onEvent", copy);
    }
    return true;
  }

  dispatchReset(info) {
    const channels = info.channels || this.channels.slice();
    for (const m of this.members) m._call("onReset", info.reason || "unknown", channels, info);
  }

  setState(state, info, broadcast = true) {
    const next = { ...info, leader: this.leading };
    if (state === this.state && JSON.stringify(next) === JSON.stringify(this.info)) return;
    this.state = state;
    this.info = next;
    if (broadcast && this.leading) this.post({ t: "state", from: this.tab, state, info });
    for (const m of this.members) m._call("onState", state, this.info);
  }
}

/** When to switch to a fresh token: a fifth of its lifetime (at most 30 s) before exp. */
function expiry(token) {
  const { exp, iat } = decodeToken(token);
  if (typeof exp !== "number") return 0;
  const now = Date.now() / 1000;
  // iat bounds what is left when the browser's clock is behind the issuer's.
  const left = typeof iat === "number" ? Math.min(exp - now, exp - iat) : exp - now;
  const lifetime = typeof iat === "number" ? exp - iat : left;
  return Date.now() + Math.max(0, left - Math.min(30, lifetime / 5)) * 1000;
}

/**
 * Read a text/event-stream body, calling onEvent({id, type, data}) per event in order.
 * A block with an id but no data ({data: null}) moves the cursor only.
 */
export async function readEvents(response, onEvent, onRetry = () => {}, onRead = () => {}) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = null, type = "", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onRead();
    buffer += value;
    // A \r at the end may be half of a \r\n: it waits for the next chunk.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut); // a line without its end yet
    for (const line of lines) {
      if (line === "") {
        if (data.length || id !== null) {
          onEvent({ id, type: type || "message", data: data.length ? data.join("\n") : null });
        }
        id = null; type = ""; data = [];
        continue;
      }
      const colon = line.indexOf(":");
      if (colon === 0) continue; // a comment (the hub's heartbeats)
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") type = text;
      else if (field === "id" && !text.includes("\0")) id = text;
      else if (field === "retry" && /^\d+$/.test(text)) onRetry(Number(text));
    }
  }
}

function readStorage(key) {
  try { return sessionStorage.getItem(key); } catch { return null; }
}

function writeStorage(key, value) {
  try { sessionStorage.setItem(key, value); } catch { /* storage full or denied */ }
}
