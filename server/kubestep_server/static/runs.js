// The runs list: a page of the namespace's runs, then live changes from its SSE stream.
import { api, age, asText, budget, canI, el, lastStep, showProblem, signedIn } from "./common.js";

const params = new URLSearchParams(window.location.search);
const runs = new Map(); // name -> run
let source = null;
let mayCancel = false;

function phaseOk(run) {
  const phase = document.getElementById("phase").value;
  return !phase || (run.status && run.status.phase) === phase;
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
  const sorted = [...runs.values()].filter(phaseOk).sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  body.replaceChildren(...sorted.map(row));
  for (const box of body.querySelectorAll("input[type=checkbox]")) box.checked = checked.has(box.dataset.name);
}

async function load(namespace) {
  showProblem(null);
  if (source) source.close();
  runs.clear();
  mayCancel = await canI("patch", namespace);
  document.getElementById("bulk").hidden = !mayCancel;
  document.getElementById("table").classList.toggle("no-select", !mayCancel);
  try {
    const page = await api(`/api/v1/executions?namespace=${encodeURIComponent(namespace)}&limit=500`);
    for (const run of page.items) runs.set(run.id, run);
  } catch (e) {
    showProblem(e);
  }
  render();
  const live = document.getElementById("live");
  source = new EventSource(`/api/v1/executions/stream?namespace=${encodeURIComponent(namespace)}`);
  source.addEventListener("open", () => (live.textContent = "live"));
  source.addEventListener("change", (message) => {
    const change = JSON.parse(message.data);
    if (change.type === "DELETED") runs.delete(change.execution.id);
    else runs.set(change.execution.id, change.execution);
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
}

async function cancelSelected(event) {
  event.preventDefault();
  const names = [...document.querySelectorAll("#rows input:checked")].map((b) => b.dataset.name);
  if (!names.length) return;
  const reason = document.getElementById("bulk-reason").value.trim();
  if (!window.confirm(`Cancel ${names.length} run(s)?`)) return;
  const namespace = document.getElementById("namespace").value;
  for (const name of names) {
    try {
      await api(`/api/v1/executions/${encodeURIComponent(name)}/cancel?namespace=${encodeURIComponent(namespace)}`, {
        method: "POST",
        body: reason ? { reason } : {},
      });
    } catch (e) {
      showProblem(e);
    }
  }
}

async function main() {
  await signedIn("/api/v1/can-i?verb=list");
  let namespace = params.get("namespace");
  if (!namespace) namespace = (await api("/api/v1/can-i?verb=list")).namespace;
  document.getElementById("namespace").value = namespace;
  if (params.get("phase")) document.getElementById("phase").value = params.get("phase");
  document.getElementById("runs").hidden = false;
  document.getElementById("phase").addEventListener("change", render);
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const ns = document.getElementById("namespace").value.trim();
    const url = new URL(window.location.href);
    url.searchParams.set("namespace", ns);
    window.history.replaceState(null, "", url);
    load(ns);
  });
  document.getElementById("bulk").addEventListener("submit", cancelSelected);
  window.setInterval(render, 5000); // ages and budgets move on
  await load(namespace);
}

main();
