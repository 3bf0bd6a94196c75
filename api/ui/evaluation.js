// The Evaluation section: a `das eval` results.json the server was started with (`das serve --eval-results`):
// per method the a[T, i] matrices (mean over seeds) and the equal-learning (Pareto) plots. Hidden when none.
import { get } from "./api.js";
import { h, replace, s } from "./dom.js";
import { Scale } from "./scale.js";

const CELL_W = 64;
const CELL_H = 24;
const LOSS_WORDS = { mlm: "MLM", next_token: "next-token" }; // evaluation.loss_kind: the base's kind of LM
let lossWord = LOSS_WORDS.mlm;
const SCORES = {
  get mlm_loss() {
    return { title: `held-out ${lossWord} loss (nats)`, low: "lower loss (better)", high: "higher loss", digits: 2 };
  },
};
const PLOTS = {
  get mlm() {
    return { title: `Held-out ${lossWord} loss`,
             x: `new-domain gain: ${lossWord} loss drop when learned (nats, → learned more)`,
             y: `forgetting: ${lossWord} loss rise, earlier domains (nats)` };
  },
  probe: { title: "Probe", x: "probe gain: plasticity (points, → learned more)",
           y: "forgetting: forgetting rate (points)" },
};

function scoreInfo(score) {
  return SCORES[score] || { title: `${score} (points)`, low: "lower score", high: "higher score (better)", digits: 1 };
}

function show(visible) {
  document.getElementById("evaluation").hidden = !visible;
  document.getElementById("evaluation-link").hidden = !visible;
}

// One method's a[T, i]: rows = after stage T (0: base), columns = domain i, every cell coloured and numbered.
function matrix(evaluation, method, score, scale) {
  const info = scoreInfo(score);
  const values = method.matrices[score];
  const left = 96;
  const top = 34;
  const width = left + evaluation.domains.length * CELL_W + 4;
  const height = top + values.length * CELL_H + 4;
  const cells = [];
  values.forEach((row, t) => row.forEach((v, i) => {
    const x = left + i * CELL_W;
    const y = top + t * CELL_H;
    const dark = (v - scale.lo) / (scale.hi - scale.lo) < 0.55;
    cells.push(s("g", { class: "eval-cell", "data-stage": t, "data-domain": evaluation.domains[i], "data-value": v },
      s("title", {}, `${method.spec}: ${info.title} on ${evaluation.domains[i]} after stage ${t} ` +
        `(${evaluation.stages[t]}): ${v.toFixed(info.digits + 1)}`),
      s("rect", { x, y, width: CELL_W - 1, height: CELL_H - 1, fill: scale.colour(v) }),
      s("text", { x: x + CELL_W / 2, y: y + CELL_H / 2 + 4, "text-anchor": "middle", class: "tick",
                  style: `fill: ${dark ? "#fff" : "#000"}` }, v.toFixed(info.digits))));
  }));
  const columns = evaluation.domains.map((d, i) => s("text", { x: left + i * CELL_W + CELL_W / 2, y: top - 6,
                                                               "text-anchor": "middle", class: "tick" }, d));
  const rows = evaluation.stages.map((name, t) => s("text", { x: left - 6, y: top + t * CELL_H + CELL_H / 2 + 4,
                                                              "text-anchor": "end", class: "tick" }, `${t} ${name}`));
  return s("svg", { class: "heatmap eval-matrix", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                    "data-method": method.spec, "data-score": score,
                    "aria-label": `${method.spec}: a[T, i] of ${info.title}, mean over seeds; rows: after stage T, ` +
                    "columns: domain i" },
           s("text", { x: left, y: 12, class: "tick" }, "domain i →"),
           s("text", { x: 4, y: top - 6, class: "tick" }, "after T ↓"), columns, rows, cells);
}

function extent(values) {
  return [Math.min(...values), Math.max(...values)];
}

function matrices(evaluation, score) {
  const info = scoreInfo(score);
  const [lo, hi] = extent(evaluation.method_views.flatMap((m) => m.matrices[score].flat()));
  const scale = new Scale(lo, hi);
  return h("div", { class: "eval-score", "data-score": score },
    h("h4", {}, `a[T, i]: ${info.title}`),
    scale.legend(info.title, info.low, info.high),
    h("div", { class: "task-grid" }, evaluation.method_views.map((m) => h("figure", { "data-method": m.spec },
      h("figcaption", {}, h("strong", {}, m.spec), ` · ${m.kind}`), matrix(evaluation, m, score, scale)))));
}

// Indices of the points no other point beats on both axes (higher gain and lower forgetting).
function front(points) {
  return new Set(points.map((p, i) => i).filter((i) => !points.some((o, j) => j !== i &&
    o.gain.mean >= points[i].gain.mean && o.forgetting.mean <= points[i].forgetting.mean &&
    (o.gain.mean !== points[i].gain.mean || o.forgetting.mean !== points[i].forgetting.mean))));
}

function axisTicks(lo, hi, n = 5) {
  return Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

function padded([lo, hi]) {
  const pad = hi > lo ? (hi - lo) * 0.12 : Math.max(Math.abs(lo) * 0.1, 0.5);
  return [lo - pad, hi + pad];
}

// Forgetting (y, lower is better) against new-domain gain (x, higher is better): one labelled point per method.
function pareto(evaluation, kind) {
  const plot = PLOTS[kind];
  const points = evaluation.method_views.filter((m) => m.pareto[kind])
    .map((m) => ({ spec: m.spec, ...m.pareto[kind] }));
  if (!points.length) return h("p", { class: "muted" }, `${plot.title}: no trained method has both values.`);
  const W = 640;
  const H = 400;
  const m = { left: 70, right: 180, top: 30, bottom: 56 };
  const [x0, x1] = padded(extent(points.map((p) => p.gain.mean)));
  const [y0, y1] = padded(extent(points.map((p) => p.forgetting.mean)));
  const px = (v) => m.left + ((v - x0) / (x1 - x0)) * (W - m.left - m.right);
  const py = (v) => H - m.bottom - ((v - y0) / (y1 - y0)) * (H - m.top - m.bottom);
  const onFront = front(points);
  const frontLine = points.map((p, i) => ({ p, i })).filter(({ i }) => onFront.has(i))
    .sort((a, b) => a.p.gain.mean - b.p.gain.mean)
    .map(({ p }) => `${px(p.gain.mean).toFixed(1)},${py(p.forgetting.mean).toFixed(1)}`).join(" ");
  const grid = [
    axisTicks(x0, x1).map((v) => [s("line", { x1: px(v), x2: px(v), y1: m.top, y2: H - m.bottom, stroke: "#eaeef2" }),
      s("text", { x: px(v), y: H - m.bottom + 16, "text-anchor": "middle", class: "tick" }, v.toFixed(2))]),
    axisTicks(y0, y1).map((v) => [s("line", { x1: m.left, x2: W - m.right, y1: py(v), y2: py(v), stroke: "#eaeef2" }),
      s("text", { x: m.left - 6, y: py(v) + 4, "text-anchor": "end", class: "tick" }, v.toFixed(2))]),
  ];
  const drawn = points.map((p, i) => {
    const x = px(p.gain.mean);
    const y = py(p.forgetting.mean);
    const best = onFront.has(i);
    return s("g", { class: "pareto-point", "data-method": p.spec, "data-front": best ? "yes" : "no" },
      s("title", {}, `${p.spec}: gain ${p.gain.mean.toFixed(3)} ± ${(p.gain.std ?? 0).toFixed(3)}, forgetting ` +
        `${p.forgetting.mean.toFixed(3)} ± ${(p.forgetting.std ?? 0).toFixed(3)}${best ? " (on the Pareto front)" : ""}`),
      s("line", { x1: px(p.gain.mean - (p.gain.std ?? 0)), x2: px(p.gain.mean + (p.gain.std ?? 0)), y1: y, y2: y,
                  stroke: "#8c959f" }),
      s("line", { x1: x, x2: x, y1: py(p.forgetting.mean - (p.forgetting.std ?? 0)),
                  y2: py(p.forgetting.mean + (p.forgetting.std ?? 0)), stroke: "#8c959f" }),
      s("circle", { cx: x, cy: y, r: 6, stroke: "#1b1f24", "stroke-width": 1.5, fill: best ? "#1b1f24" : "#fff" }),
      s("text", { x: x + 9, y: y + (i % 2 ? 14 : -8), class: "tick" }, p.spec));
  });
  return h("figure", { class: "pareto", "data-plot": kind },
    h("figcaption", {}, h("strong", {}, plot.title),
      " — better is right (learned more) and down (forgot less); filled points are on the Pareto front " +
      "(no other method learned more and forgot less); bars: ± std over seeds"),
    s("svg", { class: "heatmap", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
               "aria-label": `${plot.title}: forgetting against new-domain gain, ${points.length} methods` },
      grid, s("rect", { x: m.left, y: m.top, width: W - m.left - m.right, height: H - m.top - m.bottom,
                        class: "axis" }),
      frontLine ? s("polyline", { points: frontLine, fill: "none", stroke: "#1b1f24", "stroke-dasharray": "5 3" })
        : null,
      drawn,
      s("text", { x: (m.left + W - m.right) / 2, y: H - 14, "text-anchor": "middle", class: "tick" }, plot.x),
      s("text", { x: 14, y: (m.top + H - m.bottom) / 2, "text-anchor": "middle", class: "tick",
                  transform: `rotate(-90 14 ${(m.top + H - m.bottom) / 2})` }, plot.y)));
}

async function renderOne(state, name) {
  const evaluation = await get(`/v1/evaluations/${encodeURIComponent(name)}`);
  lossWord = LOSS_WORDS[evaluation.loss_kind] || LOSS_WORDS.mlm;
  replace("evaluation-detail",
    h("p", { class: "muted" }, `${evaluation.file}: base ${evaluation.base ?? "–"}, domains ` +
      `${evaluation.domains.join(" → ")}, ${evaluation.seeds.length} seed(s), ${evaluation.date ?? ""}. ` +
      "a[T, i]: domain i scored after stage T (0: the base model), mean over seeds; one colour scale per score."),
    matrices(evaluation, "mlm_loss"),
    matrices(evaluation, evaluation.probe_family),
    h("h4", {}, "Forgetting against new-domain gain"),
    pareto(evaluation, "mlm"),
    pareto(evaluation, "probe"));
}

export async function renderEvaluation(state) {
  const listed = await get("/v1/evaluations");
  show(listed.length > 0); // none: the server was started without --eval-results
  if (!listed.length) return;
  const names = listed.map((e) => e.name);
  const chosen = names.includes(state.evaluation) ? state.evaluation : names[0];
  state.evaluation = chosen;
  const select = h("select", { id: "evaluation-name", onchange: (e) => {
    state.evaluation = e.target.value;
    renderOne(state, state.evaluation).catch((err) => replace("evaluation-detail", h("p", { class: "error" },
      err.message)));
  } }, listed.map((e) => h("option", { value: e.name, selected: e.name === chosen },
    `${e.name} (${e.methods.length} methods, ${e.domains.length} domains, ${e.seeds.length} seeds)`)));
  replace("evaluation-body",
    h("div", { class: "controls" }, h("label", { for: "evaluation-name" }, "Results "), select),
    h("div", { id: "evaluation-detail" }, h("p", {}, "loading…")));
  await renderOne(state, chosen);
}
