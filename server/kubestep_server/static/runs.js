// The runs list: the newest page of the namespace's runs that match the filters, more on demand,
// then live changes from the namespace's SSE stream (only changes: `snapshot=false`), so nothing is
// fetched again. With 10,000 runs the browser holds the pages it loaded, not the namespace.
import { api, age, asText, budget, canI, el, lastStep, showProblem, signedIn } from "./common.js";

const PAGE = 100;
const runs = new Map(); // name -> run
let source = null;
let mayCancel = false;
let next = null; // the continue token of the next page, null when every matching run is loaded
let filters = { namespace: "", search: "", workflow: "", phase: "" };

// A page and the stream can both carry a run; the server's cache stamps each state with cache_seq
// (a number that only grows), so the newer of two states wins. Without the cache (no cache_seq) the
// later arrival wins, as before.
function keep(run) {
  const had = runs.get(run.id);
  if (had && had.cache_seq !== undefined && run.cache_seq !== undefined && had.cache_seq > run.cache_seq) return;
  runs.set(run.id, run);
}

function phaseOk(run) {
  return !filters.phase || (run.status && run.status.phase) === filters.phase;
}

function row(run) {
  const status = run.status || {};
  const box = el("input", { type: "checkbox", "aria-label": `select ${run.id}` });
  box.dataset.name = run.id;
  box.disabled = Boolean(run.finished);
  const link = el("a", { href: `/runs/${encodeURIComponent(run.namespace)}/${encodeURIComponent(run.id)}` }, run.id);
  const b = budget(run);
  const meter = b
    ? el("span", { className: "budget" }, el("meter", { min: "0", max: "1", value: String(b.fraction) }), ` ${Math.round(b.used)}s / ${b.limit}s`)
    : el("span", { className: "muted" }, run.run_timeout_seconds ? `— / ${run.run_timeout_seconds}s` : "no budget");
  const step = lastStep(run);
  const tr = el(
    "tr",
    { className: `phase-${status.phase || "New"}` },
    el("td", { className: "sel" }, mayCancel ? box : ""),
    el("td", { className: "name" }, link),
    el("td", {}, el("span", { className: `phase phase-${status.phase || "New"}` }, status.phase || "—")),
    el("td", {}, run.workflow),
    el("td", {}, age(run.created_at)),
    el("td", {}, meter),
    el("td", {}, step ? `${step.key} (${step.state})` : ""),
    el("td", {}, status.worker || ""),
  );
  tr.dataset.name = run.id;
  return tr;
}

function render() {
  const body = document.getElementById("rows");
  const checked = new Set([...body.querySelectorAll("input:checked")].map((b) => b.dataset.name));
  const sorted = [...runs.values()].filter(phaseOk).sort((a, b) => (b.created_at || "").localeCompare(a.created_at || "") || b.id.localeCompare(a.id));
  body.replaceChildren(...sorted.map(row));
  for (const box of body.querySelectorAll("input[type=checkbox]")) box.checked = checked.has(box.dataset.name);
  document.getElementById("more").hidden = next === null;
  document.getElementById("count").textContent = `${sorted.length} shown${next === null ? "" : "; more match"}`;
}

function query(extra = {}) {
  const q = new URLSearchParams({ namespace: filters.namespace, ...extra });
  if (filters.search) q.set("search", filters.search);
  if (filters.workflow) q.set("workflow", filters.workflow);
  return q;
}

async function loadPage() {
  const q = query({ order: "newest", limit: String(PAGE) });
  if (filters.phase) q.set("phase", filters.phase);
  if (next) q.set("continue", next);
  try {
    const page = await api(`/api/v1/executions?${q}`);
    for (const run of page.items) keep(run);
    next = page.continue;
  } catch (e) {
    next = null;
    showProblem(e);
  }
  render();
}

// The oldest run loaded: a change to an older one is beyond the pages shown, and stays there.
function inView(run) {
  if (next === null) return true;
  let oldest = null;
  for (const r of runs.values()) if (oldest === null || (r.created_at || "") < oldest) oldest = r.created_at || "";
  return oldest === null || (run.created_at || "") >= oldest;
}

async function load() {
  showProblem(null);
  if (source) source.close();
  runs.clear();
  next = null;
  mayCancel = await canI("patch", filters.namespace);
  document.getElementById("bulk").hidden = !mayCancel;
  document.getElementById("table").classList.toggle("no-select", !mayCancel);
  const live = document.getElementById("live");
  // The stream first, then the page: a change made while the page is read is not lost.
  source = new EventSource(`/api/v1/executions?${query({ watch: "true", snapshot: "false" })}`);
  source.addEventListener("open", () => (live.textContent = "live"));
  source.addEventListener("change", (message) => {
    const change = JSON.parse(message.data);
    const run = change.execution;
    if (change.type === "DELETED") runs.delete(run.id);
    else if (runs.has(run.id) || inView(run)) keep(run);
    render();
  });
  source.addEventListener("error", (message) => {
    live.textContent = "reconnecting…";
    if (message.data) {
      try {
        const body = JSON.parse(message.data);
        showProblem({ status: body.status, message: body.error || asText(body) });
      } catch (e) {
        /* not ours */
      }
    }
  });
  await loadPage();
}

function showResults(answer) {
  const box = document.getElementById("bulk-results");
  document.getElementById("bulk-summary").textContent = `${answer.cancelled} of ${answer.requested} cancelled${answer.failed ? `, ${answer.failed} not` : ""}.`;
  document.getElementById("bulk-failures").replaceChildren(
    ...answer.results.filter((r) => r.status !== 200).map((r) => el("li", {}, `${r.execution_id}: ${r.status} ${r.error || r.reason || ""}`)),
  );
  box.hidden = false;
}

async function bulkCancel(body, question) {
  const form = document.getElementById("bulk");
  if (!form.reportValidity()) return;
  const reason = document.getElementById("bulk-reason").value.trim();
  if (!window.confirm(`${question}\nReason: ${reason}`)) return;
  try {
    const answer = await api(`/api/v1/executions/cancel?${new URLSearchParams({ namespace: filters.namespace })}`, {
      method: "POST",
      body: { ...body, reason },
    });
    showProblem(null);
    showResults(answer);
  } catch (e) {
    showProblem(e);
  }
}

function cancelSelected(event) {
  event.preventDefault();
  const names = [...document.querySelectorAll("#rows input:checked")].map((b) => b.dataset.name);
  if (!names.length) {
    showProblem({ message: "no run is selected" });
    return;
  }
  bulkCancel({ names }, `Cancel ${names.length} run(s) in ${filters.namespace}?`);
}

function cancelMatching() {
  const filter = {};
  if (filters.search) filter.search = filters.search;
  if (filters.workflow) filter.workflow = filters.workflow;
  if (filters.phase) filter.phase = filters.phase;
  const described = Object.entries(filter).map(([k, v]) => `${k}=${v}`).join(", ") || "no filter";
  bulkCancel({ filter }, `Cancel EVERY unfinished run in ${filters.namespace} matching ${described}?`);
}

function readFilters() {
  for (const key of Object.keys(filters)) filters[key] = document.getElementById(key).value.trim();
}

async function main() {
  await signedIn("/api/v1/can-i?verb=list");
  const params = new URLSearchParams(window.location.search);
  for (const key of Object.keys(filters)) document.getElementById(key).value = params.get(key) || "";
  if (!params.get("namespace")) document.getElementById("namespace").value = (await api("/api/v1/can-i?verb=list")).namespace;
  readFilters();
  document.getElementById("runs").hidden = false;
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    readFilters();
    const url = new URL(window.location.href);
    for (const [key, value] of Object.entries(filters)) {
      if (value) url.searchParams.set(key, value);
      else url.searchParams.delete(key);
    }
    window.history.replaceState(null, "", url);
    load();
  });
  document.getElementById("phase").addEventListener("change", () => document.getElementById("filters").requestSubmit());
  document.getElementById("bulk").addEventListener("submit", cancelSelected);
  document.getElementById("cancel-matching").addEventListener("click", cancelMatching);
  document.getElementById("more").addEventListener("click", loadPage);
  document.getElementById("select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#rows input[type=checkbox]:not(:disabled)")) box.checked = event.target.checked;
  });
  window.setInterval(render, 5000); // ages and budgets move on
  await load();
}

main();
