// Jobs: queued, running and finished, live progress for the running ones, errors, and cancel.
import { call, get } from "./api.js";
import { duration, fmt, h, replace } from "./dom.js";

const PENDING = ["queued", "running"];

function what(job) {
  if (job.kind === "adapt") return `domain ${job.domain} · ${job.corpus_filename || "corpus"} (${job.corpus_documents} docs)`;
  if (job.kind === "fit") return `task ${job.task} · ${job.examples} examples`;
  if (job.kind === "predict") return `${job.answer_kind} · ${job.lines} lines`;
  return job.kind;
}

// The version a job works with, said per kind: an adaptation builds a new one from its parent, a fit fits a task's
// model on one, a batch prediction answers with one (the record's `parent`, set when the job first starts).
function versionOf(job) {
  const on = job.version || job.parent;
  if (job.kind === "adapt") {
    if (job.parent && job.version) return `${job.parent} → ${job.version}`;
    return job.parent ? `from ${job.parent}` : "–";
  }
  if (!on) return "– (chosen when it starts)";
  if (job.kind === "fit") return `task ${job.task} on ${on}`;
  if (job.kind === "predict") return `answers with ${on}`;
  return on;
}

function progressOf(job) {
  const p = job.progress || {};
  if (!p.step && p.step !== 0) return h("span", { class: "muted" }, p.phase || "–");
  const losses = Object.entries(p.losses || {}).map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", ");
  return h("div", { class: "progress", "data-job": job.id, "data-step": p.step },
    h("progress", { max: p.total || 1, value: p.step, "aria-label": `job ${job.id.slice(0, 8)} progress` }),
    h("span", { class: "step" }, ` step ${p.step}${p.total ? ` of ${p.total}` : ""}`),
    p.phase ? ` (${p.phase})` : "",
    h("div", { class: "muted" }, [losses, p.tokens_per_s ? `${fmt(p.tokens_per_s, 0)} tokens/s` : "",
                                 p.eta_s !== null && p.eta_s !== undefined ? `ETA ${duration(p.eta_s)}` : ""]
      .filter(Boolean).join(" · ")));
}

function cancelButton(job, state, refresh) {
  if (!PENDING.includes(job.state)) return null;
  return h("button", { type: "button", class: "cancel", "data-job": job.id, disabled: job.cancel_requested,
    onclick: async () => {
      if (!window.confirm(`Cancel job ${job.id}? A running job stops at its next step.`)) return;
      try {
        await call("DELETE", `/v1/jobs/${encodeURIComponent(job.id)}`);
        state.message(`cancel requested for ${job.id}`);
        await refresh();
      } catch (err) { state.message(err.message, true); }
    } }, job.cancel_requested ? "cancelling…" : "Cancel");
}

function jobRow(job, state, refresh) {
  return h("tr", { class: `job job-${job.state}`, "data-job": job.id, "data-state": job.state },
    h("td", {}, h("code", { title: job.id }, job.id.slice(0, 8))),
    h("td", {}, job.kind), h("td", {}, h("span", { class: `state state-${job.state}` }, job.state)),
    h("td", {}, what(job)), h("td", { class: "job-version" }, versionOf(job)),
    h("td", {}, (job.created || "").replace("T", " ").slice(0, 19)),
    h("td", {}, PENDING.includes(job.state) ? progressOf(job) : job.finished ? `ended ${job.finished
      .replace("T", " ").slice(0, 19)}` : "–",
      job.error ? h("div", { class: "error" }, job.error) : null,
      job.note ? h("div", { class: "muted" }, job.note) : null),
    h("td", {}, cancelButton(job, state, refresh)));
}

export function renderJobs(state, refresh) {
  const jobs = state.jobs;
  if (!jobs.length) {
    replace("jobs-body", h("p", {}, "No jobs yet."));
    return;
  }
  const focused = document.activeElement && document.activeElement.classList.contains("cancel")
    ? document.activeElement.dataset.job : null; // a redraw keeps the keyboard where it was
  const counts = {};
  for (const j of jobs) counts[j.state] = (counts[j.state] || 0) + 1;
  replace("jobs-body",
    h("p", { class: "muted" }, `the newest ${jobs.length}: ` + Object.entries(counts).map(([k, n]) => `${n} ${k}`)
      .join(", ")),
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "kind", "state", "what", "version", "created (UTC)", "progress / outcome", ""]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, jobs.map((j) => jobRow(j, state, refresh)))));
  if (focused) document.querySelector(`button.cancel[data-job="${focused}"]`)?.focus();
}

// Poll the running and queued jobs (GET /v1/jobs/{id}) and redraw the table with their fresh records.
export async function pollJobs(state, refresh) {
  const pending = state.jobs.filter((j) => PENDING.includes(j.state));
  if (!pending.length) return false;
  const fresh = await Promise.all(pending.map((j) => get(`/v1/jobs/${encodeURIComponent(j.id)}`)));
  const byId = new Map(fresh.map((j) => [j.id, j]));
  state.jobs = state.jobs.map((j) => byId.get(j.id) || j);
  renderJobs(state, refresh);
  return fresh.some((j) => !PENDING.includes(j.state)); // one ended: the versions may have changed
}
