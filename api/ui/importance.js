// Importance history: per version, heatmaps of heads, intermediate and output neurons per layer on ONE shared
// colour scale, and the difference between two versions (which units the newer one claimed).
import { get } from "./api.js";
import { h, replace, s } from "./dom.js";
import { Scale } from "./scale.js";

const GROUPS = ["head", "intermediate", "output"];
const MAX_COLUMNS = 768; // wider groups are drawn with each cell the mean of a few neighbouring units
const PANEL_WIDTH = { head: 90, intermediate: 520, output: 300 };
const KINDS = { cumulative: "cumulative I(≤t): what this version hands on",
                added: "added I(≤t) − I(≤t−1): what this version's domain claimed",
                domain: "domain I(t): what this version's domain needed" };

const cache = new Map();

async function unitsOf(version) {
  if (!cache.has(version)) {
    cache.set(version, get(`/v1/models/${encodeURIComponent(version)}/importance?units=true`).catch((err) => {
      cache.delete(version);
      throw err;
    }));
  }
  return cache.get(version);
}

function columns(row) {
  if (row.length <= MAX_COLUMNS) return { values: row, per: 1 };
  const per = Math.ceil(row.length / MAX_COLUMNS);
  const values = [];
  for (let i = 0; i < row.length; i += per) {
    const chunk = row.slice(i, i + per);
    values.push(chunk.reduce((a, b) => a + b, 0) / chunk.length);
  }
  return { values, per };
}

function extent(matrices) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const m of matrices) for (const row of m) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return [lo, hi];
}

// One SVG: a panel per group, a row per layer, a cell per unit (heads) or neuron.
export function heatmap(groups, scale, label) {
  const rowH = 14;
  const gap = 34;
  let x = 34;
  const panels = [];
  let height = 0;
  for (const g of GROUPS) {
    const matrix = groups[g];
    if (!matrix) continue;
    const layers = matrix.length;
    const units = matrix[0].length;
    const width = PANEL_WIDTH[g];
    const cells = [];
    let per = 1;
    matrix.forEach((row, layer) => {
      const drawn = columns(row);
      per = drawn.per;
      const w = width / drawn.values.length;
      drawn.values.forEach((v, i) => cells.push(s("rect", {
        class: "cell", x: x + i * w, y: 22 + layer * rowH, width: w + 0.05, height: rowH - 1, fill: scale.colour(v),
      })));
    });
    const layerLabels = matrix.map((_, layer) => s("text", { x: x - 4, y: 22 + layer * rowH + rowH - 4,
                                                              "text-anchor": "end", class: "tick" }, layer));
    panels.push(s("g", { class: "panel", "data-group": g, "data-layers": layers, "data-units": units,
                         "data-units-per-cell": per },
                  s("title", {}, `${label}: ${g}, ${layers} layers × ${units} ${g === "head" ? "heads" : "neurons"}`),
                  s("text", { x, y: 14, class: "panel-title" },
                    `${g} (${units}${per > 1 ? `, ${per} per cell` : ""})`),
                  layerLabels, cells));
    height = Math.max(height, 22 + layers * rowH + 4);
    x += width + gap;
  }
  return s("svg", { class: "heatmap", width: x, height, viewBox: `0 0 ${x} ${height}`, role: "img",
                    "aria-label": `${label}: heatmaps of heads, intermediate and output neurons per layer (rows: ` +
                    "layers, from 0 at the top)" }, panels);
}

function summary(groups) {
  return GROUPS.filter((g) => groups[g]).map((g) => {
    const flat = groups[g].flat();
    const mean = flat.reduce((a, b) => a + b, 0) / flat.length;
    const above = flat.filter((v) => v > 0.5).length;
    return `${g}: mean ${mean.toFixed(3)}, ${above} of ${flat.length} above 0.5`;
  }).join("; ");
}

export async function renderImportance(state) {
  const root = document.getElementById("importance-body");
  const withImportance = state.models.filter((m) => m.files && m.files["importance.safetensors"]);
  if (!withImportance.length) {
    replace(root, h("p", {}, "No version has importance yet: the base model has none; every adapted version has."));
    return;
  }
  const kind = state.importanceKind || "cumulative";
  const reports = await Promise.all(withImportance.map((m) => unitsOf(m.id)));
  const shown = reports.map((r, i) => ({ model: withImportance[i], groups: r.units[kind] }))
    .filter((r) => r.groups);
  const [lo, hi] = extent(shown.flatMap((r) => GROUPS.map((g) => r.groups[g])));
  const scale = new Scale(Math.min(0, lo), Math.max(1, hi));
  const kindSelect = h("select", { id: "importance-kind", onchange: (e) => {
    state.importanceKind = e.target.value;
    renderImportance(state);
  } }, Object.entries(KINDS).map(([k, text]) => h("option", { value: k, selected: k === kind }, text)));
  const figures = shown.map((r) => h("figure", { class: "version-heatmap", "data-version": r.model.id },
    h("figcaption", {}, h("strong", {}, r.model.id), ` · ${r.model.domain || "base"} · ${r.model.status}`,
      h("span", { class: "muted" }, ` — ${summary(r.groups)}`)),
    heatmap(r.groups, scale, `${r.model.id} ${kind}`)));
  replace(root,
    h("div", { class: "controls" }, h("label", { for: "importance-kind" }, "Show "), kindSelect),
    h("p", { class: "muted" }, `One colour scale for every version below (${scale.lo.toFixed(2)} to ` +
      `${scale.hi.toFixed(2)}); rows are layers, columns units.`),
    scale.legend(`importance (${kind})`, "not important", "important"),
    figures,
    h("h3", { id: "diff-heading" }, "Difference between two versions"),
    h("div", { id: "importance-diff" }));
  renderDiff(state, withImportance);
}

function versionSelect(id, label, models, selected, onchange) {
  return [h("label", { for: id }, label), h("select", { id, onchange },
    models.map((m) => h("option", { value: m.id, selected: m.id === selected },
      `${m.id} · ${m.domain || "base"} · ${m.status}`)))];
}

async function renderDiff(state, models) {
  const root = document.getElementById("importance-diff");
  const active = models.find((m) => m.status === "active") || models[models.length - 1];
  const before = models.find((m) => m.id === active.parent) || models[0];
  state.diffA = state.diffA && models.some((m) => m.id === state.diffA) ? state.diffA : before.id;
  state.diffB = state.diffB && models.some((m) => m.id === state.diffB) ? state.diffB : active.id;
  const [a, b] = await Promise.all([unitsOf(state.diffA), unitsOf(state.diffB)]);
  const delta = {};
  const rows = [];
  let shapes = true;
  for (const g of GROUPS) {
    const ma = a.units.cumulative[g];
    const mb = b.units.cumulative[g];
    if (ma.length !== mb.length || ma[0].length !== mb[0].length) { shapes = false; break; }
    delta[g] = mb.map((row, l) => row.map((v, i) => v - ma[l][i]));
    const fa = ma.flat();
    const fb = mb.flat();
    const claimed = fb.filter((v, i) => fa[i] <= 0.5 && v > 0.5).length;
    const released = fb.filter((v, i) => fa[i] > 0.5 && v <= 0.5).length;
    const change = delta[g].flat();
    rows.push(h("tr", {}, h("th", { scope: "row" }, g),
      h("td", {}, claimed), h("td", {}, released),
      h("td", {}, (change.reduce((x, y) => x + y, 0) / change.length).toFixed(4)),
      h("td", {}, Math.max(...change.map(Math.abs)).toFixed(4))));
  }
  const pick = (key) => (e) => { state[key] = e.target.value; renderDiff(state, models); };
  const controls = h("div", { class: "controls" },
    versionSelect("diff-a", "From ", models, state.diffA, pick("diffA")), " ",
    versionSelect("diff-b", " to ", models, state.diffB, pick("diffB")));
  if (!shapes) {
    replace(root, controls, h("p", { class: "error" }, "These versions' importance has other shapes (other models)."));
    return;
  }
  const m = Math.max(0.05, ...GROUPS.map((g) => Math.max(...delta[g].flat().map(Math.abs))));
  const scale = new Scale(-m, m, true);
  replace(root, controls,
    h("p", { class: "muted" }, `Cumulative importance of ${state.diffB} minus that of ${state.diffA}: units ` +
      `${state.diffB} claimed are red, units it released blue.`),
    scale.legend(`change ${state.diffA} → ${state.diffB}`, `less important in ${state.diffB}`,
                 `more important in ${state.diffB}`),
    h("figure", { class: "diff-heatmap", "data-a": state.diffA, "data-b": state.diffB },
      heatmap(delta, scale, `${state.diffB} minus ${state.diffA}`)),
    h("table", {}, h("caption", {}, `Units that crossed 0.5 from ${state.diffA} to ${state.diffB}`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "group"), h("th", { scope: "col" }, "claimed (→ > 0.5)"),
        h("th", { scope: "col" }, "released (→ ≤ 0.5)"), h("th", { scope: "col" }, "mean change"),
        h("th", { scope: "col" }, "largest change"))),
      h("tbody", {}, rows)));
}
