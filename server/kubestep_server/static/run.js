// One run: summary, timeline of its steps, input/result/error, Events, Cancel and Send event.
import { api, asText, budget, canI, el, showProblem, signedIn } from "./common.js";

const [, , namespace, name] = window.location.pathname.split("/").map(decodeURIComponent);
const q = `namespace=${encodeURIComponent(namespace)}`;
const base = `/api/v1/executions/${encodeURIComponent(name)}`;
let history = [];
let historyProblem = null; // why the whole history (GET .../steps) could not be read, if it could not
let archivedSeen = -1; // records the run's journal held when the history was last read

const t = (iso) => (iso ? Date.parse(iso) : null);

function barClass(step) {
  const classes = ["bar"];
  if (step.kind === "Wait") classes.push("bar-wait");
  else if (step.kind === "Event") classes.push("bar-event");
  else classes.push("bar-run");
  if (step.state === "Interrupted") classes.push("bar-interrupted");
  if (step.state === "Failed") classes.push("bar-failed");
  if (step.cleanup) classes.push("bar-cleanup");
  if (!step.finished_at) classes.push("bar-open");
  return classes.join(" ");
}

// Records the run has archived (status.journal): when it grows, records left status since the
// history was read, and the history is read again (else they would drop out of the page).
function archivedCount(run) {
  return ((run.status && run.status.journal) || []).reduce((n, ref) => n + (ref.steps || 0), 0);
}

async function loadHistory(run) {
  archivedSeen = archivedCount(run);
  try {
    history = (await api(`${base}/steps?${q}`)).steps;
    historyProblem = null;
  } catch (e) {
    historyProblem = e.message; // keep what was read before
  }
}

function stepsOf(run) {
  // The full history (archived records too) merged with the latest in the status.
  const byKey = new Map(history.map((s) => [s.key, s]));
  for (const s of (run.status && run.status.steps) || []) byKey.set(s.key, s);
  return [...byKey.values()].sort((a, b) => (a.started_at || "").localeCompare(b.started_at || ""));
}

function drawTimeline(run, steps) {
  const now = Date.now();
  const status = run.status || {};
  const start = Math.min(...[t(status.started_at), t(run.created_at), ...steps.map((s) => t(s.started_at))].filter(Boolean));
  const deadline = status.started_at && run.run_timeout_seconds ? t(status.started_at) + run.run_timeout_seconds * 1000 : null;
  const cancelAt = run.cancellation && t(run.cancellation.requested_at);
  // The chart spans the run itself; a deadline far beyond it is pinned to the right edge (marked so).
  const runEnd = Math.max(start + 1000, t(status.finished_at) || now, ...steps.map((s) => t(s.finished_at) || now));
  const end = deadline && deadline <= runEnd + (runEnd - start) ? Math.max(runEnd, deadline) : runEnd;
  const span = end - start;
  const pct = (ms) => `${(100 * (ms - start)) / span}%`;
  const box = document.getElementById("timeline");
  const rows = steps.map((step) => {
    const from = t(step.started_at) || start;
    const to = t(step.finished_at) || (status.finished_at ? t(status.finished_at) : now);
    const bar = el("div", { className: barClass(step), title: `${step.key}: ${step.state}` });
    bar.style.left = pct(from);
    bar.style.width = `${Math.max(0.4, (100 * (to - from)) / span)}%`;
    const label = `${step.key} · ${step.kind} · ${step.state}${step.cleanup ? " · cleanup" : ""}`;
    return el("div", { className: "lane" }, el("div", { className: "lane-label" }, label), el("div", { className: "lane-track" }, bar));
  });
  const marks = el("div", { className: "marks" });
  if (deadline) {
    const beyond = deadline > end;
    const when = new Date(deadline).toISOString();
    const line = el(
      "div",
      { className: `line line-deadline${beyond ? " beyond" : ""}`, title: `budget deadline ${when}` },
      beyond ? el("span", { className: "line-label" }, `deadline ${Math.round((deadline - start) / 1000)}s →`) : "",
    );
    line.style.left = beyond ? "100%" : pct(deadline);
    marks.append(line);
  }
  if (cancelAt) {
    const line = el("div", { className: "line line-cancel", title: `cancel requested ${new Date(cancelAt).toISOString()}` });
    line.style.left = pct(cancelAt);
    marks.append(line);
  }
  const scale = el("div", { className: "scale" }, el("span", {}, new Date(start).toISOString()), el("span", {}, `${Math.round(span / 1000)}s`));
  box.replaceChildren(el("div", { className: "lanes" }, ...(rows.length ? rows : [el("p", { className: "muted" }, "no steps yet")]), marks), scale);
}

function dd(list, term, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", {}, term), el("dd", {}, value));
}

function render(run) {
  const status = run.status || {};
  document.getElementById("run-name").textContent = run.id;
  const phase = document.getElementById("run-phase");
  phase.textContent = status.phase || "—";
  phase.className = `phase phase-${status.phase || "New"}`;
  const summary = document.getElementById("summary");
  summary.replaceChildren();
  dd(summary, "Namespace", run.namespace);
  dd(summary, "Workflow", run.workflow);
  if (run.parent) {
    const link = el("a", { href: `/runs/${encodeURIComponent(run.namespace)}/${encodeURIComponent(run.parent)}` }, run.parent);
    dd(summary, "Parent", el("span", {}, link, ` (root ${run.root || "?"}, depth ${run.depth})`));
  }
  dd(summary, "Worker", status.worker);
  dd(summary, "Created", run.created_at);
  dd(summary, "Started", status.started_at);
  dd(summary, "Finished", status.finished_at);
  const b = budget(run);
  if (b) dd(summary, "Budget used", `${Math.round(b.used)}s of ${b.limit}s`);
  else if (run.run_timeout_seconds) dd(summary, "Budget", `${run.run_timeout_seconds}s`);
  dd(summary, "Reason", status.reason);
  dd(summary, "Message", status.message);
  const labels = Object.entries(run.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  dd(summary, "Labels", labels);

  const info = document.getElementById("cancel-info");
  const c = run.cancellation;
  if (c) {
    // Only the cluster's cancel-audit admission policy records who the user was (requestedByUser);
    // without it all that is known is the writing client's field manager, which says how, not who.
    const who = c.requested_by_user
      ? c.requested_by_user
      : `an unknown user (the cancel-audit policy is off; written by ${c.requested_by || "an unnamed client"})`;
    info.replaceChildren(
      el("strong", {}, "Cancel requested"),
      ` at ${c.requested_at || "?"} by `,
      el("span", { className: "who" }, who),
      run.cancel_grace_period_seconds ? ` (grace ${run.cancel_grace_period_seconds}s)` : "",
      ". Reason: ",
      el("span", { className: "reason" }, c.message || "(none given)"),
    );
    info.hidden = false;
  } else info.hidden = true;

  document.getElementById("input").textContent = asText(run.input);
  // Shown only when there is something: a cancelled run has neither result nor error.
  document.getElementById("result").textContent = asText(status.result);
  document.getElementById("result-box").hidden = status.result === null || status.result === undefined;
  document.getElementById("error").textContent = asText(status.error);
  document.getElementById("error-box").hidden = !status.error;
  const steps = stepsOf(run);
  const note = document.getElementById("steps-note");
  note.hidden = !historyProblem;
  note.textContent = historyProblem
    ? `Only the most recent steps are shown (those in the run's status): its whole history could not be read: ${historyProblem}`
    : "";
  drawTimeline(run, steps);
  document.getElementById("steps").replaceChildren(
    ...steps.map((s) =>
      el("tr", {}, el("td", {}, s.key), el("td", {}, s.kind), el("td", {}, s.state), el("td", {}, s.started_at || ""), el("td", {}, s.finished_at || ""),
        el("td", {}, el("pre", {}, asText(s.error || s.output)))),
    ),
  );
  if (run.finished) {
    document.getElementById("cancel-form").hidden = true;
    document.getElementById("event-form").hidden = true;
  }
}

async function loadEvents() {
  try {
    const answer = await api(`${base}/events?${q}`);
    document.getElementById("events").replaceChildren(
      ...answer.events.map((e) => el("tr", {}, el("td", {}, e.type), el("td", {}, e.reason), el("td", {}, e.message), el("td", {}, e.component), el("td", {}, e.last_seen || ""))),
    );
  } catch (e) {
    document.getElementById("events").replaceChildren(el("tr", {}, el("td", { colspan: "5", className: "muted" }, `Events not shown: ${e.message}`)));
  }
}

// The runs this one started (ctx.step.invoke): by the parent label, then by the ownerReference's name.
async function loadChildren(run) {
  const selector = encodeURIComponent(`kubestep.io/parent=${run.id}`);
  try {
    const answer = await api(`/api/v1/executions?${q}&labelSelector=${selector}`);
    const children = (answer.executions || answer.items || []).filter((c) => c.parent === run.id);
    document.getElementById("children-box").hidden = children.length === 0;
    document.getElementById("children").replaceChildren(
      ...children.map((c) => {
        const link = el("a", { href: `/runs/${encodeURIComponent(c.namespace)}/${encodeURIComponent(c.id)}` }, c.id);
        const status = c.status || {};
        return el("tr", {}, el("td", {}, link), el("td", {}, c.workflow), el("td", {}, status.phase || "—"), el("td", {}, status.reason || ""));
      }),
    );
  } catch (e) {
    document.getElementById("children-box").hidden = true; // a list it may not read: nothing to show
  }
}

async function main() {
  await signedIn(`/api/v1/can-i?verb=get&${q}`);
  let run;
  try {
    run = await api(`${base}?${q}`);
  } catch (e) {
    showProblem(e);
    return;
  }
  await loadHistory(run);
  document.getElementById("run").hidden = false;
  const mayPatch = await canI("patch", namespace);
  document.getElementById("cancel-form").hidden = !mayPatch || run.finished;
  document.getElementById("event-form").hidden = !mayPatch || run.finished;
  render(run);
  loadEvents();
  loadChildren(run);

  document.getElementById("cancel-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = document.getElementById("cancel-reason").value.trim();
    const grace = document.getElementById("cancel-grace").value;
    if (!window.confirm(`Cancel run ${name}?`)) return;
    const body = { reason };
    if (grace !== "") body.grace_period_seconds = Number(grace);
    try {
      await api(`${base}/cancel?${q}`, { method: "POST", body });
      showProblem(null);
    } catch (e) {
      showProblem(e);
    }
  });
  document.getElementById("event-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse(document.getElementById("event-data").value || "null");
    } catch (e) {
      showProblem({ message: "the event's data is not JSON" });
      return;
    }
    try {
      await api(`${base}/events?${q}`, { method: "POST", body: { topic: document.getElementById("event-topic").value.trim(), data } });
      showProblem(null);
      loadEvents();
    } catch (e) {
      showProblem(e);
    }
  });

  const source = new EventSource(`${base}/stream?${q}`);
  source.addEventListener("execution", async (message) => {
    run = JSON.parse(message.data);
    if (archivedCount(run) !== archivedSeen) await loadHistory(run);
    render(run);
  });
  source.addEventListener("end", () => {
    source.close();
    loadEvents();
    loadChildren(run);
  });
  source.addEventListener("error", (message) => {
    if (message.data) {
      try {
        const body = JSON.parse(message.data);
        showProblem({ status: body.status, message: body.error || body.message });
      } catch (e) {
        /* not ours */
      }
    }
  });
  window.setInterval(() => !run.finished && render(run), 5000);
}

main();
