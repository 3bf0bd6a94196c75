// End tasks: each task's score on every version as a line over the lineage, with the gate's reference and the
// allowed drop as a band; its kind, labels, fit state and errors; and a box to try predictions on the live model.
import { call } from "./api.js";
import { fmt, h, replace, s } from "./dom.js";

// The active version's lineage, root first: the versions the gate's reference is taken from.
function lineage(models) {
  const byId = new Map(models.map((m) => [m.id, m]));
  const active = models.find((m) => m.status === "active");
  const chain = [];
  for (let m = active; m; m = byId.get(m.parent)) chain.unshift(m.id);
  return chain;
}

function maxDrop(models) {
  const gated = models.filter((m) => m.evaluation && m.evaluation.gate).map((m) => m.evaluation.gate.max_drop);
  return gated.length ? gated[gated.length - 1] : null;
}

function chart(task, models) {
  const scores = new Map(task.history.filter((t) => t.generation === task.generation && t.scores &&
                                                    t.scores.macro_f1 !== undefined)
    .map((t) => [t.version, t.scores.macro_f1]));
  const ids = models.map((m) => m.id);
  const onLine = lineage(models).filter((v) => scores.has(v));
  const lineageScores = onLine.map((v) => scores.get(v));
  const reference = lineageScores.length ? Math.max(...lineageScores) : null;
  const refVersion = reference === null ? null : onLine[lineageScores.indexOf(reference)];
  const drop = maxDrop(models);
  const W = 560;
  const H = 220;
  const L = 48;
  const R = 16;
  const T = 16;
  const B = 40;
  const values = [...scores.values()];
  if (!values.length) return h("p", {}, "No scores yet: this registration has no eval set, or no fit has finished.");
  const lo = Math.max(0, Math.floor(Math.min(...values, reference - (drop || 0)) / 10) * 10);
  const hi = Math.min(100, Math.ceil(Math.max(...values) / 10) * 10 || 100);
  const x = (id) => L + (ids.length === 1 ? (W - L - R) / 2 : (ids.indexOf(id) * (W - L - R)) / (ids.length - 1));
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / Math.max(1, hi - lo));
  const parts = [];
  for (let v = lo; v <= hi; v += (hi - lo) / 4) {
    parts.push(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
               s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v, 1)));
  }
  if (reference !== null && drop !== null) {
    parts.push(s("rect", { x: L, width: W - L - R, y: y(reference), height: Math.max(1, y(reference - drop) -
      y(reference)), class: "band" }, s("title", {}, `allowed drop: ${fmt(reference - drop)} to ${fmt(reference)}`)));
  }
  if (reference !== null) {
    parts.push(s("line", { x1: L, x2: W - R, y1: y(reference), y2: y(reference), class: "reference" }),
               s("text", { x: W - R, y: y(reference - (drop || 0)) + 13, "text-anchor": "end", class: "tick" },
                 `reference ${fmt(reference)} (${refVersion})` + (drop !== null ? `, allowed drop ${fmt(drop)}` : "")));
  }
  parts.push(s("polyline", { points: onLine.map((v) => `${x(v)},${y(scores.get(v))}`).join(" "), class: "score-line" }));
  for (const m of models) {
    parts.push(s("text", { x: x(m.id), y: H - B + 16, "text-anchor": "middle", class: "tick" }, m.id));
    if (!scores.has(m.id)) continue;
    const v = scores.get(m.id);
    const off = !onLine.includes(m.id);
    parts.push(s("g", { class: `point${off ? " off-lineage" : ""}`, "data-version": m.id },
      off ? s("path", { d: `M${x(m.id) - 5},${y(v) - 5}l10,10m0,-10l-10,10`, class: "cross" })
          : s("circle", { cx: x(m.id), cy: y(v), r: 4 }),
      s("text", { x: x(m.id), y: y(v) - 9, "text-anchor": "middle", class: "tick" }, fmt(v, 1)),
      s("title", {}, `${m.id} (${m.status}${off ? ", not on the active lineage" : ""}): macro-F1 ${fmt(v)}`)));
  }
  parts.push(s("text", { x: L, y: H - 6, class: "tick" },
    "line: the active lineage (●); ✕: a version off it (rejected, or a rolled-back branch)"));
  return s("svg", { class: "task-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                    "aria-label": `${task.name}: macro-F1 per version: ` +
                      ids.filter((v) => scores.has(v)).map((v) => `${v} ${fmt(scores.get(v), 1)}`).join(", ") },
           parts);
}

function fitState(task) {
  const fit = task.last_fit;
  const serving = task.serving;
  return [
    fit ? h("span", { class: `state state-${fit.state}` }, `last fit: ${fit.state}` +
      (fit.version ? ` on ${fit.version}` : "")) : "no fit recorded",
    serving ? `; serving: fitted on ${serving.fitted_on}${serving.stale ? " (stale: another backbone)" : ""}` :
      "; not serving in this API process",
    fit && fit.error ? h("div", { class: "error" }, `error: ${fit.error}`) : null,
    task.damaged ? h("div", { class: "error" }, `damaged: ${task.damaged}`) : null,
  ];
}

function taskCard(task, models) {
  return h("article", { class: "task", "data-task": task.name, "aria-labelledby": `task-${task.name}` },
    h("h3", { id: `task-${task.name}` }, task.name),
    h("p", {}, `${task.kind} · labels: ${task.labels.join(", ")} · train ${task.train.examples} examples` +
      (task.eval ? ` · eval ${task.eval.examples}` : " · no eval set")),
    h("p", {}, fitState(task)),
    (task.problems || []).length ? h("ul", { class: "error" }, task.problems.map((p) => h("li", {},
      `${p.at}: ${p.problem}`))) : null,
    chart(task, models));
}

function predictBox(state) {
  const out = h("div", { id: "predict-out", "aria-live": "polite" });
  const texts = h("textarea", { id: "predict-texts", rows: 3, cols: 60 });
  const task = h("select", { id: "predict-task" }, state.tasks.map((t) => h("option", { value: t.name }, t.name)));
  const run = async (event) => {
    event.preventDefault();
    const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!lines.length) {
      replace(out, h("p", { class: "error" }, "Write a text first (one per line)."));
      return;
    }
    try {
      const { body } = await call("POST", `/v1/tasks/${encodeURIComponent(task.value)}/predict`, { texts: lines });
      replace(out, h("table", { class: "predictions" },
        h("caption", {}, `${body.task} answered by ${body.version}`),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "text"), h("th", { scope: "col" }, "label"),
          h("th", { scope: "col" }, "scores"))),
        h("tbody", {}, body.results.map((r, i) => h("tr", {}, h("td", {}, lines[i]), h("td", {}, r.label),
          h("td", {}, Object.entries(r.scores).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")))))));
    } catch (err) {
      replace(out, h("p", { class: "error" }, err.message));
    }
  };
  return h("form", { class: "predict", onsubmit: run },
    h("h3", {}, "Try a prediction on the live model"),
    h("label", { for: "predict-task" }, "Task "), task, " ",
    h("label", { for: "predict-texts" }, "Texts, one per line"), h("br"), texts, h("br"),
    h("button", { type: "submit" }, "Predict"), out);
}

export function renderTasks(state) {
  if (!state.tasks.length) {
    replace("tasks-body", h("p", {}, "No end task is registered (POST /v1/tasks)."));
    return;
  }
  replace("tasks-body", h("div", { class: "task-grid" }, state.tasks.map((t) => taskCard(t, state.models))),
          predictBox(state));
}
