// The inspector page: polls the JSON API, shows one request in detail, replays it.
"use strict";
let selected = null;
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
};
const size = (n) => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
const statusClass = (r) => r.outcome === "failed" ? "failed" : r.status ? `s${String(r.status)[0]}` : "";
const statusText = (r) => r.outcome === "failed" ? (r.status ? `${r.status} (failed)` : "failed") : r.status ?? (r.outcome === "in flight" ? "…" : "");

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function refresh() {
  let data;
  try { data = await api("/api/requests"); } catch (e) { return; }
  $("redacted-note").textContent = data.redacted.join(", ");
  const rows = data.requests.map((r) => {
    const tr = el("tr", { "data-id": r.id, onclick: () => show(r.id) },
      el("td", {}, new Date(r.time).toLocaleTimeString()),
      el("td", {}, r.method),
      el("td", {}, r.target),
      el("td", { class: "path", title: r.path }, r.replay_of ? `↻ ${r.path}` : r.path),
      el("td", { class: statusClass(r) }, statusText(r)),
      el("td", {}, r.duration_ms == null ? "" : `${r.duration_ms.toFixed(1)} ms`),
      el("td", {}, `${size(r.request_size)} / ${size(r.response_size)}`));
    if (r.id === selected) tr.classList.add("selected");
    return tr;
  });
  const tbody = $("requests");
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No requests yet."))]));
}

function headersTable(pairs) {
  return el("table", { class: "headers" }, ...pairs.map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", v === "[redacted]" ? { class: "redacted" } : {}, v))));
}

function bodyView(b) {
  if (b.size === 0) return el("p", { class: "muted" }, "(empty)");
  const text = b.text !== undefined ? b.text : `base64: ${b.base64}`;
  return el("div", {},
    el("pre", { class: "body" }, text),
    el("p", { class: "muted" }, `${size(b.size)}${b.truncated ? ", truncated: only the first bytes are kept" : ""}`));
}

async function show(id) {
  selected = id;
  let r;
  try { r = await api(`/api/requests/${id}`); } catch (e) { $("detail").replaceChildren(el("p", { class: "failed" }, e.message)); return; }
  document.querySelectorAll("#requests tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === String(id)));
  const method = el("input", { id: "replay-method", value: r.method, size: 7, "aria-label": "method" });
  const path = el("input", { id: "replay-path", value: r.path, "aria-label": "path" });
  path.style.flex = "1";
  const body = el("textarea", { id: "replay-body", "aria-label": "body" });
  body.value = r.request.body.text ?? "";
  const result = el("div", { id: "replay-result" });
  const form = el("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      const edit = { method: method.value, path: path.value };
      if (!r.request.body.truncated || body.value !== (r.request.body.text ?? "")) edit.body = body.value;
      try {
        const done = await api(`/api/requests/${r.id}/replay`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(edit) });
        result.replaceChildren(el("p", { class: statusClass(done) }, `Replayed as #${done.id}: ${statusText(done)}${done.error ? ` (${done.error})` : ""}`));
        refresh();
      } catch (e) { result.replaceChildren(el("p", { class: "failed" }, e.message)); }
    } },
    el("div", { class: "row" }, method, path),
    body,
    el("div", { class: "row" }, el("button", { type: "submit", id: "replay" }, "Replay to the backend")),
    result);
  $("detail").replaceChildren(
    el("h2", {}, `#${r.id} ${r.method} ${r.path}`),
    el("p", { class: "muted" }, `${r.time} · target ${r.target} · request id ${r.request_id}${r.replay_of ? ` · replay of #${r.replay_of}` : ""}`),
    el("p", { class: statusClass(r) }, `${statusText(r)} · ${r.outcome}${r.error ? `: ${r.error}` : ""}${r.duration_ms == null ? "" : ` · ${r.duration_ms.toFixed(1)} ms`}`),
    el("h3", {}, "Request headers"), headersTable(r.request.headers),
    el("h3", {}, "Request body"), bodyView(r.request.body),
    el("h3", {}, "Response headers"), headersTable(r.response.headers),
    el("h3", {}, "Response body"), bodyView(r.response.body),
    el("h3", {}, "Replay"), form);
}

$("clear").addEventListener("click", async () => {
  await api("/api/requests", { method: "DELETE", headers: { "content-type": "application/json" } });
  selected = null;
  $("detail").replaceChildren(el("p", { class: "muted" }, "Select a request to see its headers and bodies, and to replay it."));
  refresh();
});
refresh();
setInterval(refresh, 1000);
