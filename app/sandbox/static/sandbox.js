// The sandbox page: a Slack-like view of what the service posted to the local fake Slack.
//
// Plain script, no framework and no build step. Everything this script writes is text
// (textContent, attributes via the DOM); the only HTML it assigns is the server's rendering of
// Block Kit (state.messages[…].html, ephemerals[…].html, home.html, modal.html), which
// app/sandbox/blockkit.py escapes. The page works under `Content-Security-Policy: default-src 'self'`.
//
// Server contract: GET /sandbox/state?user=U…, the SSE stream /sandbox/events (data: the new state
// version), and POSTs of JSON to /sandbox/act, /sandbox/submit, /sandbox/close-modal,
// /sandbox/dismiss, /sandbox/command, /sandbox/home and /sandbox/demo/request ({}: no fields).
"use strict";

(function () {
  const APP_NAME = "Approvals";
  const HOME = "home";
  const TOAST_MS = 6000;

  const query = new URLSearchParams(window.location.search);
  // Who we are and what we look at; kept in the URL so a reload shows the same.
  const view = {
    user: query.get("user") || null,
    conversation: query.get("c") || null,
  };
  let state = null; // the last state rendered
  let pickDm = false; // after a user switch from a DM: show the new user's DM
  let openHomePending = view.conversation === HOME; // POST /sandbox/home once the user is known
  const rendered = { sidebar: "", header: "", modal: "", modalViewId: "", demo: "" };
  const seen = {}; // user -> conversation -> count of items seen: the unread marks

  const byId = (id) => document.getElementById(id);

  // -- small DOM helpers (text only) -------------------------------------------------------------

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  let toastTimer = null;
  function toast(message) {
    const box = byId("toast");
    box.textContent = String(message);
    box.hidden = false;
    window.clearTimeout(toastTimer);
    toastTimer = window.setTimeout(() => {
      box.hidden = true;
    }, TOAST_MS);
  }

  function formatTime(ts) {
    const seconds = Number(String(ts || "").split(".")[0]);
    if (!Number.isFinite(seconds) || seconds <= 0) return { text: "", iso: "" };
    const when = new Date(seconds * 1000);
    return {
      text: when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
      iso: when.toISOString(),
    };
  }

  // -- talking to the server ---------------------------------------------------------------------

  // POST a JSON object (the server takes actions as JSON only, so a bodiless one sends {}). Returns the parsed answer or null; an `error`
  // in the answer, or a failed request without one, is shown in the toast.
  async function post(url, body) {
    const init = {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body === undefined ? {} : body),
    };
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      toast("The sandbox server did not answer (" + err.message + ").");
      return null;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (data && data.error && !data.errors) {
      toast(errorText(data.error)); // with `errors`, the modal shows them by their fields instead
    } else if (!response.ok && !(data && data.errors)) {
      toast(url + " answered HTTP " + response.status + ".");
    }
    return data;
  }

  // An `error` is a sentence, or (from the guards) {code, message}.
  function errorText(error) {
    if (error && typeof error === "object") return String(error.message || error.code || JSON.stringify(error));
    return String(error);
  }

  // One state fetch at a time; a request for another while one runs makes one more run after it,
  // so answers never arrive out of order and no change is missed.
  let loading = false;
  let loadAgain = false;
  async function refresh() {
    if (loading) {
      loadAgain = true;
      return;
    }
    loading = true;
    try {
      do {
        loadAgain = false;
        await load();
      } while (loadAgain);
    } finally {
      loading = false;
    }
  }

  async function load() {
    const user = view.user;
    const url = "/sandbox/state" + (user ? "?user=" + encodeURIComponent(user) : "");
    let next;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) {
        let detail = "HTTP " + response.status;
        try {
          const data = await response.json();
          if (data && data.error) detail = errorText(data.error);
        } catch (err) {
          // not JSON: the status says enough
        }
        toast("Could not load the sandbox state (" + detail + ").");
        return;
      }
      next = await response.json();
    } catch (err) {
      toast("Could not load the sandbox state (" + err.message + ").");
      return;
    }
    if (view.user !== user) return; // the user was switched meanwhile: another load follows
    if (!view.user) {
      view.user = next.me || (next.users && next.users[0] && next.users[0].id) || null;
    }
    if (state && state.version === next.version && state.me === next.me) return; // nothing new
    state = next;
    chooseConversation();
    render();
    if (openHomePending && view.conversation === HOME && view.user) {
      openHomePending = false;
      post("/sandbox/home", { user: view.user });
    }
  }

  function conversations() {
    return (state && state.conversations) || [];
  }

  function chooseConversation() {
    const ids = conversations().map((c) => c.id);
    if (pickDm) {
      pickDm = false;
      const dm = conversations().find((c) => c.kind === "dm");
      if (dm) view.conversation = dm.id;
    }
    if (view.conversation !== HOME && !ids.includes(view.conversation)) {
      view.conversation = ids.length ? ids[0] : HOME;
      if (view.conversation === HOME) openHomePending = true;
    }
    saveUrl();
  }

  function saveUrl() {
    const search = new URLSearchParams();
    if (view.user) search.set("user", view.user);
    if (view.conversation) search.set("c", view.conversation);
    window.history.replaceState(null, "", window.location.pathname + "?" + search.toString());
  }

  // -- rendering ---------------------------------------------------------------------------------

  function render() {
    if (!state) return;
    renderSidebar();
    renderMain();
    renderModal();
    renderDemo();
  }

  function itemsIn(conversationId) {
    const messages = (state.messages && state.messages[conversationId]) || [];
    const ephemerals = (state.ephemerals || []).filter((e) => e.conversation === conversationId);
    return messages.length + ephemerals.length;
  }

  function isUnread(conversationId) {
    const mine = (seen[view.user] = seen[view.user] || {});
    const count = itemsIn(conversationId);
    if (conversationId === view.conversation || !(conversationId in mine)) {
      mine[conversationId] = count;
      return false;
    }
    return count > mine[conversationId];
  }

  function renderSidebar() {
    const unread = conversations().map((c) => isUnread(c.id));
    const key = JSON.stringify([state.me, state.users, state.team, conversations(), view.conversation, unread]);
    if (key === rendered.sidebar) return;
    rendered.sidebar = key;

    byId("team-name").textContent = (state.team && state.team.name) || "Sandbox";
    const select = byId("user-select");
    const options = (state.users || []).map((u) => {
      const option = make("option", null, u.name + (u.title ? " (" + u.title + ")" : ""));
      option.value = u.id;
      return option;
    });
    select.replaceChildren(...options);
    select.value = view.user || "";

    const list = byId("conversation-list");
    const entries = [{ id: HOME, name: "Home", kind: "home" }, ...conversations()];
    list.replaceChildren(
      ...entries.map((c, index) => {
        const item = make("li");
        const button = make("button", "conversation-link conversation-" + c.kind, c.name);
        button.type = "button";
        button.dataset.conversation = c.id;
        if (c.id === view.conversation) button.setAttribute("aria-current", "page");
        if (index > 0 && unread[index - 1]) button.classList.add("unread");
        item.append(button);
        return item;
      }),
    );
  }

  function conversationName(id) {
    if (id === HOME) return "Home";
    const found = conversations().find((c) => c.id === id);
    return found ? found.name : id;
  }

  function renderMain() {
    const name = conversationName(view.conversation);
    byId("conversation-title").textContent = name;
    document.title = name + " · " + APP_NAME + " sandbox";
    const composer = byId("composer");
    const onHome = view.conversation === HOME;
    composer.disabled = onHome;
    byId("composer-send").disabled = onHome;
    composer.placeholder = onHome
      ? "The App Home tab has no composer"
      : "Type a slash command, e.g. /approvals";
    if (onHome) renderHome();
    else renderMessages();
  }

  function renderHome() {
    const box = byId("messages");
    const html = state.home ? state.home.html : null;
    const key = "home\n" + view.user + "\n" + html;
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    const container = make("div", "home-view");
    container.dataset.conversation = HOME;
    if (html === null) {
      container.append(make("p", "empty", "Opening the App Home tab…"));
    } else {
      container.innerHTML = html; // server-rendered Block Kit (blockkit.render_view)
    }
    box.replaceChildren(container);
  }

  function renderMessages() {
    const box = byId("messages");
    const conversationId = view.conversation;
    const messages = (state.messages && state.messages[conversationId]) || [];
    const ephemerals = (state.ephemerals || []).filter((e) => e.conversation === conversationId);
    const wanted = [
      ...messages.map((m) => ({ key: "m:" + m.ts, sig: (m.edited ? "e" : "") + m.html, item: m, ephemeral: false })),
      ...ephemerals.map((e) => ({ key: "e:" + e.id, sig: e.html, item: e, ephemeral: true })),
    ];
    const boxKey = "conversation\n" + view.user + "\n" + conversationId;
    const switched = box.dataset.key !== boxKey;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const scrollTop = box.scrollTop;
    if (switched) {
      box.dataset.key = boxKey;
      box.replaceChildren();
    }
    // Keep the nodes of messages that did not change (and with them focus and selection).
    const existing = new Map();
    for (const node of box.children) if (node.dataset.key) existing.set(node.dataset.key, node);
    const nodes = wanted.map((w) => {
      const old = existing.get(w.key);
      if (old && old.dataset.sig === w.sig) {
        existing.delete(w.key);
        return old;
      }
      const node = messageNode(w, conversationId);
      node.dataset.key = w.key;
      node.dataset.sig = w.sig;
      return node;
    });
    if (!nodes.length) nodes.push(make("p", "empty", "No messages yet."));
    // Move only what is out of place: an unchanged node is never detached, so it keeps its focus.
    nodes.forEach((node, index) => {
      const current = box.children[index];
      if (current !== node) box.insertBefore(node, current || null);
    });
    while (box.children.length > nodes.length) box.lastElementChild.remove();
    if (switched || atBottom) box.scrollTop = box.scrollHeight;
    else box.scrollTop = scrollTop;
  }

  function messageNode(w, conversationId) {
    const node = make("div", w.ephemeral ? "message ephemeral" : "message");
    node.dataset.ts = w.item.ts || "";
    node.dataset.conversation = conversationId;
    if (w.ephemeral) node.dataset.ephemeralId = w.item.id;

    node.append(make("div", "message-avatar", APP_NAME.charAt(0)));
    const content = make("div", "message-content");
    const meta = make("div", "message-meta");
    meta.append(make("span", "message-author", APP_NAME), make("span", "message-app", "APP"));
    const time = formatTime(w.item.ts);
    const stamp = make("time", "message-time", time.text);
    if (time.iso) stamp.dateTime = time.iso;
    meta.append(stamp);
    if (w.item.edited) meta.append(make("span", "message-edited", "(edited)"));
    content.append(meta);
    if (w.ephemeral) {
      const note = make("div", "ephemeral-note");
      const dismiss = make("a", "ephemeral-dismiss", "Dismiss");
      dismiss.href = "#";
      dismiss.setAttribute("role", "button");
      dismiss.dataset.ephemeralId = w.item.id;
      note.append(make("span", "ephemeral-label", "Only visible to you"), " · ", dismiss);
      content.append(note);
    }
    const body = make("div", "message-body");
    body.innerHTML = w.item.html; // server-rendered Block Kit (blockkit.render_blocks)
    content.append(body);
    node.append(content);
    return node;
  }

  function renderModal() {
    const modal = state.modal;
    const overlay = byId("modal");
    const dialog = byId("modal-dialog");
    const key = modal ? modal.view_id + "\n" + modal.html : "";
    if (key === rendered.modal) return;
    rendered.modal = key;
    if (!modal) {
      overlay.hidden = true;
      dialog.replaceChildren();
      rendered.modalViewId = "";
      return;
    }
    // The same view updated (views.update): keep what the user typed.
    const typed = {};
    if (rendered.modalViewId === modal.view_id) {
      for (const control of dialog.querySelectorAll("input[name], textarea[name]")) typed[control.name] = control.value;
    }
    const fresh = rendered.modalViewId !== modal.view_id;
    rendered.modalViewId = modal.view_id;
    dialog.innerHTML = modal.html; // server-rendered Block Kit (blockkit.render_view)
    dialog.dataset.viewId = modal.view_id;
    if (modal.title) dialog.setAttribute("aria-label", modal.title);
    for (const control of dialog.querySelectorAll("input[name], textarea[name]")) {
      if (control.name in typed) control.value = typed[control.name];
    }
    overlay.hidden = false;
    if (fresh) {
      const first = dialog.querySelector("input:not([type=hidden]), textarea, button");
      if (first) first.focus();
    }
  }

  function renderDemo() {
    const demo = state.demo || { requests: [], callbacks: [] };
    const key = JSON.stringify(demo);
    if (key === rendered.demo) return;
    rendered.demo = key;

    const requests = demo.requests || [];
    const requestList = byId("demo-requests");
    requestList.replaceChildren(
      ...(requests.length
        ? requests.map((r) => {
            const item = make("li", "demo-request");
            item.dataset.requestId = r.request_id;
            item.append(make("code", "demo-request-id", r.request_id), " ", make("span", "demo-request-status", r.status));
            return item;
          })
        : [make("li", "empty", "None yet.")]),
    );

    // Newest first: the callback that just arrived is the one the reader is waiting for.
    const callbacks = (demo.callbacks || []).slice().reverse();
    const callbackList = byId("demo-callbacks");
    callbackList.replaceChildren(
      ...(callbacks.length
        ? callbacks.map((c) => {
            const item = make("li", "callback");
            item.dataset.requestId = c.request_id || "";
            const head = make("div", "callback-head");
            const signature = make(
              "span",
              "callback-signature " + (c.verified ? "verified" : "invalid"),
              c.verified ? "signature verified" : "signature INVALID",
            );
            head.append(
              make("span", "callback-status", c.status),
              " ",
              make("code", "callback-request", c.request_id),
              " ",
              signature,
            );
            const when = make("time", "callback-time", c.received_at);
            when.dateTime = c.received_at || "";
            item.append(head, when, make("pre", "callback-body", prettyJson(c.body)));
            return item;
          })
        : [make("li", "empty", "No callbacks yet.")]),
    );
  }

  function prettyJson(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (err) {
      return String(text === undefined || text === null ? "" : text);
    }
  }

  // -- actions -----------------------------------------------------------------------------------

  function selectConversation(id) {
    if (id === view.conversation) return;
    view.conversation = id;
    saveUrl();
    if (id === HOME && view.user) post("/sandbox/home", { user: view.user }); // app_home_opened
    render();
  }

  function switchUser(userId) {
    if (!userId || userId === view.user) return;
    const current = conversations().find((c) => c.id === view.conversation);
    pickDm = Boolean(current && current.kind === "dm");
    view.user = userId;
    state = null;
    rendered.modal = "";
    rendered.modalViewId = "";
    openHomePending = view.conversation === HOME;
    saveUrl();
    refresh();
  }

  async function act(button) {
    const message = button.closest(".message");
    const home = button.closest(".home-view");
    if (!message && !home) return;
    const body = {
      user: view.user,
      conversation: message ? message.dataset.conversation : HOME,
      message_ts: message ? message.dataset.ts || null : null,
      action_id: button.dataset.actionId || "",
      block_id: button.dataset.blockId || null,
      value: button.dataset.value === undefined ? null : button.dataset.value,
      ephemeral_id: message ? message.dataset.ephemeralId || null : null,
    };
    await post("/sandbox/act", body);
    refresh();
  }

  async function dismiss(ephemeralId) {
    await post("/sandbox/dismiss", { user: view.user, ephemeral_id: ephemeralId });
    refresh();
  }

  async function submitModal() {
    const dialog = byId("modal-dialog");
    const viewId = dialog.dataset.viewId;
    const values = {};
    for (const control of dialog.querySelectorAll("input[data-action-id], textarea[data-action-id]")) {
      const blockId = control.dataset.blockId || "";
      values[blockId] = values[blockId] || {};
      values[blockId][control.dataset.actionId] = control.value;
    }
    for (const error of dialog.querySelectorAll(".bk-error")) error.textContent = "";
    const answer = await post("/sandbox/submit", { user: view.user, view_id: viewId, values: values });
    if (answer && answer.ok) {
      hideModal();
    } else if (answer && answer.errors) {
      const unplaced = [];
      for (const [blockId, message] of Object.entries(answer.errors)) {
        const slot = Array.from(dialog.querySelectorAll(".bk-error")).find((e) => e.dataset.errorFor === blockId);
        if (slot) slot.textContent = message;
        else unplaced.push(message);
      }
      if (unplaced.length) toast([errorText(answer.error || "")].concat(unplaced).join(" ").trim());
    }
    refresh();
  }

  async function closeModal() {
    const viewId = byId("modal-dialog").dataset.viewId;
    hideModal();
    await post("/sandbox/close-modal", { user: view.user, view_id: viewId });
    refresh();
  }

  function hideModal() {
    byId("modal").hidden = true;
    byId("modal-dialog").replaceChildren();
    rendered.modal = "";
    rendered.modalViewId = "";
  }

  async function sendCommand() {
    const composer = byId("composer");
    const text = composer.value.trim();
    if (!text) return;
    if (!text.startsWith("/")) {
      toast("Only slash commands can be sent here, e.g. /approvals");
      return;
    }
    const answer = await post("/sandbox/command", { user: view.user, conversation: view.conversation, text: text });
    if (answer && !answer.error) composer.value = "";
    refresh();
  }

  async function demoRequest() {
    const button = byId("demo-request");
    button.disabled = true; // one sample per click: the agent posts as soon as it is asked
    try {
      await post("/sandbox/demo/request"); // no fields: sent as {}
    } finally {
      button.disabled = false;
    }
    refresh();
  }

  // -- wiring ------------------------------------------------------------------------------------

  function wire() {
    document.addEventListener("click", (event) => {
      const target = event.target instanceof Element ? event.target : null;
      if (!target) return;
      if (target.closest("#modal-close")) {
        event.preventDefault();
        closeModal();
        return;
      }
      const link = target.closest("#conversation-list [data-conversation]");
      if (link) {
        selectConversation(link.dataset.conversation);
        return;
      }
      const dismissLink = target.closest(".ephemeral-dismiss");
      if (dismissLink) {
        event.preventDefault();
        dismiss(dismissLink.dataset.ephemeralId);
        return;
      }
      // Link buttons are <a> elements and are left alone: they open in a new tab, as in Slack.
      const button = target.closest("button.bk-button");
      if (button && !button.disabled && !button.closest("#modal")) {
        event.preventDefault();
        act(button);
      }
    });
    // The modal is a form: the browser checks required/minlength/maxlength first, as Slack's client does.
    document.addEventListener("submit", (event) => {
      if (event.target && event.target.id === "modal-form") {
        event.preventDefault();
        submitModal();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !byId("modal").hidden) closeModal();
    });
    byId("composer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sendCommand();
    });
    byId("user-select").addEventListener("change", (event) => switchUser(event.target.value));
    byId("demo-request").addEventListener("click", demoRequest);
    byId("toast").addEventListener("click", () => {
      byId("toast").hidden = true;
    });
  }

  function listen() {
    const status = byId("connection-status");
    const source = new EventSource("/sandbox/events");
    source.onmessage = (event) => {
      const version = Number(event.data);
      if (state && Number.isFinite(version) && version === state.version) return;
      refresh();
    };
    source.onopen = () => {
      status.textContent = "Live";
      status.className = "live";
      refresh(); // (re)connected: catch up on anything sent while away
    };
    source.onerror = () => {
      status.textContent = "Reconnecting…";
      status.className = "offline";
    };
  }

  wire();
  refresh();
  listen();
})();
