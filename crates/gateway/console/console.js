// The minicloud console: a small dependency-free app over the public APIs (the same
// calls any client makes, with the signed-in credential), so a user sees exactly what
// their policies allow. Every value from the server is set as text, never as HTML.
"use strict";

const session = {
  get token() { return sessionStorage.getItem("minicloud.token"); },
  get label() { return sessionStorage.getItem("minicloud.label") || ""; },
  set(token, label) {
    sessionStorage.setItem("minicloud.token", token);
    sessionStorage.setItem("minicloud.label", label);
  },
  clear() { sessionStorage.removeItem("minicloud.token"); sessionStorage.removeItem("minicloud.label"); },
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, { raw = false, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (session.token) init.headers.authorization = "Bearer " + session.token;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const parsed = await response.json();
      message = (parsed.error && parsed.error.message) || parsed.message || message;
    } catch (_) { /* not JSON */ }
    if (response.status === 401 && session.token) {
      message += " — your session may have expired: sign in again";
    }
    throw new ApiError(response.status, message);
  }
  if (raw) return response;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick" || key === "onsubmit" || key === "onchange") node[key] = value;
    else if (key === "text") node.textContent = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/// A refusal as the screens show it: "not allowed" for 403, the server's message otherwise.
function problem(error) {
  if (error.status === 403) return el("p", { class: "denied", role: "alert" }, "Not allowed: " + error.message);
  return el("p", { class: "error", role: "alert" }, error.message);
}

const main = () => document.getElementById("main");

function show(...nodes) {
  main().replaceChildren(...nodes);
}

function ms(ns) { return (ns / 1e6).toFixed(ns < 1e7 ? 2 : 0) + " ms"; }
function when(ns) { return new Date(ns / 1e6).toLocaleTimeString(); }

// ---- sign-in ---------------------------------------------------------------------

async function signInWithKey(key) {
  session.set(key, "API key");
  try {
    await api("GET", "/traces/v1/traces?limit=1");
    session.set(key, "service key (admin)");
  } catch (error) {
    if (error.status === 401) { session.clear(); throw new ApiError(401, "That key is not valid: " + error.message); }
  }
}

async function signInWithPassword(email, password) {
  const answer = await api("POST", "/auth/v1/token?grant_type=password", { email, password });
  session.set(answer.access_token, email);
}

function signInScreen() {
  const error = el("p", { class: "error", id: "sign-in-error", role: "alert" });
  const key = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const email = el("input", { id: "email", type: "email", required: true });
  const password = el("input", { id: "password", type: "password", required: true });
  const attempt = (work) => async (event) => {
    event.preventDefault();
    error.textContent = "";
    try { await work(); route(); } catch (e) { error.textContent = e.message; }
  };
  show(el("section", { id: "sign-in" },
    el("h1", { text: "Sign in" }),
    el("form", { id: "key-form", onsubmit: attempt(() => signInWithKey(key.value.trim())) },
      el("label", {}, "API key ", key), el("button", { type: "submit" }, "Use key")),
    el("p", { text: "or" }),
    el("form", { id: "password-form", onsubmit: attempt(() => signInWithPassword(email.value, password.value)) },
      el("label", {}, "Email ", email), el("label", {}, "Password ", password),
      el("button", { type: "submit" }, "Sign in")),
    error));
}

// ---- overview --------------------------------------------------------------------

async function count(path, pick) {
  try { return pick(await api("GET", path)); } catch (error) { return error.status === 403 ? "not allowed" : "—"; }
}

async function overview() {
  const health = el("section", {}, el("h2", { text: "Services" }), el("p", { class: "muted", text: "Asking every service…" }));
  const counts = el("section", {}, el("h2", { text: "Counts" }));
  const errors = el("section", {}, el("h2", { text: "Recent errors" }));
  show(el("h1", { text: "Overview" }), health, counts, errors);
  const ready = await fetch("/readyz").then((r) => r.json()).catch(() => null);
  const checks = Object.entries((ready && ready.checks) || {});
  health.replaceChildren(el("h2", { text: "Services" }), el("table", { id: "health" },
    el("tr", {}, el("th", { text: "service" }), el("th", { text: "state" })),
    checks.map(([name, state]) => el("tr", {},
      el("td", { text: name }),
      el("td", { class: state === "ok" ? "ok" : "bad", text: state })))));
  // For the page-load benchmark: the overview's first real content is on screen.
  performance.mark("minicloud:overview-ready");
  let users = "not allowed";
  try {
    const response = await api("GET", "/auth/v1/admin/users?page=1&per_page=1", undefined, { raw: true });
    users = response.headers.get("x-total-count") || "?";
  } catch (error) { if (error.status !== 403 && error.status !== 401) users = "—"; }
  const rows = [
    ["users", users],
    ["buckets", await count("/storage/v1/bucket", (b) => b.length)],
    ["collections", await count("/db/v1/collections", (c) => (c.collections || c).length)],
    ["functions", await count("/functions/v1", (f) => (f.functions || f).length)],
    ["topics", await count("/events/v1/topics", (t) => (t.topics || t).length)],
  ];
  counts.append(el("table", {}, rows.map(([name, value]) => el("tr", {}, el("th", { text: name }), el("td", { text: value })))));
  try {
    const failed = await api("GET", "/traces/v1/traces?status=error&limit=10");
    errors.append(failed.traces.length === 0 ? el("p", { class: "muted", text: "None kept." }) : traceTable(failed.traces));
  } catch (error) { errors.append(problem(error)); }
}

// ---- auth ------------------------------------------------------------------------

async function auth() {
  const users = el("section", { id: "users" }, el("h2", { text: "Users" }));
  const roles = el("section", { id: "roles" }, el("h2", { text: "Roles" }));
  const keys = el("section", { id: "api-keys" }, el("h2", { text: "API keys" }));
  show(el("h1", { text: "Auth" }), users, roles, keys);

  // Users: the first page, a search over it, create, delete.
  const search = el("input", { id: "user-search", placeholder: "search by email" });
  const userRows = el("tbody", {});
  const email = el("input", { id: "new-user-email", type: "email", required: true });
  const password = el("input", { id: "new-user-password", type: "password", required: true });
  const userStatus = el("p", { id: "user-status", role: "alert" });
  async function loadUsers() {
    try {
      const found = await api("GET", "/auth/v1/admin/users?limit=1000");
      const wanted = search.value.trim().toLowerCase();
      userRows.replaceChildren(...found.users.filter((u) => !wanted || (u.email || "").toLowerCase().includes(wanted)).map((u) =>
        el("tr", {}, el("td", { text: u.email || "(anonymous)" }), el("td", { class: "muted", text: u.id }),
          el("td", {}, el("button", { class: "sign-out-user", onclick: async () => {
            try {
              const done = await api("POST", "/auth/v1/admin/users/" + encodeURIComponent(u.id) + "/logout");
              userStatus.replaceChildren(el("span", { class: "ok", text: "Signed " + (u.email || u.id) + " out everywhere (" + done.revoked_sessions + " sessions)." }));
            } catch (error) { userStatus.replaceChildren(problem(error)); }
          } }, "Sign out everywhere"), " ", el("button", { onclick: async () => {
            try { await api("DELETE", "/auth/v1/admin/users/" + encodeURIComponent(u.id)); loadUsers(); } catch (error) { userStatus.replaceChildren(problem(error)); }
          } }, "Delete")))));
    } catch (error) { users.replaceChildren(el("h2", { text: "Users" }), problem(error)); }
  }
  search.oninput = loadUsers;
  users.append(search, el("table", { id: "user-table" }, userRows),
    el("form", { id: "new-user-form", onsubmit: async (event) => {
      event.preventDefault();
      userStatus.replaceChildren();
      try {
        await api("POST", "/auth/v1/admin/users", { email: email.value.trim(), password: password.value });
        userStatus.replaceChildren(el("span", { class: "ok", text: "Created " + email.value.trim() }));
        loadUsers();
      } catch (error) { userStatus.replaceChildren(problem(error)); }
    } }, el("label", {}, "Email ", email), el("label", {}, "Password ", password), el("button", { type: "submit" }, "Create user"), userStatus));
  loadUsers();

  // Roles: a policy editor the server validates.
  const roleList = el("select", { id: "role-select" });
  const policy = el("textarea", { id: "role-policies", rows: 10, cols: 80 });
  const roleStatus = el("p", { id: "role-status", role: "alert" });
  let roleData = [];
  const pick = () => {
    const role = roleData.find((r) => r.name === roleList.value);
    policy.value = JSON.stringify((role && role.policies) || [], null, 2);
    roleStatus.replaceChildren();
  };
  roleList.onchange = pick;
  try {
    roleData = (await api("GET", "/auth/v1/admin/roles")).roles;
    roleList.replaceChildren(...roleData.map((r) => el("option", { value: r.name, text: r.name })));
    pick();
    roles.append(el("label", {}, "Role ", roleList),
      el("form", { id: "role-form", onsubmit: async (event) => {
        event.preventDefault();
        roleStatus.replaceChildren();
        let policies;
        try { policies = JSON.parse(policy.value); } catch (e) { roleStatus.replaceChildren(el("p", { class: "error", text: "Not JSON: " + e.message })); return; }
        try {
          await api("PUT", "/auth/v1/admin/roles/" + encodeURIComponent(roleList.value), { policies });
          roleStatus.replaceChildren(el("span", { class: "ok", text: "Saved." }));
        } catch (error) { roleStatus.replaceChildren(problem(error)); }
      } }, policy, el("br"), el("button", { type: "submit" }, "Save policies"), roleStatus));
    // The simulator: the services' own evaluator over the role's saved policies.
    const action = el("input", { id: "simulate-action", required: true, placeholder: "storage:GetObject" });
    const resource = el("input", { id: "simulate-resource", required: true, placeholder: "storage:photos/a.jpg" });
    const uid = el("input", { id: "simulate-uid", placeholder: "(any user)" });
    const verdict = el("p", { id: "simulate-result", role: "status" });
    roles.append(el("h3", { text: "May this role…?" }), el("form", { id: "simulate-form", onsubmit: async (event) => {
      event.preventDefault();
      verdict.replaceChildren();
      const body = { action: action.value.trim(), resource: resource.value.trim() };
      if (uid.value.trim()) body.uid = uid.value.trim();
      try {
        const answer = await api("POST", "/auth/v1/admin/roles/" + encodeURIComponent(roleList.value) + "/simulate", body);
        verdict.replaceChildren(el("strong", { class: answer.allowed ? "ok" : "bad", text: answer.allowed ? "Allowed" : "Denied (" + answer.decision + ")" }),
          el("span", { class: "muted", text: " — " + answer.note }));
      } catch (error) { verdict.replaceChildren(problem(error)); }
    } }, el("label", {}, "action ", action), el("label", {}, "resource ", resource), el("label", {}, "as user ", uid), el("button", { type: "submit" }, "Ask"), verdict));
  } catch (error) { roles.append(problem(error)); }

  // API keys: issue (the secret shown once), revoke.
  const keyRows = el("tbody", {});
  const keyName = el("input", { id: "key-name", required: true });
  const keyRole = el("input", { id: "key-role", required: true, placeholder: "service" });
  const keyKind = el("select", { id: "key-kind" }, el("option", { value: "bearer", text: "API key" }), el("option", { value: "aws", text: "AWS key pair" }));
  const keyStatus = el("div", { id: "key-status", role: "alert" });
  async function loadKeys() {
    try {
      const found = await api("GET", "/auth/v1/admin/api-keys");
      keyRows.replaceChildren(...found.api_keys.map((k) => el("tr", {},
        el("td", { text: k.name }), el("td", { text: k.role }), el("td", { class: "muted", text: k.access_key_id || k.id }),
        el("td", { text: k.revoked_at ? "revoked" : "live" }),
        el("td", {}, k.revoked_at ? "" : el("button", { onclick: async () => {
          try { await api("DELETE", "/auth/v1/admin/api-keys/" + encodeURIComponent(k.id)); loadKeys(); } catch (error) { keyStatus.replaceChildren(problem(error)); }
        } }, "Revoke")))));
    } catch (error) { keys.replaceChildren(el("h2", { text: "API keys" }), problem(error)); }
  }
  keys.append(el("table", { id: "key-table" }, keyRows),
    el("form", { id: "key-issue-form", onsubmit: async (event) => {
      event.preventDefault();
      keyStatus.replaceChildren();
      try {
        const issued = await api("POST", "/auth/v1/admin/api-keys", { name: keyName.value.trim(), role: keyRole.value.trim(), kind: keyKind.value });
        const secret = issued.api_key || (issued.access_key_id + " / " + issued.secret_access_key);
        keyStatus.replaceChildren(el("p", { class: "ok", text: "Shown once, copy it now:" }), el("pre", { id: "issued-secret", text: secret }));
        loadKeys();
      } catch (error) { keyStatus.replaceChildren(problem(error)); }
    } }, el("label", {}, "Name ", keyName), el("label", {}, "Role ", keyRole), el("label", {}, "Kind ", keyKind), el("button", { type: "submit" }, "Issue"), keyStatus));
  loadKeys();
}

// ---- storage ---------------------------------------------------------------------

async function storage(bucket, prefix) {
  if (bucket) return folder(bucket, prefix || "");
  const list = el("section", {}, el("h2", { text: "Buckets" }));
  const name = el("input", { id: "bucket-name", required: true, placeholder: "photos" });
  const isPublic = el("input", { id: "bucket-public", type: "checkbox" });
  const formError = el("p", { class: "error", role: "alert" });
  const form = el("form", { id: "bucket-form", onsubmit: async (event) => {
    event.preventDefault();
    formError.textContent = "";
    try {
      await api("POST", "/storage/v1/bucket", { name: name.value.trim(), public: isPublic.checked });
      location.hash = "#/storage/" + encodeURIComponent(name.value.trim());
    } catch (error) { formError.replaceChildren(problem(error)); }
  } }, el("label", {}, "Name ", name), el("label", {}, isPublic, " public"), el("button", { type: "submit" }, "Create bucket"), formError);
  show(el("h1", { text: "Storage" }), list, el("section", {}, el("h2", { text: "New bucket" }), form));
  try {
    const buckets = await api("GET", "/storage/v1/bucket");
    list.append(el("table", {}, el("tr", {}, el("th", { text: "bucket" }), el("th", { text: "public" }), el("th", { text: "created" })),
      buckets.map((b) => el("tr", { class: "clickable", onclick: () => { location.hash = "#/storage/" + encodeURIComponent(b.name); } },
        el("td", { text: b.name }), el("td", { text: b.public ? "yes" : "no" }), el("td", { text: new Date(b.created_at).toLocaleString() })))));
  } catch (error) { list.append(problem(error)); }
}

function objectUrl(bucket, path) {
  return "/storage/v1/object/" + encodeURIComponent(bucket) + "/" + path.split("/").map(encodeURIComponent).join("/");
}

function upload(bucket, path, file, bar) {
  // XMLHttpRequest rather than fetch: it reports upload progress.
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", objectUrl(bucket, path));
    request.setRequestHeader("authorization", "Bearer " + session.token);
    request.setRequestHeader("content-type", file.type || "application/octet-stream");
    request.setRequestHeader("x-upsert", "true");
    request.upload.onprogress = (event) => { if (event.lengthComputable) { bar.max = event.total; bar.value = event.loaded; } };
    request.onload = () => {
      if (request.status < 300) return resolve();
      let message = request.status + "";
      try { message = JSON.parse(request.responseText).error.message; } catch (_) { /* keep the status */ }
      reject(new ApiError(request.status, message));
    };
    request.onerror = () => reject(new ApiError(0, "the upload failed (connection)"));
    request.send(file);
  });
}

async function folder(bucket, prefix, cursor) {
  const listing = el("section", {}, el("h2", {}, bucket + "/" + prefix));
  const picker = el("input", { id: "file-picker", type: "file", multiple: true });
  // A folder keeps its layout: each file under its path relative to the chosen folder.
  const folderPicker = el("input", { id: "folder-picker", type: "file", webkitdirectory: true, multiple: true });
  const bar = el("progress", { id: "upload-progress", value: 0, max: 1 });
  const status = el("p", { id: "upload-status", role: "status" });
  const send = async (files) => {
    status.textContent = "";
    for (const file of files) {
      const name = file.webkitRelativePath || file.name;
      try {
        await upload(bucket, prefix + name, file, bar);
        status.append(el("span", { class: "ok", text: "uploaded " + name + " " }));
      } catch (error) { status.append(problem(error)); }
    }
    // The listing again, the outcome of each file kept on screen.
    folder(bucket, prefix).then(() => document.getElementById("upload-status").replaceWith(status));
  };
  picker.onchange = () => send(picker.files);
  folderPicker.onchange = () => send(folderPicker.files);
  const detail = el("section", { id: "object-detail" });
  show(el("h1", {}, el("a", { href: "#/storage", text: "Storage" }), " / " + bucket),
    el("section", {}, el("h2", { text: "Upload" }), el("label", {}, "Files ", picker), el("label", {}, "A folder ", folderPicker), bar, status), listing, detail);
  try {
    const page = await api("POST", "/storage/v1/object/list/" + encodeURIComponent(bucket), { prefix, delimiter: "/", limit: 100, cursor });
    const rows = [];
    for (const sub of page.prefixes) {
      rows.push(el("tr", { class: "clickable", onclick: () => { location.hash = "#/storage/" + encodeURIComponent(bucket) + "/" + encodeURIComponent(sub); } },
        el("td", { text: sub.slice(prefix.length) }), el("td", { text: "folder" }), el("td", {})));
    }
    for (const object of page.objects) {
      rows.push(el("tr", { class: "clickable", onclick: () => objectDetail(bucket, object, detail) },
        el("td", { text: object.name.slice(prefix.length) }), el("td", { text: object.content_type }), el("td", { text: object.size + " B" })));
    }
    listing.append(rows.length ? el("table", { id: "objects" }, el("tr", {}, el("th", { text: "name" }), el("th", { text: "type" }), el("th", { text: "size" })), rows)
      : el("p", { class: "muted", text: "Empty." }));
    const paging = el("p", {});
    if (cursor) paging.append(el("button", { id: "first-page", onclick: () => folder(bucket, prefix) }, "First page"), " ");
    if (page.next_cursor) paging.append(el("button", { id: "next-page", onclick: () => folder(bucket, prefix, page.next_cursor) }, "Next page"));
    listing.append(paging);
  } catch (error) { listing.append(problem(error)); }
}

async function objectDetail(bucket, object, panel) {
  panel.replaceChildren(el("h2", { text: object.name }),
    el("pre", { text: JSON.stringify(object, null, 2) }));
  const actions = el("p", {});
  panel.append(actions);
  try {
    const response = await api("GET", objectUrl(bucket, object.name), undefined, { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    actions.append(el("a", { href: url, download: object.name.split("/").pop(), text: "Download" }), " ");
    if (/^image\/(png|jpeg|gif|webp)$/.test(object.content_type)) {
      panel.append(el("img", { class: "preview", id: "preview", src: url, alt: object.name }));
    }
  } catch (error) { panel.append(problem(error)); }
  // A signed link: anyone holding it may read the object until it expires.
  const expires = el("input", { id: "sign-expires", type: "number", min: 1, max: 604800, value: 3600 });
  const signed = el("p", { id: "signed-link" });
  actions.append(el("button", { onclick: async () => {
    try { await api("DELETE", objectUrl(bucket, object.name)); location.reload(); } catch (error) { panel.append(problem(error)); }
  } }, "Delete"), " ",
  el("form", { id: "sign-form", class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    signed.replaceChildren();
    try {
      const answer = await api("POST", "/storage/v1/object/sign/" + encodeURIComponent(bucket) + "/" + object.name.split("/").map(encodeURIComponent).join("/"), { expiresIn: Number(expires.value) });
      const url = location.origin + answer.signed_url;
      signed.replaceChildren(el("a", { href: url, target: "_blank", rel: "noopener", text: url }));
    } catch (error) { signed.replaceChildren(problem(error)); }
  } }, el("label", {}, "Signed link for ", expires, " s "), el("button", { type: "submit" }, "Sign")), signed);
}

// ---- database --------------------------------------------------------------------

async function database(collection) {
  if (collection) return documents(collection);
  const list = el("section", {}, el("h2", { text: "Collections" }));
  const name = el("input", { id: "collection-name", required: true, placeholder: "notes" });
  const index = el("input", { id: "collection-index", placeholder: "owner, created_at" });
  const formError = el("p", { role: "alert" });
  const form = el("form", { id: "collection-form", onsubmit: async (event) => {
    event.preventDefault();
    formError.replaceChildren();
    const body = { name: name.value.trim() };
    const fields = index.value.split(",").map((f) => f.trim()).filter(Boolean);
    if (fields.length) body.indexes = [{ fields }];
    try {
      await api("POST", "/db/v1/collections", body);
      location.hash = "#/database/" + encodeURIComponent(name.value.trim());
    } catch (error) { formError.replaceChildren(problem(error)); }
  } }, el("label", {}, "Name ", name), el("label", {}, "Index on fields ", index), el("button", { type: "submit" }, "Create collection"), formError);
  show(el("h1", { text: "Database" }), list, el("section", {}, el("h2", { text: "New collection" }), form), keyValue());
  try {
    const found = await api("GET", "/db/v1/collections");
    const collections = found.collections || found;
    list.append(collections.length === 0 ? el("p", { class: "muted", text: "None." }) : el("table", { id: "collections" },
      el("tr", {}, el("th", { text: "collection" }), el("th", { text: "indexes" })),
      collections.map((c) => el("tr", { class: "clickable", onclick: () => { location.hash = "#/database/" + encodeURIComponent(c.name); } },
        el("td", { text: c.name }), el("td", { text: (c.indexes || []).map((i) => i.fields.join(",")).join("; ") })))));
  } catch (error) { list.append(problem(error)); }
}

/// A key-value namespace: its keys (by prefix), and a key's value to read, set or delete.
function keyValue() {
  const section = el("section", { id: "kv" }, el("h2", { text: "Key-value" }));
  const ns = el("input", { id: "kv-namespace", required: true, placeholder: "sessions" });
  const prefix = el("input", { id: "kv-prefix", placeholder: "(any)" });
  const keys = el("div", { id: "kv-keys" });
  const key = el("input", { id: "kv-key", required: true });
  const value = el("textarea", { id: "kv-value", rows: 3, cols: 60 });
  const status = el("p", { id: "kv-status", role: "alert" });
  const path = () => "/db/v1/kv/" + encodeURIComponent(ns.value.trim());
  const list = async (event) => {
    if (event) event.preventDefault();
    keys.replaceChildren();
    try {
      const found = await api("GET", path() + "?limit=100&prefix=" + encodeURIComponent(prefix.value));
      keys.append(found.items.length === 0 ? el("p", { class: "muted", text: "No keys." }) : el("table", { id: "kv-table" },
        el("tr", {}, ["key", "value", "version", "expires"].map((h) => el("th", { text: h }))),
        found.items.map((item) => el("tr", { class: "clickable", onclick: () => { key.value = item.key; value.value = JSON.stringify(item.value, null, 2); } },
          el("td", { text: item.key }), el("td", {}, el("code", { text: JSON.stringify(item.value) })), el("td", { text: item.version }),
          el("td", { text: item.expires_at ? new Date(item.expires_at).toLocaleString() : "" })))));
    } catch (error) { keys.replaceChildren(problem(error)); }
  };
  const save = async (event) => {
    event.preventDefault();
    status.replaceChildren();
    let parsed;
    try { parsed = JSON.parse(value.value); } catch (e) { status.replaceChildren(el("p", { class: "error", text: "Not JSON: " + e.message })); return; }
    try {
      const saved = await api("PUT", path() + "/" + encodeURIComponent(key.value.trim()), parsed);
      status.replaceChildren(el("span", { class: "ok", text: "Saved as version " + saved.version + "." }));
      list();
    } catch (error) { status.replaceChildren(problem(error)); }
  };
  const remove = async () => {
    status.replaceChildren();
    try {
      await api("DELETE", path() + "/" + encodeURIComponent(key.value.trim()));
      status.replaceChildren(el("span", { class: "ok", text: "Deleted." }));
      list();
    } catch (error) { status.replaceChildren(problem(error)); }
  };
  section.append(el("form", { id: "kv-list-form", onsubmit: list }, el("label", {}, "Namespace ", ns), el("label", {}, "Prefix ", prefix), el("button", { type: "submit" }, "List keys")),
    keys,
    el("form", { id: "kv-form", onsubmit: save }, el("label", {}, "Key ", key), el("br"), value, el("br"),
      el("button", { type: "submit" }, "Save"), " ", el("button", { type: "button", onclick: remove }, "Delete"), status));
  return section;
}

async function documents(collection) {
  const base = "/db/v1/collections/" + encodeURIComponent(collection);
  const filter = el("textarea", { id: "query-filter", rows: 3, cols: 70, placeholder: '{"field":"owner","op":"eq","value":"u1"}' });
  const queryError = el("p", { role: "alert" });
  const results = el("section", { id: "query-results" });
  const editor = el("section", { id: "document-editor" });
  const run = async (event) => {
    if (event) event.preventDefault();
    queryError.replaceChildren();
    let body = { limit: 100 };
    if (filter.value.trim()) {
      try { body.filter = JSON.parse(filter.value); } catch (e) { queryError.replaceChildren(el("p", { class: "error", text: "The filter is not JSON: " + e.message })); return; }
    }
    try {
      const found = await api("POST", base + "/query", body);
      results.replaceChildren(el("h2", { text: found.documents.length + " documents" }),
        el("table", { id: "documents" }, el("tr", {}, ["id", "version", "data"].map((h) => el("th", { text: h }))),
          found.documents.map((d) => el("tr", { class: "clickable", onclick: () => edit(d.id) },
            el("td", { text: d.id }), el("td", { text: d.version }), el("td", { text: JSON.stringify(d.data) })))),
        el("details", {}, el("summary", { text: "as JSON" }), el("pre", { text: JSON.stringify(found, null, 2) })));
    } catch (error) { queryError.replaceChildren(problem(error)); }
  };
  async function edit(id) {
    const idInput = el("input", { id: "document-id", value: id || "", required: true });
    const text = el("textarea", { id: "document-data", rows: 8, cols: 70 });
    const status = el("p", { id: "document-status", role: "alert" });
    let version = null;
    if (id) {
      try {
        const doc = await api("GET", base + "/docs/" + encodeURIComponent(id));
        text.value = JSON.stringify(doc.data, null, 2);
        version = doc.version;
      } catch (error) { status.replaceChildren(problem(error)); }
    }
    const save = el("form", { id: "document-form", onsubmit: async (event) => {
      event.preventDefault();
      status.replaceChildren();
      let data;
      try { data = JSON.parse(text.value); } catch (e) { status.replaceChildren(el("p", { class: "error", text: "Not JSON: " + e.message })); return; }
      // If-Match: the version this editor loaded; someone else's save in between is a conflict.
      const headers = version === null ? { "if-none-match": "*" } : { "if-match": '"' + version + '"' };
      try {
        const saved = await api("PUT", base + "/docs/" + encodeURIComponent(idInput.value.trim()), data, { headers });
        version = saved.version;
        status.replaceChildren(el("p", { class: "ok", text: "Saved as version " + saved.version + "." }));
        run();
      } catch (error) {
        if (error.status === 412) {
          status.replaceChildren(el("p", { class: "error conflict", text: "Conflict: the document changed since it was loaded (" + error.message + "). Reload it to see the new version." }));
        } else { status.replaceChildren(problem(error)); }
      }
    } }, el("label", {}, "id ", idInput), el("br"), text, el("br"), el("button", { type: "submit" }, version === null && !id ? "Create" : "Save"), status);
    editor.replaceChildren(el("h2", { text: id ? "Document " + id + " (version " + version + ")" : "New document" }), save);
  }
  show(el("h1", {}, el("a", { href: "#/database", text: "Database" }), " / " + collection),
    el("section", {}, el("h2", { text: "Query" }), el("form", { id: "query-form", onsubmit: run }, filter, el("br"), el("button", { type: "submit" }, "Run"), queryError),
      el("button", { id: "new-document", onclick: () => edit(null) }, "New document")),
    results, editor);
  run();
}

// ---- functions -------------------------------------------------------------------

function base64Of(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// A zip of `files` ([{ name, bytes }]) with every entry stored as is: a folder becomes
// the code bundle the API takes, without a compression library in the console (the
// invoker accepts stored entries; the bundle is small and travels once).
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function storedZip(files) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const file of files) {
    const name = encoder.encode(file.name);
    const crc = crc32(file.bytes);
    const size = file.bytes.length;
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // UTF-8 names
    local.setUint16(12, 0x21, true); // 1980-01-01
    local.setUint32(14, crc, true);
    local.setUint32(18, size, true);
    local.setUint32(22, size, true);
    local.setUint16(26, name.length, true);
    parts.push(local.buffer, name, file.bytes);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 0x031e, true); // made on Unix: the mode below counts
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(14, 0x21, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, size, true);
    entry.setUint32(24, size, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(38, (0o100644 << 16) >>> 0, true);
    entry.setUint32(42, offset, true);
    central.push(entry.buffer, name);
    offset += 30 + name.length + size;
  }
  const centralSize = central.reduce((n, part) => n + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end.buffer]).arrayBuffer();
}

/// The code of a deploy: the chosen zip, or the chosen folder zipped (paths relative
/// to the folder itself).
async function codeOf(zipInput, folderInput) {
  if (zipInput.files.length) return zipInput.files[0].arrayBuffer();
  if (!folderInput.files.length) throw new ApiError(400, "Choose a zip or a folder to deploy.");
  const files = [];
  for (const file of folderInput.files) {
    const name = (file.webkitRelativePath || file.name).split("/").slice(1).join("/") || file.name;
    files.push({ name, bytes: new Uint8Array(await file.arrayBuffer()) });
  }
  return storedZip(files);
}

async function functions(name) {
  if (name) return functionDetail(name);
  const list = el("section", {}, el("h2", { text: "Functions" }));
  const fname = el("input", { id: "function-name", required: true, placeholder: "hello" });
  const runtime = el("select", { id: "function-runtime" }, ["python3", "nodejs", "provided"].map((r) => el("option", { value: r, text: r })));
  const handler = el("input", { id: "function-handler", placeholder: "app.handler" });
  const role = el("input", { id: "function-role", placeholder: "(none)" });
  const memory = el("input", { id: "function-memory", type: "number", min: 64, max: 10240, value: 128 });
  const timeout = el("input", { id: "function-timeout", type: "number", min: 1, max: 900, value: 3 });
  const env = el("textarea", { id: "function-env", rows: 2, cols: 50, placeholder: '{"NAME": "value"}' });
  const zip = el("input", { id: "function-zip", type: "file", accept: ".zip,application/zip" });
  const dir = el("input", { id: "function-folder", type: "file", webkitdirectory: true, multiple: true });
  const status = el("p", { id: "deploy-status", role: "alert" });
  const form = el("form", { id: "deploy-form", onsubmit: async (event) => {
    event.preventDefault();
    status.replaceChildren(el("span", { class: "muted", text: "Deploying…" }));
    try {
      const body = { runtime: runtime.value, memory_mb: Number(memory.value), timeout_s: Number(timeout.value) };
      if (env.value.trim()) {
        try { body.env = JSON.parse(env.value); } catch (e) { throw new ApiError(400, "The environment is not JSON: " + e.message); }
      }
      body.code = { zip_base64: base64Of(await codeOf(zip, dir)) };
      if (handler.value.trim()) body.handler = handler.value.trim();
      if (role.value.trim()) body.role = role.value.trim();
      await api("PUT", "/functions/v1/" + encodeURIComponent(fname.value.trim()), body);
      location.hash = "#/functions/" + encodeURIComponent(fname.value.trim());
    } catch (error) { status.replaceChildren(problem(error)); }
  } }, el("label", {}, "Name ", fname), el("label", {}, "Runtime ", runtime), el("label", {}, "Handler ", handler),
    el("label", {}, "Role ", role), el("label", {}, "Memory MB ", memory), el("label", {}, "Timeout s ", timeout),
    el("label", {}, "Environment ", env), el("br"),
    el("label", {}, "Zip ", zip), el("label", {}, "or a folder ", dir), el("button", { type: "submit" }, "Deploy"), status);
  show(el("h1", { text: "Functions" }), list, el("section", {}, el("h2", { text: "Deploy" }), form));
  try {
    const found = await api("GET", "/functions/v1");
    const all = found.functions || found;
    list.append(all.length === 0 ? el("p", { class: "muted", text: "None." }) : el("table", { id: "functions" },
      el("tr", {}, ["name", "runtime", "memory", "timeout", "role", "instances"].map((h) => el("th", { text: h }))),
      all.map((f) => {
        const instances = el("td", { class: "muted", text: "…" });
        api("GET", "/functions/v1/" + encodeURIComponent(f.name) + "/instances")
          .then((i) => { instances.textContent = i.live === 0 ? "cold" : i.live + " warm (" + i.idle_pids.length + " idle)"; })
          .catch(() => { instances.textContent = "—"; });
        return el("tr", { class: "clickable", onclick: () => { location.hash = "#/functions/" + encodeURIComponent(f.name); } },
          el("td", { text: f.name }), el("td", { text: f.runtime }), el("td", { text: f.memory_mb + " MB" }), el("td", { text: f.timeout_s + " s" }), el("td", { text: f.role || "" }), instances);
      })));
  } catch (error) { list.append(problem(error)); }
}

/// Streams a server-sent-events response (fetch, so the request carries the token,
/// which EventSource cannot), calling `onData` with each event's data; ends when the
/// screen changes.
async function follow(path, onData, onError) {
  const controller = new AbortController();
  screenStreams.push(controller);
  try {
    const response = await fetch(path, { headers: { authorization: "Bearer " + session.token }, signal: controller.signal });
    if (!response.ok) {
      let message = response.status + "";
      try { message = (await response.json()).error.message; } catch (_) { /* keep the status */ }
      throw new ApiError(response.status, message);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += value;
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) onData(data);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") onError(error);
  }
}

/// Streams opened by the screen on show; closed when the route changes.
const screenStreams = [];

async function functionDetail(name) {
  const path = "/functions/v1/" + encodeURIComponent(name);
  const config = el("section", {}, el("h2", { text: "Configuration" }));
  const state = el("p", { id: "function-instances", class: "muted" });
  const payload = el("textarea", { id: "invoke-payload", rows: 4, cols: 70 });
  payload.value = "{}";
  const result = el("section", { id: "invoke-result" });
  const triggers = el("section", { id: "triggers" }, el("h2", { text: "Triggers" }));
  const live = el("pre", { id: "live-logs", class: "log" });
  const run = async (event) => {
    event.preventDefault();
    result.replaceChildren();
    try { JSON.parse(payload.value); } catch (e) { result.replaceChildren(el("p", { class: "error", text: "The payload is not JSON: " + e.message })); return; }
    const started = performance.now();
    try {
      const response = await fetch(path + "/invoke", {
        method: "POST",
        headers: { authorization: "Bearer " + session.token, "content-type": "application/json", "x-amz-log-type": "Tail" },
        body: payload.value,
      });
      const text = await response.text();
      const took = performance.now() - started;
      if (!response.ok) {
        let message = response.status + "";
        try { message = JSON.parse(text).error.message; } catch (_) { /* keep the status */ }
        throw new ApiError(response.status, message);
      }
      const failed = response.headers.get("x-amz-function-error");
      const tail = response.headers.get("x-amz-log-result");
      const requestId = response.headers.get("x-request-id");
      let log = "";
      try { log = tail ? new TextDecoder().decode(Uint8Array.from(atob(tail), (c) => c.charCodeAt(0))) : ""; } catch (_) { log = "(unreadable log tail)"; }
      const report = (log.match(/REPORT RequestId:[^\n]*/) || [""])[0];
      result.replaceChildren(el("h2", { class: failed ? "bad" : "ok", text: failed ? "Function error (" + failed + ")" : "Result" }),
        el("pre", { id: "invoke-output", text: text }),
        el("p", { class: "muted", id: "invoke-report" }, (report || "") + " · round trip " + took.toFixed(1) + " ms",
          requestId ? el("span", {}, " · ", el("a", { href: "#/traces/" + requestId, text: "trace " + requestId })) : ""),
        el("h3", { text: "Log tail" }), el("pre", { id: "invoke-log", text: log }));
    } catch (error) { result.replaceChildren(problem(error)); }
  };
  show(el("h1", {}, el("a", { href: "#/functions", text: "Functions" }), " / " + name), state, config,
    el("section", {}, el("h2", { text: "Test invoke" }), el("form", { id: "invoke-form", onsubmit: run }, payload, el("br"), el("button", { type: "submit" }, "Invoke"))),
    result, triggers, el("section", {}, el("h2", { text: "Live logs" }), live));
  try {
    const f = await api("GET", path);
    const shown = { ...f };
    delete shown.code;
    config.append(el("pre", { id: "function-config", text: JSON.stringify(shown, null, 2) }));
  } catch (error) { config.append(problem(error)); return; }
  api("GET", path + "/instances")
    .then((i) => { state.textContent = i.live === 0 ? "Cold: no instance runs." : i.live + " instance(s) warm; idle: " + (i.idle_pids.join(", ") || "none"); })
    .catch((error) => state.replaceChildren(problem(error)));

  // Triggers: list, add (topic + pattern), remove; a trigger's deliveries and dead
  // letters are its subscription's.
  const topic = el("input", { id: "trigger-topic", required: true, placeholder: "storage" });
  const pattern = el("textarea", { id: "trigger-pattern", rows: 3, cols: 60, placeholder: '{"type": ["minicloud.storage.object.created"]}' });
  const triggerStatus = el("p", { id: "trigger-status", role: "alert" });
  const triggerRows = el("tbody", {});
  async function loadTriggers() {
    try {
      const found = await api("GET", path + "/triggers");
      triggerRows.replaceChildren(...found.triggers.map((t) => el("tr", {},
        el("td", { text: t.topic ? "topic " + t.topic : "http " + (t.http_methods || []).join(",") + " " + (t.http_path || "") }),
        el("td", {}, el("code", { text: t.pattern ? JSON.stringify(t.pattern) : "" })),
        el("td", {}, t.subscription_id ? el("a", { href: "#/events/" + encodeURIComponent(t.subscription_id), text: "deliveries and dead letters" }) : ""),
        el("td", {}, el("button", { onclick: async () => {
          try { await api("DELETE", path + "/triggers/" + encodeURIComponent(t.id)); loadTriggers(); } catch (error) { triggerStatus.replaceChildren(problem(error)); }
        } }, "Remove")))));
    } catch (error) { triggerStatus.replaceChildren(problem(error)); }
  }
  triggers.append(el("table", { id: "trigger-table" }, triggerRows),
    el("form", { id: "trigger-form", onsubmit: async (event) => {
      event.preventDefault();
      triggerStatus.replaceChildren();
      const body = { topic: topic.value.trim() };
      if (pattern.value.trim()) {
        try { body.pattern = JSON.parse(pattern.value); } catch (e) { triggerStatus.replaceChildren(el("p", { class: "error", text: "The pattern is not JSON: " + e.message })); return; }
      }
      try {
        await api("POST", path + "/triggers", body);
        triggerStatus.replaceChildren(el("span", { class: "ok", text: "Trigger added." }));
        loadTriggers();
      } catch (error) { triggerStatus.replaceChildren(problem(error)); }
    } }, el("label", {}, "Topic ", topic), el("label", {}, "Pattern ", pattern), el("button", { type: "submit" }, "Add trigger"), triggerStatus));
  loadTriggers();

  // Live logs: the last lines, then new ones as the function writes them.
  follow(path + "/logs?follow=true&limit=50", (data) => {
    const line = JSON.parse(data);
    live.append(el("span", { class: line.stream === "stderr" ? "bad" : "", text: new Date(line.time).toLocaleTimeString() + " " + line.message + "\n" }));
    while (live.childNodes.length > 500) live.firstChild.remove();
  }, (error) => live.replaceWith(problem(error)));
}

// ---- events ----------------------------------------------------------------------

async function events(subscription) {
  if (subscription) return deadLetters(subscription);
  const topics = el("section", {}, el("h2", { text: "Topics" }));
  const subs = el("section", {}, el("h2", { text: "Subscriptions" }));
  const tail = el("section", { id: "tail" }, el("h2", { text: "Live tail" }));
  show(el("h1", { text: "Events" }), topics, tail, subs);
  let names = [];
  try {
    const found = await api("GET", "/events/v1/topics");
    names = (found.topics || found).map((t) => (typeof t === "string" ? t : t.name));
    topics.append(el("table", { id: "topics" }, el("tr", {}, el("th", { text: "topic" })),
      names.map((t) => el("tr", {}, el("td", { text: t })))));
  } catch (error) { topics.append(problem(error)); }

  // A topic's new events as they arrive, filtered by the subscriptions' own pattern
  // language on the server.
  const topic = el("select", { id: "tail-topic" }, names.map((t) => el("option", { value: t, text: t })));
  const pattern = el("input", { id: "tail-pattern", size: 60, placeholder: '{"type": ["minicloud.storage.object.created"]}' });
  const seen = el("tbody", { id: "tail-events" });
  const tailStatus = el("p", { id: "tail-status", role: "status" });
  tail.append(el("form", { id: "tail-form", onsubmit: (event) => {
    event.preventDefault();
    while (screenStreams.length) screenStreams.pop().abort();
    seen.replaceChildren();
    const query = new URLSearchParams();
    if (pattern.value.trim()) query.set("pattern", pattern.value.trim());
    tailStatus.replaceChildren(el("span", { class: "ok", text: "Following " + topic.value + "…" }));
    follow("/events/v1/topics/" + encodeURIComponent(topic.value) + "/tail?" + query, (data) => {
      const event = JSON.parse(data);
      seen.prepend(el("tr", {}, el("td", { class: "muted", text: event.time ? new Date(event.time).toLocaleTimeString() : "" }),
        el("td", { text: event.type }), el("td", { text: event.source }), el("td", {}, el("code", { text: JSON.stringify(event.data) }))));
      while (seen.childNodes.length > 200) seen.lastChild.remove();
    }, (error) => tailStatus.replaceChildren(problem(error)));
  } }, el("label", {}, "Topic ", topic), el("label", {}, "Pattern ", pattern), el("button", { type: "submit" }, "Follow"), tailStatus),
  el("table", { class: "events" }, seen));

  try {
    const found = await api("GET", "/events/v1/subscriptions");
    const list = found.subscriptions || found;
    subs.append(list.length === 0 ? el("p", { class: "muted", text: "None." }) : el("table", { id: "subscriptions" },
      el("tr", {}, ["id", "topic", "target", "owner", "lag", "pending", "dead letters"].map((h) => el("th", { text: h }))),
      list.map((sub) => {
        const [lag, pending, dead] = [el("td", { class: "muted", text: "…" }), el("td", { class: "muted", text: "…" }), el("td", { class: "muted", text: "…" })];
        api("GET", "/events/v1/subscriptions/" + encodeURIComponent(sub.id) + "/stats").then((s) => {
          lag.textContent = s.lag ?? "—";
          pending.textContent = s.pending ?? "—";
          dead.textContent = s.dead_letters;
          if (s.dead_letters) dead.className = "bad";
        }).catch(() => { lag.textContent = pending.textContent = dead.textContent = "—"; });
        return el("tr", { class: "clickable", onclick: () => { location.hash = "#/events/" + encodeURIComponent(sub.id); } },
          el("td", { text: sub.id }), el("td", { text: sub.topic }), el("td", { text: JSON.stringify(sub.target) }), el("td", { text: sub.owner || "" }),
          lag, pending, dead);
      })));
  } catch (error) { subs.append(problem(error)); }
}

async function deadLetters(id) {
  const base = "/events/v1/subscriptions/" + encodeURIComponent(id);
  const stats = el("section", { id: "delivery-stats" }, el("h2", { text: "Deliveries" }));
  const list = el("section", { id: "dead-letters" }, el("h2", { text: "Dead letters" }));
  const status = el("p", { id: "redrive-status", role: "status" });
  const redrive = el("button", { id: "redrive", onclick: async () => {
    status.replaceChildren();
    try {
      const done = await api("POST", base + "/dead-letters/redrive");
      status.replaceChildren(el("span", { class: "ok", text: "Redriven: " + done.redriven }));
      load();
    } catch (error) { status.replaceChildren(problem(error)); }
  } }, "Redrive all");
  show(el("h1", {}, el("a", { href: "#/events", text: "Events" }), " / " + id), stats, el("section", {}, redrive, status), list);
  async function load() {
    try {
      const s = await api("GET", base + "/stats");
      stats.replaceChildren(el("h2", { text: "Deliveries" }), el("table", { id: "stats-table" },
        [["not yet delivered (lag)", s.lag ?? "—"], ["in flight or awaiting retry", s.pending ?? "—"],
          ["dead letters", s.dead_letters], ["last dead letter", s.last_dead_letter_at ? new Date(s.last_dead_letter_at).toLocaleString() : "—"],
          ["delivered (this replica, since start)", s.delivered_since_start], ["retried (this replica, since start)", s.retried_since_start],
          ["dead-lettered (this replica, since start)", s.dead_lettered_since_start]]
          .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))));
    } catch (error) { stats.replaceChildren(el("h2", { text: "Deliveries" }), problem(error)); }
    try {
      const found = await api("GET", base + "/dead-letters");
      list.replaceChildren(el("h2", { text: "Dead letters" }), found.dead_letters.length === 0 ? el("p", { class: "muted", text: "None." })
        : el("table", { id: "dead-letter-table" }, el("tr", {}, ["when", "attempts", "error", "event"].map((h) => el("th", { text: h }))),
          found.dead_letters.map((d) => el("tr", {},
            el("td", { text: new Date(d.created_at).toLocaleString() }), el("td", { text: d.attempts }),
            el("td", { class: "bad", text: d.last_error || "" }), el("td", {}, el("pre", { text: JSON.stringify(d.event, null, 2) }))))));
    } catch (error) { list.replaceChildren(problem(error)); }
  }
  load();
}

// ---- traces and logs -------------------------------------------------------------

function traceTable(traces) {
  return el("table", { id: "traces" },
    el("tr", {}, ["started", "root", "services", "duration", "spans", "status"].map((h) => el("th", { text: h }))),
    traces.map((t) => el("tr", { class: "clickable", onclick: () => { location.hash = "#/traces/" + t.trace_id; } },
      el("td", { text: when(t.start_unix_nano) }),
      el("td", {}, t.root_name, el("div", { class: "muted", text: t.root_path || "" })),
      el("td", { text: t.services.join(", ") }),
      el("td", { text: ms(t.duration_ns) }),
      el("td", { text: t.span_count }),
      el("td", { class: t.error ? "bad" : "", text: t.http_status || (t.error ? "error" : "") }))));
}

async function traces(id) {
  if (id) return waterfall(id);
  const fields = {};
  const input = (name, attrs = {}) => (fields[name] = el("input", { name, ...attrs }));
  const results = el("section", {});
  const form = el("form", { id: "trace-filter", onsubmit: (event) => { event.preventDefault(); load(); } },
    el("label", {}, "service ", input("service")), el("label", {}, "route ", input("route")),
    el("label", {}, "status ", fields.status = el("select", { name: "status" }, el("option", { value: "", text: "any" }), el("option", { value: "error", text: "error" }), el("option", { value: "ok", text: "ok" }))),
    el("label", {}, "min ms ", input("min_duration_ms", { type: "number", min: 0 })),
    el("label", {}, "text ", input("text")), el("button", { type: "submit" }, "Filter"));
  async function load() {
    const query = new URLSearchParams({ limit: "100" });
    for (const [name, field] of Object.entries(fields)) if (field.value) query.set(name, field.value);
    try {
      const found = await api("GET", "/traces/v1/traces?" + query);
      results.replaceChildren(el("p", { class: "muted", text: found.spans + " spans kept (bound " + found.max_spans + ")" }), traceTable(found.traces));
    } catch (error) { results.replaceChildren(problem(error)); }
  }
  show(el("h1", { text: "Traces" }), el("section", {}, form), results);
  load();
}

async function waterfall(id) {
  const view = el("section", { id: "waterfall", class: "waterfall" });
  const detail = el("section", { id: "span-detail" });
  const logs = el("section", { id: "trace-logs" }, el("h2", { text: "Log lines" }));
  show(el("h1", {}, el("a", { href: "#/traces", text: "Traces" }), " / " + id), view, detail, logs);
  let trace;
  try { trace = await api("GET", "/traces/v1/traces/" + encodeURIComponent(id)); } catch (error) { view.append(problem(error)); return; }
  const spans = trace.spans;
  const start = Math.min(...spans.map((s) => s.start_unix_nano));
  const end = Math.max(...spans.map((s) => s.end_unix_nano));
  const total = Math.max(end - start, 1);
  const children = new Map();
  const ids = new Set(spans.map((s) => s.span_id));
  for (const span of spans) {
    const parent = span.parent_span_id && ids.has(span.parent_span_id) ? span.parent_span_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(span);
  }
  const rows = [];
  const walk = (parent, depth) => {
    for (const span of (children.get(parent) || []).sort((a, b) => a.start_unix_nano - b.start_unix_nano)) {
      const bar = el("div", { class: "bar" + (span.status === "error" ? " error" : "") });
      bar.style.left = ((span.start_unix_nano - start) / total * 100) + "%";
      bar.style.width = ((span.end_unix_nano - span.start_unix_nano) / total * 100) + "%";
      const label = el("div", { class: "label", title: span.name }, "\u00a0".repeat(depth * 2), el("strong", { text: span.service }), " " + span.name + " ", el("span", { class: "muted", text: ms(span.end_unix_nano - span.start_unix_nano) }));
      const row = el("div", { class: "row span", "data-service": span.service }, label, el("div", { class: "track" }, bar));
      row.onclick = () => {
        view.querySelectorAll(".row").forEach((r) => r.classList.remove("selected"));
        row.classList.add("selected");
        detail.replaceChildren(el("h2", { text: span.service + " · " + span.name }),
          el("p", { class: "muted", text: span.kind + " · " + ms(span.end_unix_nano - span.start_unix_nano) + (span.status_message ? " · " + span.status_message : "") }),
          el("table", {}, Object.entries(span.attributes).map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))));
      };
      rows.push(row);
      walk(span.span_id, depth + 1);
    }
  };
  walk(null, 0);
  view.append(el("p", { class: "muted", text: spans.length + " spans, " + ms(total) }), ...rows);
  try {
    const found = await api("GET", "/traces/v1/logs?trace_id=" + encodeURIComponent(trace.trace_id));
    logs.append(logTable(found.lines));
  } catch (error) { logs.append(problem(error)); }
  // What each function invoked in this trace wrote, by its invocation's id.
  for (const span of spans) {
    const invocation = span.attributes["faas.invocation_id"];
    const fn = span.attributes["function"];
    if (!invocation || !fn) continue;
    const section = el("section", { class: "function-logs", "data-function": fn }, el("h2", { text: "Function " + fn + " · " + invocation }));
    logs.after(section);
    try {
      const found = await api("GET", "/functions/v1/" + encodeURIComponent(fn) + "/logs?limit=1000&request_id=" + encodeURIComponent(invocation));
      section.append(found.lines.length === 0 ? el("p", { class: "muted", text: "No lines kept." })
        : el("pre", { class: "log", text: found.lines.map((l) => new Date(l.time).toLocaleTimeString() + " " + l.message).join("\n") }));
    } catch (error) { section.append(problem(error)); }
  }
}

function logTable(lines) {
  if (!lines.length) return el("p", { class: "muted", text: "No lines kept." });
  return el("table", { id: "log-lines" }, lines.map((l) => el("tr", {},
    el("td", { class: "muted", text: when(l.time_unix_nano) }),
    el("td", { class: l.level === "ERROR" ? "bad" : "", text: l.level }),
    el("td", { text: l.service || "" }),
    el("td", {}, l.request_id ? el("a", { href: "#/traces/" + l.request_id, text: l.request_id }) : ""),
    el("td", { text: l.message + (Object.keys(l.fields).length ? " " + JSON.stringify(l.fields) : "") }))));
}

async function logs() {
  const fields = {};
  const input = (name) => (fields[name] = el("input", { name }));
  const results = el("section", {});
  const form = el("form", { id: "log-filter", onsubmit: (event) => { event.preventDefault(); load(); } },
    el("label", {}, "request id ", input("request_id")), el("label", {}, "service ", input("service")),
    el("label", {}, "level ", fields.level = el("select", { name: "level" }, ["", "error", "warn", "info", "debug"].map((l) => el("option", { value: l, text: l || "any" })))),
    el("label", {}, "text ", input("text")), el("button", { type: "submit" }, "Filter"));
  async function load() {
    const query = new URLSearchParams({ limit: "200" });
    for (const [name, field] of Object.entries(fields)) if (field.value) query.set(name, field.value);
    try { results.replaceChildren(logTable((await api("GET", "/traces/v1/logs?" + query)).lines)); } catch (error) { results.replaceChildren(problem(error)); }
  }
  show(el("h1", { text: "Logs" }), el("section", {}, form), results);
  load();
}

// ---- usage -----------------------------------------------------------------------

const SERVICE_COLORS = { functions: "#3b82f6", storage: "#10b981", db: "#f59e0b", events: "#8b5cf6", auth: "#ef4444" };
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/// Dollars as people read them: cents when there are any, else two significant digits
/// (never an exponent: a local cloud's month is often a fraction of a cent).
function usd(amount) {
  const n = Number(amount);
  if (!n) return "$0";
  const sign = n < 0 ? "-" : "";
  const size = Math.abs(n);
  const decimals = size >= 0.01 ? 2 : Math.min(12, 1 - Math.floor(Math.log10(size)));
  return sign + "$" + size.toFixed(decimals);
}

/// A bar chart of `bars` ({label, parts: {key: value}}), stacked by key and scaled to
/// the tallest; each segment's tooltip names its bar, key and value.
function stackedBars(id, bars, keys, colors, format) {
  const width = 640, height = 180, left = 8, bottom = 22;
  const tallest = Math.max(0, ...bars.map((bar) => keys.reduce((sum, key) => sum + (bar.parts[key] || 0), 0)));
  const slot = (width - left) / Math.max(bars.length, 1);
  const barWidth = Math.min(slot * 0.7, 40);
  const chart = svg("svg", { id, viewBox: `0 0 ${width} ${height}`, width: "100%", height, role: "img", "aria-label": id });
  bars.forEach((bar, i) => {
    let y = height - bottom;
    for (const key of keys) {
      const value = bar.parts[key] || 0;
      if (!value || !tallest) continue;
      const h = Math.max(1, value / tallest * (height - bottom - 8));
      y -= h;
      chart.append(svg("rect", { class: "segment", "data-key": key, x: left + i * slot + (slot - barWidth) / 2, y, width: barWidth, height: h, fill: colors[key] || "#94a3b8" },
        svg("title", { text: `${bar.label} · ${key}: ${format(value)}` })));
    }
    if (bars.length <= 16 || i % Math.ceil(bars.length / 16) === 0) {
      chart.append(svg("text", { x: left + i * slot + slot / 2, y: height - 6, "text-anchor": "middle", "font-size": 11, fill: "#6b7380", text: bar.label }));
    }
  });
  return chart;
}

function legend(keys, colors) {
  return el("p", { class: "legend" }, keys.map((key) => el("span", {},
    el("span", { class: "swatch", "data-key": key, title: key }, "■"), " " + key + "  ")));
}

function colorSwatches(root, colors) {
  // Set through the CSSOM: the policy allows no inline style attributes.
  root.querySelectorAll(".swatch").forEach((swatch) => { swatch.style.color = colors[swatch.dataset.key] || "#94a3b8"; });
}

async function usage() {
  const summary = el("section", { id: "usage-summary" }, el("h2", { text: "This month" }), el("p", { class: "muted", text: "Loading…" }));
  const services = el("section", { id: "usage-services" }, el("h2", { text: "Cost per service, by day" }));
  const fns = el("section", { id: "usage-functions" }, el("h2", { text: "Functions this month" }));
  const budgetSection = el("section", { id: "usage-budgets" }, el("h2", { text: "Budgets" }));
  show(el("h1", { text: "Usage" }), summary, services, fns, budgetSection);

  try {
    const forecast = await api("GET", "/billing/v1/forecast");
    summary.replaceChildren(el("h2", { text: "This month" }), el("table", { id: "usage-totals" },
      el("tr", {}, el("th", { text: "so far (free tier applied)" }), el("td", { id: "month-to-date", text: usd(forecast.month_to_date) })),
      el("tr", {}, el("th", { text: "forecast for the month" }), el("td", { id: "month-forecast", text: usd(forecast.forecast) })),
      el("tr", {}, el("th", { text: "month elapsed" }), el("td", { text: Math.round(forecast.elapsed * 100) + "%" }))),
      el("p", { class: "muted", text: "Estimated from the price sheet (GET /billing/v1/prices): what the same work would cost on the public cloud it mirrors." }));
  } catch (error) { summary.replaceChildren(el("h2", { text: "This month" }), problem(error)); }

  try {
    const cost = await api("GET", "/billing/v1/cost?granularity=day");
    const days = new Map();
    const totals = {};
    for (const line of cost.lines) {
      const day = line.start.slice(0, 10);
      if (!days.has(day)) days.set(day, {});
      const parts = days.get(day);
      parts[line.service] = (parts[line.service] || 0) + Number(line.cost);
      totals[line.service] = (totals[line.service] || 0) + Number(line.cost);
    }
    const keys = Object.keys(SERVICE_COLORS).filter((key) => key in totals).concat(Object.keys(totals).filter((key) => !(key in SERVICE_COLORS)));
    const bars = [...days.entries()].sort().map(([day, parts]) => ({ label: day.slice(5), parts }));
    services.replaceChildren(el("h2", { text: "Cost per service, by day" }),
      bars.length ? stackedBars("service-chart", bars, keys, SERVICE_COLORS, usd) : el("p", { class: "muted", text: "Nothing metered this month yet." }),
      legend(keys, SERVICE_COLORS),
      el("table", { id: "service-costs" },
        el("tr", {}, el("th", { text: "service" }), el("th", { text: "cost before free tier" })),
        keys.map((key) => el("tr", { "data-service": key }, el("td", { text: key }), el("td", { text: usd(totals[key]) })))),
      el("p", { class: "muted", text: "Free tier this month: " + usd(cost.free_tier.reduce((sum, credit) => sum + Number(credit.cost), 0)) + " · total " + usd(cost.total) }));
    colorSwatches(services, SERVICE_COLORS);
  } catch (error) { services.replaceChildren(el("h2", { text: "Cost per service, by day" }), problem(error)); }

  try {
    const cost = await api("GET", "/billing/v1/cost?granularity=month&service=functions&group_by=resource");
    const byFunction = new Map();
    for (const line of cost.lines) {
      const name = line.resource || "(none)";
      if (!byFunction.has(name)) byFunction.set(name, { requests: 0, gbSeconds: 0, provisioned: 0, cost: 0 });
      const row = byFunction.get(name);
      row.cost += Number(line.cost);
      if (line.meter === "function.requests") row.requests += line.quantity;
      if (line.meter === "function.mb_ms") row.gbSeconds += line.quantity / 1024000;
      if (line.meter === "function.provisioned_mb_ms") row.provisioned += line.quantity / 1024000;
    }
    const rows = [...byFunction.entries()].sort((a, b) => b[1].cost - a[1].cost || a[0].localeCompare(b[0]));
    const colors = { requests: "#93c5fd", compute: "#3b82f6", provisioned: "#1e3a8a" };
    const bars = rows.slice(0, 20).map(([name]) => {
      const parts = { requests: 0, compute: 0, provisioned: 0 };
      for (const line of cost.lines.filter((l) => (l.resource || "(none)") === name)) {
        const key = line.meter === "function.requests" ? "requests" : line.meter === "function.provisioned_mb_ms" ? "provisioned" : "compute";
        parts[key] += Number(line.cost);
      }
      return { label: name, parts };
    });
    fns.replaceChildren(el("h2", { text: "Functions this month" }),
      rows.length ? stackedBars("function-chart", bars, Object.keys(colors), colors, usd) : el("p", { class: "muted", text: "No function has run this month." }),
      rows.length ? legend(Object.keys(colors), colors) : null,
      el("table", { id: "function-costs" },
        el("tr", {}, ["function", "requests", "GB-seconds", "provisioned GB-seconds", "cost before free tier"].map((h) => el("th", { text: h }))),
        rows.map(([name, row]) => el("tr", { "data-function": name },
          el("td", {}, el("a", { href: "#/functions/" + encodeURIComponent(name), text: name })),
          el("td", { text: String(row.requests) }),
          el("td", { text: row.gbSeconds.toFixed(4) }),
          el("td", { text: row.provisioned.toFixed(4) }),
          el("td", { text: usd(row.cost) })))));
    colorSwatches(fns, colors);
  } catch (error) { fns.replaceChildren(el("h2", { text: "Functions this month" }), problem(error)); }

  await budgets(budgetSection);
}

function scopeText(scope) {
  if (scope === "all") return "everything";
  const [kind, value] = Object.entries(scope)[0];
  return kind + " " + value;
}

async function budgets(section) {
  const heading = el("h2", { text: "Budgets" });
  let list;
  try { list = (await api("GET", "/billing/v1/budgets")).budgets; } catch (error) { section.replaceChildren(heading, problem(error)); return; }
  const error = el("div", { id: "budget-error" });
  const field = (name, attrs = {}) => el("input", { name, ...attrs });
  const name = field("name", { required: true, placeholder: "monthly", size: 12 });
  const amount = field("amount", { required: true, placeholder: "10.00", size: 8 });
  const kind = el("select", { name: "scope" }, ["all", "service", "resource", "owner"].map((k) => el("option", { value: k, text: k })));
  const value = field("scope_value", { placeholder: "functions / thumbnail / …", size: 16 });
  const basis = el("select", { name: "basis" }, ["actual", "forecast"].map((b) => el("option", { value: b, text: b })));
  const cap = el("input", { type: "checkbox", name: "cap" });
  const form = el("form", { id: "budget-form", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { name: name.value.trim(), amount: amount.value.trim(), scope: kind.value === "all" ? "all" : { [kind.value]: value.value.trim() },
      basis: basis.value, actions: cap.checked ? ["notify", "cap"] : ["notify"] };
    try { await api("POST", "/billing/v1/budgets", body); await budgets(section); } catch (e) { error.replaceChildren(problem(e)); }
  } },
    el("label", {}, "name ", name), el("label", {}, "USD a month ", amount), el("label", {}, "scope ", kind, " ", value),
    el("label", {}, "basis ", basis), el("label", {}, cap, " cap past 100%"), el("button", { type: "submit" }, "Add budget"));
  const rows = list.map((budget) => {
    const state = budget.state;
    const meter = el("progress", { max: 100, value: Math.min(100, state.percent) });
    const status = state.capped ? "capped" : state.fired.length ? "over " + Math.max(...state.fired) + "%" : "ok";
    return el("tr", { "data-budget": budget.name },
      el("td", { text: budget.name }),
      el("td", { text: scopeText(budget.scope) }),
      el("td", { text: usd(budget.amount) }),
      el("td", { text: budget.basis }),
      el("td", { text: usd(state.actual) }),
      el("td", { text: usd(state.forecast) }),
      el("td", {}, meter, " " + state.percent.toFixed(1) + "%"),
      el("td", { text: state.fired.length ? state.fired.map((t) => t + "%").join(", ") : "—" }),
      el("td", { class: state.capped ? "bad budget-state" : state.fired.length ? "denied budget-state" : "ok budget-state", text: status }),
      el("td", {}, el("button", { onclick: async () => {
        try { await api("DELETE", "/billing/v1/budgets/" + encodeURIComponent(budget.name)); await budgets(section); } catch (e) { error.replaceChildren(problem(e)); }
      } }, "Delete")));
  });
  section.replaceChildren(heading,
    list.length ? el("table", { id: "budget-table" },
      el("tr", {}, ["budget", "scope", "amount", "basis", "actual", "forecast", "of amount", "fired", "state", ""].map((h) => el("th", { text: h }))),
      rows) : el("p", { class: "muted", text: "No budgets: add one to be told (on the billing topic) before a month costs more than you meant." }),
    form, error);
}

// ---- routing ---------------------------------------------------------------------

function route() {
  while (screenStreams.length) screenStreams.pop().abort();
  const signedIn = Boolean(session.token);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  document.getElementById("who").textContent = session.label;
  if (!signedIn) return signInScreen();
  const [screen, ...rest] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + screen));
  switch (screen) {
    case "auth": return auth();
    case "storage": return storage(rest[0], rest.slice(1).join("/"));
    case "database": return database(rest[0]);
    case "events": return events(rest[0]);
    case "functions": return functions(rest[0]);
    case "traces": return traces(rest[0]);
    case "logs": return logs();
    case "usage": return usage();
    default: return overview();
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").onclick = () => { session.clear(); location.hash = ""; route(); };
  route();
});
