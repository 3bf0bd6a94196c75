// A version's training-loss curve: every logged step of its run (GET /v1/models/{v}/training, the history the
// manifest leaves out), one line per loss part, told apart by dash pattern and a label at its end, not colour alone.
import { get } from "./api.js";
import { fmt, h, replace, s } from "./dom.js";
import { niceTicks } from "./scale.js";

const METRICS_FILE = "train_metrics.json";
const STYLES = [{ dash: null, colour: "#0969da" }, { dash: "7 4", colour: "#b45309" },
                { dash: "2 3", colour: "#6639ba" }, { dash: "9 3 2 3", colour: "#1a7f37" }];
const WORDS = { loss: "loss (total)", mlm: "MLM loss", next_token: "next-token loss",
                contrastive: "contrastive loss" };
const MAX_MARKED = 150; // more logged steps than this: the lines only, no point marks

const cache = new Map(); // a version's history never changes

function trainingOf(version) {
  if (!cache.has(version)) {
    cache.set(version, get(`/v1/models/${encodeURIComponent(version)}/training`).catch((err) => {
      cache.delete(version);
      throw err;
    }));
  }
  return cache.get(version);
}

function tickText(v) {
  return String(Number(v.toPrecision(4)));
}

// Labels at the lines' ends, moved apart where they would sit on each other (12 px apart at least).
function spread(labels, top, bottom) {
  const sorted = [...labels].sort((a, b) => a.y - b.y);
  for (let i = 1; i < sorted.length; i++) sorted[i].y = Math.max(sorted[i].y, sorted[i - 1].y + 12);
  const over = sorted.length ? sorted[sorted.length - 1].y - bottom : 0;
  if (over > 0) for (const l of sorted) l.y = Math.max(top, l.y - over);
  return sorted;
}

export function lossChart(training) {
  const { version, history } = training;
  const series = training.losses.map((name, i) => ({
    name, style: STYLES[i % STYLES.length],
    points: history.filter((step) => typeof step[name] === "number").map((step) => [step.step, step[name]]),
  })).filter((one) => one.points.length);
  if (!series.length) return h("p", {}, `${version}'s run logged no finite loss.`);
  const W = 560;
  const H = 230;
  const L = 56;
  const R = 120;
  const T = 14;
  const B = 44;
  const steps = history.map((step) => step.step);
  const [s0, s1] = steps.length > 1 ? [Math.min(...steps), Math.max(...steps)] : [steps[0] - 1, steps[0] + 1];
  const all = series.flatMap((one) => one.points.map(([, v]) => v));
  const pad = Math.max(Math.max(...all) - Math.min(...all), Math.abs(Math.max(...all)) * 0.1, 1e-6) * 0.08;
  const yTicks = niceTicks(Math.min(...all) - pad, Math.max(...all) + pad, 5);
  const [y0, y1] = [Math.min(yTicks[0], Math.min(...all)), Math.max(yTicks[yTicks.length - 1], Math.max(...all))];
  const x = (step) => L + ((step - s0) / (s1 - s0)) * (W - L - R);
  const y = (v) => T + (1 - (v - y0) / (y1 - y0 || 1)) * (H - T - B);
  const xTicks = niceTicks(s0, s1, 6).filter((t) => Number.isInteger(t) && t >= s0 && t <= s1);
  const parts = [
    yTicks.filter((t) => t >= y0 && t <= y1).map((t) => [
      s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid" }),
      s("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end", class: "tick tick-label" }, tickText(t))]),
    xTicks.map((t) => [
      s("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4, class: "axis" }),
      s("text", { x: x(t), y: H - B + 16, "text-anchor": "middle", class: "tick tick-label" }, t)]),
    s("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "axis" }),
    s("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", class: "tick" }, "training step"),
    s("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "tick",
                transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "loss"),
  ];
  const ends = [];
  for (const one of series) {
    const drawn = one.points.map(([st, v]) => `${x(st).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    parts.push(s("polyline", { points: drawn, class: "loss-line", "data-series": one.name, fill: "none",
                               stroke: one.style.colour, "stroke-width": 1.8,
                               "stroke-dasharray": one.style.dash || undefined }));
    if (one.points.length <= MAX_MARKED) {
      parts.push(one.points.map(([st, v]) => s("circle", { class: "loss-point", "data-series": one.name,
        "data-step": st, cx: x(st), cy: y(v), r: 2.5, fill: one.style.colour },
      s("title", {}, `step ${st}: ${one.name} ${fmt(v, 4)}`))));
    }
    const [lastStep, last] = one.points[one.points.length - 1];
    ends.push({ name: one.name, y: y(last) + 4, x: x(lastStep) + 8, style: one.style, value: last });
  }
  for (const end of spread(ends, T + 8, H - B)) {
    parts.push(s("line", { x1: end.x - 2, x2: end.x + 16, y1: end.y - 4, y2: end.y - 4, stroke: end.style.colour,
                           "stroke-width": 1.8, "stroke-dasharray": end.style.dash || undefined }),
               s("text", { x: end.x + 20, y: end.y, class: "tick series-label" }, `${end.name} ${fmt(end.value, 3)}`));
  }
  const finals = series.map((one) => `${WORDS[one.name] || one.name} ${fmt(one.points[one.points.length - 1][1], 3)}`);
  return h("figure", { class: "training-figure", "data-version": version, "data-steps": history.length },
    h("figcaption", {}, h("strong", {}, `Training loss of ${version}`),
      ` — ${history.length} logged steps` + (training.steps ? ` of ${training.steps}` : "") +
      " (every log_every-th step and the last); one line per loss part, labelled at its end"),
    s("svg", { class: "loss-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
               "aria-label": `${version}: training loss per logged step, steps ${steps[0]} to ` +
                 `${steps[steps.length - 1]}; final: ${finals.join(", ")}` }, parts));
}

// Draw the curve of version `m` into `container` (the version detail), when its history arrives.
export async function drawTraining(container, m) {
  if (!m.files || !m.files[METRICS_FILE]) {
    replace(container, h("p", { class: "muted" }, "No training curve: no run trained this version (the base model)."));
    return;
  }
  replace(container, h("p", { class: "muted" }, "loading the training log…"));
  try {
    const training = await trainingOf(m.id);
    if (container.isConnected) replace(container, lossChart(training));
  } catch (err) {
    if (container.isConnected) replace(container, h("p", { class: "error" }, err.message));
  }
}
