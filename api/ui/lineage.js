// Where a version stands: on the active lineage (the active version and its ancestors, by parent links), accepted
// but off it (rolled back, or built on another branch), or rejected by the forgetting gate. The version tree, the
// task charts and the importance diff read it from here, so their marks and words agree.

// mark and words of each place; the status words (active, retired, ...) are dom.js's STATUS_MARK
export const PLACES = {
  lineage: { mark: "●", words: "on the active lineage" },
  branch: { mark: "◇", words: "off the active lineage: accepted by its gate, then rolled back or on another branch" },
  rejected: { mark: "✕", words: "rejected by the forgetting gate" },
};

export function byId(models) {
  return new Map(models.map((m) => [m.id, m]));
}

// The active version's lineage, root first: the versions the gate's reference is taken from.
export function activeLineage(models) {
  const ids = byId(models);
  const chain = [];
  for (let m = models.find((v) => v.status === "active"); m && !chain.includes(m.id); m = ids.get(m.parent)) {
    chain.unshift(m.id);
  }
  return chain;
}

// id -> "lineage" | "branch" | "rejected"
export function placements(models) {
  const onLine = new Set(activeLineage(models));
  return new Map(models.map((m) => [m.id, m.status === "rejected" ? "rejected" : onLine.has(m.id) ? "lineage"
    : "branch"]));
}

// The nearest ancestor of `id` (its parent, or the parent's parent, ...) that `keep` accepts; null when none.
export function nearestAncestor(models, id, keep) {
  const ids = byId(models);
  const seen = new Set([id]);
  for (let m = ids.get(ids.get(id)?.parent); m && !seen.has(m.id); m = ids.get(m.parent)) {
    if (keep(m.id)) return m.id;
    seen.add(m.id);
  }
  return null;
}
