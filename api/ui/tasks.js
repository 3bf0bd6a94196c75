// End tasks: each task's score on every version as a line over the lineage, with the gate's reference and the
// allowed drop as a band; its kind, labels, fit state and errors; and a box to try predictions on the live model.
import { call } from "./api.js";
import { fmt, h, replace, s } from "./dom.js";
import { PLACES, activeLineage, nearestAncestor, placements } from "./lineage.js";

function maxDrop(models) {
  const gated = models.filter((m) => m.evaluation && m.evaluation.gate).map((m) => m.evaluation.gate.max_drop);
  return gated.length ? gated[gated.length - 1] : null;
}

const CHAR_W = 6.6; // an 11 px label's width per character, a little generous (the browser test measures them)

function box(x, y, text, anchor) {
  const w = String(text).length * CHAR_W;
  const x0 = anchor === "middle" ? x - w / 2 : anchor === "end" ? x - w : x;
  return { x0, x1: x0 + w, y0: y - 10, y1: y + 3 };
}

function overlaps(a, b) {
  return a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
}

// A point's value label: above it, else below, right or left, the first place inside the plot area (where no axis
// label is) that overlaps no other label or mark; the least crowded one when none is free.
function placeLabel(x, y, text, area, taken) {
  const tries = [[x, y - 9, "middle"], [x, y + 17, "middle"], [x + 9, y + 4, "start"], [x - 9, y + 4, "end"]];
  let best = null;
  for (const [tx, ty, anchor] of tries) {
    const b = box(tx, ty, text, anchor);
    const inside = b.x0 >= area.x0 && b.x1 <= area.x1 && b.y0 >= area.y0 && b.y1 <= area.y1;
    const crowd = taken.filter((t) => overlaps(t, b)).length + (inside ? 0 : 100);
    if (!best || crowd < best.crowd) best = { tx, ty, anchor, b, crowd };
    if (!crowd) break;
  }
  taken.push(best.b);
  return best;
}

// A point's mark; one off the active lineage stands on a white halo, so the lineage's line, where it passes at the
// same height, is seen to break there rather than run through it.
function marker(place, x, y) {
  if (place === "lineage") return s("circle", { cx: x, cy: y, r: 4 });
  const d = place === "rejected" ? `M${x - 5},${y - 5}l10,10m0,-10l-10,10` : `M${x},${y - 6}l6,6l-6,6l-6,-6z`;
  return [s("path", { d, class: "halo" }), s("path", { d, class: place === "rejected" ? "cross" : "diamond" })];
}

function chart(task, models) {
  const scores = new Map(task.history.filter((t) => t.generation === task.generation && t.scores &&
                                                    t.scores.macro_f1 !== undefined)
    .map((t) => [t.version, t.scores.macro_f1]));
  const ids = models.map((m) => m.id);
  const place = placements(models);
  const onLine = activeLineage(models).filter((v) => scores.has(v));
  const lineageScores = onLine.map((v) => scores.get(v));
  const reference = lineageScores.length ? Math.max(...lineageScores) : null;
  const refVersion = reference === null ? null : onLine[lineageScores.indexOf(reference)];
  const drop = maxDrop(models);
  const W = 560;
  const H = 230;
  const L = 48;
  const R = 16;
  const T = 14;
  const B = 40;
  const PAD = 22; // the first and last version sit inside the plot, not on its edges
  const values = [...scores.values()];
  if (!values.length) return h("p", {}, "No scores yet: this registration has no eval set, or no fit has finished.");
  const hi = Math.min(100, Math.ceil(Math.max(...values) / 10) * 10 || 100);
  const lo = Math.min(hi - 10, Math.max(0, Math.floor(Math.min(...values, reference - (drop || 0)) / 10) * 10));
  const x = (id) => L + PAD + (ids.length === 1 ? (W - L - R - 2 * PAD) / 2
    : (ids.indexOf(id) * (W - L - R - 2 * PAD)) / (ids.length - 1));
  // the top of the scale sits a label's height below the plot's top edge, so a top score has room above it
  const y = (v) => T + 16 + (H - T - 16 - B) * (1 - (v - lo) / Math.max(1, hi - lo));
  const area = { x0: L + 1, x1: W - R - 1, y0: T, y1: H - B - 1 };
  const taken = [];
  const parts = [s("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "axis" })];
  for (let v = lo; v <= hi; v += (hi - lo) / 4) {
    parts.push(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
               s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick tick-label" }, fmt(v, 1)));
  }
  if (reference !== null && drop !== null) {
    parts.push(s("rect", { x: L, width: W - L - R, y: y(reference), height: Math.max(1, y(reference - drop) -
      y(reference)), class: "band" }, s("title", {}, `allowed drop: ${fmt(reference - drop)} to ${fmt(reference)}`)));
  }
  if (reference !== null) {
    parts.push(s("line", { x1: L, x2: W - R, y1: y(reference), y2: y(reference), class: "reference" },
                 s("title", {}, `reference ${fmt(reference)} (${refVersion})`)));
  }
  parts.push(s("polyline", { points: onLine.map((v) => `${x(v)},${y(scores.get(v))}`).join(" "),
                             class: "score-line", "data-versions": onLine.join(" ") }));
  // another branch: a dashed line from where it forked (its nearest scored ancestor); a rejected version: no line
  for (const m of models) {
    if (place.get(m.id) !== "branch" || !scores.has(m.id)) continue;
    const fork = nearestAncestor(models, m.id, (id) => scores.has(id));
    if (fork) {
      parts.push(s("line", { x1: x(fork), y1: y(scores.get(fork)), x2: x(m.id), y2: y(scores.get(m.id)),
                             class: "branch-line", "data-from": fork, "data-to": m.id }));
    }
  }
  const every = Math.max(1, Math.ceil(44 / ((W - L - R - 2 * PAD) / Math.max(1, ids.length - 1))));
  models.forEach((m, i) => {
    if (i % every && i !== models.length - 1) return; // too many versions for a label each
    parts.push(s("text", { x: x(m.id), y: H - B + 16, "text-anchor": "middle", class: "tick tick-label" }, m.id));
  });
  const shown = models.filter((m) => scores.has(m.id));
  for (const m of shown) taken.push({ x0: x(m.id) - 6, x1: x(m.id) + 6, y0: y(scores.get(m.id)) - 6,
                                       y1: y(scores.get(m.id)) + 6 });
  for (const m of shown) {
    const v = scores.get(m.id);
    const where = place.get(m.id);
    const label = placeLabel(x(m.id), y(v), fmt(v, 1), area, taken);
    parts.push(s("g", { class: `point place-${where}${where === "lineage" ? "" : " off-lineage"}`,
                        "data-version": m.id, "data-place": where },
      marker(where, x(m.id), y(v)),
      s("text", { x: label.tx, y: label.ty, "text-anchor": label.anchor, class: "tick point-label" }, fmt(v, 1)),
      s("title", {}, `${m.id} (${m.status}; ${PLACES[where].words}): macro-F1 ${fmt(v)}`)));
  }
  const words = (v) => `${v} ${fmt(scores.get(v), 1)}` + (place.get(v) === "lineage" ? "" : ` (${place.get(v) ===
    "rejected" ? "rejected by the gate" : "off the active lineage"})`);
  return h("figure", { class: "task-figure" },
    s("svg", { class: "task-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
               "aria-label": `${task.name}: macro-F1 per version: ` + ids.filter((v) => scores.has(v)).map(words)
                 .join(", ") }, parts),
    h("figcaption", { class: "chart-legend" },
      h("span", {}, `${PLACES.lineage.mark} solid line: the active lineage`),
      h("span", {}, `${PLACES.branch.mark} dashed line from its fork: accepted by the gate, then rolled back or ` +
        "on another branch"),
      h("span", {}, `${PLACES.rejected.mark} no line: rejected by the forgetting gate`),
      reference !== null ? h("span", { class: "reference-words" }, `dashed level: the reference, ${fmt(reference)} ` +
        `(${refVersion}, the best on the active lineage)` + (drop !== null ? `; band: the allowed drop of ` +
        `${fmt(drop)} below it` : "")) : null));
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
