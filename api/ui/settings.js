// Two versions' settings side by side: a row per setting, the rows that differ marked with a sign and words.
import { fmt, h, replace } from "./dom.js";

function shown(value) {
  if (value === undefined) return "– (not set)";
  return typeof value === "object" && value !== null ? JSON.stringify(value) : fmt(value, 6);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// By default the selected version against its parent; the base model (no parent) against the active version.
function defaults(state) {
  const models = state.models;
  const selected = models.find((m) => m.id === state.selected) || models[models.length - 1];
  if (models.some((m) => m.id === selected.parent)) return [selected.parent, selected.id];
  const other = models.find((m) => m.status === "active" && m.id !== selected.id)
    || [...models].reverse().find((m) => m.id !== selected.id);
  return [selected.id, (other || selected).id];
}

function select(id, label, models, chosen, onchange) {
  return [h("label", { for: id }, label), h("select", { id, onchange },
    models.map((m) => h("option", { value: m.id, selected: m.id === chosen },
      `${m.id} · ${m.domain || "base"} · ${m.status}`)))];
}

export function renderSettingsCompare(state, root) {
  const models = state.models;
  const known = (id) => models.some((m) => m.id === id);
  if (state.compareFor !== state.selected || !known(state.compareA) || !known(state.compareB)) {
    [state.compareA, state.compareB] = defaults(state);
    state.compareFor = state.selected;
  }
  const [a, b] = [state.compareA, state.compareB].map((id) => models.find((m) => m.id === id));
  const sa = a.settings || {};
  const sb = b.settings || {};
  const keys = [...new Set([...Object.keys(sa), ...Object.keys(sb)])].sort();
  const differing = keys.filter((k) => !same(sa[k], sb[k]));
  const only = Boolean(state.compareOnlyDiffering);
  const redraw = () => renderSettingsCompare(state, root);
  const pick = (key) => (e) => { state[key] = e.target.value; redraw(); };
  const rows = keys.filter((k) => !only || differing.includes(k)).map((k) => {
    const differs = differing.includes(k);
    return h("tr", { class: differs ? "differs" : "same", "data-setting": k, "data-differs": differs ? "yes" : "no" },
      h("th", { scope: "row" }, k), h("td", {}, shown(sa[k])), h("td", {}, shown(sb[k])),
      h("td", { class: "verdict" }, differs ? "≠ differs" : "= same"));
  });
  replace(root,
    h("h3", { id: "compare-heading" }, "Settings of two versions, side by side"),
    h("div", { class: "controls" },
      select("compare-a", "Version ", models, a.id, pick("compareA")), " ",
      select("compare-b", " against ", models, b.id, pick("compareB")), " ",
      h("label", {}, h("input", { type: "checkbox", id: "compare-only", checked: only,
                                  onchange: (e) => { state.compareOnlyDiffering = e.target.checked; redraw(); } }),
        " only the settings that differ")),
    h("p", { class: "muted", id: "compare-summary" }, keys.length
      ? `${differing.length} of ${keys.length} settings differ between ${a.id} and ${b.id}` +
        (a.id === b.id ? " (the same version twice)." : ".") +
        [a, b].filter((m) => !Object.keys(m.settings || {}).length).map((m) => ` ${m.id} records no settings: no ` +
          "run trained it (the base model).").join("")
      : `Neither ${a.id} nor ${b.id} records settings: no run trained them (the base model).`),
    keys.length ? h("table", { class: "settings compare", "aria-describedby": "compare-summary" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "setting"), h("th", { scope: "col" }, a.id),
        h("th", { scope: "col" }, b.id), h("th", { scope: "col" }, "compared"))),
      h("tbody", {}, rows)) : null);
}
