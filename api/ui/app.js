// The page: reads the public API with the pasted token and draws versions, importance, end tasks and jobs.
import { ApiError, get, listAll, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import { renderEvaluation } from "./evaluation.js";
import { renderGenerate } from "./generate.js";
import { renderDiffForSelection, renderImportance } from "./importance.js";
import { pollJobs, renderJobs } from "./jobs.js";
import { renderTasks } from "./tasks.js";
import { renderVersions } from "./versions.js";

const POLL_MS = 1000;
const state = { models: [], tasks: [], jobs: [], aliases: {}, selected: null, message, onSelect };

function message(text, error = false) {
  replace("status", h("span", { class: error ? "error" : "" }, text));
}

// a version selected in the tree: the importance diff opens on it against its parent
function onSelect() {
  renderDiffForSelection(state).catch((err) => failed("importance-diff", err));
}

function failed(section, err) {
  const hint = err instanceof ApiError && err.status === 401
    ? " — paste the inference or management token above and press Use token." : "";
  replace(section, h("p", { class: "error" }, `${err.message}${hint}`));
}

async function loadVersions() {
  [state.models, state.aliases] = await Promise.all([listAll("/v1/models"), get("/v1/aliases")]);
  renderVersions(state, refresh);
}

async function loadJobs() {
  state.jobs = await get("/v1/jobs?limit=50");
  renderJobs(state, refresh);
}

async function loadTasks() {
  state.tasks = await listAll("/v1/tasks");
  renderTasks(state);
}

async function loadGenerate() {
  renderGenerate(await get("/v1/models/current"));
}

async function refresh() {
  message("loading…");
  const sections = [["versions-body", loadVersions], ["jobs-body", loadJobs], ["generate-body", loadGenerate]];
  await Promise.all(sections.map(([id, load]) => load().catch((err) => failed(id, err))));
  await Promise.all([
    loadTasks().catch((err) => failed("tasks-body", err)),
    renderImportance(state).catch((err) => failed("importance-body", err)),
    renderEvaluation(state).catch((err) => failed("evaluation-body", err)),
  ]);
  message(`updated ${new Date().toLocaleTimeString()}` + (token() ? "" : " (no token set)"));
}

async function poll() {
  try {
    if (await pollJobs(state, refresh)) await refresh();
  } catch (err) {
    failed("jobs-body", err);
  }
  window.setTimeout(poll, POLL_MS);
}

function wireToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  input.value = token();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value);
    refresh();
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    setToken("");
    input.value = "";
    refresh();
  });
  document.getElementById("refresh").addEventListener("click", () => refresh());
}

wireToken();
refresh().then(() => window.setTimeout(poll, POLL_MS));
