// Importance history: per version, heatmaps of heads, intermediate and output neurons per layer on ONE shared
// colour scale, and the difference between two versions (which units the newer one claimed).
import { get } from "./api.js";
import { h, replace, s } from "./dom.js";
import { nearestAncestor, placements } from "./lineage.js";
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

// The pair the diff opens on: the selected version (else the active one) against its nearest ancestor with
// importance (its parent, unless that is the base model, which has none). A version without one has nothing to be
// compared with: `note` says so, and the next sensible pair is shown (one of its children against it, else the
// active version's pair, else the newest version that has a pair, else the two newest versions with importance).
export function defaultPair(state, models) {
  const has = new Set(models.map((m) => m.id));
  const pairOf = (id) => (has.has(id) ? nearestAncestor(state.models, id, (a) => has.has(a)) : null);
  const active = state.models.find((m) => m.status === "active");
  const focus = state.models.find((m) => m.id === state.selected) || active || state.models[state.models.length - 1];
  const a = pairOf(focus.id);
  if (a) return { a, b: focus.id, note: null };
  const why = !has.has(focus.id) ? `${focus.id} has no importance (the base model has none), so it has no ` +
    "difference to show" : `${focus.id}'s parent ${focus.parent} is the base model, which has no importance: ` +
    `there is nothing to compare ${focus.id} with`;
  const place = placements(state.models);
  const paired = models.filter((m) => pairOf(m.id)).reverse(); // newest first
  const next = paired.find((m) => pairOf(m.id) === focus.id && place.get(m.id) === "lineage")
    || paired.find((m) => pairOf(m.id) === focus.id && place.get(m.id) !== "rejected")
    || paired.find((m) => pairOf(m.id) === focus.id)
    || paired.find((m) => m.id === active?.id) || paired[0];
  if (next) return { a: pairOf(next.id), b: next.id, note: `${why}; showing ${next.id} against ${pairOf(next.id)}.` };
  if (models.length >= 2) {
    const [older, newer] = models.slice(-2);
    return { a: older.id, b: newer.id, note: `${why}; no version with importance has a parent with importance, so ` +
      `${newer.id} is shown against ${older.id}, which is not its parent.` };
  }
  return { a: null, b: null, note: `${why}; only ${models.length ? models[0].id : "no version"} has importance, ` +
    "and a difference needs two." };
}

let diffTicket = 0;

// The diff again, for the version just selected in the tree (versions.js calls it through state.onSelect).
export function renderDiffForSelection(state) {
  const models = state.models.filter((m) => m.files && m.files["importance.safetensors"]);
  if (document.getElementById("importance-diff") && models.length) return renderDiff(state, models);
  return Promise.resolve();
}

async function renderDiff(state, models) {
  const root = document.getElementById("importance-diff");
  const ticket = ++diffTicket;
  const known = (id) => models.some((m) => m.id === id);
  if (state.diffFor !== state.selected || !known(state.diffA) || !known(state.diffB)) {
    const pair = defaultPair(state, models);
    [state.diffA, state.diffB, state.diffFor, state.diffNote] = [pair.a, pair.b, state.selected, pair.note];
  }
  const note = state.diffNote;
  const pick = (key) => (e) => { state[key] = e.target.value; state.diffNote = null; renderDiff(state, models); };
  const controls = h("div", { class: "controls" },
    versionSelect("diff-a", "From ", models, state.diffA, pick("diffA")), " ",
    versionSelect("diff-b", " to ", models, state.diffB, pick("diffB")));
  const said = note ? h("p", { class: "diff-note", role: "note" }, note) : null;
  if (state.diffA === null || state.diffB === null) {
    replace(root, controls, said);
    return;
  }
  if (state.diffA === state.diffB) {
    replace(root, controls, said, h("p", { class: "diff-note" }, `${state.diffA} against itself has no difference: ` +
      "choose two versions."));
    return;
  }
  const [a, b] = await Promise.all([unitsOf(state.diffA), unitsOf(state.diffB)]);
  if (ticket !== diffTicket) return; // another selection drew the diff meanwhile
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
  if (!shapes) {
    replace(root, controls, said, h("p", { class: "error" }, "These versions' importance has other shapes (other " +
      "models)."));
    return;
  }
  const m = Math.max(0.05, ...GROUPS.map((g) => Math.max(...delta[g].flat().map(Math.abs))));
  const scale = new Scale(-m, m, true);
  replace(root, controls, said,
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
