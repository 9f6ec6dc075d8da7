// The luna-cckm console: plain ES module, no build step. It speaks only the
// public REST API with a bearer token kept in sessionStorage (never a cookie
// or a URL), and renders every value as text (never as HTML).

const API = "/api/v1";
const KEYS = `${API}/cckm/hsm/luna/keys`;
const PARTITIONS = `${API}/cckm/hsm/luna/partitions`;
const CONNECTIONS = `${API}/connectionmgmt/services/luna-network/connections`;
const SERVERS = `${API}/connectionmgmt/services/luna-network/servers`;
const SCHEDULES = `${API}/scheduler/job-configs`;
const KEYSTORES = `${API}/xks/keystores`;
const SESSION = "luna-cckm-session";
const PAGE = 20;
const SIZES = { AES: [128, 192, 256], RSA: [2048, 3072, 4096] };
const MECHANISMS = [
  ["CKM_AES_KEY_GEN", "AES"],
  ["CKM_RSA_PKCS_KEY_PAIR_GEN", "RSA"],
  ["CKM_RSA_X9_31_KEY_PAIR_GEN", "RSA"],
  ["CKM_RSA_FIPS_186_3_AUX_PRIME_KEY_PAIR_GEN", "RSA"],
  ["CKM_RSA_FIPS_186_3_PRIME_KEY_PAIR_GEN", "RSA"],
];
const ATTRIBUTES = ["CKA_MODIFIABLE", "CKA_EXTRACTABLE", "CKA_SENSITIVE", "CKA_ENCRYPT", "CKA_DECRYPT",
  "CKA_WRAP", "CKA_UNWRAP", "CKA_SIGN", "CKA_VERIFY", "CKA_DERIVE"];

// ---- DOM: text only ------------------------------------------------------

/** An element with attributes and children; strings become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const main = () => document.getElementById("main");
function show(...nodes) { main().replaceChildren(...nodes); }
function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message || "";
  box.hidden = !message;
}
function badge(value) { return el("span", { class: `badge ${value}` }, value || "—"); }

// ---- session and API -----------------------------------------------------

let session = JSON.parse(sessionStorage.getItem(SESSION) || "null");
let refreshTimer = null;

function keep(answer, username) {
  session = { jwt: answer.jwt, refresh: answer.refresh_token, id: answer.refresh_token_id, username,
    groups: groupsOf(answer.jwt), expires: Date.now() + answer.duration * 1000 };
  sessionStorage.setItem(SESSION, JSON.stringify(session));
  scheduleRefresh();
}

/** The groups the server signed into the token (read for display only; the server decides). */
function groupsOf(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.cust?.groups || [];
  } catch { return []; }
}
const canManage = () => session?.groups.some((g) => g === "admin" || g === "CCKM Admins");
const isAdmin = () => session?.groups.includes("admin");

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session) return;
  const wait = Math.max(session.expires - Date.now() - 30_000, 1_000);
  refreshTimer = setTimeout(async () => {
    try {
      const answer = await call("POST", `${API}/auth/tokens`,
        { grant_type: "refresh_token", refresh_token: session.refresh }, { open: true });
      keep(answer, session.username);
    } catch { logout("Your session ended; log in again."); }
  }, wait);
}

/** Logs out on the server first (the session's tokens are revoked there), then here.
 * The session is forgotten here only once the server has ended it (or says it had):
 * otherwise it would stay open there, out of anyone's reach, until it expires. */
async function logOut() {
  const ended = session?.id;
  if (ended) {
    try {
      // An access token about to run out (a laptop that slept) is renewed first.
      if (session.expires - Date.now() < 30_000) {
        keep(await call("POST", `${API}/auth/tokens`,
          { grant_type: "refresh_token", refresh_token: session.refresh }, { open: true }), session.username);
      }
      await call("DELETE", `${API}/auth/tokens/${encodeURIComponent(ended)}`);
    } catch (error) {
      if (error.handled) return;
      if (error.status !== 401 && error.status !== 404) {
        notice(`Could not log out: ${error.message}. You are still logged in; try again.`);
        return;
      }
    }
  }
  logout("You are logged out.");
}

/** Forgets the session here (the server has ended it, or is being told to). */
function logout(message) {
  clearTimeout(refreshTimer);
  session = null;
  sessionStorage.removeItem(SESSION);
  notice(message);
  route();
}

class ApiError extends Error {
  /** `handled`: the session ended and the login page already says so. */
  constructor(status, message, handled = false) { super(message); this.status = status; this.handled = handled; }
}

/** A request to the API; an answer that is not 2xx throws the server's sentence. */
async function call(method, path, body, { open = false, idempotencyKey } = {}) {
  const headers = { Accept: "application/json" };
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!open && session) headers.Authorization = `Bearer ${session.jwt}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  // The API answers JSON; a proxy's error page may not.
  let answer = null;
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try { answer = await response.json(); } catch { answer = null; }
  }
  if (response.status === 401 && !open) {
    logout("Your session has ended or expired; log in again.");
    throw new ApiError(401, answer?.message || "not logged in", true);
  }
  if (!response.ok) throw new ApiError(response.status, answer?.message || `${response.status} ${response.statusText}`);
  return answer;
}

/** Runs `work`; an API error is shown next to `place` (or as the page notice). */
async function attempt(work, place) {
  try { return await work(); } catch (error) {
    if (error.handled) return undefined;
    if (place) place.replaceChildren(el("span", { class: "error", role: "alert" }, error.message));
    else notice(error.message);
    return undefined;
  }
}

// ---- pages ---------------------------------------------------------------

const pages = {
  keys: keysPage, key: keyPage, partitions: partitionsPage, jobs: jobsPage, connections: connectionsPage,
  servers: serversPage, schedules: schedulesPage, users: usersPage, audit: auditPage, password: passwordPage,
  keystores: keystoresPage,
};

/** Runs `work` after `ms` if the user is still on the page that asked. */
function later(visit, ms, work) {
  if (visit === route.visit) route.poll = setTimeout(() => visit === route.visit && work(), ms);
}

function route() {
  clearTimeout(route.poll);
  route.visit = {};
  // A page's query (`#/audit?username=…`) is its own to read.
  const [page, arg] = location.hash.replace(/^#\/?/, "").split("?")[0].split("/");
  const nav = document.getElementById("nav");
  if (!session) {
    nav.hidden = true;
    return loginPage();
  }
  const links = [["keys", "Keys"], ["partitions", "Partitions"], ["jobs", "Jobs"], ["schedules", "Schedules"]]
    .concat(isAdmin() ? [["servers", "HSM servers"], ["connections", "Connections"], ["keystores", "XKS keystores"],
      ["users", "Users"], ["audit", "Audit"]] : []);
  nav.replaceChildren(
    ...links.map(([name, title]) => el("a", { href: `#/${name}`, "aria-current": (page || "keys") === name && "page" }, title)),
    el("span", { class: "who" }, `${session.username}${canManage() ? "" : " (read-only)"}`),
    el("a", { href: "#/password", id: "my-password", "aria-current": page === "password" && "page" }, "Password"),
    el("button", { type: "button", id: "log-out", onclick: logOut }, "Log out"));
  nav.hidden = false;
  (pages[page] || keysPage)(arg);
}

function loginPage() {
  const error = el("p");
  const form = el("form", { id: "login", "aria-label": "Log in", onsubmit: async (event) => {
    event.preventDefault();
    const username = form.username.value;
    const answer = await attempt(() => call("POST", `${API}/auth/tokens`,
      { grant_type: "password", username, password: form.password.value }, { open: true }), error);
    if (answer) { notice(""); keep(answer, username); location.hash = "#/keys"; route(); }
  } },
  el("h2", {}, "Log in"),
  el("label", {}, "Username", el("input", { name: "username", autocomplete: "username", required: true })),
  el("label", {}, "Password", el("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
  el("button", { class: "primary", type: "submit" }, "Log in"), error);
  show(form);
  form.username.focus();
}

async function keysPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const skip = Number(params.get("skip") || 0);
  const filters = el("form", { class: "inline", "aria-label": "Filter keys", onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const name of ["label", "status", "partition_id", "sort"]) {
      const value = filters[name].value;
      if (value) query.set(name, value);
    }
    location.hash = `#/keys?${query}`;
  } },
  el("label", {}, "Label", el("input", { name: "label", value: params.get("label") || "" })),
  el("label", {}, "Status", select("status", ["", "in_progress", "AVAILABLE", "FAILED", "DELETED"], params.get("status"))),
  el("label", {}, "Partition id", el("input", { name: "partition_id", value: params.get("partition_id") || "" })),
  el("label", {}, "Sort", select("sort", ["-updatedAt", "updatedAt", "label", "-label", "createdAt", "-createdAt"], params.get("sort") || "-updatedAt")),
  el("button", { type: "submit" }, "Apply"));
  const place = el("div");
  const create = canManage() ? el("button", { class: "primary", type: "button", id: "create-key", onclick: () => createDialog() }, "Create key") : null;
  show(el("div", { class: "row" }, el("h2", {}, "Keys"), create), filters, place);
  const visit = route.visit;
  const query = new URLSearchParams(params);
  query.set("limit", PAGE); query.set("skip", skip);
  if (!query.get("sort")) query.set("sort", "-updatedAt");
  // Polls the table only, so that a filter being typed is not lost.
  const load = async () => {
  const list = await attempt(() => call("GET", `${KEYS}?${query}`), place);
  if (!list) return;
  const rows = list.resources.map((k) => el("tr", {},
    el("td", {}, el("a", { href: `#/key/${k.id}`, class: "key-label" }, k.label)),
    el("td", {}, badge(k.status)),
    el("td", {}, k.algorithm || "—", " ", k.size ? String(k.size) : ""),
    el("td", { class: "wide" }, k.object_type || "—"),
    el("td", { class: "wide" }, k.partition_label),
    el("td", { class: "wide" }, k.updatedAt)));
  const pager = el("div", { class: "row" },
    el("span", { class: "muted" }, `${list.total === 0 ? 0 : skip + 1}–${skip + list.resources.length} of ${list.total}`),
    el("button", { type: "button", disabled: skip === 0, onclick: () => page(Math.max(0, skip - PAGE)) }, "Previous"),
    el("button", { type: "button", disabled: skip + PAGE >= list.total, onclick: () => page(skip + PAGE) }, "Next"));
  function page(to) { params.set("skip", to); location.hash = `#/keys?${params}`; }
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "keys" },
    el("thead", {}, el("tr", {}, ["Label", "Status", "Algorithm", "Type", "Partition", "Updated"].map((h, i) => el("th", { class: i > 2 ? "wide" : null }, h)))),
    el("tbody", {}, rows))), pager);
  if (list.resources.some((k) => k.status === "in_progress")) later(visit, 1500, load);
  };
  await load();
}

function select(name, values, chosen) {
  return el("select", { name }, values.map((v) => el("option", { value: v, selected: v === (chosen || "") }, v || "any")));
}

async function createDialog() {
  const error = el("p");
  const partitions = await attempt(() => call("GET", `${PARTITIONS}?limit=100`));
  if (!partitions) return;
  const size = el("select", { name: "size" });
  const mechanism = el("select", { name: "mechanism", onchange: sizes }, MECHANISMS.map(([m]) => el("option", { value: m }, m)));
  function sizes() {
    const algorithm = MECHANISMS.find(([m]) => m === mechanism.value)[1];
    size.replaceChildren(...SIZES[algorithm].map((s) => el("option", { value: s }, String(s))));
  }
  sizes();
  // One key per dialog, however often Create is pressed or the answer lost.
  const idempotencyKey = crypto.randomUUID();
  const form = el("form", { method: "dialog", onsubmit: async (event) => {
    event.preventDefault();
    const body = { label: form.label.value, partition_id: form.partition.value, mechanism: mechanism.value,
      size: Number(size.value), attributes: ATTRIBUTES.filter((a) => form[a].checked) };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const made = await attempt(() => call("POST", KEYS, body, { idempotencyKey }), error);
    button.disabled = false;
    if (made) { dialog.close(); dialog.remove(); location.hash = `#/key/${made.id}`; }
  } },
  el("h2", {}, "Create a key"),
  el("label", {}, "Label", el("input", { name: "label", required: true, maxlength: 128 })),
  el("label", {}, "Partition", el("select", { name: "partition", required: true },
    partitions.resources.map((p) => el("option", { value: p.id }, `${p.partition_label} (${p.ha_enabled ? "HA, " : ""}${p.id})`)))),
  el("label", {}, "Mechanism", mechanism),
  el("label", {}, "Size (bits)", size),
  el("fieldset", {}, el("legend", {}, "Attributes set true"),
    ATTRIBUTES.map((a) => el("label", { class: "check" }, el("input", { type: "checkbox", name: a }), a))),
  error,
  el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, "Create"),
    el("button", { type: "button", onclick: () => { dialog.close(); dialog.remove(); } }, "Cancel")));
  const dialog = el("dialog", { "aria-label": "Create a key" }, form);
  document.body.append(dialog);
  dialog.showModal();
  form.label.focus();
}

/** Why a PATCH of `attribute` to `value` is refused on this key, if it is (PKCS#11's one-way rules). */
function patchRefusal(key, attribute, value) {
  const has = (a) => key.attributes.includes(a);
  if (key.status !== "AVAILABLE") return `the key is ${key.status}`;
  if (key.operation_status === "in_progress") return "an operation is in progress";
  if (!has("CKA_MODIFIABLE")) return "the key is not modifiable";
  if (attribute === "CKA_MODIFIABLE") return "fixed when the key was made";
  if (attribute === "CKA_SENSITIVE" && !value) return "can only go from false to true";
  if (attribute === "CKA_EXTRACTABLE" && value) return "can only go from true to false";
  return null;
}

async function keyPage(id) {
  const visit = route.visit;
  const place = el("div");
  show(el("p", { class: "row" }, el("a", { href: "#/keys" }, "← Keys")), place);
  const key = await attempt(() => call("GET", `${KEYS}/${encodeURIComponent(id)}`), place);
  if (!key) return;
  const error = el("p");
  const fields = ["id", "label", "status", "operation", "operation_status", "operation_error", "algorithm", "object_type",
    "size", "mechanism", "generated_with", "partition_label", "partition_id", "object_uid", "link_id", "sha_256_fingerprint",
    "replicated", "ha_enabled", "origin", "byok_key", "modulus", "exponent", "createdAt", "updatedAt"];
  const list = el("dl", { class: "fields", id: "key-fields" }, fields.flatMap((f) => [el("dt", {}, f),
    el("dd", { "data-field": f }, ["status", "operation_status"].includes(f) ? badge(key[f]) : String(key[f] ?? ""))]));
  const toggles = el("fieldset", {}, el("legend", {}, "Attributes"), ATTRIBUTES.map((a) => {
    const on = key.attributes.includes(a);
    const why = canManage() ? patchRefusal(key, a, !on) : "read-only";
    return el("label", { class: "check", title: why || "" },
      el("input", { type: "checkbox", name: a, checked: on, disabled: Boolean(why), onchange: async (event) => {
        const changed = await attempt(() => call("PATCH", `${KEYS}/${key.id}`, { attributes: [{ type: a, value: event.target.checked }] }), error);
        if (changed) route(); else event.target.checked = on;
      } }), a, why ? el("span", { class: "muted" }, ` (${why})`) : null);
  }));
  const replication = el("table", { id: "replication" }, el("thead", {}, el("tr", {}, el("th", {}, "Member serial"), el("th", {}, "State"))),
    el("tbody", {}, Object.entries(key.replication_info || {}).map(([serial, state]) => el("tr", {}, el("td", {}, serial), el("td", {}, state)))));
  const actions = canManage() ? el("div", { class: "row" },
    el("button", { type: "button", id: "replicate", disabled: key.status !== "AVAILABLE", onclick: async () => {
      if (await attempt(() => call("POST", `${KEYS}/${key.id}/replicate`), error)) route();
    } }, "Replicate"),
    el("button", { type: "button", class: "danger", id: "destroy", disabled: key.status !== "AVAILABLE", onclick: () => confirmByLabel(key, "Delete from HSM",
      "destroys the key's objects on every member", () => call("POST", `${API}/cckm/hsm/luna/${key.id}/delete`), error) }, "Delete from HSM…"),
    el("button", { type: "button", class: "danger", id: "forget", onclick: () => confirmByLabel(key, "Forget in the service",
      "forgets the key here; its objects stay on the tokens", async () => { await call("DELETE", `${KEYS}/${key.id}`); location.hash = "#/keys"; return true; }, error) }, "Forget…"))
    : null;
  place.replaceChildren(el("h2", {}, key.label), list, toggles, el("h3", {}, "Replication"), replication, actions, error);
  if (key.status === "in_progress" || key.operation_status === "in_progress") later(visit, 1000, route);
}

function confirmByLabel(key, title, what, work, error) {
  const form = el("form", { method: "dialog", onsubmit: async (event) => {
    event.preventDefault();
    if (form.confirm.value !== key.label) { problem.textContent = "The label does not match."; return; }
    const done = await attempt(work, problem);
    if (done !== undefined) { dialog.close(); dialog.remove(); route(); }
  } });
  const problem = el("p", { class: "error" });
  form.append(el("h2", {}, title), el("p", {}, `This ${what}. Type the key's label to confirm.`),
    el("label", {}, "Label", el("input", { name: "confirm", autocomplete: "off", required: true })), problem,
    el("div", { class: "row" }, el("button", { class: "danger", type: "submit" }, title),
      el("button", { type: "button", onclick: () => { dialog.close(); dialog.remove(); } }, "Cancel")));
  const dialog = el("dialog", { "aria-label": title }, form);
  document.body.append(dialog);
  dialog.showModal();
  error.textContent = "";
}

async function partitionsPage() {
  const place = el("div");
  show(el("h2", {}, "Partitions"), place);
  const visit = route.visit;
  const load = async () => {
    const list = await attempt(() => call("GET", `${PARTITIONS}?limit=100`), place);
    if (!list) return;
    const details = await Promise.all(list.resources.map((p) => call("GET", `${PARTITIONS}/${p.id}`).catch(() => p)));
    place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "partitions" },
      el("thead", {}, el("tr", {}, ["Partition", "HA", "Members (serial · label · host · token)", "What a create runs here",
        "Work waiting", "Id"]
        .map((h, i) => el("th", { class: i === 5 ? "wide" : null }, h)))),
      el("tbody", {}, details.map((p) => el("tr", {},
        el("td", {}, p.partition_label),
        el("td", {}, p.ha_enabled ? "yes" : "no"),
        el("td", {}, (p.members || []).map(memberLine)),
        el("td", {}, (p.mechanisms || []).map((m) => el("div", {}, m.refused ? `${m.mechanism}: refused (${m.refused})`
          : m.remapped ? `${m.mechanism} → ${m.generated_with}` : m.mechanism))),
        el("td", { class: "queue" }, queueLine(p.queue)),
        el("td", { class: "wide" }, p.id)))))));
    // While a token is away, or work waits, the page follows it.
    const away = details.some((p) => (p.members || []).some((m) => m.token && !m.token.reachable));
    const waiting = details.some((p) => p.queue && p.queue.depth > 0);
    if (away || waiting) later(visit, 2000, load);
  };
  await load();
}

/** The work waiting for a partition's tokens: how much, how fast it leaves, and the bound. */
function queueLine(queue) {
  if (!queue) return "";
  const line = el("div", {}, `${queue.depth} of ${queue.limit} · leaving at ${queue.drain_per_second}/s`);
  if (queue.depth >= queue.limit) line.append(" ", el("span", { class: "badge full" }, "full: creates refused"));
  return line;
}

/** One member: who it is, and whether its token answers (since when not, and why). */
function memberLine(m) {
  const token = m.token;
  const line = el("div", { class: "member" }, `${m.serial_number} · ${m.partition_label} · ${m.hostname} `);
  if (!token) return line;
  line.append(badge(token.reachable ? "reachable" : "unreachable"));
  if (!token.reachable) {
    line.append(el("div", { class: "why" },
      token.unreachable_since ? `since ${token.unreachable_since}: ${token.error || ""}` : token.error || ""));
  } else if (token.recoveries) {
    line.append(el("div", { class: "why" }, `back after ${token.recoveries} outage(s); the last: ${token.last_error || ""}`));
  }
  return line;
}

/** Partitions left unticked on the jobs page, kept across its refreshes. */
const unticked = new Set();

async function jobsPage() {
  const visit = route.visit;
  const place = el("div");
  const error = el("p");
  const chosen = el("fieldset", { id: "job-partitions" }, el("legend", {}, "Partitions"));
  const start = (kind) => async () => {
    const ids = [...chosen.querySelectorAll("input:checked")].map((box) => box.value);
    if (ids.length === 0) { error.textContent = "Choose at least one partition."; return; }
    if (await attempt(() => call("POST", `${API}/cckm/hsm/luna/${kind}`, { partitions: ids }), error)) route();
  };
  show(el("h2", {}, "Jobs"), canManage() ? el("div", {}, chosen, el("div", { class: "row" },
    el("button", { type: "button", id: "start-refresh", onclick: start("refresh") }, "Refresh"),
    el("button", { type: "button", id: "start-synchronize", onclick: start("synchronize") }, "Synchronize"))) : null, error, place);
  if (canManage()) {
    const partitions = await attempt(() => call("GET", `${PARTITIONS}?limit=100`), error);
    chosen.append(...(partitions?.resources || []).map((p) =>
      el("label", { class: "check" }, el("input", { type: "checkbox", value: p.id, checked: !unticked.has(p.id),
        onchange: (event) => (event.target.checked ? unticked.delete(p.id) : unticked.add(p.id)) }), p.partition_label)));
  }
  const load = async () => {
  const [refresh, sync] = await Promise.all(["refresh", "synchronize"].map((kind) =>
    attempt(() => call("GET", `${API}/cckm/hsm/luna/${kind}?limit=${PAGE}&sort=-createdAt`), place).then((l) => (l?.resources || []).map((j) => ({ ...j, kind })))));
  const jobs = refresh.concat(sync).sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["Kind", "Status", "Per partition", "Started", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, jobs.map((j) => el("tr", {},
      el("td", {}, j.kind), el("td", {}, badge(j.overall_status), j.abort && j.overall_status === "in_progress" ? " cancel asked" : null),
      el("td", {}, Object.entries(j.detailed_status || {}).map(([p, s]) => el("div", {}, `${p}: ${s}`))),
      el("td", {}, j.createdAt),
      el("td", {}, canManage() && j.overall_status === "in_progress" && !j.abort ? el("button", { type: "button", class: "cancel-job", onclick: async () => {
        if (await attempt(() => call("POST", `${API}/cckm/hsm/luna/${j.kind}/${j.id}/cancel`), error)) load();
      } }, "Cancel") : null)))))));
  if (jobs.some((j) => j.overall_status === "in_progress")) later(visit, 1500, load);
  };
  await load();
}

/** Connections are admin-only in the API: the page is offered to admins only. */
async function connectionsPage() {
  const place = el("div");
  const error = el("p");
  const form = el("form", { id: "register", "aria-label": "Register a connection", onsubmit: async (event) => {
    event.preventDefault();
    const members = form.members.value.split(",").map((m) => m.trim()).filter(Boolean)
      .map((partition_label) => ({ partition_label, hostname: form.hostname.value || "localhost" }));
    const body = { name: form.name.value, password: form.password.value, is_ha_enabled: form.ha.checked, partitions: members };
    if (form.so_password.value) body.so_password = form.so_password.value;
    // The PINs leave the page with the request and are not kept in it.
    form.password.value = ""; form.so_password.value = "";
    if (await attempt(() => call("POST", CONNECTIONS, body), error)) route();
  } },
  el("h3", {}, "Register a connection"),
  el("div", { class: "inline" },
    el("label", {}, "Name", el("input", { name: "name", required: true })),
    el("label", {}, "Member token labels (comma-separated)", el("input", { name: "members", required: true })),
    el("label", {}, "Host", el("input", { name: "hostname", placeholder: "localhost" })),
    el("label", {}, "Crypto officer PIN", el("input", { name: "password", type: "password", autocomplete: "new-password", required: true })),
    el("label", {}, "Security officer PIN (cloning domain)", el("input", { name: "so_password", type: "password", autocomplete: "new-password" })),
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "ha" }), "HA group"),
    el("button", { class: "primary", type: "submit" }, "Register")),
  error);
  show(el("h2", {}, "Connections"), place, form);
  const list = await attempt(() => call("GET", `${CONNECTIONS}?limit=100`), place);
  if (!list) return;
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "connections" },
    el("thead", {}, el("tr", {}, ["Name", "HA", "Members", "Last test", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.resources.map((c) => el("tr", { "data-name": c.name },
      el("td", {}, c.name), el("td", {}, c.is_ha_enabled ? "yes" : "no"),
      el("td", { class: "members" }, c.partitions.map((m) => el("div", { class: "row member" }, `${m.partition_label} · ${m.serial_number}`,
        c.is_ha_enabled && c.partitions.length > 1 ? el("button", { type: "button", class: "danger remove-member", onclick: async () => {
          if (await attempt(() => call("DELETE", `${CONNECTIONS}/${c.id}/partitions/${encodeURIComponent(m.serial_number)}`), error) !== undefined) route();
        } }, "Remove") : "")),
        c.is_ha_enabled ? memberForm(c, error) : ""),
      el("td", { class: "last-test", title: c.last_connection_error || "" },
        c.last_connection_ok === null || c.last_connection_ok === undefined ? "—" : badge(c.last_connection_ok ? "ok" : "failed")),
      el("td", {}, el("div", { class: "row" },
        el("button", { type: "button", class: "test-connection", onclick: async () => {
          const tested = await attempt(() => call("POST", `${CONNECTIONS}/${c.id}/test`), error);
          // The last test's column shows the outcome; a failure also says why.
          if (tested) route();
          if (tested && !tested.connection_ok) {
            notice(`${c.name}: ${tested.members.filter((m) => !m.ok).map((m) => m.error).join("; ")}`);
          }
        } }, "Test"),
        rotateForm(c, error),
        el("button", { type: "button", class: "add-partition", onclick: async () => {
          if (await attempt(() => call("POST", `${API}/cckm/hsm/luna/add-partition`, { connection: c.name }), error)) location.hash = "#/partitions";
        } }, "Add as partition"),
        el("button", { type: "button", class: "danger delete-connection", onclick: async () => {
          if (await attempt(() => call("DELETE", `${CONNECTIONS}/${c.id}`), error) !== undefined) route();
        } }, "Delete")))))))));
}

/** The new PIN after the HSM's was changed: checked on every member, then kept. */
function rotateForm(c, error) {
  const form = el("form", { class: "inline rotate-pin", "aria-label": `Rotate the PIN of ${c.name}`, onsubmit: async (event) => {
    event.preventDefault();
    const password = form.pin.value;
    form.pin.value = "";
    // Kept only once it logged in to every member (the last test then says ok).
    if (await attempt(() => call("PATCH", `${CONNECTIONS}/${c.id}`, { password }), error)) route();
  } },
  el("input", { name: "pin", type: "password", autocomplete: "new-password", placeholder: "new PIN", required: true }),
  el("button", { type: "submit" }, "Rotate PIN"));
  return form;
}

/** Another partition for an HA connection (the SO PIN sets up its cloning domain). */
function memberForm(c, error) {
  const form = el("form", { class: "inline add-member", "aria-label": `Add a partition to ${c.name}`, onsubmit: async (event) => {
    event.preventDefault();
    const body = { partition_label: form.label.value, hostname: form.host.value || "localhost" };
    if (form.so_pin.value) body.so_password = form.so_pin.value;
    form.so_pin.value = "";
    if (await attempt(() => call("POST", `${CONNECTIONS}/${c.id}/partitions`, body), error)) route();
  } },
  el("input", { name: "label", placeholder: "partition label", required: true }),
  el("input", { name: "host", placeholder: "host" }),
  el("input", { name: "so_pin", type: "password", autocomplete: "new-password", placeholder: "SO PIN" }),
  el("button", { type: "submit" }, "Add member"));
  return form;
}

/** HSM servers: a hostname and the HSM's certificate, which connections may name. */
async function serversPage() {
  const place = el("div");
  const error = el("p");
  const form = el("form", { id: "new-server", "aria-label": "Register an HSM server", onsubmit: async (event) => {
    event.preventDefault();
    const body = { hostname: form.hostname.value, hsm_certificate: form.certificate.value, description: form.description.value };
    if (await attempt(() => call("POST", SERVERS, body), error)) route();
  } },
  el("h3", {}, "Register an HSM server"),
  el("div", { class: "inline" },
    el("label", {}, "Hostname", el("input", { name: "hostname", required: true })),
    el("label", {}, "Description", el("input", { name: "description" })),
    el("label", {}, "Server certificate (PEM)", el("textarea", { name: "certificate", rows: 4, required: true })),
    el("button", { class: "primary", type: "submit" }, "Register")),
  error);
  show(el("h2", {}, "HSM servers"), place, form);
  const list = await attempt(() => call("GET", `${SERVERS}?limit=100`), place);
  if (!list) return;
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "servers" },
    el("thead", {}, el("tr", {}, ["Hostname", "Certificate", "Valid until", "SHA-256", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.resources.map((s) => el("tr", { "data-hostname": s.hostname },
      el("td", {}, s.hostname), el("td", {}, s.certificate.subject), el("td", {}, s.certificate.not_after),
      el("td", { class: "fingerprint" }, s.certificate.sha256_fingerprint),
      el("td", {}, el("button", { type: "button", class: "danger delete-server", onclick: async () => {
        if (await attempt(() => call("DELETE", `${SERVERS}/${s.id}`), error) !== undefined) route();
      } }, "Delete"))))))));
}

/** What a schedule's last firing did: the job's status now, or why it started none. */
function lastRun(run) {
  if (!run) return "never run";
  const what = run.job_id ? `${run.outcome} (job ${run.job_id})` : `${run.outcome}: ${run.reason}`;
  return `${run.at}: ${what}`;
}

/** Schedules: a refresh or ha_synchronize on a cron timetable, in UTC
 * (CipherTrust's scheduler job configs). Everyone reads; those who may
 * start jobs make, disable, enable and delete. */
async function schedulesPage() {
  const place = el("div");
  const error = el("p");
  const form = el("form", { id: "new-schedule", "aria-label": "Make a schedule", onsubmit: async (event) => {
    event.preventDefault();
    const partitions = form.partitions.value.split(/[\s,]+/).filter(Boolean);
    const body = { name: form.name.value, operation: "cckm_synchronization", run_at: form.run_at.value,
      description: form.description.value,
      cckm_synchronization_params: { cloud_name: "luna", job_type: form.job_type.value,
        ...(partitions.length ? { partitions } : { synchronize_all: true }) } };
    if (await attempt(() => call("POST", SCHEDULES, body), error)) route();
  } },
  el("h3", {}, "Make a schedule"),
  el("div", { class: "inline" },
    el("label", {}, "Name", el("input", { name: "name", required: true })),
    el("label", {}, "Runs at (cron, UTC)", el("input", { name: "run_at", required: true, placeholder: "0 2 * * sat" })),
    el("label", {}, "Job", el("select", { name: "job_type" },
      el("option", { value: "refresh" }, "refresh"), el("option", { value: "ha_synchronize" }, "ha_synchronize"))),
    el("label", {}, "Partition ids (none: every partition)", el("input", { name: "partitions" })),
    el("label", {}, "Description", el("input", { name: "description" })),
    el("button", { class: "primary", type: "submit" }, "Make")),
  error);
  show(el("h2", {}, "Schedules"), place, canManage() ? form : error);
  const list = await attempt(() => call("GET", `${SCHEDULES}?limit=100&sort=name`), place);
  if (!list) return;
  const change = (s, body) => async () => {
    if (await attempt(() => call("PATCH", `${SCHEDULES}/${s.id}`, body), error)) route();
  };
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "schedules" },
    el("thead", {}, el("tr", {}, ["Name", "Runs at (UTC)", "Job", "Next run", "Last run", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.resources.map((s) => el("tr", { "data-name": s.name },
      el("td", {}, s.name),
      el("td", {}, s.run_at),
      el("td", {}, `${s.job_config_params.job_type} of ${s.job_config_params.partitions ? s.job_config_params.partitions.join(", ") : "every partition"}`),
      el("td", { class: "next-run" }, s.disabled ? "disabled" : (s.next_run_at || "none")),
      el("td", { class: "last-run" }, lastRun(s.last_run)),
      el("td", {}, canManage() && [
        el("button", { type: "button", class: "toggle-schedule", onclick: change(s, { disabled: !s.disabled }) },
          s.disabled ? "Enable" : "Disable"),
        el("button", { type: "button", class: "danger delete-schedule", onclick: async () => {
          if (await attempt(() => call("DELETE", `${SCHEDULES}/${s.id}`), error) !== undefined) route();
        } }, "Delete")])))))));
}

/** A credential just made: its secret, shown this once. */
function newCredential(keystore) {
  const c = keystore.new_credential;
  return el("div", { id: "new-credential", role: "status" },
    el("h3", {}, `New credential of ${keystore.name}`),
    el("p", {}, "The secret access key is shown this once: give it and the access key id to AWS KMS as the external key store's proxy authentication credential."),
    el("dl", {}, el("dt", {}, "Access key id"), el("dd", { class: "access-key-id" }, c.access_key_id),
      el("dt", {}, "Secret access key"), el("dd", { class: "secret" }, c.secret_access_key)));
}

/** AWS KMS external key stores served by this XKS proxy (the admin group's):
 * where KMS calls, the region it signs for, the partition whose AES-256 keys
 * are the external keys, and the SigV4 credentials, rotated with an overlap. */
async function keystoresPage(_, made) {
  const place = el("div");
  const error = el("p");
  const form = el("form", { id: "new-keystore", "aria-label": "Make a keystore", onsubmit: async (event) => {
    event.preventDefault();
    const body = { name: form.name.value, uri_path_prefix: form.prefix.value, region: form.region.value,
      partition_id: form.partition.value };
    const keystore = await attempt(() => call("POST", KEYSTORES, body), error);
    if (keystore) keystoresPage(undefined, keystore);
  } },
  el("h3", {}, "Make a keystore"),
  el("div", { class: "inline" },
    el("label", {}, "Name", el("input", { name: "name", required: true })),
    el("label", {}, "URI path prefix", el("input", { name: "prefix", placeholder: "example/prefix" })),
    el("label", {}, "AWS region", el("input", { name: "region", required: true, placeholder: "us-east-1" })),
    el("label", {}, "Partition id", el("input", { name: "partition", required: true })),
    el("button", { class: "primary", type: "submit" }, "Make")),
  error);
  show(el("h2", {}, "XKS keystores"), ...(made ? [newCredential(made)] : []), place, form);
  const list = await attempt(() => call("GET", KEYSTORES), place);
  if (!list) return;
  place.replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "keystores" },
    el("thead", {}, el("tr", {}, ["Name", "URI path", "Region", "Partition", "Credentials", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.resources.map((k) => el("tr", { "data-name": k.name },
      el("td", {}, k.name), el("td", {}, k.uri_path), el("td", {}, k.region), el("td", {}, k.partition_id),
      el("td", { class: "credentials" }, k.credentials.map((c) =>
        `${c.access_key_id} (${c.valid ? (c.expires_at ? `valid until ${c.expires_at}` : "valid") : "expired"})`).join(", ")),
      el("td", {},
        el("button", { type: "button", class: "rotate-keystore", onclick: async () => {
          const rotated = await attempt(() => call("POST", `${KEYSTORES}/${k.id}/credentials`, {}), error);
          if (rotated) keystoresPage(undefined, rotated);
        } }, "Rotate"),
        el("button", { type: "button", class: "danger delete-keystore", onclick: async () => {
          if (await attempt(() => call("DELETE", `${KEYSTORES}/${k.id}`), error) !== undefined) route();
        } }, "Delete"))))))));
}

/** Changing one's own password: the current one proves it is you. Every
 * session of yours ends (other browsers, lunactl, Terraform); this one logs
 * in again with the new password. */
function passwordPage() {
  const error = el("p");
  const form = el("form", { id: "change-password", "aria-label": "Change my password", onsubmit: async (event) => {
    event.preventDefault();
    const [password, newPassword, again] = [form.password.value, form.new_password.value, form.again.value];
    form.reset();
    if (newPassword !== again) {
      error.replaceChildren(el("span", { class: "error", role: "alert" }, "The new password and its repetition differ."));
      return;
    }
    const username = session.username;
    const changed = await attempt(() => call("PATCH", `${API}/auth/changepw`,
      { username, password, new_password: newPassword }, { open: true }), error);
    if (changed === undefined) return;
    const answer = await attempt(() => call("POST", `${API}/auth/tokens`,
      { grant_type: "password", username, password: newPassword }, { open: true }), error);
    if (!answer) return logout("Your password is changed; log in with it.");
    keep(answer, username);
    notice("Your password is changed. Your other sessions have ended.");
    location.hash = "#/keys";
  } },
  el("label", {}, "Current password", el("input", { name: "password", type: "password", required: true, autocomplete: "current-password" })),
  el("label", {}, "New password", el("input", { name: "new_password", type: "password", required: true, minlength: 8, autocomplete: "new-password" })),
  el("label", {}, "New password again", el("input", { name: "again", type: "password", required: true, minlength: 8, autocomplete: "new-password" })),
  el("button", { class: "primary", type: "submit" }, "Change my password"));
  show(el("h2", {}, "Change my password"), form, error);
}

const GROUPS = ["admin", "CCKM Admins", "CCKM Users"];

/** An administrator sets a user's password (a leaked one); the user's sessions end. */
function resetForm(u, error) {
  const form = el("form", { class: "inline reset-password", "aria-label": `Reset the password of ${u.username}`, onsubmit: async (event) => {
    event.preventDefault();
    const password = form.password.value;
    form.reset();
    if (await attempt(() => call("PATCH", `${API}/usermgmt/users/${u.user_id}`, { password }), error)) {
      error.replaceChildren(`The password of ${u.username} is reset; their sessions have ended.`);
    }
  } },
  el("input", { name: "password", type: "password", required: true, minlength: 8, autocomplete: "new-password", "aria-label": "New password" }),
  el("button", { type: "submit" }, "Reset password"));
  return form;
}

async function usersPage() {
  const place = el("div");
  const error = el("p");
  const form = el("form", { id: "new-user", class: "inline", "aria-label": "Add a user", onsubmit: async (event) => {
    event.preventDefault();
    const body = { username: form.username.value, password: form.password.value,
      groups: GROUPS.filter((g) => form[`group-${g}`].checked) };
    form.password.value = "";
    if (await attempt(() => call("POST", `${API}/usermgmt/users`, body), error)) route();
  } },
  el("label", {}, "Username", el("input", { name: "username", required: true, autocomplete: "off" })),
  el("label", {}, "Password", el("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
  GROUPS.map((g) => el("label", { class: "check" }, el("input", { type: "checkbox", name: `group-${g}` }), g)),
  el("button", { class: "primary", type: "submit" }, "Add user"));
  show(el("h2", {}, "Users"), place, el("h3", {}, "Add a user"), form, error);
  const list = await attempt(() => call("GET", `${API}/usermgmt/users?limit=100`), place);
  if (!list) return;
  place.replaceChildren(el("table", { id: "users" }, el("thead", {}, el("tr", {}, el("th", {}, "Username"), el("th", {}, "Groups"), el("th", {}, ""))),
    el("tbody", {}, list.resources.map((u) => el("tr", { "data-name": u.username }, el("td", {}, u.username), el("td", {}, (u.groups || []).join(", ")),
      el("td", {}, u.username === session.username ? null : [resetForm(u, error), el("button", { type: "button", class: "danger delete-user", onclick: async () => {
        if (await attempt(() => call("DELETE", `${API}/usermgmt/users/${u.user_id}`), error) !== undefined) route();
      } }, "Delete")]))))));
}

async function auditPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const fields = [["username", "User"], ["action", "Action"], ["resource_type", "Resource type"], ["resource_id", "Resource id"]];
  // Times are picked in the browser's zone and sent as UTC instants.
  const times = [["since", "Since"], ["until", "Until"]];
  const local = (instant) => {
    if (!instant) return "";
    const at = new Date(instant);
    return new Date(at.getTime() - at.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };
  const filters = el("form", { class: "inline", id: "audit-filters", "aria-label": "Filter audit records", onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name] of fields) if (filters[name].value.trim()) query.set(name, filters[name].value.trim());
    for (const [name] of times) if (filters[name].value) query.set(name, new Date(filters[name].value).toISOString());
    location.hash = `#/audit?${query}`;
  } },
  fields.map(([name, label]) => el("label", {}, label, el("input", { name, value: params.get(name) || "" }))),
  times.map(([name, label]) => el("label", {}, label, el("input", { name, type: "datetime-local", value: local(params.get(name)) }))),
  el("button", { type: "submit" }, "Apply"));
  const place = el("div");
  const state = el("p", { id: "audit-state" });
  show(el("h2", {}, "Audit trail"), state, filters, place);
  const verified = await attempt(() => call("GET", `${API}/audit/verify`), state);
  if (verified) state.replaceChildren(verified.intact ? badge("available") : badge("failed"), verified.intact ? " intact" : ` broken at record ${verified.broken_at}: ${verified.reason || ""}`);
  // Newest first, as the API lists them.
  const query = new URLSearchParams(params);
  query.set("limit", PAGE);
  const list = await attempt(() => call("GET", `${API}/audit/records?${query}`), place);
  if (!list) return;
  place.replaceChildren(el("p", { id: "audit-count" }, `${list.total} records${list.total > list.resources.length ? `, the newest ${list.resources.length} shown` : ""}`),
    el("div", { class: "table-wrap" }, el("table", { id: "audit" },
      el("thead", {}, el("tr", {}, ["#", "At", "User", "Action", "Resource", "Outcome", "Source", "Instance"].map((h) => el("th", {}, h)))),
      el("tbody", {}, list.resources.map((r) => el("tr", { "data-seq": r.seq }, el("td", {}, r.seq), el("td", {}, r.at), el("td", {}, r.username),
        el("td", {}, r.action), el("td", {}, [r.resource_type, r.resource_id].filter(Boolean).join(" ")), el("td", {}, r.outcome),
        el("td", {}, r.source), el("td", {}, r.instance)))))));
}

window.addEventListener("hashchange", route);
scheduleRefresh();
route();
