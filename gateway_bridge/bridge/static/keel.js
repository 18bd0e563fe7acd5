/*!
 * keel.js — the browser client of Keel's WebSocket bridge (protocol "keel.v1").
 *
 * One file, no dependencies, no build step. Load it with a plain
 *   <script src="/keel.js"></script>          (defines the global `Keel`)
 * or require/import it where CommonJS is available (module.exports = Keel).
 *
 * ---------------------------------------------------------------------------------------
 * const client = new Keel.Client({
 *   url,                 // "ws://host:port/ws" (http(s):// works too; default: this page's
 *                        // host + "/ws")
 *   token,               // a client token from ChannelService.IssueClientToken, or
 *   getToken,            // async () => token; called for the first connection, shortly
 *                        // before the token expires (the fresh one is sent over the open
 *                        // socket: no reconnect), and whenever the bridge closes with
 *                        // 4002 (token expired) or 4001 (bad or revoked token)
 *   onEvent(ev),         // a channel event: {event, channelId, seq, eventId, data, replayed}
 *                        //   event: "message:created" | "message:updated" | "message:deleted"
 *                        //        | "reaction:added" | "reaction:removed" | "user:joined"
 *                        //        | "user:left" | "channel:updated" | "channel:deleted" ...
 *                        //   message:created events arrive once each, in seq order, per
 *                        //   channel — across reconnects too.
 *   onPresence(p),       // {channelId, users: [userId...], userId?, online?} — the channel's
 *                        //   online users, after each subscribe and each change
 *   onTyping(t),         // {channelId, userId} — someone else is typing
 *   onNotification(n, unreadCount),  // a new notification for this user (see client.inbox)
 *   onStateChange(s, d), // s: "connecting" | "open" | "reconnecting" | "closed";
 *                        //   d: {attempt, delay, code, reason, userId, offline}
 *   onError(err),        // a Keel.KeelError {code, message, frameId} not tied to a promise
 *                        //   (close codes, errors of queued work, id-less error frames,
 *                        //   a subscription the bridge ended: the tenant lost chat:read)
 *   // tuning (defaults shown):
 *   requestTimeout: 10000,  // ms an ack may take once a frame is written
 *   pingInterval: 25000,    // ms between application-level pings
 *   pongTimeout: 10000,     // ms without a pong before the connection counts as dead
 *   backoffBase: 250, backoffCap: 30000,  // reconnect delay: random(0, min(cap, base*2^n))
 *   stableAfter: 10000,     // ms a connection must last to reset the backoff
 *   typingInterval: 2000,   // typing() sends at most once per this many ms per channel
 *   presence: true,         // fetch the online users after each subscribe
 *   uploadRetryDelays: [0, 1000, 3000, 5000],  // ms before each retry of a broken upload
 *   WebSocket,              // a WebSocket implementation (default: the browser's)
 *   fetch,                  // a fetch implementation for uploads (default: the global one)
 *   filesUrl,               // the file service's base URL, if the bridge names none (the
 *                           //   welcome frame's files_url wins otherwise)
 * });
 *
 * client.connect()                      → Promise, resolved once the bridge welcomes us
 * client.close()                        stop for good (rejects queued work)
 * client.state                          the current state (see onStateChange)
 * client.userId                         the user the token names (after the welcome)
 * client.subscribe(channelId, {sinceSeq})
 *                                       → Promise of {channel_id, last_seq}. With sinceSeq
 *                                       the messages after it are replayed first (0 = the
 *                                       whole history); without it, only new events.
 * client.unsubscribe(channelId)         → Promise
 * client.lastSeq(channelId)             the last message seq delivered for the channel
 * client.send(channelId, content, {messageType, replyTo, clientMsgId, attachmentIds})
 *                                       → Promise of {message_id, channel_id, seq}; the
 *                                       promise has .clientMsgId. Made while offline, it is
 *                                       queued; cut off before its ack, it is resent after
 *                                       the reconnect with the same clientMsgId (the server
 *                                       stores it once). attachmentIds: file ids from
 *                                       upload(); content may then be "". A message's
 *                                       data.message.attachments lists its files:
 *                                       [{file_id, filename, content_type, size_bytes, url,
 *                                       thumbnail_url, thumbnail_width, thumbnail_height,
 *                                       url_expire_time}] — url and thumbnail_url are
 *                                       signed, expiring GET URLs (usable as <img src>);
 *                                       thumbnail_url is "" (or absent) for non-images.
 * client.edit(channelId, messageId, content)      → Promise of {message_id}
 * client.remove(channelId, messageId)             → Promise of {message_id}   (delete)
 * client.react(channelId, messageId, emoji="👍")   → Promise of {message_id, reactions}
 * client.unreact(channelId, messageId, emoji="👍") → Promise of {message_id, reactions}
 * client.typing(channelId)              → true if sent (throttled; needs a live subscription)
 * client.markRead(channelId, seq)       → Promise of {last_read_seq}
 * client.presence(channelId)            → Promise of [userId...]
 * client.pending()                      sends not yet acknowledged: [{clientMsgId,
 *                                       channelId, content}]
 *
 * Uploads (tus 1.0 to the file service the welcome frame names; docs/files.md):
 * client.upload(file, {onProgress, chunkSize, signal, resumeUrl, filename, contentType})
 *                                       → Promise of {fileId, uploadUrl, size, filename,
 *                                       contentType}: file is a Blob or File. Waits for the
 *                                       connection's welcome (for files_url), creates the
 *                                       upload with the connection's client token, then
 *                                       PATCHes chunkSize bytes (default 1 MiB) at a time;
 *                                       onProgress(sent, total) after each acknowledged
 *                                       chunk (and (0, total) first). A network error, a
 *                                       5xx, 429 or 409 is retried after
 *                                       uploadRetryDelays from the offset the server
 *                                       reports (HEAD); the delays start over after each
 *                                       chunk that gets through. signal (an AbortSignal)
 *                                       stops it: the promise rejects with code "aborted".
 *                                       Every rejection carries .uploadUrl once the upload
 *                                       exists: pass it back as resumeUrl (same file) and
 *                                       upload() goes on from the server's offset instead
 *                                       of starting over (an expired or unknown one starts
 *                                       over). Codes: "aborted", "unavailable" (retries
 *                                       spent), "bad_token" (401), "permission_denied",
 *                                       "not_found", "upload_expired" (410), "too_large"
 *                                       (413: file or quota), "invalid_argument" (400/415:
 *                                       e.g. a type the tenant does not allow),
 *                                       "checksum_mismatch", "rate_limited"; .status is the
 *                                       HTTP status. Then send(channelId, text,
 *                                       {attachmentIds: [result.fileId]}).
 *
 * Notifications (the tenant needs the scope send:basic; docs/protocol.md):
 * client.inbox.list({unreadOnly, pageSize, pageToken})
 *                                       → Promise of {notifications, next_page_token,
 *                                       unread_count}: the user's inbox, newest first
 * client.inbox.unreadCount              the user's unread count: null until known (a list,
 *                                       a markRead or a notification), then kept current;
 *                                       refreshed after each reconnect
 * client.inbox.markRead(ids)            → Promise of {marked_count, unread_count}
 * client.inbox.markAllRead()            → Promise of {marked_count, unread_count}
 * client.inbox.onNotification(cb)       cb(notification, unreadCount) for each new one, live
 *                                       (no subscription needed); returns an unsubscribe fn
 * client.inbox.onUnreadCount(cb)        cb(unreadCount) whenever it changes; returns an
 *                                       unsubscribe fn
 * client.push.subscribe(registration)   Web Push for this browser: subscribes the service
 *                                       worker's pushManager with the tenant's VAPID key
 *                                       (userVisibleOnly) and registers the subscription
 *                                       with Keel → Promise of the PushSubscription
 * client.push.unsubscribe(target)       target: the registration, a PushSubscription or its
 *                                       endpoint → Promise; Keel forgets it, the browser
 *                                       unsubscribes
 * client.push.publicKey()               → Promise of the tenant's VAPID public key
 *                                       (base64url)
 *
 * Promises reject with a Keel.KeelError: code is the error frame's code ("not_found",
 * "permission_denied", "invalid_argument", "rate_limited", ...), or "timeout",
 * "disconnected" (an edit/react/... cut off before its ack: it may or may not have been
 * applied), or "closed" (client.close()).
 *
 * Reconnecting: after any close except 4003 (origin refused) — and 4001/4002 when there is
 * no getToken — the client waits random(0, min(30 s, 250 ms·2^attempt)) (full jitter) and
 * reconnects; the attempt counter resets once a connection has lasted stableAfter ms. The
 * browser's "offline" event drops the socket at once and "online" reconnects at once. Each
 * reconnect resubscribes every channel with since_seq = the last seq delivered; a
 * message:created at or below it is dropped, and one past last+1 makes the client fetch
 * the gap (unsubscribe + subscribe since_seq=last) before going on.
 * ---------------------------------------------------------------------------------------
 */
(function (root, factory) {
  "use strict";
  var Keel = factory();
  if (typeof module === "object" && module && module.exports) module.exports = Keel;
  if (root) root.Keel = Keel;
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  const PROTOCOL = "keel.v1";

  const Close = Object.freeze({
    NORMAL: 1000,
    GOING_AWAY: 1001,
    ABNORMAL: 1006,
    MESSAGE_TOO_BIG: 1009,
    SERVER_RESTART: 1012,
    BAD_TOKEN: 4001,
    TOKEN_EXPIRED: 4002,
    ORIGIN_REFUSED: 4003,
    AUTH_TIMEOUT: 4004,
    TOO_MANY_CONNECTIONS: 4005,
    SLOW_CONSUMER: 4008,
    RATE_LIMITED: 4009,
  });

  class KeelError extends Error {
    constructor(code, message, frameId) {
      super(message || code);
      this.name = "KeelError";
      this.code = code;
      if (frameId !== undefined) this.frameId = frameId;
    }
  }

  /** Requests sent again after a reconnect when cut off before their answer (sends carry
   * their clientMsgId; the others change nothing twice). */
  const RESENDABLE = new Set([
    "send", "presence", "inbox", "mark_read", "push_config", "push_subscribe", "push_unsubscribe",
  ]);

  /** Errors worth retrying a subscription for (the others drop it). */
  const TRANSIENT = new Set(["unavailable", "rate_limited", "internal"]);

  function randomId() {
    const c = typeof crypto !== "undefined" ? crypto : null;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    let s = "";
    for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
    return s;
  }

  function defaultUrl() {
    if (typeof location === "undefined" || !location.host) return "";
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function normalizeUrl(url) {
    url = url || defaultUrl();
    if (!url) throw new KeelError("invalid_argument", "Keel.Client needs a url");
    url = url.replace(/^http(s?):\/\//, "ws$1://");
    if (/^wss?:\/\/[^/]+\/?$/.test(url)) url = url.replace(/\/?$/, "/ws");
    return url;
  }

  const noop = function () {};

  class Client {
    constructor(options) {
      const o = options || {};
      if (!o.token && typeof o.getToken !== "function") {
        throw new KeelError("invalid_argument", "Keel.Client needs a token or getToken");
      }
      this.url = normalizeUrl(o.url);
      this._token = o.token || null;
      this._getToken = typeof o.getToken === "function" ? o.getToken : null;
      this._on = {
        event: o.onEvent || noop,
        presence: o.onPresence || noop,
        typing: o.onTyping || noop,
        state: o.onStateChange || noop,
        error: o.onError || noop,
        notification: o.onNotification || noop,
      };
      this._opt = {
        requestTimeout: o.requestTimeout || 10000,
        pingInterval: o.pingInterval || 25000,
        pongTimeout: o.pongTimeout || 10000,
        backoffBase: o.backoffBase || 250,
        backoffCap: o.backoffCap || 30000,
        stableAfter: o.stableAfter || 10000,
        typingInterval: o.typingInterval === undefined ? 2000 : o.typingInterval,
        presence: o.presence !== false,
        uploadRetryDelays: o.uploadRetryDelays || [0, 1000, 3000, 5000],
      };
      this._fetch = o.fetch || (typeof fetch === "function" ? fetch.bind(globalThis) : null);
      this._filesUrl = o.filesUrl || null;
      this.filesUrl = this._filesUrl; // the welcome's files_url, once known
      this._WS = o.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
      if (!this._WS) throw new KeelError("invalid_argument", "no WebSocket implementation");

      this.state = "closed";
      this.userId = null;
      this.connectionId = null;
      this._ws = null;
      this._open = false; // welcomed on the current socket
      this._wanted = false; // connect() called and not close()d
      this._refreshToken = !this._token;
      this._attempt = 0;
      this._timers = { retry: null, stable: null, ping: null, pong: null, welcome: null, renew: null };
      this._nextId = 0;
      this._pending = new Map(); // frame id -> request in flight
      this._queue = []; // requests waiting for a connection (or a live subscription)
      this._channels = new Map(); // channel id -> channel state
      this._typingAt = new Map();
      this._connectWaiters = [];
      this._welcomed = false; // welcomed once already (the next welcome is a reconnect)
      this.inbox = new Inbox(this);
      this.push = new Push(this);

      this._onlineListener = () => {
        if (this._wanted && !this._ws) this._retryNow();
      };
      this._offlineListener = () => {
        if (this._ws) this._abandon(Close.ABNORMAL, "the browser went offline");
      };
    }

    // -- connection ---------------------------------------------------------------------

    connect() {
      if (!this._wanted) {
        this._wanted = true;
        if (typeof window !== "undefined" && window.addEventListener) {
          window.addEventListener("online", this._onlineListener);
          window.addEventListener("offline", this._offlineListener);
        }
        this._dial();
      }
      if (this._open) return Promise.resolve(this);
      return new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    }

    close() {
      this._wanted = false;
      if (typeof window !== "undefined" && window.removeEventListener) {
        window.removeEventListener("online", this._onlineListener);
        window.removeEventListener("offline", this._offlineListener);
      }
      this._clearTimers();
      const ws = this._ws;
      this._detach();
      if (ws) {
        try {
          ws.close(Close.NORMAL, "client closed");
        } catch (e) {
          /* already closing */
        }
      }
      const err = new KeelError("closed", "the client was closed");
      for (const req of this._pending.values()) this._settle(req, err);
      this._pending.clear();
      for (const req of this._queue.splice(0)) this._settle(req, err);
      for (const ch of this._channels.values()) this._rejectWaiters(ch, err);
      this._channels.clear();
      for (const w of this._connectWaiters.splice(0)) w.reject(err);
      this._setState("closed", {});
    }

    async _dial() {
      if (!this._wanted || this._ws) return;
      this._setState("connecting", { attempt: this._attempt });
      let token;
      try {
        if (this._getToken && (this._refreshToken || !this._token)) {
          this._token = await this._getToken();
          this._refreshToken = false;
        }
        token = this._token;
        if (!token) throw new KeelError("bad_token", "getToken returned no token");
      } catch (e) {
        this._error(e instanceof KeelError ? e : new KeelError("bad_token", String(e && e.message || e)));
        this._scheduleRetry({ code: 0, reason: "no token" });
        return;
      }
      if (!this._wanted || this._ws) return;
      let ws;
      try {
        ws = new this._WS(this.url, PROTOCOL);
      } catch (e) {
        this._error(new KeelError("unavailable", "cannot open " + this.url + ": " + e.message));
        this._scheduleRetry({ code: 0, reason: String(e.message) });
        return;
      }
      this._ws = ws;
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "auth", token: token }));
      };
      ws.onmessage = (msg) => this._onFrame(msg.data);
      ws.onerror = noop; // a close event always follows
      ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
      // No welcome in time (a hung handshake or proxy): start over.
      this._timers.welcome = setTimeout(
        () => this._abandon(Close.ABNORMAL, "no welcome from the bridge"),
        this._opt.requestTimeout + 5000
      );
    }

    _detach() {
      const ws = this._ws;
      if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      this._ws = null;
      this._open = false;
    }

    /** Give up on the current socket now (dead or offline) and handle it as closed. */
    _abandon(code, reason) {
      const ws = this._ws;
      if (!ws) return;
      this._detach();
      try {
        ws.close(Close.NORMAL, reason.slice(0, 100));
      } catch (e) {
        /* ignore */
      }
      this._closed(code, reason);
    }

    _onClose(ws, code, reason) {
      if (ws !== this._ws) return;
      this._detach();
      this._closed(code, reason || "");
    }

    _closed(code, reason) {
      this._clearTimers();
      // Requests in flight: sends go back to the queue (same clientMsgId, so a resend is
      // stored once); anything else has an unknown outcome and is rejected.
      const inflight = Array.from(this._pending.values()).sort((a, b) => a.order - b.order);
      this._pending.clear();
      const resend = [];
      for (const req of inflight) {
        clearTimeout(req.timer);
        if (RESENDABLE.has(req.kind)) resend.push(req);
        else if (req.kind === "subscribe" || req.kind === "unsubscribe" || req.kind === "auth")
          continue;
        else this._settle(req, new KeelError("disconnected", "the connection closed before the ack"));
      }
      this._queue = resend.concat(this._queue);
      for (const ch of this._channels.values()) {
        ch.live = false;
        ch.refilling = false;
      }
      const detail = { code: code, reason: reason };
      if (!this._wanted) return;
      const fatal =
        code === Close.ORIGIN_REFUSED ||
        ((code === Close.BAD_TOKEN || code === Close.TOKEN_EXPIRED) && !this._getToken);
      if (fatal) {
        const err = new KeelError("closed_" + code, reason || "the bridge refused the connection");
        this._error(err);
        const wanted = this._connectWaiters.splice(0);
        this.close();
        for (const w of wanted) w.reject(err);
        return;
      }
      if (code === Close.TOKEN_EXPIRED || code === Close.BAD_TOKEN) this._refreshToken = true;
      this._scheduleRetry(detail);
    }

    _scheduleRetry(detail) {
      if (!this._wanted) return;
      const ceiling = Math.min(this._opt.backoffCap, this._opt.backoffBase * Math.pow(2, this._attempt));
      const delay = Math.floor(Math.random() * ceiling);
      this._attempt = Math.min(this._attempt + 1, 30);
      const offline = typeof navigator !== "undefined" && navigator.onLine === false;
      this._setState("reconnecting", Object.assign({ attempt: this._attempt, delay, offline }, detail));
      clearTimeout(this._timers.retry);
      this._timers.retry = setTimeout(() => {
        this._timers.retry = null;
        this._dial();
      }, delay);
    }

    _retryNow() {
      if (this._timers.retry === null) return;
      clearTimeout(this._timers.retry);
      this._timers.retry = null;
      this._dial();
    }

    _clearTimers() {
      for (const name of Object.keys(this._timers)) {
        clearTimeout(this._timers[name]);
        this._timers[name] = null;
      }
    }

    _onWelcome(frame) {
      clearTimeout(this._timers.welcome);
      this._open = true;
      this.userId = frame.user_id;
      this.connectionId = frame.connection_id;
      this.filesUrl = frame.files_url || this._filesUrl;
      this._timers.stable = setTimeout(() => {
        this._attempt = 0;
      }, this._opt.stableAfter);
      this._schedulePing();
      this._scheduleRenewal(frame.expire_time);
      this._setState("open", { userId: frame.user_id });
      for (const w of this._connectWaiters.splice(0)) w.resolve(this);
      for (const ch of this._channels.values()) this._sendSubscribe(ch);
      if (this._welcomed) this.inbox._refresh(); // notifications may have come meanwhile
      this._welcomed = true;
      this._flush();
    }

    /** With getToken, send a fresh token over the socket before this one expires (an
     * `auth` frame), so the connection lives on instead of closing with 4002. */
    _scheduleRenewal(expireTime) {
      clearTimeout(this._timers.renew);
      const expires = Date.parse(expireTime || "");
      if (!this._getToken || !expires) return;
      // Renew a tenth of the lifetime left before the expiry, but at least 5 s before it
      // (half of what is left for a shorter token) and at most 30 s: a busy device or
      // network still has time for the auth frame's round trip.
      const left = expires - Date.now();
      const margin = Math.min(30000, Math.max(left / 10, Math.min(left / 2, 5000)));
      const delay = Math.max(0, left - margin);
      this._timers.renew = setTimeout(async () => {
        if (!this._open) return;
        let token;
        try {
          token = await this._getToken();
        } catch (e) {
          return; // the bridge closes with 4002 at expiry; the reconnect asks again
        }
        if (!this._open || !token) return;
        const req = this._track({ type: "auth", token: token }, "auth");
        req.onReply = (err, result) => {
          if (err) this._error(err);
          else {
            this._token = token;
            this._scheduleRenewal(result.expire_time);
          }
        };
      }, delay);
    }

    _schedulePing() {
      clearTimeout(this._timers.ping);
      this._timers.ping = setTimeout(() => {
        if (!this._open) return;
        const id = ++this._nextId;
        this._write({ type: "ping", id: id });
        this._timers.pong = setTimeout(
          () => this._abandon(Close.ABNORMAL, "no pong from the bridge"),
          this._opt.pongTimeout
        );
      }, this._opt.pingInterval);
    }

    _setState(state, detail) {
      const changed = state !== this.state;
      this.state = state;
      if (changed || state === "reconnecting") this._call("state", state, detail || {});
    }

    _error(err) {
      this._call("error", err);
    }

    _call(name, a, b) {
      try {
        this._on[name](a, b);
      } catch (e) {
        if (typeof console !== "undefined") console.error("keel.js: on" + name + " threw", e);
      }
    }

    _write(frame) {
      if (!this._ws || !this._open) return false;
      this._ws.send(JSON.stringify(frame));
      return true;
    }

    // -- frames from the bridge ----------------------------------------------------------

    _onFrame(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        this._error(new KeelError("bad_frame", "the bridge sent a frame that is not JSON"));
        return;
      }
      switch (frame.type) {
        case "welcome":
          return this._onWelcome(frame);
        case "event":
          return this._onEvent(frame);
        case "ack":
          return this._onReply(frame.id, null, frame.result || {});
        case "error":
          if (frame.channel_id && (frame.id === undefined || frame.id === null)) {
            // The bridge ended this subscription (e.g. the tenant lost chat:read).
            const ended = this._channels.get(frame.channel_id);
            const err = new KeelError(frame.code, frame.message);
            if (ended) this._dropChannel(ended, err);
            this._error(err);
            return;
          }
          if (frame.id === undefined || frame.id === null || !this._pending.has(frame.id)) {
            this._error(new KeelError(frame.code, frame.message, frame.id));
            return;
          }
          return this._onReply(frame.id, new KeelError(frame.code, frame.message, frame.id));
        case "presence":
          if (frame.id !== undefined && this._pending.has(frame.id)) {
            this._onReply(frame.id, null, frame.users || []);
          }
          return this._onPresenceList(frame.channel_id, frame.users || []);
        case "typing":
          return this._call("typing", { channelId: frame.channel_id, userId: frame.user_id });
        case "notification":
          return this.inbox._onNotification(frame);
        case "pong":
          clearTimeout(this._timers.pong);
          this._timers.pong = null;
          this._schedulePing();
          return;
        default:
          return; // a newer bridge's frame: ignore
      }
    }

    _onReply(id, err, result) {
      const req = this._pending.get(id);
      if (!req) return;
      this._pending.delete(id);
      clearTimeout(req.timer);
      if (req.onReply) req.onReply(err, result);
      else this._settle(req, err, result);
    }

    _settle(req, err, result) {
      if (req.settled) return;
      req.settled = true;
      if (err) {
        if (req.reject) req.reject(err);
        else this._error(err);
      } else if (req.resolve) {
        req.resolve(result);
      }
    }

    _onEvent(frame) {
      const name = frame.event;
      const channelId = frame.channel_id;
      if (name === "presence:online" || name === "presence:offline") {
        const ch = this._channels.get(channelId);
        if (!ch || !frame.data) return;
        const userId = frame.data.user_id;
        const online = name === "presence:online";
        if (online) ch.presence.add(userId);
        else ch.presence.delete(userId);
        this._call("presence", { channelId, users: Array.from(ch.presence).sort(), userId, online });
        return;
      }
      const ch = this._channels.get(channelId);
      if (!ch) return; // unsubscribed meanwhile
      const seq = frame.seq;
      if (name === "message:created") {
        if (ch.lastSeq !== null && seq <= ch.lastSeq) return; // already delivered
        if (ch.lastSeq !== null && seq > ch.lastSeq + 1) {
          // A gap: fetch it (the replay brings this event too) unless already doing so.
          if (!ch.refilling && this._open) this._refill(ch);
          return;
        }
        ch.lastSeq = seq;
      }
      this._call("event", {
        event: name,
        channelId: channelId,
        seq: seq,
        eventId: frame.event_id || "",
        data: frame.data || {},
        replayed: !frame.event_id,
      });
      const data = frame.data || {};
      if (name === "channel:deleted" || (name === "user:left" && data.user_id === this.userId)) {
        // The bridge ended this subscription; do not resubscribe to it.
        this._dropChannel(ch, new KeelError("not_subscribed", name));
      }
    }

    _onPresenceList(channelId, users) {
      const ch = this._channels.get(channelId);
      if (!ch) return;
      ch.presence = new Set(users);
      this._call("presence", { channelId, users: Array.from(ch.presence).sort() });
    }

    // -- subscriptions ------------------------------------------------------------------

    subscribe(channelId, options) {
      const sinceSeq = options && options.sinceSeq;
      let ch = this._channels.get(channelId);
      if (!ch) {
        ch = {
          id: channelId,
          lastSeq: typeof sinceSeq === "number" ? sinceSeq : null,
          live: false,
          refilling: false,
          waiters: [],
          presence: new Set(),
          retry: null,
        };
        this._channels.set(channelId, ch);
        if (this._open) this._sendSubscribe(ch);
      } else if (ch.live) {
        return Promise.resolve({ channel_id: channelId, last_seq: ch.lastSeq || 0 });
      }
      return new Promise((resolve, reject) => ch.waiters.push({ resolve, reject }));
    }

    unsubscribe(channelId) {
      const ch = this._channels.get(channelId);
      if (!ch) return Promise.resolve({ channel_id: channelId });
      this._dropChannel(ch, new KeelError("not_subscribed", "unsubscribed"));
      if (!this._open) return Promise.resolve({ channel_id: channelId });
      return new Promise((resolve) => {
        const req = this._track({ type: "unsubscribe", channel_id: channelId }, "unsubscribe");
        req.onReply = () => resolve({ channel_id: channelId }); // not_subscribed is fine too
      });
    }

    lastSeq(channelId) {
      const ch = this._channels.get(channelId);
      return ch && ch.lastSeq !== null ? ch.lastSeq : 0;
    }

    _dropChannel(ch, err) {
      this._channels.delete(ch.id);
      clearTimeout(ch.retry);
      this._rejectWaiters(ch, err);
      const gated = this._queue.filter((req) => req.channelId === ch.id && req.needsLive);
      this._queue = this._queue.filter((req) => !gated.includes(req));
      for (const req of gated) this._settle(req, err);
    }

    _rejectWaiters(ch, err) {
      for (const w of ch.waiters.splice(0)) w.reject(err);
    }

    _sendSubscribe(ch) {
      if (!this._open) return;
      const frame = { type: "subscribe", channel_id: ch.id };
      if (ch.lastSeq !== null) frame.since_seq = ch.lastSeq;
      const req = this._track(frame, "subscribe");
      req.onReply = (err, result) => {
        if (this._channels.get(ch.id) !== ch) return;
        if (err) return this._subscribeFailed(ch, err);
        ch.live = true;
        ch.refilling = false;
        const last = typeof result.last_seq === "number" ? result.last_seq : 0;
        ch.lastSeq = ch.lastSeq === null ? last : Math.max(ch.lastSeq, last);
        for (const w of ch.waiters.splice(0)) w.resolve({ channel_id: ch.id, last_seq: ch.lastSeq });
        if (this._opt.presence) {
          this.presence(ch.id).catch((e) => {
            if (e.code === "permission_denied") this._opt.presence = false;
          });
        }
        this._flush();
      };
    }

    _subscribeFailed(ch, err) {
      if (err.code === "timeout" || TRANSIENT.has(err.code)) {
        clearTimeout(ch.retry);
        ch.retry = setTimeout(() => {
          if (this._channels.get(ch.id) === ch && !ch.live) this._sendSubscribe(ch);
        }, this._opt.backoffBase * 4 + Math.random() * 1000);
        this._error(err);
        return;
      }
      this._dropChannel(ch, err);
      this._error(err);
    }

    /** Fetch a gap: the bridge only replays on a fresh subscription. */
    _refill(ch) {
      ch.refilling = true;
      ch.live = false;
      const req = this._track({ type: "unsubscribe", channel_id: ch.id }, "unsubscribe");
      req.onReply = noop;
      this._sendSubscribe(ch);
    }

    // -- requests -----------------------------------------------------------------------

    /** Write a frame with a fresh id now and wait for its reply (connection required). */
    _track(frame, kind) {
      const id = ++this._nextId;
      const req = { frame: Object.assign({}, frame, { id }), kind, order: id, settled: false };
      this._pending.set(id, req);
      req.timer = setTimeout(() => {
        if (this._pending.get(id) !== req) return;
        this._pending.delete(id);
        const err = new KeelError("timeout", kind + " got no answer in time", id);
        if (req.onReply) req.onReply(err);
        else this._settle(req, err);
      }, this._opt.requestTimeout);
      this._write(req.frame);
      return req;
    }

    /** A request that waits for the connection (and, if needsLive, the subscription). */
    _request(frame, kind, options) {
      const o = options || {};
      let req;
      const promise = new Promise((resolve, reject) => {
        req = {
          frame,
          kind,
          order: 0,
          settled: false,
          resolve,
          reject,
          channelId: frame.channel_id,
          needsLive: !!o.needsLive,
          timeout: o.timeout || this._opt.requestTimeout,
          meta: o.meta,
        };
      });
      this._queue.push(req);
      this._flush();
      return { promise, req };
    }

    _ready(req) {
      if (!this._open) return false;
      if (!req.needsLive) return true;
      const ch = this._channels.get(req.channelId);
      return !!(ch && ch.live);
    }

    _flush() {
      if (!this._open) return;
      const waiting = [];
      for (const req of this._queue) {
        if (req.settled) continue;
        if (!this._ready(req)) {
          waiting.push(req);
          continue;
        }
        const id = ++this._nextId;
        req.order = req.order || id;
        req.frame = Object.assign({}, req.frame, { id });
        this._pending.set(id, req);
        req.timer = setTimeout(() => {
          if (this._pending.get(id) !== req) return;
          this._pending.delete(id);
          this._settle(req, new KeelError("timeout", req.kind + " got no ack in time", id));
        }, req.timeout);
        this._write(req.frame);
      }
      this._queue = waiting;
    }

    send(channelId, content, options) {
      const o = options || {};
      const clientMsgId = o.clientMsgId || randomId();
      const frame = { type: "send", channel_id: channelId, content: String(content), client_msg_id: clientMsgId };
      if (o.messageType) frame.message_type = o.messageType;
      if (o.replyTo) frame.reply_to = o.replyTo;
      if (o.attachmentIds && o.attachmentIds.length) frame.attachment_ids = o.attachmentIds.map(String);
      const { promise } = this._request(frame, "send", {
        timeout: o.timeout,
        meta: { clientMsgId, channelId, content: frame.content },
      });
      promise.clientMsgId = clientMsgId;
      return promise;
    }

    pending() {
      const all = Array.from(this._pending.values()).concat(this._queue);
      return all
        .filter((req) => req.kind === "send" && !req.settled)
        .sort((a, b) => (a.order || Infinity) - (b.order || Infinity))
        .map((req) => Object.assign({}, req.meta));
    }

    edit(channelId, messageId, content) {
      return this._request(
        { type: "edit", channel_id: channelId, message_id: messageId, content: String(content) },
        "edit"
      ).promise;
    }

    remove(channelId, messageId) {
      return this._request({ type: "delete", channel_id: channelId, message_id: messageId }, "delete")
        .promise;
    }

    react(channelId, messageId, emoji) {
      return this._request(
        { type: "react", channel_id: channelId, message_id: messageId, emoji: emoji || "👍" },
        "react"
      ).promise;
    }

    unreact(channelId, messageId, emoji) {
      return this._request(
        { type: "unreact", channel_id: channelId, message_id: messageId, emoji: emoji || "👍" },
        "unreact"
      ).promise;
    }

    markRead(channelId, seq) {
      return this._request({ type: "read", channel_id: channelId, seq: seq }, "read").promise;
    }

    presence(channelId) {
      return this._request({ type: "presence", channel_id: channelId }, "presence", { needsLive: true })
        .promise;
    }

    typing(channelId) {
      const ch = this._channels.get(channelId);
      if (!this._open || !ch || !ch.live) return false;
      const now = Date.now();
      const last = this._typingAt.get(channelId) || 0;
      if (now - last < this._opt.typingInterval) return false;
      this._typingAt.set(channelId, now);
      return this._write({ type: "typing", channel_id: channelId });
    }

    // -- uploads ------------------------------------------------------------------------

    /** A Blob or File to the file service over tus 1.0 (see the header). */
    async upload(file, options) {
      const o = options || {};
      if (!file || typeof file.slice !== "function" || typeof file.size !== "number") {
        throw new KeelError("invalid_argument", "upload() needs a Blob or File");
      }
      if (!this._fetch) throw new KeelError("invalid_argument", "no fetch implementation for uploads");
      if (!this._open) {
        // files_url and a token the bridge accepted come with the welcome.
        if (!this._wanted) throw new KeelError("closed", "call connect() before upload()");
        await new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
      }
      if (!this.filesUrl) {
        throw new KeelError("not_configured", "the bridge names no file service (files_url)");
      }
      const refresh = this._getToken
        ? async () => {
            this._token = await this._getToken();
            return this._token;
          }
        : null;
      return new TusUpload(file, o, {
        endpoint: this.filesUrl.replace(/\/+$/, "") + "/files/tus",
        fetch: this._fetch,
        token: () => this._token,
        refreshToken: refresh,
        retryDelays: this._opt.uploadRetryDelays,
      }).run();
    }
  }

  // -- uploads (tus 1.0) -------------------------------------------------------------------

  const TUS_VERSION = "1.0.0";
  const DEFAULT_CHUNK_SIZE = 1024 * 1024;

  /** KeelError codes of the HTTP statuses a tus server answers with. */
  const UPLOAD_ERROR_CODES = {
    400: "invalid_argument",
    401: "bad_token",
    403: "permission_denied",
    404: "not_found",
    409: "failed_precondition",
    410: "upload_expired",
    412: "failed_precondition",
    413: "too_large",
    415: "invalid_argument",
    429: "rate_limited",
    460: "checksum_mismatch",
  };

  /** Worth another try from the server's offset: the server or the way to it failed, or
   * the offset moved under us (409). */
  function retryableStatus(status) {
    return status === 0 || status === 409 || status === 423 || status === 429 || status >= 500;
  }

  function utf8Base64(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary);
  }

  function abortError() {
    return new KeelError("aborted", "the upload was aborted");
  }

  /** Resolve after ms, or reject with "aborted" as soon as signal fires. */
  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) return reject(abortError());
      const onAbort = () => {
        clearTimeout(timer);
        reject(abortError());
      };
      const timer = setTimeout(() => {
        if (signal) signal.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      if (signal) signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** One client.upload(): creation (or a resumed URL), then PATCHes from the server's
   * offset until every byte is acknowledged. */
  class TusUpload {
    constructor(file, options, context) {
      this.file = file;
      this.size = file.size;
      this.filename = options.filename || file.name || "file";
      this.contentType = options.contentType || file.type || "application/octet-stream";
      this.chunkSize = Math.max(1, options.chunkSize || DEFAULT_CHUNK_SIZE);
      this.signal = options.signal || null;
      this.resumeUrl = options.resumeUrl || null;
      this.onProgress = options.onProgress || noop;
      this.ctx = context;
      this.url = null;
    }

    async run() {
      try {
        let offset = this.resumeUrl ? await this._resumeOffset(this.resumeUrl) : null;
        if (offset === null) {
          this.url = await this._create();
          offset = 0;
        }
        this._progress(offset);
        while (offset < this.size) {
          offset = await this._sendChunk(offset);
          this._progress(offset);
        }
      } catch (err) {
        const e = err instanceof KeelError ? err : new KeelError("internal", String((err && err.message) || err));
        if (this.url) e.uploadUrl = this.url;
        throw e;
      }
      const segments = new URL(this.url).pathname.split("/").filter(Boolean);
      return {
        fileId: decodeURIComponent(segments[segments.length - 1]),
        uploadUrl: this.url,
        size: this.size,
        filename: this.filename,
        contentType: this.contentType,
      };
    }

    /** The server's offset of an earlier upload of this file, or null to start over (it
     * is gone, expired, someone else's, or of another size). */
    async _resumeOffset(url) {
      let offset;
      try {
        offset = await this._retrying(() => this._head(url));
      } catch (err) {
        if (err.status === 403 || err.status === 404 || err.status === 410) return null;
        throw err;
      }
      if (offset === null) return null;
      this.url = url;
      return offset;
    }

    async _create() {
      const metadata =
        "filename " + utf8Base64(this.filename) + ",filetype " + utf8Base64(this.contentType);
      const response = await this._retrying(() =>
        this._call("POST", this.ctx.endpoint, { "Upload-Length": String(this.size), "Upload-Metadata": metadata })
      );
      if (response.status !== 201) throw await uploadError(response);
      const location = response.headers.get("Location");
      if (!location) throw new KeelError("internal", "the file service sent no Location");
      return new URL(location, this.ctx.endpoint).href;
    }

    /** Upload-Offset of url; null if it belongs to a file of another size. */
    async _head(url) {
      const response = await this._call("HEAD", url, {});
      if (response.status !== 200 && response.status !== 204) throw await uploadError(response);
      const length = response.headers.get("Upload-Length");
      if (length !== null && Number(length) !== this.size) return null;
      const offset = Number(response.headers.get("Upload-Offset"));
      if (!Number.isSafeInteger(offset) || offset < 0) {
        throw new KeelError("internal", "the file service sent no Upload-Offset");
      }
      return offset;
    }

    /** PATCH the chunk at offset; on a retryable failure, ask the server where it stands
     * (HEAD) and go on from there. Resolves with the new offset. */
    async _sendChunk(offset) {
      let known = offset;
      return this._retrying(async () => {
        if (known === null) known = await this._head(this.url);
        if (known === null) throw new KeelError("failed_precondition", "the upload changed size");
        const start = known;
        known = null; // if this attempt fails, the next one asks the server first
        if (start >= this.size) return start;
        const end = Math.min(start + this.chunkSize, this.size);
        const response = await this._call(
          "PATCH",
          this.url,
          { "Upload-Offset": String(start), "Content-Type": "application/offset+octet-stream" },
          this.file.slice(start, end)
        );
        if (response.status !== 204 && response.status !== 200) throw await uploadError(response);
        const next = Number(response.headers.get("Upload-Offset"));
        if (!Number.isSafeInteger(next) || next <= start || next > this.size) {
          const err = new KeelError("unavailable", "the file service did not take the chunk");
          err.status = 0;
          throw err;
        }
        return next;
      });
    }

    /** attempt() again after each retry delay while it fails with a retryable error. */
    async _retrying(attempt) {
      const delays = this.ctx.retryDelays;
      for (let tries = 0; ; tries++) {
        try {
          return await attempt();
        } catch (err) {
          if (!(err instanceof KeelError) || !retryableStatus(err.status) || tries >= delays.length) {
            throw err;
          }
          await sleep(delays[tries], this.signal);
        }
      }
    }

    /** One tus request with the client token; a 401 fetches a fresh token (with getToken)
     * and tries once more. A network failure is a KeelError "unavailable" with status 0. */
    async _call(method, url, headers, body) {
      let response = await this._fetchOnce(method, url, headers, body, this.ctx.token());
      if (response.status === 401 && this.ctx.refreshToken) {
        const token = await this.ctx.refreshToken();
        response = await this._fetchOnce(method, url, headers, body, token);
      }
      return response;
    }

    async _fetchOnce(method, url, headers, body, token) {
      if (this.signal && this.signal.aborted) throw abortError();
      const all = Object.assign({ "Tus-Resumable": TUS_VERSION, Authorization: "Bearer " + token }, headers);
      const init = { method, headers: all, cache: "no-store" };
      if (body !== undefined) init.body = body;
      if (this.signal) init.signal = this.signal;
      try {
        return await this.ctx.fetch(url, init);
      } catch (e) {
        if (this.signal && this.signal.aborted) throw abortError();
        const err = new KeelError("unavailable", "cannot reach the file service: " + ((e && e.message) || e));
        err.status = 0;
        throw err;
      }
    }

    _progress(sent) {
      try {
        this.onProgress(sent, this.size);
      } catch (e) {
        if (typeof console !== "undefined") console.error("keel.js: onProgress threw", e);
      }
    }
  }

  async function uploadError(response) {
    let text = "";
    try {
      text = (await response.text()).slice(0, 500);
    } catch (e) {
      /* no body */
    }
    const status = response.status;
    const code = UPLOAD_ERROR_CODES[status] || (status >= 500 ? "unavailable" : "internal");
    const err = new KeelError(code, text || "the file service answered " + status);
    err.status = status;
    return err;
  }

  // -- notifications ---------------------------------------------------------------------

  /** The user's notification inbox: client.inbox (see the header). */
  class Inbox {
    constructor(client) {
      this._client = client;
      this.unreadCount = null;
      this._notificationListeners = new Set();
      this._countListeners = new Set();
    }

    list(options) {
      const o = options || {};
      const frame = { type: "inbox" };
      if (o.unreadOnly) frame.unread_only = true;
      if (o.pageSize) frame.page_size = o.pageSize;
      if (o.pageToken) frame.page_token = o.pageToken;
      return this._ask(frame);
    }

    markRead(ids) {
      const list = Array.isArray(ids) ? ids.map(String) : [String(ids)];
      return this._ask({ type: "mark_read", ids: list });
    }

    markAllRead() {
      return this._ask({ type: "mark_read", all: true });
    }

    onNotification(cb) {
      this._notificationListeners.add(cb);
      return () => this._notificationListeners.delete(cb);
    }

    onUnreadCount(cb) {
      this._countListeners.add(cb);
      return () => this._countListeners.delete(cb);
    }

    _ask(frame) {
      return this._client._request(frame, frame.type).promise.then((result) => {
        this._setCount(result.unread_count);
        return result;
      });
    }

    /** After a reconnect: the count may have changed while the socket was down. */
    _refresh() {
      if (this.unreadCount === null) return;
      const frame = { type: "inbox", unread_only: true, page_size: 1 };
      this._ask(frame).catch((e) => this._client._error(e));
    }

    _onNotification(frame) {
      this._setCount(frame.unread_count);
      const n = frame.notification || {};
      this._client._call("notification", n, this.unreadCount);
      for (const cb of Array.from(this._notificationListeners)) this._safely(cb, n, this.unreadCount);
    }

    _setCount(count) {
      if (typeof count !== "number" || count === this.unreadCount) return;
      this.unreadCount = count;
      for (const cb of Array.from(this._countListeners)) this._safely(cb, count);
    }

    _safely(cb, a, b) {
      try {
        cb(a, b);
      } catch (e) {
        if (typeof console !== "undefined") console.error("keel.js: an inbox listener threw", e);
      }
    }
  }

  function base64UrlBytes(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function sameBytes(buffer, bytes) {
    if (!buffer) return false;
    const a = new Uint8Array(buffer);
    return a.length === bytes.length && a.every((v, i) => v === bytes[i]);
  }

  /** Web Push for this browser: client.push (see the header). */
  class Push {
    constructor(client) {
      this._client = client;
    }

    publicKey() {
      return this._client._request({ type: "push_config" }, "push_config").promise.then(
        (result) => result.vapid_public_key || ""
      );
    }

    async subscribe(registration) {
      if (!registration || !registration.pushManager) {
        throw new KeelError("invalid_argument", "push.subscribe needs a ServiceWorkerRegistration");
      }
      const key = await this.publicKey();
      if (!key) throw new KeelError("failed_precondition", "the tenant has no Web Push key");
      const applicationServerKey = base64UrlBytes(key);
      const manager = registration.pushManager;
      let subscription = await manager.getSubscription();
      const options = subscription && subscription.options;
      if (subscription && !sameBytes(options && options.applicationServerKey, applicationServerKey)) {
        await subscription.unsubscribe(); // made with another key: push services refuse it
        subscription = null;
      }
      if (!subscription) {
        subscription = await manager.subscribe({ userVisibleOnly: true, applicationServerKey });
      }
      const json = subscription.toJSON();
      const keys = json.keys || {};
      const registered = { endpoint: json.endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } };
      await this._client._request({ type: "push_subscribe", subscription: registered }, "push_subscribe")
        .promise;
      return subscription;
    }

    async unsubscribe(target) {
      let subscription = null;
      if (target && target.pushManager) subscription = await target.pushManager.getSubscription();
      else if (target && typeof target === "object") subscription = target;
      const endpoint = typeof target === "string" ? target : subscription && subscription.endpoint;
      if (!endpoint) return { endpoint: null }; // nothing subscribed
      const frame = { type: "push_unsubscribe", endpoint };
      const result = await this._client._request(frame, "push_unsubscribe").promise;
      if (subscription) await subscription.unsubscribe();
      return result;
    }
  }

  return { Client, KeelError, Close, PROTOCOL, version: "1.2.0" };
});
