// The migrate service's page (/services/migrate/): polls the control API with the page's
// OAuth cookie, shows each server (state, host, last checkpoint, history) and sends the
// verbs Migrate, Suspend, Resume and Cancel with JupyterHub's XSRF token. Plain
// JavaScript, no build step; its settings come from #migrate-config (service/page.py).
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("migrate-config").textContent);
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 10000;
  const VERBS = ["migrate", "suspend", "resume", "cancel"];
  // the verbs that fit a state, when the API does not list them itself (`actions`)
  const FITTING = {
    Running: ["migrate", "suspend", "cancel"],
    Suspended: ["resume", "cancel"],
    Stopped: ["resume"],
    Failed: ["resume", "cancel"],
  };
  const BADGE = {
    Running: "text-bg-success",
    Floating: "text-bg-warning",
    Starting: "text-bg-info",
    Suspended: "text-bg-secondary",
    Stopped: "text-bg-light border",
    Failed: "text-bg-danger",
  };

  const cards = new Map(); // "user/server" -> {el, data, history}
  const busy = new Set(); // keys with a verb in flight
  const serversEl = document.getElementById("servers");
  const errorEl = document.getElementById("migrate-error");
  let activeTab = "servers";
  let scrolled = false;

  // -- the API ---------------------------------------------------------------------------

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, method = "GET") {
    const options = {
      method,
      credentials: "same-origin",
      // JupyterHub's XSRF protection of cookie-authenticated requests (a script's fetch
      // needs it for GETs too: only a page navigation goes without)
      headers: { Accept: "application/json", "X-XSRFToken": config.xsrf },
    };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.body = "{}";
    }
    const resp = await fetch(config.api + path, options);
    const text = await resp.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (e) {
      body = { message: text };
    }
    if (!resp.ok) {
      throw new APIError(resp.status, (body && body.message) || resp.statusText);
    }
    return body;
  }

  // servers/alice for the default server (not servers/alice/ and then //suspend)
  function serverPath(user, server) {
    const named = server ? "/" + encodeURIComponent(server) : "";
    return "servers/" + encodeURIComponent(user) + named;
  }

  // -- formatting ------------------------------------------------------------------------

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    const mm = String(m).padStart(h ? 2 : 1, "0");
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function clock(epoch) {
    if (!epoch) return "";
    const date = new Date(epoch * 1000);
    const today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function seconds(value) {
    return value === null || value === undefined ? "" : value.toFixed(2) + " s";
  }

  function label(server) {
    return server.server ? server.user + "/" + server.server : server.user;
  }

  function capital(word) {
    return word ? word.charAt(0).toUpperCase() + word.slice(1) : "";
  }

  // what a history entry says was lost, in a few words
  function lostText(lost) {
    if (!lost) return "";
    const parts = [];
    // the hub words it in its own clock ("files changed after 21:15:36"): say that time
    // as this page's Time column does (files_since is its timestamp)
    if (lost.files && lost.files_since) {
      parts.push(lost.files.replace(/\b\d{1,2}:\d{2}:\d{2}\b/, clock(lost.files_since)));
    } else if (lost.files) {
      parts.push(lost.files);
    }
    for (const [kernel, names] of Object.entries(lost.variables || {})) {
      if (names && names.length) {
        parts.push("variables " + names.join(", ") + " (kernel " + kernel.slice(0, 8) + ")");
      }
    }
    for (const cell of lost.interrupted_cells || []) {
      parts.push("a running cell was interrupted: " + String(cell.cell || "").slice(0, 60));
    }
    const fresh = lost.kernels_fresh || [];
    if (fresh.length) parts.push(fresh.length + " kernel(s) restarted fresh");
    return parts.join("; ");
  }

  // -- a server's card -------------------------------------------------------------------

  const SKELETON = `
    <div class="card-header d-flex flex-wrap align-items-center gap-2">
      <h2 class="h5 mb-0 server-title"></h2>
      <span class="badge state"></span>
      <span class="countdown small"></span>
      <a class="open ms-auto small" hidden>Open</a>
    </div>
    <div class="card-body">
      <dl class="row mb-2 facts">
        <dt class="col-sm-3">Host</dt><dd class="col-sm-9 host"></dd>
        <dt class="col-sm-3">Instance type</dt><dd class="col-sm-9 instance-type"></dd>
        <dt class="col-sm-3">Market</dt><dd class="col-sm-9 market"></dd>
        <dt class="col-sm-3">Hourly price</dt><dd class="col-sm-9 price"></dd>
        <dt class="col-sm-3">Address</dt><dd class="col-sm-9 address"></dd>
        <dt class="col-sm-3">Uptime</dt><dd class="col-sm-9 uptime"></dd>
        <dt class="col-sm-3">Last checkpoint</dt><dd class="col-sm-9 checkpoint"></dd>
      </dl>
      <div class="actions d-flex flex-wrap gap-2 mb-2">
        <button type="button" class="btn btn-sm btn-primary" data-verb="migrate">Migrate</button>
        <button type="button" class="btn btn-sm btn-secondary" data-verb="suspend">Suspend</button>
        <button type="button" class="btn btn-sm btn-success" data-verb="resume">Resume</button>
        <button type="button" class="btn btn-sm btn-outline-danger" data-verb="cancel">Cancel</button>
      </div>
      <div class="message small mb-2" role="status"></div>
      <details class="history">
        <summary>History</summary>
        <table class="table table-sm mt-2">
          <thead>
            <tr>
              <th>Time</th><th>What</th><th>Reason</th><th>From → to</th>
              <th>Hold</th><th>Took</th><th>Moved</th><th>Lost</th>
            </tr>
          </thead>
          <tbody></tbody>
        </table>
        <p class="empty small text-body-secondary">Nothing yet.</p>
      </details>
    </div>`;

  function text(card, selector, value) {
    const el = card.el.querySelector(selector);
    const shown = value === null || value === undefined || value === "" ? "—" : String(value);
    if (el.textContent !== shown) el.textContent = shown;
  }

  function makeCard(key, server) {
    const el = document.createElement("article");
    el.className = "card mb-3 migrate-server";
    el.dataset.key = key;
    el.id = "server-" + key;
    el.innerHTML = SKELETON;
    const card = { el, data: server, history: null };
    for (const button of el.querySelectorAll("button[data-verb]")) {
      button.addEventListener("click", () => verb(card, button.dataset.verb));
    }
    const details = el.querySelector("details.history");
    // your own servers show their history open; an admin's list of everyone's, closed
    details.open = server.user === config.user;
    details.addEventListener("toggle", () => details.open && loadHistory(card));
    return card;
  }

  function updateCard(card) {
    const s = card.data;
    card.el.dataset.state = s.state;
    card.el.querySelector(".server-title").textContent = label(s);
    const badge = card.el.querySelector(".state");
    badge.className = "badge state " + (BADGE[s.state] || "text-bg-secondary");
    badge.textContent = s.state;
    text(card, ".host", s.host_id);
    text(card, ".instance-type", s.instance_type);
    text(card, ".market", s.market);
    const price = s.hourly_price;
    text(card, ".price", typeof price === "number" ? "$" + price.toFixed(4) + " per hour" : "");
    text(card, ".address", s.address);
    const checkpoint = s.last_checkpoint;
    text(
      card,
      ".checkpoint",
      checkpoint
        ? [clock(checkpoint.time), bytes(checkpoint.bytes), checkpoint.reason]
            .filter(Boolean)
            .join(", ")
        : s.checkpoint_id
          ? s.checkpoint_id
          : ""
    );
    const open = card.el.querySelector(".open");
    open.hidden = !(s.url && s.state === "Running");
    if (s.url) open.href = s.url;
    settle(card);
    const fitting = Array.isArray(s.actions) ? s.actions : FITTING[s.state] || [];
    for (const button of card.el.querySelectorAll("button[data-verb]")) {
      button.disabled = busy.has(card.el.dataset.key) || !fitting.includes(button.dataset.verb);
    }
    tick(card);
  }

  // a verb's message until its outcome shows: a move (Floating, then Running), a resume
  function settle(card) {
    const s = card.data;
    // a move nobody here asked for (a reclaim notice): the last verb's words are old news
    if (s.state === "Floating" && card.shown !== "Floating" && !card.awaiting) say(card, "", null);
    card.shown = s.state;
    if (card.awaiting === "migrate" && s.state === "Floating") card.awaiting = "moving";
    if (card.awaiting === "moving" && s.state === "Running") {
      say(card, "Moved to " + s.host_id + ".", s.state);
      card.awaiting = null;
    }
    if (card.awaiting === "resume" && s.state === "Running") {
      say(card, "Resumed on " + s.host_id + ".", s.state);
      card.awaiting = null;
    }
    // the state changed since the message (e.g. the CLI resumed a server this page
    // suspended): "Suspended: ..." would be stale
    if (!card.awaiting && card.saidAt && s.state !== card.saidAt) say(card, "", null);
  }

  // a verb's message, and the state it is about (null: until the next verb)
  function say(card, words, state, danger = false) {
    const message = card.el.querySelector(".message");
    message.className = "message small mb-2" + (danger ? " text-danger" : "");
    message.textContent = words;
    card.saidAt = state;
  }

  // the parts that change every second: the countdown while Floating, the uptime
  function tick(card) {
    const s = card.data;
    const now = Date.now() / 1000;
    const countdown = card.el.querySelector(".countdown");
    let words = "";
    if (s.state === "Floating") {
      const reason = (s.move && s.move.reason) || "moving";
      const deadline = s.deadline || (s.move && s.move.deadline);
      words = deadline
        ? reason + ": " + (deadline > now ? duration(deadline - now) + " left" : "finishing")
        : reason;
    }
    if (countdown.textContent !== words) countdown.textContent = words;
    let up = "";
    if (s.state === "Running" || s.state === "Floating") {
      // JupyterHub's start time: a move keeps it, a Suspend and Resume starts anew
      if (s.started) up = duration(now - s.started);
      else if (typeof s.uptime === "number") up = duration(s.uptime + (now - card.fetched));
      if (up) up += " since it started (moves included)";
    }
    text(card, ".uptime", up);
  }

  function render(servers) {
    const seen = new Set();
    servers.sort((a, b) => {
      const own = (a.user !== config.user) - (b.user !== config.user);
      return own || a.user.localeCompare(b.user) || a.server.localeCompare(b.server);
    });
    for (const server of servers) {
      const key = server.user + "/" + server.server;
      seen.add(key);
      let card = cards.get(key);
      if (!card) {
        card = makeCard(key, server);
        cards.set(key, card);
      }
      card.data = server;
      card.fetched = Date.now() / 1000;
      serversEl.append(card.el); // keeps the sorted order
      updateCard(card);
    }
    for (const [key, card] of cards) {
      if (!seen.has(key)) {
        card.el.remove();
        cards.delete(key);
      }
    }
    document.getElementById("no-servers").classList.toggle("d-none", servers.length > 0);
    if (!scrolled && location.hash.length > 1) {
      const wanted = cards.get(decodeURIComponent(location.hash.slice(1)));
      if (wanted) {
        wanted.el.classList.add("border-primary");
        wanted.el.scrollIntoView({ block: "start" });
      }
      scrolled = true;
    }
  }

  // -- history ---------------------------------------------------------------------------

  async function loadHistory(card) {
    const s = card.data;
    const path = serverPath(s.user, s.server);
    let entries;
    try {
      entries = (await api(path + "/history?limit=50")).history;
    } catch (e) {
      if (e.status !== 404) return;
      // a hub without the history verb: the server's recent events instead
      try {
        entries = ((await api(path)).events || []).map((ev) => ({
          time: ev.time,
          kind: "event",
          detail: ev.message,
        }));
      } catch (e2) {
        return;
      }
    }
    renderHistory(card, entries || []);
  }

  function renderHistory(card, entries) {
    const signature = JSON.stringify(entries);
    if (signature === card.history) return;
    card.history = signature;
    const body = card.el.querySelector(".history tbody");
    body.replaceChildren();
    for (const entry of entries.slice().reverse()) {
      const row = document.createElement("tr");
      row.className = "history-entry";
      row.dataset.kind = entry.kind || "";
      if (entry.outcome === "failed") row.classList.add("table-danger");
      if (entry.detail) row.title = entry.detail;
      const moved =
        entry.from_host || entry.to_host
          ? (entry.from_host || "—") + " → " + (entry.to_host || "—")
          : "";
      const cells = [
        clock(entry.time),
        capital(entry.kind) + (entry.outcome === "failed" ? " (failed)" : ""),
        entry.reason || (entry.kind === "event" ? entry.detail : ""),
        moved,
        seconds(entry.hold_seconds),
        seconds(entry.duration_seconds),
        bytes(entry.bytes_moved),
        [lostText(entry.lost), entry.error].filter(Boolean).join("; "),
      ];
      const names = ["time", "kind", "reason", "hosts", "hold", "took", "bytes", "lost"];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        td.className = names[i];
        td.textContent = value;
        row.append(td);
      });
      body.append(row);
    }
    card.el.querySelector(".history .empty").hidden = entries.length > 0;
  }

  // -- the verbs -------------------------------------------------------------------------

  function whatIsLost(s) {
    const checkpoint = s.last_checkpoint;
    const taken = checkpoint
      ? "its checkpoint of " + clock(checkpoint.time) + (checkpoint.bytes ? " (" + bytes(checkpoint.bytes) + ")" : "")
      : s.checkpoint_id
        ? "its checkpoint " + s.checkpoint_id
        : "";
    const files =
      s.home_mode === "shared"
        ? "the variables in its kernels (the files in the shared home stay)"
        : "the files in its home and the variables in its kernels";
    const since = checkpoint ? "as they were at " + clock(checkpoint.time) + " and everything changed since" : "everything since it started";
    return (
      "This stops " + label(s) + (taken ? " and deletes " + taken : "") + ". " +
      "Lost for good: " + files + ", " + since + ". The next start is a fresh server."
    );
  }

  function confirmCancel(s) {
    const dialog = document.getElementById("confirm-cancel");
    dialog.querySelector(".server-name").textContent = label(s);
    dialog.querySelector(".what-is-lost").textContent = whatIsLost(s);
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "cancel"), {
        once: true,
      });
      dialog.showModal();
    });
  }

  const SENT = {
    migrate: "Moving to another host…",
    suspend: "Suspending: taking the final checkpoint…",
    resume: "Resuming on a new host…",
    cancel: "Cancelling…",
  };

  async function verb(card, name) {
    const s = card.data;
    const key = card.el.dataset.key;
    if (!VERBS.includes(name) || busy.has(key)) return;
    if (name === "cancel" && !(await confirmCancel(s))) return;
    card.awaiting = null;
    say(card, SENT[name], null);
    busy.add(key);
    updateCard(card);
    try {
      const answer = await api(serverPath(s.user, s.server) + "/" + name, "POST");
      const state = (answer && answer.state) || null;
      // migrate and resume tell their outcome when the poll sees it (settle)
      if (name === "migrate" || name === "resume") card.awaiting = name;
      if (name === "cancel") {
        // the API's words already say what went ("Discarded: ...")
        say(card, (answer && answer.lost) || "Cancelled.", state);
      } else if (name === "suspend" && state === "Suspended") {
        // batch jobs paused with it: "Batch job six paused before cell 5: it resumes ..."
        const jobs = (answer.jobs || []).map((words) => " " + words + ".");
        say(card, "Suspended: nothing runs or is billed until you resume it." + jobs.join(""), state);
      } else {
        say(card, SENT[name], card.awaiting ? null : state);
      }
    } catch (e) {
      say(card, capital(name) + " failed: " + e.message, card.data.state, true);
    } finally {
      busy.delete(key);
      refresh();
    }
  }

  // -- hosts (admins) --------------------------------------------------------------------

  function renderHosts(hosts) {
    const body = document.querySelector("#hosts tbody");
    body.replaceChildren();
    for (const host of hosts) {
      const price = host.hourly_price ?? (host.meta || {}).hourly_price;
      const row = document.createElement("tr");
      row.className = "host-row";
      row.dataset.host = host.id;
      for (const value of [
        host.id,
        host.address,
        host.instance_type,
        host.market,
        typeof price === "number" ? "$" + price.toFixed(4) : "—",
        (host.servers || []).join(", "),
      ]) {
        const td = document.createElement("td");
        td.textContent = value || "—";
        row.append(td);
      }
      body.append(row);
    }
  }

  // -- headless jobs (the API's GET jobs; the tab shows once it answers) -----------------

  const JOB_BADGE = {
    queued: "text-bg-info",
    running: "text-bg-success",
    moving: "text-bg-warning",
    completed: "text-bg-primary",
    failed: "text-bg-danger",
    cancelled: "text-bg-secondary",
  };
  let hasJobs = null; // whether the control API has jobs: null until it has answered

  // null: this control API has no jobs (the tab stays hidden)
  async function loadJobs() {
    try {
      const data = await api("jobs");
      if (!hasJobs) document.getElementById("tab-jobs-item").hidden = false;
      hasJobs = true;
      return data.jobs || [];
    } catch (e) {
      if (e.status === 404) {
        hasJobs = false;
        return null;
      }
      throw e;
    }
  }

  function renderJobs(jobs) {
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren();
    jobs.sort((a, b) => (b.submitted || 0) - (a.submitted || 0));
    for (const job of jobs) {
      const row = document.createElement("tr");
      row.className = "job-row";
      row.dataset.job = job.id;
      row.dataset.status = job.status;
      const cells = {
        name: job.name || job.id,
        user: job.user,
        notebook: job.notebook,
        status: null,
        submitted: clock(job.submitted),
        took: typeof job.duration === "number" ? duration(job.duration) : "",
        moves: String(job.moves ?? 0),
        cost: typeof job.cost === "number" ? "$" + job.cost.toFixed(4) : "",
        output: job.output || "",
        message: [job.error, job.message].filter(Boolean).join(": "),
      };
      for (const [name, value] of Object.entries(cells)) {
        const td = document.createElement("td");
        td.className = name;
        if (name === "status") {
          const badge = document.createElement("span");
          badge.className = "badge " + (JOB_BADGE[job.status] || "text-bg-secondary");
          badge.textContent = capital(job.status);
          td.append(badge);
        } else {
          td.textContent = value || "—";
        }
        if (name === "message" && (job.warnings || []).length) td.title = job.warnings.join("; ");
        row.append(td);
      }
      const actions = document.createElement("td");
      if ((job.actions || []).includes("cancel")) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "btn btn-sm btn-outline-danger";
        button.dataset.verb = "cancel-job";
        button.textContent = "Cancel";
        button.addEventListener("click", () => cancelJob(job, button));
        actions.append(button);
      }
      row.append(actions);
      body.append(row);
    }
    document.getElementById("no-jobs").classList.toggle("d-none", jobs.length > 0);
  }

  async function cancelJob(job, button) {
    const message = document.getElementById("jobs-message");
    button.disabled = true;
    message.className = "small mb-2";
    message.textContent = "Cancelling " + (job.name || job.id) + "…";
    try {
      const answer = await api("jobs/" + encodeURIComponent(job.id) + "/cancel", "POST");
      message.textContent = (answer.name || answer.id) + ": " + capital(answer.status) + ".";
    } catch (e) {
      message.className = "small mb-2 text-danger";
      message.textContent = "Cancel failed: " + e.message;
    } finally {
      refresh();
    }
  }

  // -- polling ---------------------------------------------------------------------------

  function showError(message) {
    errorEl.textContent = message;
    errorEl.classList.toggle("d-none", !message);
  }

  let refreshing = null;
  async function poll() {
    try {
      render((await api("servers")).servers || []);
      showError("");
    } catch (e) {
      showError(
        e.status === 401 || e.status === 403
          ? "Your login for this page has expired: reload the page."
          : "Cannot reach the migrate service: " + e.message
      );
      return;
    }
    const jobs = [];
    for (const card of cards.values()) {
      if (card.el.querySelector("details.history").open) jobs.push(loadHistory(card));
    }
    if (activeTab === "jobs" || hasJobs === null) {
      jobs.push(
        loadJobs()
          .then((found) => found && activeTab === "jobs" && renderJobs(found))
          .catch(() => {})
      );
    }
    if (config.admin && activeTab === "hosts") {
      jobs.push(
        api("hosts")
          .then((data) => renderHosts(data.hosts || []))
          .catch(() => {})
      );
    }
    await Promise.all(jobs);
  }

  function refresh() {
    // one poll at a time; a click asks for one more right after
    if (!refreshing) refreshing = poll().finally(() => (refreshing = null));
    return refreshing;
  }

  async function loop() {
    await refresh();
    setTimeout(loop, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  for (const tab of document.querySelectorAll("#migrate-tabs [data-tab]")) {
    tab.addEventListener("click", () => {
      activeTab = tab.dataset.tab;
      for (const other of document.querySelectorAll("#migrate-tabs [data-tab]")) {
        const active = other === tab;
        other.classList.toggle("active", active);
        other.setAttribute("aria-selected", String(active));
        document.getElementById("panel-" + other.dataset.tab).hidden = !active;
      }
      refresh();
    });
  }

  setInterval(() => cards.forEach(tick), 1000);
  loop();
})();
