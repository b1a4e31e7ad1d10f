// gchat web app: plain modern JavaScript, no build step, no dependencies.
//
// It speaks the protocol of docs/protocol.md over the node's WebSocket (/ws),
// one JSON object per text message, exactly as a TCP client does. Features
// whose server side may not be there yet are detected from replies:
//   - the conversation log (section D): a login with "sync": true is answered
//     with "convs" when the server has it; then history pages (16), receipts
//     (12 received, 13 read, 14 read receipts) are used. Without it, the app
//     keeps each conversation on this device (localStorage) and gets what was
//     sent while away as "offlinemsg", as a classic client.
//   - the resume token (section C): a reload logs in again without the password.
//   - friends, presence and groups (section F): a login with "notices": true
//     is answered with "requests" when the server has them; then friends are
//     asked by name and answer, presence and group changes are pushed, and
//     groups are searched, left, handed over and deleted. Without it, a
//     friend is added by id the classic way (msgid 6).
"use strict";

(() => {
  const MSG = {
    LOGIN: 1, LOGIN_ACK: 2, REG: 3, REG_ACK: 4, ONE_CHAT: 5, ADD_FRIEND: 6, CREATE_GROUP: 7,
    ADD_GROUP: 8, GROUP_CHAT: 9, LOGOUT: 10, ACK: 11, RECEIVED: 12, READ: 13, READ_RECEIPT: 14, HISTORY: 16,
    FRIEND_REQUEST: 20, FRIEND_ANSWER: 21, FRIEND_REMOVE: 22, BLOCK: 23, USER_SEARCH: 24, GROUP_LEAVE: 25,
    GROUP_REMOVE: 26, GROUP_HANDOVER: 27, GROUP_DELETE: 28, GROUP_MEMBERS: 29, GROUP_SEARCH: 30, NOTICE: 31,
    PRESENCE: 32,
  };
  const ERR = { AUTH: 1, ONLINE: 2, BAD: 3, FORBIDDEN: 6, NOT_FOUND: 7, CONFLICT: 8, RATE: 10, UNAVAILABLE: 11 };
  const KEEP_PER_CONV = 300;         // messages kept on this device per conversation
  const HISTORY_PAGE = 50;
  const REQUEST_TIMEOUT = 15000;
  const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000, 30000];

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---------------------------------------------------------------- storage
  const storage = {
    get(key, fallback) {
      try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); }
      catch { return fallback; }
    },
    set(key, value) {
      try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* full or disabled: only this device's copy suffers */ }
    },
    remove(key) { try { localStorage.removeItem(key); } catch { /* ignore */ } },
  };

  // ------------------------------------------------------------ the link
  // One WebSocket, reconnected with back-off; requests carry "seq" and their
  // replies are matched by it (docs/protocol.md part B).
  class Link {
    constructor(url, { onOpen, onPush, onState, onDown }) {
      this.url = url;
      this.onDown = onDown;
      this.onOpen = onOpen;
      this.onPush = onPush;
      this.onState = onState;
      this.ws = null;
      this.seq = 0;
      this.pending = new Map();
      this.attempt = 0;
      this.timer = null;
      this.retryAt = 0;
      this.stopped = false;
      this.ready = false;
    }

    connect() {
      clearTimeout(this.timer);
      this.timer = null;
      this.stopped = false;
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
      this.onState("connecting", this.attempt ? "Reconnecting…" : "Connecting…");
      let ws;
      try { ws = new WebSocket(this.url); } catch (e) { this.scheduleRetry(); return; }
      this.ws = ws;
      ws.onopen = () => { this.ready = true; this.onOpen(); };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => this.closed(ws, ev);
      ws.onerror = () => { /* onclose follows */ };
    }

    receive(text) {
      let msg;
      try { msg = JSON.parse(text); } catch { return; }
      if (typeof msg !== "object" || msg === null) return;
      if (msg.seq !== undefined && this.pending.has(msg.seq) &&
          (msg.msgid === MSG.ACK || msg.msgid === MSG.LOGIN_ACK || msg.msgid === MSG.REG_ACK)) {
        const p = this.pending.get(msg.seq);
        this.pending.delete(msg.seq);
        clearTimeout(p.timer);
        p.resolve(msg);
        return;
      }
      this.onPush(msg);
    }

    request(obj) {
      return new Promise((resolve, reject) => {
        if (!this.ready) { reject(new Error("not connected")); return; }
        const seq = ++this.seq;
        const timer = setTimeout(() => {
          this.pending.delete(seq);
          reject(new Error("no answer from the server"));
        }, REQUEST_TIMEOUT);
        this.pending.set(seq, { resolve, reject, timer });
        this.ws.send(JSON.stringify({ ...obj, seq }));
      });
    }

    // fire and forget (receipts): no seq, so no ACK unless it fails
    post(obj) { if (this.ready) this.ws.send(JSON.stringify(obj)); }

    closed(ws, ev) {
      if (ws !== this.ws) return;
      this.ready = false;
      this.ws = null;
      for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error("connection lost")); }
      this.pending.clear();
      this.onDown();
      if (this.stopped) return;
      if (ev.code === 1008 && /another node/.test(ev.reason || "")) {
        // this account signed in somewhere else: do not fight over it
        this.stopped = true;
        this.onState("offline", "Signed in somewhere else.", true);
        return;
      }
      this.scheduleRetry();
    }

    scheduleRetry() {
      const base = BACKOFF[Math.min(this.attempt, BACKOFF.length - 1)];
      const delay = Math.round(base * (0.7 + Math.random() * 0.6));  // jitter: a restarted node is not stormed
      this.attempt += 1;
      this.retryAt = Date.now() + delay;
      this.timer = setTimeout(() => this.connect(), delay);
      const tick = () => {
        if (!this.timer) return;
        const s = Math.max(1, Math.ceil((this.retryAt - Date.now()) / 1000));
        this.onState("offline", navigator.onLine === false ? "No network. Waiting…" : `Disconnected. Retrying in ${s} s…`, true);
        if (Date.now() < this.retryAt) setTimeout(tick, 1000);
      };
      tick();
    }

    connected() { this.attempt = 0; }

    close() {
      this.stopped = true;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.ws) this.ws.close(1000);
    }
  }

  // ------------------------------------------------------------ state
  const state = {
    me: null,              // {id, name}
    sync: false,           // the server has the conversation log (section D)
    social: false,         // the server has friend requests, presence and group management (section F)
    requests: { in: new Map(), out: new Map() },  // id -> {id, name, note}
    blocked: new Set(),    // ids this user blocked
    friends: new Map(),    // id -> {id, name, state}
    groups: new Map(),     // id -> {id, name, desc, members: Map id -> {id, name, state, role}}
    convs: new Map(),      // "u:ID" / "g:ID" -> conversation
    byServerConv: new Map(), // server conv id -> key
    active: null,
    filter: "",
    loggedIn: false,
    notify: storage.get("gchat.notify", false),
    pendingGroupNames: new Map(),
  };
  let localId = 0;

  function conv(key) {
    let c = state.convs.get(key);
    if (!c) {
      c = { key, kind: key[0] === "g" ? "group" : "user", peer: Number(key.slice(2)), messages: [], unread: 0,
            conv: null, last: 0, read: 0, peerRead: 0, historyDone: false, loadingHistory: false, name: "" };
      state.convs.set(key, c);
    }
    return c;
  }

  function convName(c) {
    if (c.kind === "group") {
      const g = state.groups.get(c.peer);
      return g ? g.name : (c.name || `Group ${c.peer}`);
    }
    const f = state.friends.get(c.peer);
    return f ? f.name : (c.name || `User ${c.peer}`);
  }

  function historyKey() { return `gchat.history.${state.me.id}`; }

  // this device's copy of the conversations: written a moment after a change,
  // and at once when the page goes away
  let saveTimer = null;
  function save() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, 250);
  }

  function saveNow() {
    clearTimeout(saveTimer);
    saveTimer = null;
    {
      if (!state.me) return;
      const out = {};
      for (const [key, c] of state.convs) {
        out[key] = {
          name: convName(c), unread: c.unread, conv: c.conv, read: c.read,
          messages: c.messages.filter((m) => m.status !== "queued").slice(-KEEP_PER_CONV).map((m) => ({
            kind: m.kind, from: m.from, name: m.name, text: m.text, at: m.at, mine: m.mine,
            status: m.status === "pending" ? "failed" : m.status, cseq: m.cseq,
          })),
        };
      }
      storage.set(historyKey(), out);
    }
  }

  function restore() {
    const saved = storage.get(historyKey(), {});
    for (const [key, s] of Object.entries(saved)) {
      const c = conv(key);
      c.name = s.name || "";
      c.unread = s.unread || 0;
      c.conv = s.conv ?? null;
      c.read = s.read || 0;
      c.messages = (s.messages || []).map((m) => ({ ...m, id: ++localId }));
      if (c.conv !== null) state.byServerConv.set(c.conv, key);
    }
  }

  // ------------------------------------------------------------ protocol glue
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const link = new Link(wsUrl, { onOpen: opened, onPush: pushed, onState: showConnection,
                                 onDown: () => { state.loggedIn = false; } });
  let loginRetry = 0;

  function session() { return storage.get("gchat.session", null); }

  function opened() {
    const s = session();
    if (s && s.token) {
      login({ id: s.id, token: s.token }, true);
    } else {
      showConnection("online", "Connected");
      showAuth();
    }
  }

  async function login(credentials, automatic) {
    let reply;
    try {
      reply = await link.request({ msgid: MSG.LOGIN, ...credentials, resume: true, sync: true, notices: true });
    } catch (e) {
      if (!automatic) authError(e.message);
      return false;
    }
    if (reply.errno === ERR.ONLINE && automatic && loginRetry < 8) {
      // a reload: the old page's connection may still be closing on the server
      loginRetry += 1;
      showConnection("connecting", "Signing in…");
      setTimeout(() => { if (link.ready) login(credentials, true); }, 400 * loginRetry);
      return false;
    }
    if (reply.errno !== 0) {
      if (automatic) {
        const s = session();
        if (s) storage.set("gchat.session", { id: s.id, name: s.name });  // the token no longer works
        showConnection("online", "Connected");
        showAuth(reply.errno === ERR.ONLINE ? "You are signed in somewhere else." : "Please sign in again.");
        $("#login-id").value = s ? s.id : "";
      } else {
        authError(reply.errmsg || "Could not sign in.");
      }
      return false;
    }
    loginRetry = 0;
    link.connected();
    storage.set("gchat.session", { id: reply.id, name: reply.name, token: reply.token });
    enterChat(reply);
    return true;
  }

  function parseList(list) {
    return (list || []).map((item) => (typeof item === "string" ? JSON.parse(item) : item));
  }

  function enterChat(reply) {
    const first = !state.me || state.me.id !== reply.id;
    state.me = { id: reply.id, name: reply.name };
    state.sync = Array.isArray(reply.convs);
    state.social = !!reply.requests;
    state.requests.in.clear();
    state.requests.out.clear();
    if (reply.requests) {
      for (const r of reply.requests.in || []) state.requests.in.set(r.id, r);
      for (const r of reply.requests.out || []) state.requests.out.set(r.id, r);
    }
    state.blocked = new Set(reply.blocked || []);
    if (first) {
      state.convs.clear();
      state.byServerConv.clear();
      state.active = null;
      restore();
    }
    state.friends.clear();
    for (const f of parseList(reply.friends)) state.friends.set(f.id, { id: f.id, name: f.name, state: f.state });
    state.groups.clear();
    for (const g of parseList(reply.groups)) {
      const members = new Map();
      for (const u of parseList(g.users)) members.set(u.id, { id: u.id, name: u.name, state: u.state, role: u.role });
      state.groups.set(g.id, { id: g.id, name: g.groupname, desc: g.groupdesc || "", members });
    }
    for (const f of state.friends.values()) conv(`u:${f.id}`);
    for (const g of state.groups.values()) conv(`g:${g.id}`);
    // what was sent while away
    for (const text of reply.offlinemsg || []) incoming(typeof text === "string" ? JSON.parse(text) : text, true);
    if (state.sync) {
      for (const cv of reply.convs) {
        const key = convKey(cv);
        if (!key) continue;
        if (forgotten().includes(cv.conv)) {
          // a conversation this user removed from the list (a group it
          // deleted): received, so the server stops listing it, not shown
          if (cv.last) link.post({ msgid: MSG.RECEIVED, conv: cv.conv, cseq: cv.last });
          continue;
        }
        const c = conv(key);
        c.conv = cv.conv;
        c.delivered = cv.delivered || 0;
        if (cv.kind === "group" && typeof cv.groupid !== "number") c.deleted = true;
        c.last = cv.last;
        c.read = cv.read;
        c.peerRead = cv.peer_read || 0;
        state.byServerConv.set(cv.conv, key);
        for (const text of cv.msgs || []) incoming(JSON.parse(text), true);
        c.unread = cv.unread || 0;
        markPeerRead(c);
        if (cv.msgs && cv.msgs.length) received(c);
        // more than sync_max waited: the rest, oldest first, through history
        if (cv.more) catchUp(c);
      }
    }
    state.loggedIn = true;
    showConnection("online", state.sync ? "Online" : "Online");
    showChat();
    // what was written while disconnected goes out now, in order
    for (const c of state.convs.values()) {
      for (const m of c.messages) if (m.status === "queued") transmit(c, m);
    }
    renderAll();
    if (state.active) openConv(state.active, { focus: false });
    save();
  }

  // the conversation of a sync login's entry; a deleted group's conversation
  // comes with "groupid": null until all of it was received: known here by its
  // conv, or by the group_delete notice among its messages
  function convKey(cv) {
    if (cv.kind !== "group") return `u:${cv.with}`;
    if (typeof cv.groupid === "number") return `g:${cv.groupid}`;
    const known = state.byServerConv.get(cv.conv);
    if (known) return known;
    for (const text of cv.msgs || []) {
      try {
        const m = JSON.parse(text);
        if (typeof m.groupid === "number") return `g:${m.groupid}`;
      } catch { /* not ours to read */ }
    }
    return null;
  }

  function timeOf(m) {
    if (typeof m.ts === "number") return m.ts;
    if (typeof m.time === "string") {
      const t = Date.parse(m.time.replace(" ", "T"));
      if (!Number.isNaN(t)) return t;
    }
    return Date.now();
  }

  // a chat message from someone else: live, stored while away, or from sync
  function incoming(m, quiet) {
    if (m.msgid !== MSG.ONE_CHAT && m.msgid !== MSG.GROUP_CHAT) { logged(m); return; }
    const key = m.msgid === MSG.GROUP_CHAT ? `g:${m.groupid}` : `u:${m.id}`;
    const c = conv(key);
    if (m.msgid === MSG.ONE_CHAT && !state.friends.has(m.id)) c.name = m.name || c.name;
    if (m.msgid === MSG.ONE_CHAT && state.friends.has(m.id)) state.friends.get(m.id).state = "online";
    if (m.msgid === MSG.GROUP_CHAT) {
      const g = state.groups.get(m.groupid);
      if (g && !g.members.has(m.id)) g.members.set(m.id, { id: m.id, name: m.name, state: "online", role: "normal" });
      else if (g) g.members.get(m.id).state = "online";
    }
    if (typeof m.conv === "number") {
      c.conv = m.conv;
      state.byServerConv.set(m.conv, key);
      if (typeof m.cseq === "number") {
        if (c.messages.some((x) => x.cseq === m.cseq)) return;  // at least once: drop the duplicate
        c.last = Math.max(c.last, m.cseq);
      }
    }
    const rec = { id: ++localId, from: m.id, name: m.name, text: String(m.msg), at: timeOf(m), mine: false,
                  status: "in", cseq: m.cseq };
    insertSorted(c, rec);
    const visible = state.active === key && document.visibilityState === "visible";
    if (!visible) c.unread += 1;
    if (!quiet) {
      if (visible) read(c);
      received(c);
      notify(c, rec);
      announce(state.active === key
        ? `${rec.name || "User " + rec.from}: ${rec.text}`
        : `New message from ${rec.name || "User " + rec.from}${c.kind === "group" ? " in " + convName(c) : ""}`);
    }
  }

  function insertSorted(c, rec) {
    const list = c.messages;
    if (rec.cseq !== undefined && rec.cseq !== null) {
      let i = list.length;
      while (i > 0 && list[i - 1].cseq !== undefined && list[i - 1].cseq !== null && list[i - 1].cseq > rec.cseq) i -= 1;
      list.splice(i, 0, rec);
    } else {
      list.push(rec);
    }
  }

  function pushed(m) {
    if (!state.loggedIn) return;
    if (m.msgid === MSG.ONE_CHAT || m.msgid === MSG.GROUP_CHAT) {
      incoming(m, false);
      renderAll();
      save();
    } else if (m.msgid === MSG.READ_RECEIPT) {
      const key = state.byServerConv.get(m.conv);
      if (key) {
        const c = conv(key);
        c.peerRead = Math.max(c.peerRead, m.cseq);
        markPeerRead(c);
        if (state.active === key) renderMessages();
        save();
      }
    } else if (m.msgid === MSG.PRESENCE) {
      presence(m.id, m.state);
    } else if (m.msgid === MSG.NOTICE) {
      notice(m);
    } else if (m.msgid === MSG.ACK && m.errno) {
      if (m.errno === ERR.RATE) toast("Slow down a little: the server is rate limiting you.");
    } else if (m.msgid !== MSG.ACK && typeof m.conv === "number" && typeof m.cseq === "number") {
      // something a newer server keeps in a conversation: a neutral line
      logged(m);
      renderAll();
      save();
    }
  }

  function markPeerRead(c) {
    for (const m of c.messages) if (m.mine && m.cseq && m.cseq <= c.peerRead) m.status = "read";
  }

  // section D: say what arrived and what was read (when the server has the log)
  const receivedTimers = new Map();
  // the newest sequence number this device holds: what it may say it
  // received or read (c.last may be ahead while a catch-up is on its way)
  function held(c) {
    let top = 0;
    for (const m of c.messages) if (typeof m.cseq === "number" && m.cseq > top) top = m.cseq;
    return Math.min(top, c.last);
  }

  function received(c) {
    if (!state.sync || c.conv === null || !c.last) return;
    clearTimeout(receivedTimers.get(c.key));
    receivedTimers.set(c.key, setTimeout(() => {
      const upTo = held(c);
      if (upTo > 0) link.post({ msgid: MSG.RECEIVED, conv: c.conv, cseq: upTo });
    }, 150));
  }

  function read(c) {
    c.unread = 0;
    const upTo = state.sync && c.conv !== null ? held(c) : 0;
    if (upTo > c.read) {
      c.read = upTo;
      link.post({ msgid: MSG.READ, conv: c.conv, cseq: upTo });
    }
  }

  // the messages after those a sync login brought, up to the conversation's
  // last (docs/protocol.md section D: "more", then history with "after")
  async function catchUp(c) {
    if (c.catchingUp) return;
    c.catchingUp = true;
    try {
      for (;;) {
        // from what this device holds, or from the delivered cursor when it
        // holds less (a new device: not the whole conversation)
        const after = Math.max(held(c), c.delivered || 0);
        if (after >= c.last || !link.ready) break;
        const reply = await link.request({ msgid: MSG.HISTORY, conv: c.conv, after, limit: 200 });
        if (reply.errno !== 0 || !(reply.msgs || []).length) break;
        const unread = c.unread;
        for (const text of reply.msgs) incoming(JSON.parse(text), true);
        c.unread = unread;
        if (typeof reply.last === "number") c.last = Math.max(c.last, reply.last);
        if (held(c) <= after) break;  // nothing new: do not loop
      }
    } catch { /* the connection dropped: the next sync login brings the rest again */ }
    c.catchingUp = false;
    received(c);
    if (state.active === c.key && document.visibilityState === "visible") read(c);
    renderAll();
    save();
  }

  async function transmit(c, m) {
    if (!link.ready || !state.loggedIn) { m.status = "queued"; return; }
    m.status = "pending";
    const req = c.kind === "group"
      ? { msgid: MSG.GROUP_CHAT, groupid: c.peer, name: state.me.name, msg: m.text }
      : { msgid: MSG.ONE_CHAT, to: c.peer, name: state.me.name, msg: m.text };
    try {
      const ack = await link.request(req);
      if (ack.errno !== 0) {
        m.status = "failed";
        m.error = ack.errmsg || `error ${ack.errno}`;
      } else {
        if (typeof ack.cseq === "number") {
          m.cseq = ack.cseq;
          c.last = Math.max(c.last, ack.cseq);
          c.read = Math.max(c.read, ack.cseq);
          if (typeof ack.conv === "number") { c.conv = ack.conv; state.byServerConv.set(ack.conv, c.key); }
        }
        if (typeof ack.ts === "number") m.at = ack.ts;
        if (c.kind === "user") {
          m.status = ack.delivered === "online" ? "delivered" : "sent";
          const f = state.friends.get(c.peer);
          if (f && ack.delivered) f.state = ack.delivered === "online" ? "online" : "offline";
        } else {
          m.status = "sent";
        }
        markPeerRead(c);
      }
    } catch (e) {
      // lost with the connection: it may or may not have arrived
      m.status = "failed";
      m.error = e.message;
    }
    renderAll();
    save();
  }

  function send(text) {
    const c = state.convs.get(state.active);
    if (!c || !text.trim()) return;
    const m = { id: ++localId, from: state.me.id, name: state.me.name, text, at: Date.now(), mine: true, status: "queued" };
    c.messages.push(m);
    transmit(c, m);
    renderAll();
    scrollToBottom(true);
    save();
  }

  async function loadHistory(c) {
    if (!state.sync || c.loadingHistory || c.historyDone || !link.ready) return;
    const oldest = c.messages.find((m) => typeof m.cseq === "number");
    const req = { msgid: MSG.HISTORY, limit: HISTORY_PAGE };
    if (c.conv !== null) req.conv = c.conv;
    else if (c.kind === "group") req.groupid = c.peer;
    else req.to = c.peer;
    if (oldest) req.before = oldest.cseq;
    if (oldest && oldest.cseq <= 1) { c.historyDone = true; renderHistoryStatus(c); return; }
    c.loadingHistory = true;
    renderHistoryStatus(c);
    const box = $("#messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    try {
      const reply = await link.request(req);
      if (reply.errno === 0) {
        if (typeof reply.conv === "number") { c.conv = reply.conv; state.byServerConv.set(reply.conv, c.key); }
        const msgs = (reply.msgs || []).map((t) => JSON.parse(t));
        if (msgs.length < HISTORY_PAGE) c.historyDone = true;
        for (const m of msgs) {
          if (c.messages.some((x) => x.cseq === m.cseq)) continue;
          if (m.msgid !== MSG.ONE_CHAT && m.msgid !== MSG.GROUP_CHAT) { addEvent(c, noticeText(m), m); continue; }
          const mine = m.id === state.me.id;
          insertSorted(c, { id: ++localId, from: m.id, name: m.name, text: String(m.msg), at: timeOf(m), mine,
                            status: mine ? (m.cseq <= c.peerRead ? "read" : "sent") : "in", cseq: m.cseq });
        }
        if (typeof reply.last === "number") c.last = Math.max(c.last, reply.last);
      } else {
        c.historyDone = true;
      }
    } catch { /* the connection dropped: tried again on the next scroll */ }
    c.loadingHistory = false;
    if (state.active === c.key) {
      renderMessages();
      box.scrollTop = box.scrollHeight - fromBottom;
      // a page that does not fill the window leaves nothing to scroll: the next one now
      if (!c.historyDone && box.scrollHeight <= box.clientHeight + 40 && link.ready) setTimeout(() => loadHistory(c), 0);
    }
    save();
  }

  // ------------------------------------------------------------ friends, presence, groups (section F)
  function who(u) {
    if (!u) return "Someone";
    return u.id === state.me.id ? "You" : (u.name || `User ${u.id}`);
  }

  // the line a notice leaves in a conversation; a kind this app does not
  // know (a newer server) is shown as a neutral line, never dropped silently
  function noticeText(m) {
    const g = state.groups.get(m.groupid);
    switch (m.kind) {
      case "group_join": return `${who(m.user)} joined the group`;
      case "group_leave": return `${who(m.user)} left the group`;
      case "group_remove":
        return m.user && m.user.id === state.me.id ? "You were removed from the group"
          : `${who(m.user)} was removed from the group`;
      case "group_handover": return `${who(m.creator)} ${m.creator && m.creator.id === state.me.id ? "are" : "is"} now the group's owner`;
      case "group_delete": return `The group ${m.groupname || (g && g.name) || ""} was deleted`.replace("  ", " ");
      case "group_create": return `${who(m.user)} created the group`;
      case "friend_accepted": return "You are now friends";
      default: {
        const text = typeof m.text === "string" ? m.text : (typeof m.msg === "string" ? m.msg : "");
        if (text) return text;
        return m.kind ? `(${String(m.kind).replace(/_/g, " ")})` : "(something this app cannot show)";
      }
    }
  }

  // a neutral line in the conversation (a join, a leave, a new friend): from a
  // live notice, or from the log (sync, history) where it has a cseq
  function addEvent(c, text, m) {
    const cseq = m && typeof m.cseq === "number" ? m.cseq : undefined;
    if (cseq !== undefined) {
      if (c.messages.some((x) => x.cseq === cseq)) return;
      c.last = Math.max(c.last, cseq);
      // the same notice seen live before the log brought it: keep one
      const twin = c.messages.findIndex((x) => x.kind === "event" && x.cseq === undefined && x.text === text);
      if (twin >= 0) c.messages.splice(twin, 1);
    }
    insertSorted(c, { id: ++localId, kind: "event", from: 0, text, at: m ? timeOf(m) : Date.now(), mine: false,
                      status: "event", cseq });
  }

  // an entry of the log that is not a chat message
  function logged(m) {
    let key = typeof m.conv === "number" ? state.byServerConv.get(m.conv) : undefined;
    if (!key && typeof m.groupid === "number") key = `g:${m.groupid}`;
    if (!key) return;
    addEvent(conv(key), noticeText(m), m);
  }

  function presence(id, st) {
    const f = state.friends.get(id);
    if (f) f.state = st;
    for (const g of state.groups.values()) {
      const member = g.members.get(id);
      if (member) member.state = st;
    }
    renderAll();
  }

  function befriended(f) {
    state.requests.in.delete(f.id);
    state.requests.out.delete(f.id);
    const had = state.friends.has(f.id);
    state.friends.set(f.id, { id: f.id, name: f.name, state: f.state || "offline" });
    const c = conv(`u:${f.id}`);
    if (!had) addEvent(c, "You are now friends");
  }

  function notice(m) {
    const g = state.groups.get(m.groupid);
    const c = typeof m.groupid === "number" ? state.convs.get(`g:${m.groupid}`) : null;
    switch (m.kind) {
      case "friend_request":
        state.requests.in.set(m.from.id, { id: m.from.id, name: m.from.name, note: m.note || "" });
        toast(`${m.from.name} wants to be your friend.`);
        announce(`Friend request from ${m.from.name}`);
        notifyText("Friend request", `${m.from.name}${m.note ? ": " + m.note : ""}`, "requests");
        break;
      case "friend_accepted":
        befriended(m.friend);
        toast(`${m.friend.name} accepted: you are friends now.`);
        announce(`${m.friend.name} is now your friend`);
        break;
      case "friend_removed": {
        const f = state.friends.get(m.id);
        state.friends.delete(m.id);
        state.requests.out.delete(m.id);
        const fc = state.convs.get(`u:${m.id}`);
        if (fc && f) addEvent(fc, `${f.name} is no longer in your friends`);
        if (fc && !fc.messages.length && state.active !== fc.key) state.convs.delete(fc.key);
        break;
      }
      case "group_join":
        if (g) g.members.set(m.user.id, { id: m.user.id, name: m.user.name, state: "online", role: "normal" });
        break;
      case "group_leave":
        if (g) g.members.delete(m.user.id);
        break;
      case "group_remove":
        if (g && m.user.id === state.me.id) state.groups.delete(m.groupid);
        else if (g) g.members.delete(m.user.id);
        break;
      case "group_handover":
        if (g) {
          for (const member of g.members.values()) if (member.role === "creator") member.role = "normal";
          const next = g.members.get(m.creator.id);
          if (next) next.role = "creator";
        }
        break;
      case "group_delete":
        state.groups.delete(m.groupid);
        if (c) c.deleted = true;
        break;
      default:
        break;
    }
    if (c && m.kind && m.kind.startsWith("group_")) {
      // a group's notice is an entry of its conversation's log (conv, cseq):
      // it comes again through sync and history, where addEvent keeps one
      if (typeof m.conv === "number") { c.conv = m.conv; state.byServerConv.set(m.conv, c.key); }
      addEvent(c, noticeText(m), typeof m.cseq === "number" ? m : null);
      if (typeof m.cseq === "number") {
        received(c);
        if (state.active === c.key && document.visibilityState === "visible") read(c);
      }
      if (m.kind === "group_remove" || m.kind === "group_delete") announce(`${convName(c)}: ${noticeText(m)}`);
    }
    renderAll();
    save();
  }

  // the result of an answered request: null when done, else what to show
  function refusal(ack, what) {
    if (ack.errno === 0) return null;
    return (what && what[ack.errno]) || ack.errmsg || `error ${ack.errno}`;
  }

  async function requestFriend(id, note) {
    if (id === state.me.id) return "That is you.";
    if (!state.social) {
      // a server without section F: the classic add, one direction, at once
      const ack = await link.request({ msgid: MSG.ADD_FRIEND, friendid: id });
      const err = refusal(ack, { [ERR.CONFLICT]: "Already in your friends.", [ERR.NOT_FOUND]: `There is no user ${id}.` });
      if (err) return err;
      befriended(ack.friend || { id, name: `User ${id}`, state: "offline" });
      renderAll();
      save();
      return null;
    }
    const req = { msgid: MSG.FRIEND_REQUEST, to: id };
    if (note) req.note = note;
    const ack = await link.request(req);
    const err = refusal(ack, { [ERR.CONFLICT]: ack.errmsg, [ERR.NOT_FOUND]: `There is no user ${id}.`,
                               [ERR.FORBIDDEN]: state.blocked.has(id) ? "You blocked them: unblock first." : "They do not take requests from you." });
    if (err) return err;
    if (ack.friend) {
      befriended(ack.friend);
      toast(`${ack.friend.name} had asked you: you are friends now.`);
    } else {
      state.requests.out.set(ack.requested.id, { ...ack.requested, note: note || "" });
      toast(`Request sent to ${ack.requested.name}.`);
    }
    renderAll();
    save();
    return null;
  }

  async function answerRequest(id, accept) {
    let ack;
    try { ack = await link.request({ msgid: MSG.FRIEND_ANSWER, from: id, accept }); } catch (e) { toast(e.message); return; }
    if (ack.errno !== 0 && ack.errno !== ERR.NOT_FOUND) { toast(ack.errmsg || `error ${ack.errno}`); return; }
    const r = state.requests.in.get(id);
    state.requests.in.delete(id);
    if (ack.friend) {
      befriended(ack.friend);
      announce(`${ack.friend.name} is now your friend`);
    } else if (r) {
      announce(`Request from ${r.name} declined`);
    }
    renderAll();
    save();
    if (ack.friend) openConv(`u:${ack.friend.id}`);
    else $("#filter").focus();
  }

  function confirmThen(title, text, ok, action) {
    ask({ title, ok, text, danger: true, fields: [] }, async () => action());
  }

  function removeFriend(id) {
    const f = state.friends.get(id);
    const name = f ? f.name : `User ${id}`;
    confirmThen(`Remove ${name}?`, `${name} leaves your friends, and you theirs. The conversation stays here.`, "Remove",
      async () => {
        const ack = await link.request({ msgid: MSG.FRIEND_REMOVE, friendid: id });
        const err = refusal(ack, { [ERR.NOT_FOUND]: null });
        if (err && ack.errno !== ERR.NOT_FOUND) return err;
        state.friends.delete(id);
        addEvent(conv(`u:${id}`), `${name} is no longer in your friends`);
        renderAll();
        save();
        return null;
      });
  }

  async function setBlocked(id, on) {
    const name = convName(conv(`u:${id}`));
    const act = async () => {
      const ack = await link.request({ msgid: MSG.BLOCK, userid: id, block: on });
      const err = refusal(ack);
      if (err) return err;
      if (on) {
        state.blocked.add(id);
        state.friends.delete(id);
        state.requests.in.delete(id);
        state.requests.out.delete(id);
      } else {
        state.blocked.delete(id);
      }
      addEvent(conv(`u:${id}`), on ? `You blocked ${name}` : `You unblocked ${name}`);
      renderAll();
      save();
      return null;
    };
    if (on) {
      confirmThen(`Block ${name}?`, `${name} can no longer write to you or ask to be your friend, and leaves your friends. They are not told.`,
        "Block", act);
    } else {
      const err = await act().catch((e) => e.message);
      if (err) toast(err);
    }
  }

  // the member list with each one's state and role (msgid 29)
  async function refreshMembers(groupid) {
    if (!state.social || !link.ready) return;
    let ack;
    try { ack = await link.request({ msgid: MSG.GROUP_MEMBERS, groupid }); } catch { return; }
    const g = state.groups.get(groupid);
    if (ack.errno !== 0 || !g) return;
    g.members = new Map(ack.members.map((u) => [u.id, { id: u.id, name: u.name, state: u.state, role: u.role }]));
    if (state.active === `g:${groupid}`) renderHeader();
    renderLists();
  }

  function isOwner(g) {
    const me = g && g.members.get(state.me.id);
    return !!me && me.role === "creator";
  }

  // server conversations removed from the list on this device (kept by id)
  function forgottenKey() { return `gchat.forgotten.${state.me.id}`; }
  function forgotten() { return state.me ? storage.get(forgottenKey(), []) : []; }

  // `final`: a deleted group, whose conversation can never come back to life
  // (a group left, or joined again, keeps its conversation: not recorded)
  function forgetConv(key, final) {
    const c = state.convs.get(key);
    if (final && c && c.conv !== null) storage.set(forgottenKey(), [...forgotten(), c.conv].slice(-200));
    if (state.active === key) closeConv();
    state.convs.delete(key);
    renderAll();
    save();
  }

  // after leaving or deleting a group: its conversation goes from the list
  function forgetGroup(groupid, deleted) {
    state.groups.delete(groupid);
    forgetConv(`g:${groupid}`, deleted);
  }

  function leaveGroup(groupid) {
    const g = state.groups.get(groupid);
    const name = g ? g.name : `Group ${groupid}`;
    confirmThen(`Leave ${name}?`, "You will no longer get its messages. You can join again later.", "Leave", async () => {
      const ack = await link.request({ msgid: MSG.GROUP_LEAVE, groupid });
      const err = refusal(ack, { [ERR.FORBIDDEN]: "The owner hands the group over or deletes it." });
      if (err) return err;
      forgetGroup(groupid, false);
      toast(`You left ${name}.`);
      return null;
    });
  }

  function deleteGroup(groupid) {
    const g = state.groups.get(groupid);
    const name = g ? g.name : `Group ${groupid}`;
    confirmThen(`Delete ${name}?`, "Every member loses the group; what was written stays with each of them.", "Delete",
      async () => {
        const ack = await link.request({ msgid: MSG.GROUP_DELETE, groupid });
        const err = refusal(ack, { [ERR.FORBIDDEN]: "Only the owner deletes the group." });
        if (err) return err;
        forgetGroup(groupid, true);
        toast(`${name} was deleted.`);
        return null;
      });
  }

  function removeMember(groupid, userid) {
    const g = state.groups.get(groupid);
    const m = g && g.members.get(userid);
    const name = m ? m.name : `User ${userid}`;
    confirmThen(`Remove ${name}?`, `${name} leaves ${g ? g.name : "the group"} and gets no more of its messages.`, "Remove",
      async () => {
        const ack = await link.request({ msgid: MSG.GROUP_REMOVE, groupid, userid });
        const err = refusal(ack);
        if (err) return err;
        if (g) g.members.delete(userid);
        addEvent(conv(`g:${groupid}`), `${name} was removed from the group`);
        renderAll();
        save();
        return null;
      });
  }

  function handOver(groupid, userid) {
    const g = state.groups.get(groupid);
    const m = g && g.members.get(userid);
    const name = m ? m.name : `User ${userid}`;
    confirmThen(`Make ${name} the owner?`, `${name} becomes the owner of ${g ? g.name : "the group"}; you stay a member.`,
      "Hand over", async () => {
        const ack = await link.request({ msgid: MSG.GROUP_HANDOVER, groupid, userid });
        const err = refusal(ack);
        if (err) return err;
        if (g) {
          for (const member of g.members.values()) if (member.role === "creator") member.role = "normal";
          if (m) m.role = "creator";
        }
        addEvent(conv(`g:${groupid}`), `${name} is now the group's owner`);
        renderAll();
        save();
        return null;
      });
  }

  async function joinGroupById(groupid, info) {
    const ack = await link.request({ msgid: MSG.ADD_GROUP, groupid });
    const err = refusal(ack, { [ERR.CONFLICT]: "You are in that group already.", [ERR.NOT_FOUND]: `There is no group ${groupid}.` });
    if (err) return err;
    const members = new Map();
    for (const u of parseList(ack.group && ack.group.users)) members.set(u.id, { id: u.id, name: u.name, state: u.state, role: u.role });
    members.set(state.me.id, { id: state.me.id, name: state.me.name, state: "online", role: "normal" });
    const name = (info && info.groupname) || (ack.group && ack.group.groupname) || `Group ${groupid}`;
    state.groups.set(groupid, { id: groupid, name, desc: (info && info.groupdesc) || "", members });
    addEvent(conv(`g:${groupid}`), "You joined the group");
    refreshMembers(groupid);
    return null;
  }

  // --- the finder: people to befriend, groups to join, by name (or id)
  const finder = { kind: "people", token: 0, page: 0, query: "", items: [], more: false, timer: null };

  function openFinder(kind) {
    finder.kind = kind;
    finder.items = [];
    finder.more = false;
    const people = kind === "people";
    $("#finder-title").textContent = people ? "Add a friend" : "Join a group";
    $("#finder-query-label").textContent = state.social
      ? (people ? "Their name (or user id)" : "The group's name (or id)") : (people ? "Their user id" : "The group's id");
    $("#finder-note-row").hidden = !people || !state.social;
    $("#finder-query").value = "";
    $("#finder-note").value = "";
    finderStatus(state.social ? "Type the first letters of a name." : "Type the id.");
    renderFinder();
    $("#finder").showModal();
    $("#finder-query").focus();
  }

  function finderStatus(text) { $("#finder-status").textContent = text; }

  async function search(append) {
    const q = $("#finder-query").value.trim();
    const token = ++finder.token;
    if (!append) { finder.items = []; finder.page = 0; finder.more = false; }
    finder.query = q;
    if (!q) { renderFinder(); finderStatus(state.social ? "Type the first letters of a name." : "Type the id."); return; }
    const id = asId(q);
    if (!append && id !== null) finder.items.push({ id, name: finder.kind === "people" ? `User id ${id}` : `Group id ${id}`, byId: true });
    if (!append) renderFinder();  // an id is usable before the search by name answers
    if (state.social) {
      finderStatus("Searching…");
      let ack;
      try {
        ack = await link.request({ msgid: finder.kind === "people" ? MSG.USER_SEARCH : MSG.GROUP_SEARCH, name: q,
                                   page: finder.page, limit: 20 });
      } catch (e) { if (token === finder.token) finderStatus(e.message); return; }
      if (token !== finder.token) return;  // a newer search is on its way
      if (ack.errno === 0) {
        for (const item of (finder.kind === "people" ? ack.users : ack.groups) || []) {
          if (!finder.items.some((x) => x.id === item.id && !x.byId)) finder.items.push(item);
        }
        finder.more = !!ack.more;
      }
    }
    renderFinder();
    const found = finder.items.filter((x) => !x.byId).length;
    finderStatus(!state.social ? "" : found ? `${found}${finder.more ? "+" : ""} found` : `No ${finder.kind === "people" ? "one" : "group"} named “${q}…”`);
  }

  function renderFinder() {
    const people = finder.kind === "people";
    $("#finder-results").replaceChildren(...finder.items.map((item) => {
      const li = el("li", "result");
      li.dataset.id = item.id;
      const name = people ? item.name : (item.groupname || item.name);
      const friend = people && state.friends.get(item.id);
      const av = avatar(name, item.id, !people, friend ? friend.state : null);
      const text = el("div", "result-text");
      text.append(el("div", "result-name", name));
      let sub;
      if (item.byId) sub = people ? "by user id" : "by group id";
      else if (people) sub = `id ${item.id}${friend ? " · " + friend.state : ""}`;
      else sub = `id ${item.id} · ${item.members} member${item.members === 1 ? "" : "s"}${item.groupdesc ? " · " + item.groupdesc : ""}`;
      text.append(el("div", "result-sub", sub));
      const b = el("button", "small");
      b.type = "button";
      let label;
      let act = null;
      if (people) {
        if (item.id === state.me.id) label = "You";
        else if (friend) { label = "Chat"; act = () => { $("#finder").close(); openConv(`u:${item.id}`); return null; }; }
        else if (state.blocked.has(item.id)) label = "Blocked";
        else if (state.requests.in.has(item.id)) { label = "Accept"; act = async () => { $("#finder").close(); await answerRequest(item.id, true); return null; }; }
        else if (state.requests.out.has(item.id)) label = "Requested";
        else { label = state.social ? "Add" : "Add"; act = () => requestFriend(item.id, $("#finder-note").value.trim()); }
      } else if (state.groups.has(item.id)) {
        label = "Open";
        act = () => { $("#finder").close(); openConv(`g:${item.id}`); return null; };
      } else {
        label = "Join";
        act = async () => {
          const err = await joinGroupById(item.id, item.byId ? null : item);
          if (err) return err;
          $("#finder").close();
          setTimeout(() => openConv(`g:${item.id}`), 0);
          return null;
        };
      }
      b.textContent = label;
      b.classList.toggle("primary", !!act);
      b.disabled = !act;
      b.setAttribute("aria-label", `${label}: ${name}`);
      if (act) {
        b.addEventListener("click", async () => {
          b.disabled = true;
          let err;
          try { err = await act(); } catch (e) { err = e.message; }
          if (err) { finderStatus(err); b.disabled = false; return; }
          if ($("#finder").open) { renderFinder(); $("#finder-query").focus(); }
        });
      }
      li.append(av, text, b);
      return li;
    }));
    $("#finder-more").hidden = !finder.more;
  }

  // --- the requests in the sidebar
  function requestItem(r, dir, sub) {
    const li = el("li", "request");
    li.dataset.id = r.id;
    li.dataset.dir = dir;
    const text = el("div", "result-text");
    text.append(el("div", "result-name", r.name), el("div", "result-sub", sub));
    li.append(avatar(r.name, r.id, false), text);
    return li;
  }

  function renderRequests() {
    const items = [];
    for (const r of state.requests.in.values()) {
      const li = requestItem(r, "in", r.note ? `“${r.note}”` : "wants to be your friend");
      const yes = el("button", "small primary accept", "Accept");
      yes.type = "button";
      yes.setAttribute("aria-label", `Accept ${r.name}'s friend request`);
      yes.addEventListener("click", () => answerRequest(r.id, true));
      const no = el("button", "small decline", "Decline");
      no.type = "button";
      no.setAttribute("aria-label", `Decline ${r.name}'s friend request`);
      no.addEventListener("click", () => answerRequest(r.id, false));
      const actions = el("div", "actions");
      actions.append(yes, no);
      li.append(actions);
      items.push(li);
    }
    for (const r of state.requests.out.values()) {
      items.push(requestItem(r, "out", "request sent · waiting for an answer"));
    }
    $("#requests").replaceChildren(...items);
    $("#requests-heading").hidden = items.length === 0;
    $("#requests-heading").textContent = state.requests.in.size ? `Requests (${state.requests.in.size})` : "Requests";
  }

  // --- the conversation's own menu
  function convMenuItems(c) {
    const items = [];
    if (!state.social) return items;
    if (c.kind === "user") {
      const friend = state.friends.has(c.peer);
      const blocked = state.blocked.has(c.peer);
      if (friend) items.push(["Remove from friends", () => removeFriend(c.peer)]);
      else if (!blocked && !state.requests.out.has(c.peer) && !state.requests.in.has(c.peer)) {
        items.push(["Ask to be friends", async () => { const err = await requestFriend(c.peer, ""); if (err) toast(err); }]);
      }
      items.push(blocked ? ["Unblock", () => setBlocked(c.peer, false)] : ["Block", () => setBlocked(c.peer, true)]);
    } else {
      const g = state.groups.get(c.peer);
      if (g) {
        items.push(["Members", () => toggleMembers(true)]);
        if (isOwner(g)) items.push(["Delete group", () => deleteGroup(c.peer)]);
        else items.push(["Leave group", () => leaveGroup(c.peer)]);
      }
    }
    if (closedReason(c)) items.push(["Remove this conversation", () => forgetConv(c.key, !!c.deleted)]);
    return items;
  }

  // why nothing can be written here, or "" when it can
  function closedReason(c) {
    if (!state.loggedIn || !state.me) return "";
    if (c.kind === "user" && state.blocked.has(c.peer)) return `You blocked ${convName(c)}.`;
    if (c.kind === "group" && !state.groups.has(c.peer)) return "You are no longer in this group.";
    return "";
  }

  // ------------------------------------------------------------ views
  function showConnection(kind, text, retryable) {
    for (const box of [$("#connection"), $(".auth-status")]) {
      box.dataset.conn = kind;
      box.querySelector(".conn-text").textContent = text;
    }
    $("#reconnect-now").hidden = !retryable;
    document.body.dataset.conn = kind;
  }

  function showAuth(message) {
    state.loggedIn = false;
    $("#chat").hidden = true;
    $("#auth").hidden = false;
    const s = session();
    if (s && !$("#login-id").value) $("#login-id").value = s.id;
    authError(message || "");
    const first = s ? $("#login-password") : $("#register-name");
    if (!s) selectTab("register");
    first.focus();
  }

  function authError(text) { $("#auth-error").textContent = text; }

  function showChat() {
    $("#auth").hidden = true;
    $("#chat").hidden = false;
    $("#me-name").textContent = state.me.name;
    $("#me-id").textContent = `Your id: ${state.me.id}`;
    paintAvatar($("#me-avatar"), state.me.name, state.me.id, false);
  }

  function hue(id) { return (Number(id) * 47) % 360; }

  function initials(name) {
    const parts = String(name || "?").trim().split(/\s+/);
    return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
  }

  // a new avatar box (decorative: the name beside it is what is read out)
  function avatar(name, id, group, presence) {
    const box = el("div", "avatar");
    box.setAttribute("aria-hidden", "true");
    paintAvatar(box, name, id, group, presence);
    return box;
  }

  function paintAvatar(box, name, id, group, presence) {
    box.textContent = initials(name);
    box.style.setProperty("--hue", hue(id));
    box.classList.toggle("group", group);
    if (presence) {
      const dot = el("span", `presence ${presence}`);
      dot.setAttribute("aria-hidden", "true");
      box.append(dot);
    }
  }

  function fmtTime(t) {
    const d = new Date(t);
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function renderAll() {
    renderLists();
    renderHeader();
    renderMessages();
    const unread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
    document.title = unread ? `(${unread}) gchat` : "gchat";
  }

  // The lists are redrawn whole (a presence dot, a new message): the control
  // that had the keyboard focus gets it back in the new list.
  function keepingFocus(draw) {
    const a = document.activeElement;
    const item = a && a !== document.body ? a.closest(".lists [data-key], .lists [data-id], #member-list [data-id]") : null;
    const at = item ? { key: item.dataset.key, id: item.dataset.id, cls: a.classList[a.classList.length - 1] } : null;
    draw();
    if (!at || document.activeElement !== document.body) return;
    const again = at.key ? document.querySelector(`.lists [data-key="${at.key}"]`)
      : document.querySelector(`.lists [data-id="${at.id}"] .${at.cls}, #member-list [data-id="${at.id}"] .${at.cls}`);
    if (again) again.focus();
  }

  function renderLists() { keepingFocus(drawLists); }

  function drawLists() {
    const filter = state.filter.toLowerCase();
    const sorted = (list) => list
      .filter((c) => !filter || convName(c).toLowerCase().includes(filter))
      .sort((a, b) => (lastAt(b) - lastAt(a)) || convName(a).localeCompare(convName(b)));
    const people = sorted([...state.convs.values()].filter((c) => c.kind === "user"));
    const groups = sorted([...state.convs.values()].filter((c) => c.kind === "group"));
    fillList($("#friends"), people);
    fillList($("#groups"), groups);
    $("#friends-empty").hidden = people.length > 0 || !!filter;
    $("#groups-empty").hidden = groups.length > 0 || !!filter;
    renderRequests();
  }

  function lastAt(c) { return c.messages.length ? c.messages[c.messages.length - 1].at : 0; }

  function fillList(ul, convs) {
    ul.replaceChildren(...convs.map((c) => {
      const li = el("li");
      const b = el("button", "conv-item");
      b.type = "button";
      b.dataset.key = c.key;
      if (state.active === c.key) b.setAttribute("aria-current", "true");
      const name = convName(c);
      let presence = null;
      let status = "";
      if (c.kind === "user") {
        const f = state.friends.get(c.peer);
        presence = f && f.state === "online" ? "online" : "offline";
        status = f ? (f.state === "online" ? "online" : "offline")
          : state.blocked.has(c.peer) ? "blocked" : "not in your friends";
      } else {
        const g = state.groups.get(c.peer);
        status = g ? `${g.members.size} member${g.members.size === 1 ? "" : "s"}` : (state.loggedIn ? "you left" : "group");
      }
      const av = avatar(name, c.peer, c.kind === "group", presence);
      const main = el("div", "conv-main");
      const top = el("div", "conv-top");
      top.append(el("span", "conv-name", name));
      const last = c.messages[c.messages.length - 1];
      if (last) top.append(el("span", "conv-time", fmtTime(last.at)));
      const bottom = el("div", "conv-bottom");
      const preview = !last ? status : last.kind === "event" ? last.text
        : last.mine ? `You: ${last.text}` : (c.kind === "group" ? `${last.name}: ${last.text}` : last.text);
      bottom.append(el("span", "conv-preview", preview));
      if (c.unread) {
        const badge = el("span", "badge", c.unread > 99 ? "99+" : String(c.unread));
        badge.setAttribute("aria-hidden", "true");
        bottom.append(badge);
      }
      main.append(top, bottom);
      b.append(av, main);
      b.setAttribute("aria-label", `${name}, ${c.kind === "group" ? "group" : "friend"}, ${status}` +
        (c.unread ? `, ${c.unread} unread` : "") + (last ? `, last message ${fmtTime(last.at)}` : ""));
      b.addEventListener("click", () => openConv(c.key));
      li.append(b);
      return li;
    }));
  }

  function renderHeader() { keepingFocus(drawHeader); }

  function drawHeader() {
    const c = state.convs.get(state.active);
    const has = !!c;
    $("#placeholder").hidden = has;
    $("#conv-header").hidden = !has;
    $("#conv-body").hidden = !has;
    $("#composer").hidden = !has;
    $("#composer-note").hidden = true;
    if (!c) return;
    const name = convName(c);
    $("#conv-title").textContent = name;
    // blocked, or a group left: the composer makes way for why
    const closed = closedReason(c);
    $("#composer").hidden = !!closed;
    $("#composer-note").hidden = !closed;
    $("#composer-note-text").textContent = closed;
    $("#composer-note-action").hidden = !(c.kind === "user" && state.blocked.has(c.peer));
    $("#conv-menu-button").hidden = convMenuItems(c).length === 0;
    const av = $("#conv-avatar");
    if (c.kind === "user") {
      const f = state.friends.get(c.peer);
      const online = f && f.state === "online";
      paintAvatar(av, name, c.peer, false, online ? "online" : "offline");
      $("#conv-sub").textContent = f ? (online ? "online" : "offline")
        : `user ${c.peer} · ${state.blocked.has(c.peer) ? "blocked" : state.requests.out.has(c.peer) ? "friend request sent" : "not in your friends"}`;
      $("#members-button").hidden = true;
      $("#members").hidden = true;
    } else {
      const g = state.groups.get(c.peer);
      paintAvatar(av, name, c.peer, true);
      const members = g ? [...g.members.values()] : [];
      const online = members.filter((m) => m.state === "online").length;
      $("#conv-sub").textContent = g
        ? `group ${c.peer} · ${members.length} member${members.length === 1 ? "" : "s"}, ${online} online${g.desc ? " · " + g.desc : ""}`
        : `group ${c.peer}`;
      $("#members-button").hidden = !g;
      if (!g) $("#members").hidden = true;
      const owner = isOwner(g);
      $("#member-list").replaceChildren(...members
        .sort((a, b) => (a.role === "creator" ? -1 : 0) - (b.role === "creator" ? -1 : 0) || a.name.localeCompare(b.name))
        .map((m) => memberItem(c.peer, m, owner)));
    }
  }

  function memberItem(groupid, m, owner) {
    const li = el("li");
    li.dataset.id = m.id;
    li.dataset.state = m.state;
    li.dataset.role = m.role;
    const mav = avatar(m.name, m.id, false, m.state === "online" ? "online" : "offline");
    const text = el("div", "member-text");
    text.append(el("div", "member-name", m.id === state.me.id ? `${m.name} (you)` : m.name),
                el("div", "role", [m.role === "creator" ? "owner" : "", m.state].filter(Boolean).join(" · ")));
    li.append(mav, text);
    if (owner && m.id !== state.me.id) {
      const up = el("button", "small member-handover", "Owner");
      up.type = "button";
      up.title = "Make the owner";
      up.setAttribute("aria-label", `Make ${m.name} the owner`);
      up.addEventListener("click", () => handOver(groupid, m.id));
      const out = el("button", "small member-remove", "Remove");
      out.type = "button";
      out.setAttribute("aria-label", `Remove ${m.name} from the group`);
      out.addEventListener("click", () => removeMember(groupid, m.id));
      li.append(up, out);
    }
    return li;
  }

  const ICONS = {
    queued: '<svg viewBox="0 0 24 24"><circle cx="12" cy="12" r="8"/><path d="M12 8v4l3 2"/></svg>',
    pending: '<svg viewBox="0 0 24 24"><circle cx="12" cy="12" r="8"/><path d="M12 8v4l3 2"/></svg>',
    sent: '<svg viewBox="0 0 24 24"><path d="M5 12.5l4.5 4.5L19 7.5"/></svg>',
    delivered: '<svg viewBox="0 0 24 24"><path d="M2 12.5l4.5 4.5L16 7.5M11 16l1 1 9.5-9.5"/></svg>',
    read: '<svg viewBox="0 0 24 24"><path d="M2 12.5l4.5 4.5L16 7.5M11 16l1 1 9.5-9.5"/></svg>',
  };
  const STATUS_TEXT = {
    queued: "waiting for the connection", pending: "sending", sent: "sent", delivered: "delivered",
    read: "read", failed: "not sent",
  };

  function renderMessages() {
    const c = state.convs.get(state.active);
    const list = $("#message-list");
    if (!c) { list.replaceChildren(); return; }
    const box = $("#messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    const items = [];
    let prev = null;
    for (const m of c.messages) {
      const day = new Date(m.at).toDateString();
      if (!prev || new Date(prev.at).toDateString() !== day) {
        const d = el("li", "day", new Date(m.at).toLocaleDateString([], { weekday: "short", month: "short", day: "numeric" }));
        d.setAttribute("role", "separator");
        items.push(d);
      }
      if (m.kind === "event") {
        const e = el("li", "event", m.text);
        e.dataset.cseq = m.cseq ?? "";
        items.push(e);
        prev = m;
        continue;
      }
      const first = !prev || prev.from !== m.from || prev.mine !== m.mine || m.at - prev.at > 5 * 60000 ||
        new Date(prev.at).toDateString() !== day;
      const li = el("li", `msg ${m.mine ? "mine" : "theirs"}${first ? " first" : ""}${m.status === "failed" ? " failed" : ""}`);
      li.dataset.status = m.status;
      li.style.setProperty("--hue", hue(m.from));
      if (first && !m.mine && c.kind === "group") li.append(el("div", "sender", m.name || `User ${m.from}`));
      const bubble = el("div", "bubble");
      const text = el("span", "text", m.text);
      const meta = el("span", "meta");
      const time = el("time", "", new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      time.dateTime = new Date(m.at).toISOString();
      meta.append(time);
      if (m.mine && ICONS[m.status]) {
        const icon = el("span", `mark mark-${m.status}`);
        icon.innerHTML = ICONS[m.status];  // constant markup, never user text
        icon.title = STATUS_TEXT[m.status];
        meta.append(icon);
      }
      bubble.append(text, meta);
      li.append(bubble);
      const who = m.mine ? "You" : (m.name || `User ${m.from}`);
      li.setAttribute("aria-label", `${who}: ${m.text}, ${time.textContent}${m.mine ? ", " + STATUS_TEXT[m.status] : ""}`);
      if (m.status === "failed") {
        const retry = el("button", "retry", `Not sent${m.error ? " (" + m.error + ")" : ""}. Retry`);
        retry.type = "button";
        retry.addEventListener("click", () => transmit(c, m));
        li.append(retry);
      }
      items.push(li);
      prev = m;
    }
    list.replaceChildren(...items);
    renderHistoryStatus(c);
    if (atBottom) scrollToBottom(false);
  }

  function renderHistoryStatus(c) {
    const s = $("#history-status");
    if (c.loadingHistory) s.textContent = "Loading earlier messages…";
    else if (!state.sync) s.textContent = c.messages.length ? "Earlier messages are kept on this device only" : "";
    else if (c.historyDone) s.textContent = c.messages.length ? "Start of the conversation" : "";
    else s.textContent = "";
  }

  function scrollToBottom(always) {
    const box = $("#messages");
    if (always || box) box.scrollTop = box.scrollHeight;
  }

  function openConv(key, { focus = true } = {}) {
    state.active = key;
    const c = conv(key);
    $("#chat").classList.add("in-conversation");
    $("#conv-menu").hidden = true;
    $("#conv-menu-button").setAttribute("aria-expanded", "false");
    if (c.kind === "group" && state.groups.has(c.peer)) refreshMembers(c.peer);
    if (document.visibilityState === "visible") read(c);
    renderAll();
    scrollToBottom(true);
    if (state.sync && !c.historyDone && c.messages.length < 20) {
      loadHistory(c);
    }
    if (focus) (closedReason(c) ? $("#messages") : $("#message-input")).focus();
    save();
  }

  function toggleMenu(sel, open) {
    const menu = $(sel);
    menu.hidden = !open;
    $(`${sel}-button`).setAttribute("aria-expanded", String(open));
    if (open) menu.querySelector("button")?.focus();
  }

  function toggleMembers(open) {
    $("#members").hidden = !open;
    $("#members-button").setAttribute("aria-expanded", String(open));
    if (open && state.active && state.active[0] === "g") refreshMembers(Number(state.active.slice(2)));
  }

  function closeConv() {
    state.active = null;
    $("#chat").classList.remove("in-conversation");
    renderAll();
  }

  // ------------------------------------------------------------ notifications
  function notify(c, m) {
    if (!state.notify || !("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState === "visible" && state.active === c.key) return;
    const title = c.kind === "group" ? `${m.name} in ${convName(c)}` : convName(c);
    const n = new Notification(title, { body: m.text.slice(0, 200), tag: c.key, icon: "icon.svg" });
    n.onclick = () => { window.focus(); openConv(c.key); n.close(); };
  }

  function notifyText(title, body, tag) {
    if (!state.notify || !("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState === "visible") return;
    const n = new Notification(title, { body: body.slice(0, 200), tag, icon: "icon.svg" });
    n.onclick = () => { window.focus(); n.close(); };
  }

  function updateNotifyItem() {
    const item = $("#notify-item");
    if (!("Notification" in window)) { item.hidden = true; return; }
    item.textContent = state.notify && Notification.permission === "granted"
      ? "Turn off desktop notifications" : "Turn on desktop notifications";
  }

  async function toggleNotifications() {
    if (state.notify && Notification.permission === "granted") {
      state.notify = false;
    } else {
      const p = await Notification.requestPermission();
      state.notify = p === "granted";
      if (p !== "granted") toast("Notifications are blocked for this site in the browser's settings.");
    }
    storage.set("gchat.notify", state.notify);
    updateNotifyItem();
  }

  // ------------------------------------------------------------ dialogs
  // One dialog for add friend / new group / join group: `act` answers an
  // error to show (the dialog stays open) or null (done, it closes).
  function ask({ title, ok, fields, text, danger }, act) {
    const dialog = $("#dialog");
    $("#dialog-title").textContent = title;
    $("#dialog-ok").textContent = ok;
    $("#dialog-ok").classList.toggle("danger", !!danger);
    $("#dialog-text").textContent = text || "";
    $("#dialog-text").hidden = !text;
    $("#dialog-error").textContent = "";
    const box = $("#dialog-fields");
    box.replaceChildren();
    for (const f of fields) {
      const label = el("label", "", f.label);
      label.htmlFor = `dialog-${f.name}`;
      const input = el("input");
      input.id = `dialog-${f.name}`;
      input.name = f.name;
      input.autocomplete = "off";
      if (f.numeric) { input.inputMode = "numeric"; input.pattern = "[0-9]*"; }
      if (f.max) input.maxLength = f.max;
      input.required = !!f.required;
      box.append(label, input);
    }
    const form = $("#dialog-form");
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const f of fields) values[f.name] = box.querySelector(`[name="${f.name}"]`).value.trim();
      $("#dialog-ok").disabled = true;
      let error;
      try { error = await act(values); } catch (e) { error = e.message; }
      $("#dialog-ok").disabled = false;
      if (error === null) dialog.close();
      else $("#dialog-error").textContent = error;
    };
    $("#dialog-cancel").onclick = () => dialog.close();
    dialog.showModal();
    (box.querySelector("input") || (danger ? $("#dialog-cancel") : $("#dialog-ok"))).focus();
  }

  function asId(text) {
    const n = Number(text);
    return Number.isInteger(n) && n >= 0 && text !== "" ? n : null;
  }

  function createGroup() {
    ask({ title: "New group", ok: "Create", fields: [
      { name: "name", label: "Group name", max: 50, required: true },
      { name: "desc", label: "Description (optional)", max: 200 }] },
    async ({ name, desc }) => {
      if (!name) return "The group needs a name.";
      const ack = await link.request({ msgid: MSG.CREATE_GROUP, groupname: name, groupdesc: desc });
      if (ack.errno === 8) return "A group with that name exists already.";
      if (ack.errno !== 0) return ack.errmsg || `error ${ack.errno}`;
      const members = new Map([[state.me.id, { id: state.me.id, name: state.me.name, state: "online", role: "creator" }]]);
      state.groups.set(ack.groupid, { id: ack.groupid, name, desc, members });
      conv(`g:${ack.groupid}`);
      setTimeout(() => openConv(`g:${ack.groupid}`), 0);
      toast(`Group ${name} created: others join it with the id ${ack.groupid}.`);
      return null;
    });
  }

  function signOut() {
    if (link.ready && state.loggedIn) link.post({ msgid: MSG.LOGOUT });  // revokes the resume token
    const s = session();
    storage.set("gchat.session", s ? { id: s.id, name: s.name } : null);
    state.loggedIn = false;
    state.me = null;
    state.convs.clear();
    state.friends.clear();
    state.groups.clear();
    state.requests.in.clear();
    state.requests.out.clear();
    state.blocked.clear();
    state.active = null;
    $("#chat").classList.remove("in-conversation");
    $("#login-password").value = "";
    showAuth();
  }

  // screen readers hear each new message once (the list itself is redrawn)
  function announce(text) {
    const box = $("#announcer");
    box.textContent = "";
    setTimeout(() => { box.textContent = text.slice(0, 300); }, 50);
  }

  let toastTimer = null;
  function toast(text) {
    const t = $("#toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // ------------------------------------------------------------ wiring
  function selectTab(which) {
    const login = which === "login";
    $("#tab-login").setAttribute("aria-selected", String(login));
    $("#tab-register").setAttribute("aria-selected", String(!login));
    $("#tab-login").tabIndex = login ? 0 : -1;
    $("#tab-register").tabIndex = login ? -1 : 0;
    $("#login-form").hidden = !login;
    $("#register-form").hidden = login;
    authError("");
  }

  function wire() {
    $("#tab-login").addEventListener("click", () => selectTab("login"));
    $("#tab-register").addEventListener("click", () => selectTab("register"));
    for (const tab of [$("#tab-login"), $("#tab-register")]) {
      tab.addEventListener("keydown", (ev) => {
        if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
          const next = tab.id === "tab-login" ? "register" : "login";
          selectTab(next);
          $(`#tab-${next}`).focus();
        }
      });
    }
    $("#login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = asId($("#login-id").value.trim());
      const password = $("#login-password").value;
      if (id === null) { authError("Your user id is a number (you got it when you created the account)."); return; }
      if (!password) { authError("Enter your password."); return; }
      if (!link.ready) { authError("Not connected yet: wait a moment."); return; }
      const button = ev.target.querySelector("button");
      button.disabled = true;
      await login({ id, password }, false);
      button.disabled = false;
    });
    $("#register-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = $("#register-name").value.trim();
      const password = $("#register-password").value;
      if (!name) { authError("Choose a name."); return; }
      if (!password) { authError("Choose a password."); return; }
      if (!link.ready) { authError("Not connected yet: wait a moment."); return; }
      const button = ev.target.querySelector("button");
      button.disabled = true;
      try {
        const reply = await link.request({ msgid: MSG.REG, name, password });
        if (reply.errno !== 0) {
          authError(reply.errno === 1 ? "That name is taken (or not allowed): try another." : reply.errmsg);
        } else if (await login({ id: reply.id, password }, false)) {
          toast(`Welcome! Your user id is ${reply.id}: friends add you with it.`);
        }
      } catch (e) {
        authError(e.message);
      }
      button.disabled = false;
    });

    const input = $("#message-input");
    $("#composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      send(input.value);
      input.value = "";
      grow();
      input.focus();
    });
    const grow = () => { input.style.height = "auto"; input.style.height = `${Math.min(input.scrollHeight, 144)}px`; };
    input.addEventListener("input", grow);
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("#composer").requestSubmit();
      }
    });

    $("#messages").addEventListener("scroll", () => {
      const c = state.convs.get(state.active);
      if (c && $("#messages").scrollTop < 40) loadHistory(c);
    });
    $("#back").addEventListener("click", closeConv);
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape" || document.querySelector("dialog[open]") || ev.target.closest("dialog")) return;
      if (!$("#menu").hidden) { toggleMenu("#menu", false); $("#menu-button").focus(); }
      else if (!$("#conv-menu").hidden) { toggleMenu("#conv-menu", false); $("#conv-menu-button").focus(); }
      else if (!$("#members").hidden && state.active) { toggleMembers(false); $("#members-button").focus(); }
      else if (state.active) closeConv();
    });
    $("#members-button").addEventListener("click", () => toggleMembers($("#members").hidden));
    $("#filter").addEventListener("input", (ev) => { state.filter = ev.target.value; renderLists(); });

    $("#menu-button").addEventListener("click", () => toggleMenu("#menu", $("#menu").hidden));
    $("#conv-menu-button").addEventListener("click", () => {
      const c = state.convs.get(state.active);
      if (!c) return;
      if ($("#conv-menu").hidden) {
        $("#conv-menu").replaceChildren(...convMenuItems(c).map(([label, act]) => {
          const li = el("li");
          li.setAttribute("role", "none");
          const b = el("button", "", label);
          b.type = "button";
          b.setAttribute("role", "menuitem");
          b.addEventListener("click", () => { toggleMenu("#conv-menu", false); act(); });
          li.append(b);
          return li;
        }));
      }
      toggleMenu("#conv-menu", $("#conv-menu").hidden);
    });
    document.addEventListener("click", (ev) => {
      if (!$("#menu").hidden && !ev.target.closest(".me")) toggleMenu("#menu", false);
      if (!$("#conv-menu").hidden && !ev.target.closest(".conv-header")) toggleMenu("#conv-menu", false);
    });
    $("#menu").addEventListener("click", (ev) => {
      const action = ev.target.closest("button")?.dataset.action;
      if (!action) return;
      toggleMenu("#menu", false);
      ({ "add-friend": () => openFinder("people"), "create-group": createGroup, "join-group": () => openFinder("groups"),
         notifications: toggleNotifications, "sign-out": signOut })[action]();
    });
    for (const menu of [$("#menu"), $("#conv-menu")]) {
      menu.addEventListener("keydown", (ev) => {
        const items = [...menu.querySelectorAll("button:not([hidden])")];
        const i = items.indexOf(document.activeElement);
        if (ev.key === "ArrowDown") { ev.preventDefault(); items[(i + 1) % items.length].focus(); }
        if (ev.key === "ArrowUp") { ev.preventDefault(); items[(i - 1 + items.length) % items.length].focus(); }
      });
    }

    // the finder searches as you type (a moment after the last key)
    $("#finder-query").addEventListener("input", () => {
      clearTimeout(finder.timer);
      finder.timer = setTimeout(() => search(false), 250);
    });
    $("#finder-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearTimeout(finder.timer);
      search(false);
    });
    $("#finder-more").addEventListener("click", () => { finder.page += 1; search(true); });
    $("#finder-close").addEventListener("click", () => $("#finder").close());
    // a closed dialog gives the focus back to where the user was, or else
    // to the menu it was opened from (its item is hidden by then)
    for (const d of [$("#finder"), $("#dialog")]) {
      d.addEventListener("close", () => {
        if (document.activeElement === document.body || !document.activeElement) {
          (state.active && !$("#composer").hidden ? $("#message-input") : $("#menu-button")).focus();
        }
      });
    }
    $("#composer-note-action").addEventListener("click", () => {
      const c = state.convs.get(state.active);
      if (c && c.kind === "user") setBlocked(c.peer, false);
    });

    $("#reconnect-now").addEventListener("click", () => { link.attempt = 0; link.connect(); });
    window.addEventListener("online", () => { if (!link.ready) link.connect(); });
    // Leaving the page (a reload, another site): close the socket now, so the
    // user goes offline at once and the next page's login is not refused as
    // "already online". A page kept in the back-forward cache reconnects.
    window.addEventListener("pagehide", () => { if (saveTimer) saveNow(); link.close(); });
    window.addEventListener("pageshow", (ev) => { if (ev.persisted) { link.attempt = 0; link.connect(); } });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState !== "visible") { if (saveTimer) saveNow(); return; }
      const c = state.convs.get(state.active);
      if (c && c.unread) { read(c); renderAll(); save(); }
      if (!link.ready && !link.stopped) link.connect();
    });
    updateNotifyItem();
  }

  wire();
  const saved = session();
  if (saved && saved.token) {
    // a reload: show this device's copy of the conversations at once; the
    // login (with the resume token) brings the rest
    state.me = { id: saved.id, name: saved.name };
    restore();
    showChat();
    renderAll();
  } else {
    showAuth();
  }
  link.connect();
})();
