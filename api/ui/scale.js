// Colour scales drawn by the page itself: a sequential one (importance) and a diverging one (a difference).
import { s } from "./dom.js";

// perceptually ordered dark-blue -> green -> yellow stops (a viridis-like ramp, readable in greyscale by lightness)
const SEQUENTIAL = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
// blue (lost) -> near white (no change) -> red (gained)
const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export class Scale {
  constructor(lo, hi, diverging = false) {
    this.lo = lo;
    this.hi = hi > lo ? hi : lo + 1;
    this.diverging = diverging;
  }

  colour(value) {
    return ramp(this.diverging ? DIVERGING : SEQUENTIAL, (value - this.lo) / (this.hi - this.lo));
  }

  ticks(n = 5) {
    return Array.from({ length: n }, (_, i) => this.lo + ((this.hi - this.lo) * i) / (n - 1));
  }

  // A labelled legend: the gradient, numbered ticks, and what the ends mean in words.
  legend(title, lowWord, highWord, width = 360) {
    const steps = 64;
    const bar = [];
    for (let i = 0; i < steps; i++) {
      const v = this.lo + ((this.hi - this.lo) * (i + 0.5)) / steps;
      bar.push(s("rect", { x: 24 + (i * width) / steps, y: 18, width: width / steps + 0.5, height: 14,
                           fill: this.colour(v) }));
    }
    const ticks = this.ticks().map((v) => {
      const x = 24 + ((v - this.lo) / (this.hi - this.lo)) * width;
      return [s("line", { x1: x, x2: x, y1: 32, y2: 37, class: "axis" }),
              s("text", { x, y: 49, "text-anchor": "middle", class: "tick" }, v.toFixed(2))];
    });
    return s("svg", { class: "legend", width: width + 48, height: 70, viewBox: `0 0 ${width + 48} 70`,
                      role: "img", "aria-label": `${title}: from ${this.lo.toFixed(2)} (${lowWord}) to ` +
                      `${this.hi.toFixed(2)} (${highWord})` },
             s("text", { x: 24, y: 12, class: "legend-title" }, title),
             bar, s("rect", { x: 24, y: 18, width, height: 14, fill: "none", class: "axis" }), ticks,
             s("text", { x: 24, y: 64, class: "tick" }, `← ${lowWord}`),
             s("text", { x: width + 24, y: 64, "text-anchor": "end", class: "tick" }, `${highWord} →`));
  }
}

// Round axis ticks (steps of 1, 2 or 5 times a power of ten) from lo to hi, about n of them.
export function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * power).find((st) => st >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}
