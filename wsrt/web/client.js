// wsrt browser client: one dependency-free ES module, served by the server at /client.js.
//
//   import { connect } from "/client.js";
//   const client = connect("ws://host:8080/ws", { token, onState: (s) => {} });
//   const sub = await client.subscribe("order_book", (message) => {}, { rewind: 10 });
//   const mine = await client.subscribe("lines", onLine, { filter: { field: "data.market", eq: "moneyline" } });
//   await sub.unsubscribe();
//   client.close();
//
// The protocol is docs/protocol.md; this module adds what every browser client
// otherwise writes by hand: replies matched to requests as promises,
// reconnects with jittered backoff, and a resume of every channel from the
// offsets it last saw, so a server restart leaves no gap (docs/design.md, "Resume and replay").
//
// The browser WebSocket API cannot set headers, so the token travels as
// ?token= (never logged by the server). The same API shows a refused
// handshake (401, 403, 503) as a bare close 1006; the client then asks
// GET /ws/check, which answers the reason the upgrade got.

/**
 * The envelope of one Kafka record (docs/protocol.md, Messages).
 * @typedef {object} Message
 * @property {"message"} type
 * @property {string} channel the topic, also for a `topic:key` subscription
 * @property {string|null} key
 * @property {"base64"} [key_encoding] present when the key is not UTF-8
 * @property {number} partition
 * @property {number} offset
 * @property {number} timestamp Kafka record time, epoch milliseconds
 * @property {*} data the record's JSON value
 */

/**
 * `connecting` (first attempt), `open`, `reconnecting` (after a close the
 * client recovers from, with its code and reason) and `closed` (for good:
 * `close()` was called, or a close the client must not retry).
 * @typedef {"connecting"|"open"|"reconnecting"|"closed"} State
 */

/**
 * @typedef {object} StateDetail
 * @property {number} [code] the close code that led here
 * @property {string} [reason] the close reason, or the refusal from /ws/check
 *   (`unauthorized: expired`)
 * @property {string} [detail] /ws/check's plain words on a refused token
 * @property {string} text what happened, in plain words
 * @property {number} [delay] milliseconds until the next attempt (`reconnecting`)
 * @property {number} reconnects how many times the connection was opened again
 * @property {"websocket"|"sse"} transport what the client uses (or will use next)
 */

/**
 * Something a subscriber should know that is not a message: a `gap` or
 * `conflated` notice of a slow-consumer policy, history that was no longer
 * complete on resume, a subscription the server ended, an error no request
 * waited for.
 * @typedef {object} Notice
 * @property {"gap"|"conflated"|"incomplete"|"ended"|"moved"|"error"} type
 * @property {string} [channel]
 * @property {string} text in plain words
 * @property {object} frame the server's frame as received
 */

/**
 * At most one start field (docs/protocol.md, Resume and replay), and what
 * narrows the channel (docs/protocol.md, Filters): sent again with every
 * resubscribe.
 * @typedef {object} Start
 * @property {Object<string, number>} [since] partition → next offset
 * @property {number} [since_time] epoch milliseconds
 * @property {number} [rewind] the last N messages per partition
 * @property {object} [filter] a filter, e.g. `{field: "data.market", eq: "moneyline"}`
 * @property {string[]} [keys] only these keys of a topic channel
 * @property {number} [max_rate] at most this many messages per second per key
 */

/** The fields of a `Start` that narrow a subscription rather than place it. */
const NARROWING = ["filter", "keys", "max_rate"];

/**
 * @typedef {object} Options
 * @property {string} token the JWT
 * @property {(state: State, detail: StateDetail) => void} [onState]
 * @property {(notice: Notice) => void} [onNotice]
 * @property {() => (string|Promise<string>)} [getToken] called for a new token
 *   when the server closes with `1008 token expired` or refuses the token;
 *   without it the client stops there (state `closed`)
 * @property {number} [minDelay=500] first reconnect delay, milliseconds
 * @property {number} [maxDelay=15000] longest reconnect delay, milliseconds
 * @property {"auto"|"websocket"|"sse"} [transport="auto"] how to reach the
 *   server: `auto` uses a WebSocket and falls back to Server-Sent Events (GET
 *   /sse) when a WebSocket cannot connect to a server that would accept it
 *   (a proxy that breaks upgrades), saying so through `onState`
 * @property {number} [controlRate=16] control messages per second the client
 *   sends at most (burst the same), below the server's `WS_CONTROL_RATE`
 *   (default 20): a reconnect resubscribes every channel at this pace, and a
 *   `rate_limited` answer slows it down and sends that request again
 */

/** A refusal the server answered with an error frame; `code` is the protocol's error code. */
export class WsrtError extends Error {
  /** @param {string} code @param {string} message @param {string} [channel] */
  constructor(code, message, channel) {
    super(channel ? `${channel}: ${code}: ${message}` : `${code}: ${message}`);
    this.name = "WsrtError";
    /** @type {string} */
    this.code = code;
    /** @type {string|undefined} */
    this.channel = channel;
  }
}

const CLOSE_MEANINGS = {
  1000: "normal close",
  1001: "server going away (shutdown or redeploy)",
  1003: "server refused a binary frame",
  1006: "connection lost without a close frame",
  1008: "policy violation",
  1009: "frame too big",
  1011: "server error",
  1012: "server restarting",
  1013: "server overloaded, try again later",
};
const HINTS = {
  "slow consumer": "this client did not read fast enough (the server's WS_CLIENT_BUFFER)",
  "token expired": "the token's exp passed; refresh it",
};

/**
 * A close code and reason in plain words.
 * @param {number} code @param {string} [reason]
 * @returns {string}
 */
export function describeClose(code, reason) {
  const text = `closed by server: ${code} ${reason || CLOSE_MEANINGS[code] || ""}`.trimEnd();
  const hint = HINTS[reason || ""];
  return hint ? `${text} — ${hint}` : text;
}

/**
 * A `gap` or `conflated` notice in plain words.
 * @param {object} frame
 * @returns {string}
 */
export function describeNotice(frame) {
  if (frame.type === "gap") {
    return (
      `gap: ${frame.channel} partition ${frame.partition}: ${frame.dropped} messages ` +
      `(offsets ${frame.from} to ${frame.to}) were dropped because this client read too slowly`
    );
  }
  if (frame.type === "conflated") {
    return (
      `conflated: ${frame.channel}: ${frame.dropped} older values were replaced by newer ` +
      "ones of the same key because this client read too slowly"
    );
  }
  return JSON.stringify(frame);
}

/** Close codes after which reconnecting would only repeat the refusal. */
function final(code, reason) {
  if (code === 1008) return reason !== "slow consumer"; // abuse or an expired token
  return code === 1000 || code === 1003 || code === 1009 || (code >= 4000 && code < 5000);
}

/** @param {string} url @param {string} path @param {Object<string,string>} params */
function withQuery(url, path, params) {
  const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
  if (path) u.pathname = u.pathname.replace(/\/?$/, path);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u;
}

/** The event types of a stream (docs/protocol.md, Server-Sent Events), `error` and `close` aside. */
const SSE_EVENTS = ["message", "delete", "subscribed", "unsubscribed", "snapshot_end", "gap", "conflated",
  "revoked", "assigned", "refreshed", "pong"];

/** `ws://host/ws` → `http://host/sse?…` */
function sseUrl(url, params) {
  const u = withQuery(url, "", params);
  u.protocol = { "ws:": "http:", "wss:": "https:" }[u.protocol] || u.protocol;
  u.pathname = u.pathname.replace(/\/?ws\/?$/, "") + "/sse";
  return u.href;
}

/** One channel of a client: its handler and where each partition resumes. */
export class Subscription {
  /** @param {Client} client @param {string} channel @param {(m: Message) => void} onMessage @param {Start} [start] */
  constructor(client, channel, onMessage, start) {
    /** @type {string} */
    this.channel = channel;
    const colon = channel.indexOf(":");
    this.topic = colon < 0 ? channel : channel.slice(0, colon);
    this.key = colon < 0 ? null : channel.slice(colon + 1);
    /** @type {Object<string, number>} partition → the next offset to deliver */
    this.next = {};
    /** How many messages the handler received. */
    this.received = 0;
    this.onMessage = onMessage;
    this.start = { ...(start || {}) };
    /** `filter`, `keys`, `max_rate`: part of every subscribe of this channel. */
    this.narrowing = {};
    for (const name of NARROWING) {
      if (name in this.start) {
        this.narrowing[name] = this.start[name];
        delete this.start[name];
      }
    }
    this.client = client;
    /** Set while this subscription's first `subscribed` answer is awaited. */
    this.pending = null;
  }

  /** The `subscribe` frame: from where it stopped, else as first asked, else live. */
  request(id) {
    const known = Object.keys(this.next).length > 0;
    // An empty `since` starts live and makes the server say where (`positions`),
    // so a partition with no message yet resumes from there after a reconnect.
    let start = known ? { since: { ...this.next } } : Object.keys(this.start).length ? this.start : { since: {} };
    // A state subscription asks for a snapshot each time: the server replays
    // the history from `since` when all of it is there, else sends the state.
    if (this.start.snapshot) start = known ? { since: { ...this.next }, snapshot: true } : { snapshot: true };
    return { type: "subscribe", channel: this.channel, id, ...start, ...this.narrowing };
  }

  /** Stop receiving this channel; resolves on the server's `unsubscribed`. */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }
}

/** A connection to a wsrt server that reconnects and resumes by itself. */
export class Client {
  /** @param {string} url @param {Options} options */
  constructor(url, options) {
    if (!options || typeof options.token !== "string") throw new TypeError("connect(url, { token }) needs a token");
    this.url = url;
    this.token = options.token;
    this.options = { minDelay: 500, maxDelay: 15000, controlRate: 16, transport: "auto", ...options };
    if (!["auto", "websocket", "sse"].includes(this.options.transport)) {
      throw new TypeError('transport is "auto", "websocket" or "sse"');
    }
    /** @type {"websocket"|"sse"} what the client uses: auto starts with a WebSocket */
    this.transport = this.options.transport === "sse" ? "sse" : "websocket";
    /** @type {State} */
    this.status = "connecting";
    /** How many times the connection was opened again after it had been open. */
    this.reconnects = 0;
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    this._waiting = new Map(); // request id → { resolve, reject, sub? }
    this._id = 0;
    this._attempt = 0;
    this._openedOnce = false;
    this._closing = false;
    this._timer = null;
    this._ws = null;
    /** The open EventSource while the transport is SSE. */
    this._es = null;
    /** WebSockets in a row that did not open to a server that would take them. */
    this._blocked = 0;
    this._restreamTimer = null;
    // Control messages wait here and leave at most `controlRate` a second:
    // each is { make(id) → frame, waiter }, its id given when it is sent.
    this._outbox = [];
    this._rate = this.options.controlRate;
    this._tokens = this._rate;
    this._refilled = 0;
    this._holdUntil = 0;
    this._pumpTimer = null;
    // Reported once the caller holds the client (its onState may use it).
    queueMicrotask(() => this.status === "connecting" && this._setState("connecting", { text: `connecting to ${url}` }));
    this._open();
  }

  /**
   * Subscribe to `channel`; resolves once the server answers `subscribed`,
   * rejects with a {@link WsrtError} carrying its code (`unknown_channel`,
   * `forbidden`, `bad_request` …). `start` asks for history first.
   * @param {string} channel @param {(message: Message) => void} onMessage @param {Start} [start]
   * @returns {Promise<Subscription>}
   */
  subscribe(channel, onMessage, start) {
    if (this.status === "closed") {
      return Promise.reject(new WsrtError("closed", "the client is closed; connect again", channel));
    }
    if (this.subscriptions.has(channel)) {
      return Promise.reject(new WsrtError("bad_request", "already subscribed by this client", channel));
    }
    const sub = new Subscription(this, channel, onMessage, start);
    this.subscriptions.set(channel, sub);
    return new Promise((resolve, reject) => {
      sub.pending = { resolve, reject };
      if (this.status === "open") this._queueSubscribe(sub);
    });
  }

  /** SSE: the stream's subscriptions are its request; a change opens it again. */
  _restream() {
    if (this._restreamTimer !== null || this._closing) return;
    // Changes made in one go (several subscribe() calls) open one new stream.
    this._restreamTimer = setTimeout(() => {
      this._restreamTimer = null;
      if (this._es && !this._closing) this._openSse();
    }, 0);
  }

  /**
   * The state of a state topic (the server's `WS_STATE_TOPICS`) as a live
   * `Map` of key → newest envelope: filled by a snapshot, kept by the
   * messages and `delete` events that follow, and through reconnects (the
   * history since the last offset, or a new snapshot when that is gone).
   * `onChange(map, frame)` is called after each change. Resolves with the
   * map once the server answered the subscribe. `narrowing` may hold a
   * `filter` and `keys`: the map then holds the keys whose newest value passes.
   * @param {string} channel @param {(map: Map<string, Message>, frame: object) => void} [onChange]
   * @param {{filter?: object, keys?: string[]}} [narrowing]
   * @returns {Promise<Map<string, Message>>}
   */
  async state(channel, onChange, narrowing) {
    const map = new Map();
    const apply = (frame) => {
      if (frame.type === "delete") map.delete(frame.key);
      else map.set(frame.key, frame);
      if (onChange) onChange(map, frame);
    };
    const sub = await this.subscribe(channel, apply, { ...(narrowing || {}), snapshot: true });
    sub.state = map;
    return map;
  }

  /**
   * Replace the token: on this connection (resolves with the new `exp`,
   * rejects with `unauthorized`) and for every reconnect. When the client had
   * stopped because its token expired, it connects again.
   * @param {string} token
   * @returns {Promise<number|null>}
   */
  refresh(token) {
    this.token = token;
    if (this.status === "closed" && !this._closing) {
      this._attempt = 0;
      this._setState(this._openedOnce ? "reconnecting" : "connecting", { text: "connecting with the new token", delay: 0 });
      this._open();
      return Promise.resolve(null);
    }
    if (this.status !== "open") return Promise.resolve(null);
    if (this.transport === "sse") {
      this._restream(); // a stream takes no messages: it opens again with the new token
      return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      this._queue((id) => ({ type: "refresh", token, id }), { resolve, reject });
    });
  }

  /** Close for good: no reconnect. */
  close() {
    this._closing = true;
    clearTimeout(this._timer);
    this._clearOutbox();
    for (const sub of this.subscriptions.values()) {
      if (sub.pending) sub.pending.reject(new WsrtError("closed", "the client was closed", sub.channel));
      sub.pending = null;
    }
    if (this._ws) this._ws.close(1000);
    this._ws = null;
    if (this._es) this._es.close();
    this._es = null;
    clearTimeout(this._restreamTimer);
    this._setState("closed", { code: 1000, text: "closed by this client" });
  }

  // -- internals -------------------------------------------------------------

  _track(waiter) {
    const id = ++this._id;
    this._waiting.set(id, waiter);
    return id;
  }

  /** Send a control message when the pace allows; `waiter` answers its reply. */
  _queue(make, waiter) {
    this._outbox.push({ make, waiter });
    this._pump();
  }

  _queueSubscribe(sub) {
    if (this.transport === "sse") this._restream();
    else this._queue((id) => sub.request(id), { sub });
  }

  /** Send what the token bucket allows now; come back when the next token is there. */
  _pump() {
    if (this._pumpTimer !== null || !this._ws || this._ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    this._tokens = Math.min(this._rate, this._tokens + ((now - this._refilled) / 1000) * this._rate);
    this._refilled = now;
    while (this._outbox.length && now >= this._holdUntil && this._tokens >= 1) {
      const { make, waiter } = this._outbox.shift();
      if (waiter.sub && this.subscriptions.get(waiter.sub.channel) !== waiter.sub) continue; // unsubscribed meanwhile
      this._tokens -= 1;
      waiter.make = make; // sent again as it was if the server says rate_limited
      this._ws.send(JSON.stringify(make(this._track(waiter))));
    }
    if (!this._outbox.length) return;
    const wait = Math.max(this._holdUntil - now, ((1 - this._tokens) / this._rate) * 1000, 1);
    this._pumpTimer = setTimeout(() => {
      this._pumpTimer = null;
      this._pump();
    }, wait);
  }

  /** The server said `rate_limited`: slow down, and send the refused request again first. */
  _rateLimited(waiter) {
    this._rate = Math.max(1, this._rate / 2);
    this._tokens = 0;
    this._holdUntil = Date.now() + 1000; // the server's bucket holds a second's worth
    this._outbox.unshift({ make: waiter.make, waiter });
    clearTimeout(this._pumpTimer);
    this._pumpTimer = null;
    this._pump();
  }

  _clearOutbox() {
    this._outbox = [];
    clearTimeout(this._pumpTimer);
    this._pumpTimer = null;
  }

  _setState(state, detail) {
    this.status = state;
    if (this.options.onState) {
      this.options.onState(state, { ...detail, reconnects: this.reconnects, transport: this.transport });
    }
  }

  _notice(type, channel, text, frame) {
    if (this.options.onNotice) this.options.onNotice({ type, channel, text, frame });
  }

  _open() {
    if (this.transport === "sse") return this._openSse();
    const ws = new WebSocket(withQuery(this.url, "", { token: this.token }).href);
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._blocked = 0;
      this._opened(`connected to ${this.url}`);
      // A new connection: the server's bucket is full again, at its own rate.
      this._clearOutbox();
      this._rate = this.options.controlRate;
      this._tokens = this._rate;
      this._refilled = Date.now();
      this._holdUntil = 0;
      for (const sub of this.subscriptions.values()) this._queueSubscribe(sub);
    };
    ws.onmessage = (event) => this._receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this._ws !== ws) return; // closed by close(), or superseded
      this._ws = null;
      this._clearOutbox(); // what was not sent goes with the next connection's resubscribe
      this._dropWaiters();
      if (this._closing) return;
      if (opened) this._closed(event.code, event.reason);
      else this._refused();
    };
  }

  _opened(text) {
    this._attempt = 0;
    if (this._openedOnce) this.reconnects += 1;
    this._openedOnce = true;
    this._setState("open", { text });
  }

  /**
   * SSE: one GET /sse with every subscription (each resuming from where it
   * stopped, as a resubscribe does). The browser's own
   * reconnect is not used: a dropped stream is retried like a WebSocket, with
   * backoff, from the offsets this client delivered.
   */
  _openSse() {
    if (this._es) this._es.close();
    this._dropWaiters();
    const subscriptions = [...this.subscriptions.values()].map((sub) => sub.request(this._track({ sub })));
    // Each subscription says where it resumes (its `since`): the positions an event id
    // would carry, kept per channel as on a WebSocket.
    const params = { token: this.token, subscriptions: JSON.stringify(subscriptions) };
    const es = new EventSource(sseUrl(this.url, params));
    this._es = es;
    let opened = false;
    es.onopen = () => {
      if (this._es !== es) return;
      opened = true;
      if (this.status !== "open") this._opened(`connected to ${this.url} (Server-Sent Events)`);
    };
    const receive = (event) => {
      if (this._es === es) this._receive(JSON.parse(event.data));
    };
    for (const type of SSE_EVENTS) es.addEventListener(type, receive);
    es.addEventListener("close", (event) => {
      // The server ended the stream, saying why as a close frame would.
      if (this._es !== es) return;
      const { code, reason } = JSON.parse(event.data);
      this._ended(es, opened, code, reason);
    });
    es.addEventListener("error", (event) => {
      if (this._es !== es) return;
      if (event.data !== undefined) return receive(event); // the server's error envelope
      this._ended(es, opened, 1006, ""); // dropped, or never opened: the browser's own retry is not used
    });
  }

  /** An SSE stream ended (`code` and `reason` of its close event, else 1006). */
  _ended(es, opened, code, reason) {
    es.close();
    this._es = null;
    this._dropWaiters();
    if (this._closing) return;
    if (opened) this._closed(code, reason);
    else this._refused();
  }

  /** Requests of a connection that ended: subscriptions wait for the next one, the rest fail. */
  _dropWaiters() {
    for (const waiter of this._waiting.values()) {
      if (waiter.reject) waiter.reject(new WsrtError("closed", "the connection closed before the answer"));
      if (waiter.unsubscribed) waiter.unsubscribed();
    }
    this._waiting.clear();
  }

  /** The server closed an open connection: reconnect unless retrying cannot help. */
  _closed(code, reason) {
    const text = describeClose(code, reason);
    if (code === 1008 && reason === "token expired" && this.options.getToken) {
      this._retry({ code, reason, text }, true);
    } else if (final(code, reason)) {
      this._setState("closed", { code, reason, text });
    } else {
      this._retry({ code, reason, text }, false);
    }
  }

  /** The handshake failed: ask /ws/check why (a server that is down does not answer). */
  async _refused() {
    let status = 0;
    let body = "";
    try {
      const origin = typeof location === "undefined" ? "" : location.origin;
      const url = withQuery(this.url, "/check", { token: this.token, ...(origin ? { origin } : {}) });
      url.protocol = { "ws:": "http:", "wss:": "https:" }[url.protocol] || url.protocol;
      const answer = await fetch(url.href, { cache: "no-store" });
      status = answer.status;
      body = (await answer.text()).trim();
    } catch {
      // Not reachable: the server is down or restarting; retry.
    }
    if (this._closing) return;
    if (status === 200 && this.options.transport === "auto" && this.transport === "websocket") {
      // The server would take this WebSocket but it never arrived. Once may be a server
      // that came up between the two (a restart): try again at once. Twice in a row,
      // something between (a proxy that breaks upgrades) stops it: the same streams as SSE.
      this._blocked += 1;
      if (this._blocked < 2) {
        this._retry({ code: 1006, text: "the WebSocket did not open; trying again" }, false, 0);
        return;
      }
      this.transport = "sse";
      this._retry({ code: 1006, text: "a WebSocket cannot reach the server here; using Server-Sent Events" }, false, 0);
      return;
    }
    this._blocked = 0;
    // "unauthorized: expired", then for a refused token the plain words.
    const [reason, ...words] = body.split("\n");
    const detail = words.join(" ").trim();
    const text = `server refused the connection: ${status} ${reason}${detail ? ` — ${detail}` : ""}`;
    const refusal = { code: 1006, reason, ...(detail ? { detail } : {}), text };
    if (status === 401 && this.options.getToken) {
      this._retry(refusal, true);
    } else if (status === 401 || status === 403) {
      this._setState("closed", refusal);
    } else {
      const text = status ? refusal.text : `cannot connect to ${this.url}`;
      this._retry({ code: 1006, reason: body, text }, false);
    }
  }

  /** Wait a jittered, doubling delay (a new token first, if asked), then open again. */
  _retry(detail, newToken, now) {
    const { minDelay, maxDelay } = this.options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** this._attempt);
    const delay = now === undefined ? Math.round(ceiling / 2 + (Math.random() * ceiling) / 2) : now;
    this._attempt += 1;
    this._setState(this._openedOnce ? "reconnecting" : "connecting", { ...detail, delay });
    this._timer = setTimeout(async () => {
      if (this._closing) return;
      if (newToken) {
        try {
          this.token = await this.options.getToken();
        } catch (error) {
          this._setState("closed", { ...detail, text: `getToken failed: ${error}` });
          return;
        }
      }
      if (!this._closing) this._open();
    }, delay);
  }

  _receive(frame) {
    switch (frame.type) {
      case "message":
      case "delete": // a key removed on a state topic: in order with the messages
        return this._deliver(frame);
      case "snapshot_end": {
        // An empty snapshot still replaces what the map held before it.
        const sub = this.subscriptions.get(frame.channel);
        if (sub && sub.state && sub.fresh) sub.state.clear();
        if (sub) sub.fresh = false;
        if (sub && sub.state && frame.complete === false) {
          this._notice("incomplete", frame.channel, `${frame.channel}: the server's state store is incomplete (bounded or not loaded)`, frame);
        }
        return undefined;
      }
      case "revoked":
        return this._notice("moved", frame.channel, `${frame.channel}: partition ${frame.partition} is served by another replica from offset ${frame.next}`, frame);
      case "assigned":
        return this._notice("moved", frame.channel, `${frame.channel}: partition ${frame.partition} is served here from offset ${frame.from}`, frame);
      case "subscribed":
        return this._subscribed(frame);
      case "unsubscribed":
        return this._unsubscribed(frame);
      case "refreshed":
        return this._answer(frame.id, frame.exp);
      case "pong":
        return this._answer(frame.id, null);
      case "error":
        return this._error(frame);
      case "gap":
      case "conflated":
        return this._notice(frame.type, frame.channel, describeNotice(frame), frame);
      default:
        return this._notice("error", frame.channel, `unexpected frame: ${JSON.stringify(frame)}`, frame);
    }
  }

  _deliver(message) {
    const partition = String(message.partition);
    for (const sub of this.subscriptions.values()) {
      if (sub.topic !== message.channel || (sub.key !== null && sub.key !== message.key)) continue;
      if (sub.state && sub.fresh) {
        // The first frame after a resubscribe: a snapshot replaces the whole map,
        // history continues it.
        if (message.snapshot) sub.state.clear();
        sub.fresh = false;
      }
      // A snapshot value's offset says nothing of where the stream resumes. Else
      // resume asks from `next`, so nothing below it is expected: a re-delivery
      // (the shared fan-out mode after a rebalance) is not passed on twice.
      if (!message.snapshot) {
        if (message.offset < (sub.next[partition] ?? 0)) continue;
        sub.next[partition] = message.offset + 1;
      }
      sub.received += 1;
      try {
        sub.onMessage(message);
      } catch (error) {
        console.error(`wsrt: the handler of ${sub.channel} threw`, error);
      }
    }
  }

  _subscribed(frame) {
    const waiter = this._waiting.get(frame.id);
    this._waiting.delete(frame.id);
    const sub = waiter && waiter.sub;
    if (!sub || this.subscriptions.get(sub.channel) !== sub) return;
    sub.fresh = true;
    // The server's positions are where delivery starts, per partition: what it
    // asked for, later where history is gone, earlier where the topic was
    // recreated or its log truncated (its offsets start again below ours).
    for (const [p, offset] of Object.entries(frame.positions || {})) sub.next[p] = offset;
    if (frame.complete === false) {
      const where = Object.entries(frame.positions).map(([p, o]) => `${p}=${o}`).join(",");
      const text = `${sub.channel}: some history is no longer in Kafka or beyond the server's replay limit; it starts at ${where}`;
      this._notice("incomplete", sub.channel, text, frame);
    }
    if (sub.pending) {
      sub.pending.resolve(sub);
      sub.pending = null;
    }
  }

  _unsubscribed(frame) {
    if (frame.reason) {
      // The server ended it: a refreshed token no longer grants the channel.
      const sub = this.subscriptions.get(frame.channel);
      if (sub) this.subscriptions.delete(frame.channel);
      this._notice("ended", frame.channel, `${frame.channel}: unsubscribed by the server: ${frame.reason}`, frame);
      return;
    }
    const waiter = this._waiting.get(frame.id);
    this._waiting.delete(frame.id);
    if (waiter && waiter.unsubscribed) waiter.unsubscribed();
  }

  _answer(id, value) {
    const waiter = this._waiting.get(id);
    this._waiting.delete(id);
    if (waiter && waiter.resolve) waiter.resolve(value);
  }

  _error(frame) {
    const error = new WsrtError(frame.code, frame.message, frame.channel);
    const waiter = this._waiting.get(frame.id);
    this._waiting.delete(frame.id);
    if (waiter && frame.code === "rate_limited" && waiter.make) return this._rateLimited(waiter);
    if (waiter && waiter.sub) {
      const sub = waiter.sub;
      if (this.subscriptions.get(sub.channel) === sub) this.subscriptions.delete(sub.channel);
      if (sub.pending) sub.pending.reject(error);
      else this._notice("ended", sub.channel, `${sub.channel}: resubscribe refused: ${error.message}`, frame);
    } else if (waiter && waiter.reject) {
      waiter.reject(error);
    } else {
      this._notice("error", frame.channel, error.message, frame);
    }
  }

  _unsubscribe(sub) {
    if (this.subscriptions.get(sub.channel) !== sub) return Promise.resolve();
    this.subscriptions.delete(sub.channel);
    if (sub.pending) {
      sub.pending.reject(new WsrtError("unsubscribed", "unsubscribed before the server answered", sub.channel));
      sub.pending = null;
    }
    if (this.status !== "open") return Promise.resolve();
    if (this.transport === "sse") {
      this._restream(); // the next stream leaves it out
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this._queue((id) => ({ type: "unsubscribe", channel: sub.channel, id }), { unsubscribed: resolve });
    });
  }
}

/**
 * Connect to a wsrt server (`ws://host:8080/ws`). The client connects,
 * reconnects with jittered backoff after abnormal closes (not after a refusal
 * or an expired token without `getToken`), and resubscribes every channel
 * from the last offsets it delivered.
 * @param {string} url
 * @param {Options} options
 * @returns {Client}
 */
export function connect(url, options) {
  return new Client(url, options);
}
