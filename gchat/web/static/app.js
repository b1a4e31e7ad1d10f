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
"use strict";

(() => {
  const MSG = {
    LOGIN: 1, LOGIN_ACK: 2, REG: 3, REG_ACK: 4, ONE_CHAT: 5, ADD_FRIEND: 6, CREATE_GROUP: 7,
    ADD_GROUP: 8, GROUP_CHAT: 9, LOGOUT: 10, ACK: 11, RECEIVED: 12, READ: 13, READ_RECEIPT: 14, HISTORY: 16,
  };
  const ERR = { AUTH: 1, ONLINE: 2, RATE: 10, UNAVAILABLE: 11 };
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
            from: m.from, name: m.name, text: m.text, at: m.at, mine: m.mine,
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
      reply = await link.request({ msgid: MSG.LOGIN, ...credentials, resume: true, sync: true });
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
        const key = cv.kind === "group" ? `g:${cv.groupid}` : `u:${cv.with}`;
        const c = conv(key);
        c.conv = cv.conv;
        c.last = cv.last;
        c.read = cv.read;
        c.peerRead = cv.peer_read || 0;
        state.byServerConv.set(cv.conv, key);
        for (const text of cv.msgs || []) incoming(JSON.parse(text), true);
        c.unread = cv.unread || 0;
        if (cv.more) c.gap = true;  // more than a page waited: the newest page comes from history
        markPeerRead(c);
        if (cv.msgs && cv.msgs.length) received(c);
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
    if (m.msgid !== MSG.ONE_CHAT && m.msgid !== MSG.GROUP_CHAT) return;
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
    } else if (m.msgid === MSG.ACK && m.errno) {
      if (m.errno === ERR.RATE) toast("Slow down a little: the server is rate limiting you.");
    }
  }

  function markPeerRead(c) {
    for (const m of c.messages) if (m.mine && m.cseq && m.cseq <= c.peerRead) m.status = "read";
  }

  // section D: say what arrived and what was read (when the server has the log)
  const receivedTimers = new Map();
  function received(c) {
    if (!state.sync || c.conv === null || !c.last) return;
    clearTimeout(receivedTimers.get(c.key));
    receivedTimers.set(c.key, setTimeout(() => link.post({ msgid: MSG.RECEIVED, conv: c.conv, cseq: c.last }), 150));
  }

  function read(c) {
    c.unread = 0;
    if (state.sync && c.conv !== null && c.last > c.read) {
      c.read = c.last;
      link.post({ msgid: MSG.READ, conv: c.conv, cseq: c.last });
    }
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
    }
    save();
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

  function renderLists() {
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
  }

  function lastAt(c) { return c.messages.length ? c.messages[c.messages.length - 1].at : 0; }

  function fillList(ul, convs) {
    ul.replaceChildren(...convs.map((c) => {
      const li = el("li");
      const b = el("button", "conv-item");
      b.type = "button";
      b.dataset.key = c.key;
      if (state.active === c.key) b.setAttribute("aria-current", "true");
      const av = el("div", "avatar");
      av.setAttribute("aria-hidden", "true");
      const name = convName(c);
      let presence = null;
      let status = "";
      if (c.kind === "user") {
        const f = state.friends.get(c.peer);
        presence = f && f.state === "online" ? "online" : "offline";
        status = f ? (f.state === "online" ? "online" : "offline") : "not in your friends";
      } else {
        const g = state.groups.get(c.peer);
        status = g ? `${g.members.size} member${g.members.size === 1 ? "" : "s"}` : "group";
      }
      paintAvatar(av, name, c.peer, c.kind === "group", presence);
      const main = el("div", "conv-main");
      const top = el("div", "conv-top");
      top.append(el("span", "conv-name", name));
      const last = c.messages[c.messages.length - 1];
      if (last) top.append(el("span", "conv-time", fmtTime(last.at)));
      const bottom = el("div", "conv-bottom");
      const preview = last ? (last.mine ? `You: ${last.text}` : (c.kind === "group" ? `${last.name}: ${last.text}` : last.text)) : status;
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

  function renderHeader() {
    const c = state.convs.get(state.active);
    const has = !!c;
    $("#placeholder").hidden = has;
    $("#conv-header").hidden = !has;
    $("#conv-body").hidden = !has;
    $("#composer").hidden = !has;
    if (!c) return;
    const name = convName(c);
    $("#conv-title").textContent = name;
    const av = $("#conv-avatar");
    if (c.kind === "user") {
      const f = state.friends.get(c.peer);
      const online = f && f.state === "online";
      paintAvatar(av, name, c.peer, false, online ? "online" : "offline");
      $("#conv-sub").textContent = f ? (online ? "online" : "offline") : `user ${c.peer} · not in your friends`;
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
      $("#members-button").hidden = false;
      $("#member-list").replaceChildren(...members
        .sort((a, b) => (a.role === "creator" ? -1 : 0) - (b.role === "creator" ? -1 : 0) || a.name.localeCompare(b.name))
        .map((m) => {
          const li = el("li");
          const mav = el("div", "avatar");
          mav.setAttribute("aria-hidden", "true");
          paintAvatar(mav, m.name, m.id, false, m.state === "online" ? "online" : "offline");
          li.append(mav, el("span", "", m.id === state.me.id ? `${m.name} (you)` : m.name));
          li.append(el("span", "role", m.role === "creator" ? "creator" : (m.state === "online" ? "online" : "")));
          li.setAttribute("aria-label", `${m.name}, ${m.state}${m.role === "creator" ? ", creator" : ""}`);
          return li;
        }));
    }
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
    if (document.visibilityState === "visible") read(c);
    renderAll();
    scrollToBottom(true);
    if (state.sync && !c.historyDone && (c.messages.length < 20 || c.gap)) {
      c.gap = false;
      loadHistory(c);
    }
    if (focus) $("#message-input").focus();
    save();
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
  function ask({ title, ok, fields }, act) {
    const dialog = $("#dialog");
    $("#dialog-title").textContent = title;
    $("#dialog-ok").textContent = ok;
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
    box.querySelector("input").focus();
  }

  function asId(text) {
    const n = Number(text);
    return Number.isInteger(n) && n >= 0 && text !== "" ? n : null;
  }

  function addFriend() {
    ask({ title: "Add a friend", ok: "Add", fields: [{ name: "id", label: "Their user id", numeric: true, required: true }] },
      async ({ id }) => {
        const friendid = asId(id);
        if (friendid === null) return "A user id is a number.";
        const ack = await link.request({ msgid: MSG.ADD_FRIEND, friendid });
        if (ack.errno === 8) return "Already in your friends.";
        if (ack.errno === 7) return `There is no user ${friendid}.`;
        if (ack.errno === 3 && friendid === state.me.id) return "That is you.";
        if (ack.errno !== 0) return ack.errmsg || `error ${ack.errno}`;
        const f = ack.friend || { id: friendid, name: `User ${friendid}`, state: "offline" };
        state.friends.set(f.id, { id: f.id, name: f.name, state: f.state });
        conv(`u:${f.id}`);
        toast(`${f.name} is now in your friends.`);
        setTimeout(() => openConv(`u:${f.id}`), 0);  // after the dialog gives the focus back
        return null;
      });
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

  function joinGroup() {
    ask({ title: "Join a group", ok: "Join", fields: [{ name: "id", label: "Group id", numeric: true, required: true }] },
      async ({ id }) => {
        const groupid = asId(id);
        if (groupid === null) return "A group id is a number.";
        const ack = await link.request({ msgid: MSG.ADD_GROUP, groupid });
        if (ack.errno === 8) return "You are in that group already.";
        if (ack.errno === 7) return `There is no group ${groupid}.`;
        if (ack.errno !== 0) return ack.errmsg || `error ${ack.errno}`;
        const info = ack.group;  // name and members, where the server sends them
        const members = new Map();
        for (const u of parseList(info && info.users)) members.set(u.id, { id: u.id, name: u.name, state: u.state, role: u.role });
        if (!members.has(state.me.id)) members.set(state.me.id, { id: state.me.id, name: state.me.name, state: "online", role: "normal" });
        state.groups.set(groupid, { id: groupid, name: (info && info.groupname) || `Group ${groupid}`,
                                    desc: (info && info.groupdesc) || "", members });
        conv(`g:${groupid}`);
        setTimeout(() => openConv(`g:${groupid}`), 0);
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
      if (ev.key === "Escape" && !$("#menu").hidden) { toggleMenu(false); $("#menu-button").focus(); }
      else if (ev.key === "Escape" && state.active && !$("#dialog").open) { closeConv(); }
    });
    $("#members-button").addEventListener("click", () => {
      const open = $("#members").hidden;
      $("#members").hidden = !open;
      $("#members-button").setAttribute("aria-expanded", String(open));
    });
    $("#filter").addEventListener("input", (ev) => { state.filter = ev.target.value; renderLists(); });

    const toggleMenu = (open) => {
      $("#menu").hidden = !open;
      $("#menu-button").setAttribute("aria-expanded", String(open));
      if (open) $("#menu button").focus();
    };
    $("#menu-button").addEventListener("click", () => toggleMenu($("#menu").hidden));
    document.addEventListener("click", (ev) => {
      if (!$("#menu").hidden && !ev.target.closest(".me")) toggleMenu(false);
    });
    $("#menu").addEventListener("click", (ev) => {
      const action = ev.target.closest("button")?.dataset.action;
      if (!action) return;
      toggleMenu(false);
      ({ "add-friend": addFriend, "create-group": createGroup, "join-group": joinGroup,
         notifications: toggleNotifications, "sign-out": signOut })[action]();
    });
    $("#menu").addEventListener("keydown", (ev) => {
      const items = [...$("#menu").querySelectorAll("button:not([hidden])")];
      const i = items.indexOf(document.activeElement);
      if (ev.key === "ArrowDown") { ev.preventDefault(); items[(i + 1) % items.length].focus(); }
      if (ev.key === "ArrowUp") { ev.preventDefault(); items[(i - 1 + items.length) % items.length].focus(); }
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
