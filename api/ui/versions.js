// Versions: the lineage as a tree, and the selected version's detail (corpus, settings, training, the gate).
import { call } from "./api.js";
import { STATUS_MARK, duration, fmt, h, replace, statusBadge } from "./dom.js";
import { PLACES, placements } from "./lineage.js";
import { renderSettingsCompare } from "./settings.js";
import { drawTraining } from "./training.js";

function children(models) {
  const byParent = new Map();
  for (const m of models) {
    const key = models.some((p) => p.id === m.parent) ? m.parent : null;
    if (!byParent.has(key)) byParent.set(key, []);
    byParent.get(key).push(m);
  }
  return byParent;
}

function gateWord(m) {
  const gate = m.evaluation && m.evaluation.gate;
  if (!gate) return null;
  if (gate.forced) return "gate forced";
  return gate.rejected ? "gate rejected" : "gate accepted";
}

function node(m, byParent, state, select, place) {
  const aliases = (m.aliases || []).filter((a) => a !== "production");
  const where = place.get(m.id);
  const button = h("button", { type: "button", class: `version-node${m.id === state.selected ? " selected" : ""}`,
                               "data-version": m.id, "data-place": where,
                               "aria-pressed": m.id === state.selected ? "true" : "false", onclick: () => select(m.id) },
    h("span", { class: "version-id" }, m.id), " ", statusBadge(m.status), " ",
    h("span", { class: "muted" }, m.domain ? `${m.domain}` : "base model"),
    aliases.map((a) => [" ", h("span", { class: "alias" }, `@${a}`)]),
    gateWord(m) ? [" ", h("span", { class: `gate-word ${m.evaluation.gate.rejected ? "rejected" : ""}` },
                          gateWord(m))] : null,
    // a rolled-back or other-branch version that its gate accepted: not marked like a rejected one
    where === "branch" ? [" ", h("span", { class: "branch-word" }, `${PLACES.branch.mark} off the active lineage`)]
      : null);
  const kids = byParent.get(m.id) || [];
  return h("li", {}, button, kids.length ? h("ul", {}, kids.map((k) => node(k, byParent, state, select, place)))
    : null);
}

function legend() {
  const statuses = Object.entries(STATUS_MARK).filter(([status]) => status !== "rejected")
    .map(([status, mark]) => `${mark} ${status}`);
  return h("p", { class: "legend-words muted" }, "Marks: ", [...statuses,
    `${STATUS_MARK.rejected} rejected: ${PLACES.rejected.words}`,
    `${PLACES.branch.mark} ${PLACES.branch.words}`].join(" · "));
}

function row(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

function gateTable(gate) {
  const decisions = gate.decisions || [];
  return h("div", { class: "gate" },
    h("p", {}, h("strong", {}, `Forgetting gate: ${gate.rejected ? "rejected" : gate.forced ? "forced through" :
                                                                             "accepted"}`),
      ` — each task judged against ${gate.against || "its reference"}, at most ${fmt(gate.max_drop)} points of ` +
      `macro-F1 lost (built from ${gate.parent || "?"})`),
    decisions.length ? h("table", { class: "gate-table" },
      h("caption", {}, "Each task's score on this version against its reference"),
      h("thead", {}, h("tr", {}, ["task", "reference", "reference F1", "this version's F1", "drop", "noise",
                                    "allowed", "decision"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, decisions.map((d) => h("tr", { class: d.rejected ? "rejected" : "accepted", "data-task": d.task },
        h("th", { scope: "row" }, d.task),
        h("td", {}, (d.reference && d.reference.version) || "–"),
        h("td", {}, fmt(d.reference_f1)), h("td", {}, fmt(d.candidate_f1)), h("td", {}, fmt(d.drop)),
        h("td", {}, fmt(d.noise)), h("td", {}, fmt(d.max_drop)),
        h("td", { title: d.reason }, d.rejected ? "✕ rejected" : "✓ accepted"))))) : h("p", {}, "No task was scored."),
    (gate.unscored || []).length ? h("ul", { class: "error" }, gate.unscored.map((u) => h("li", {},
      `${u.task}: not scored (${u.problem})`))) : null);
}

function settingsTable(settings) {
  const keys = Object.keys(settings || {}).sort();
  if (!keys.length) return h("p", {}, "–");
  return h("details", {}, h("summary", {}, `Settings (${keys.length})`),
    h("table", { class: "settings" }, h("tbody", {}, keys.map((k) => h("tr", {}, h("th", { scope: "row" }, k),
      h("td", {}, typeof settings[k] === "object" ? JSON.stringify(settings[k]) : fmt(settings[k], 6)))))));
}

function detail(m, state, refresh) {
  const metrics = m.metrics || {};
  const final = metrics.final || {};
  const losses = Object.entries(final).filter(([k]) => !["step", "lr", "tokens_per_s"].includes(k));
  const activate = h("button", { type: "button", id: "activate", disabled: m.status === "active" ||
                                 m.status === "archived",
    onclick: async () => {
      if (!window.confirm(`Make ${m.id} the active version? Every API process swaps to it, and later jobs build ` +
                          "on it.")) return;
      try {
        const { body } = await call("POST", `/v1/models/${encodeURIComponent(m.id)}/activate`);
        state.message(`${body.id} is active` + (body.fit_jobs.length ? `; ${body.fit_jobs.length} fit jobs queued` : ""));
        await refresh();
      } catch (err) { state.message(err.message, true); }
    } }, m.status === "active" ? "Active now" : `Activate ${m.id} (management token)`);
  const training = h("div", { class: "training", id: "training-chart" });
  drawTraining(training, m);
  return h("article", { class: "version-detail", "data-version": m.id, "aria-labelledby": "version-title" },
    h("h3", { id: "version-title", tabindex: "-1" }, `${m.id} `, statusBadge(m.status)),
    h("dl", {},
      row("parent", m.parent || "none (the base)"),
      row("domain", m.domain || "–"),
      row("corpus", m.corpus ? `${m.corpus.filename || "(no file name)"}, ${m.corpus.documents} documents, ` +
                               `${m.corpus.size} bytes` : "–"),
      row("aliases", (m.aliases || []).join(", ") || "–"),
      row("created", m.created || "–"),
      row("base model", m.base_model || "–"),
      row("training time", duration(metrics.train_time_s),
          metrics.wall_time_s ? ` (wall ${duration(metrics.wall_time_s)})` : ""),
      row("steps", fmt(metrics.steps), metrics.tokens_per_s ? `, ${fmt(metrics.tokens_per_s, 0)} tokens/s` : ""),
      row("final loss", losses.length ? losses.map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", ") : "–")),
    settingsTable(m.settings),
    training,
    m.evaluation && m.evaluation.gate ? gateTable(m.evaluation.gate) : h("p", {}, "No gate decision recorded " +
      "(the base model, or no end task had an eval set when it was made)."),
    h("p", {}, activate));
}

export function renderVersions(state, refresh) {
  const models = state.models;
  if (!models.length) {
    replace("versions-body", h("p", {}, "No versions to show."));
    return;
  }
  const active = models.find((m) => m.status === "active");
  if (!models.some((m) => m.id === state.selected)) state.selected = (active || models[models.length - 1]).id;
  const select = (id) => {
    state.selected = id;
    renderVersions(state, refresh);
    document.querySelector(`.version-node[data-version="${id}"]`)?.focus();
    if (state.onSelect) state.onSelect(); // the importance diff follows the selection
  };
  const byParent = children(models);
  const place = placements(models);
  const compare = h("div", { id: "settings-compare", class: "compare" });
  const counts = ["active", "candidate", "retired", "rejected", "archived"]
    .map((st) => [st, models.filter((m) => m.status === st).length]).filter(([, n]) => n);
  replace("versions-body",
    h("p", { class: "muted" }, `${models.length} versions: ` + counts.map(([st, n]) => `${n} ${st}`).join(", ") +
      (active ? `; ${active.id} answers requests.` : ".")),
    legend(),
    h("div", { class: "split" },
      h("nav", { class: "lineage", "aria-label": "lineage" },
        h("ul", { class: "tree" }, (byParent.get(null) || []).map((m) => node(m, byParent, state, select, place)))),
      detail(models.find((m) => m.id === state.selected), state, refresh)),
    compare);
  renderSettingsCompare(state, compare);
}
