// Shared by the pages: API calls (cookie auth, CSRF header), sign-in, and DOM building.
// Every string from the API goes into the page through textContent and DOM nodes, never as markup.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.error || body.message)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-Kubestep-CSRF"] = "1";
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// el("td", {className: "x"}, "text", otherNode): children strings become text nodes.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// The message goes in as text. A refusal (403) also offers a way out: back to the list, or signing
// in with another token (the cookie is cleared first: no script can read or replace it).
export function showProblem(error) {
  const box = document.getElementById("problem");
  const actions = document.getElementById("problem-actions");
  if (!error) {
    box.hidden = true;
    document.getElementById("problem-text").textContent = "";
    actions.hidden = true;
    return;
  }
  const status = error.status ? `${error.status} ` : "";
  const what = error.status === 403 ? "Refused by Kubernetes RBAC: " : "Error: ";
  document.getElementById("problem-text").textContent = `${status}${what}${error.message}`;
  actions.hidden = error.status !== 403;
  box.hidden = false;
}

async function switchToken() {
  await api("/api/v1/session", { method: "DELETE" });
  window.location.reload();
}

export function age(iso, now = Date.now()) {
  if (!iso) return "";
  let s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

// The run budget counts only active running time and starts again after every wait (README), so
// what is used is the current segment's: while a worker holds the run, runTimeoutSeconds less what
// is left to its deadline; re-queued mid-segment, less what the segment kept
// (budgetRemainingSeconds); waiting or queued afresh, none of it. A finished run keeps no deadline:
// all of it if it timed out, otherwise nothing to show (null).
export function budget(run, now = Date.now()) {
  const limit = run.run_timeout_seconds;
  const status = run.status || {};
  if (!limit) return null;
  let used;
  if (run.finished) {
    if (status.reason !== "RunTimeout") return null;
    used = limit;
  } else if (status.deadline) {
    used = limit - (Date.parse(status.deadline) - now) / 1000;
  } else if (status.budget_remaining_seconds !== null && status.budget_remaining_seconds !== undefined) {
    used = limit - status.budget_remaining_seconds;
  } else {
    used = 0;
  }
  used = Math.min(limit, Math.max(0, used));
  return { used, limit, fraction: used / limit };
}

export function lastStep(run) {
  const steps = (run.status && run.status.steps) || [];
  return steps.length ? steps[steps.length - 1] : null;
}

export function asText(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// Shows the sign-in form until the cookie is set; resolves once signed in.
// `probe` is a GET that needs a token (401 when there is none or it is no longer accepted).
export async function signedIn(probe) {
  document.getElementById("sign-out").addEventListener("click", switchToken);
  document.getElementById("switch-token").addEventListener("click", switchToken);
  try {
    await api(probe);
    document.getElementById("sign-out").hidden = false;
    return;
  } catch (e) {
    if (e.status !== 401) {
      document.getElementById("sign-out").hidden = false;
      return; // signed in, but something else (a 403 is shown by the page)
    }
  }
  const form = document.getElementById("sign-in");
  form.hidden = false;
  await new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = document.getElementById("token").value.trim();
      try {
        await api("/api/v1/session", { method: "POST", body: { token } });
        document.getElementById("token").value = "";
        form.hidden = true;
        showProblem(null);
        document.getElementById("sign-out").hidden = false;
        resolve();
      } catch (e) {
        showProblem(e);
      }
    });
  });
}

export async function canI(verb, namespace) {
  try {
    const answer = await api(`/api/v1/can-i?verb=${encodeURIComponent(verb)}&namespace=${encodeURIComponent(namespace)}`);
    return Boolean(answer.allowed);
  } catch (e) {
    return false;
  }
}
