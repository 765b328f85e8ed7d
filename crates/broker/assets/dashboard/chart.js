// A small canvas line chart: a few series over time, a y axis with round ticks, crisp on
// high-density screens, redrawn on resize. No dependencies.

const NICE = [1, 2, 2.5, 5, 10];

function niceStep(max, ticks) {
  const raw = max / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const n of NICE) if (n * mag >= raw) return n * mag;
  return 10 * mag;
}

export function formatNumber(v) {
  if (v >= 1e9) return (v / 1e9).toFixed(v >= 1e10 ? 0 : 1) + "G";
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(v >= 1e5 ? 0 : 1) + "k";
  return String(Math.round(v * 100) / 100);
}

export class LineChart {
  // series: [{ key, color, label }]; windowSeconds: how much time the x axis spans.
  constructor(canvas, series, windowSeconds = 300) {
    this.canvas = canvas;
    this.series = series;
    this.window = windowSeconds * 1000;
    this.points = []; // [{ t, values: {key: number} }]
    this.pending = false;
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
  }

  set(points) { this.points = points.slice(-2000); this.schedule(); }

  push(point) {
    this.points.push(point);
    if (this.points.length > 2000) this.points.splice(0, this.points.length - 2000);
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  destroy() { this.observer.disconnect(); }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 48, right = 10, top = 8, bottom = 22;
    const pw = w - left - right, ph = h - top - bottom;
    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now();
    // The x axis spans the data (at least a minute, at most the window): a fresh broker's
    // first seconds are not a sliver at the right edge.
    const span = this.points.length ? now - this.points[0].t : 0;
    const windowMs = Math.min(this.window, Math.max(60000, span));
    const t0 = now - windowMs;
    const visible = this.points.filter((p) => p.t >= t0);
    let max = 0;
    for (const p of visible) for (const s of this.series) max = Math.max(max, p.values[s.key] || 0);
    const step = niceStep(Math.max(max * 1.1, 4), 4);
    const top_ = Math.max(step * Math.ceil((max * 1.1) / step), step);
    const x = (t) => left + ((t - t0) / windowMs) * pw;
    const y = (v) => top + ph - (v / top_) * ph;

    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    g.lineWidth = 1;
    for (let v = 0; v <= top_ + 1e-9; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      g.strokeStyle = v === 0 ? "#cbd2dc" : "#edf0f4";
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke();
      g.fillStyle = "#667085";
      g.textAlign = "right";
      g.fillText(formatNumber(v), left - 6, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    // Ticks every 10 s up to a minute and a half, then every minute.
    const tick = windowMs <= 90000 ? 10000 : 60000;
    for (let d = 0; d <= windowMs + 1; d += tick) {
      const xx = left + pw - (d / windowMs) * pw;
      const label = d === 0 ? "now" : tick < 60000 ? `-${d / 1000}s` : `-${d / 60000}m`;
      g.fillStyle = "#667085";
      g.textAlign = d === 0 ? "right" : xx - left < 12 ? "left" : "center";
      g.fillText(label, xx, top + ph + 6);
    }
    for (const s of this.series) {
      if (!visible.length) break;
      g.strokeStyle = s.color;
      g.lineWidth = 1.8;
      g.lineJoin = "round";
      g.beginPath();
      visible.forEach((p, i) => {
        const px = x(p.t), py = y(p.values[s.key] || 0);
        if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
      });
      g.stroke();
      if (s.fill) {
        g.lineTo(x(visible[visible.length - 1].t), y(0));
        g.lineTo(x(visible[0].t), y(0));
        g.closePath();
        g.fillStyle = s.fill;
        g.fill();
      }
    }
  }
}
