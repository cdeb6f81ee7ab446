// glm-monitor dashboard: plain JS + canvas, no libraries, no external requests.
// Two data sources with one interface: the live server (/api/...) or, in a report file, the JSON
// embedded in <script id="glm-data">. Every text taken from a run (names, config values, event
// messages) is put in the page with textContent, never parsed as HTML.
"use strict";
(function () {
  const EMBED = document.getElementById("glm-data");
  const STATIC = EMBED ? JSON.parse(EMBED.textContent) : null;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  // fromZero: a non-negative series whose linear axis starts at 0 (losses keep a fitted range, where
  // a small jump stays visible). val_loss includes the start event's step-0 loss (run.py adds it).
  const CHARTS = [
    { id: "loss", title: "Training loss (raw and smoothed; ● spikes)", keys: ["loss"], spikes: "loss", smooth: true, logToggle: true },
    { id: "sources", title: "Loss per source", prefix: "loss/", smooth: true },
    { id: "val", title: "Validation loss", keys: ["val_loss"], sparse: true },
    { id: "grad", title: "Grad norm (● spikes)", keys: ["grad_norm"], spikes: "grad_norm", log: true },
    { id: "param", title: "Param norm", keys: ["param_norm"], fromZero: true },
    { id: "scale", title: "Loss scale (▲ skipped steps, red ▲ NaN steps)", keys: ["loss_scale"], markers: true, log: true },
    { id: "lr", title: "Learning rate", keys: ["lr"], fromZero: true },
    { id: "bs", title: "Batch size (samples)", keys: ["batch_size"], fromZero: true },
    { id: "tps", title: "Tokens/s", keys: ["tokens_per_s"], fromZero: true },
    { id: "tflops", title: "TFLOP/s per GPU", keys: ["tflops_per_gpu"], fromZero: true },
    { id: "mfu", title: "MFU", keys: ["mfu"], fromZero: true },
    { id: "steptime", title: "Step time (s)", keys: ["step_time_s"], fromZero: true },
    { id: "mem", title: "Peak memory (GiB)", keys: ["mem_gb"], fromZero: true },
  ];
  const state = { runs: [], selected: new Set(), view: null, smoothing: 0.6, logLoss: false, versions: {}, events: {} };
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(typeof c === "string" ? document.createTextNode(c) : c);
    return e;
  }
  const num = (v) => (v === "nan" ? NaN : v === "inf" ? Infinity : v === "-inf" ? -Infinity : v === null || v === undefined ? NaN : Number(v));
  function fmt(v) {
    v = num(v);
    if (!Number.isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    return String(Number(v.toPrecision(4)));
  }
  function fmtDuration(s) {
    if (!Number.isFinite(s)) return "?";
    s = Math.max(0, Math.round(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }
  const color = (run) => COLORS[run.id % COLORS.length];

  // ------------------------------------------------------------------ data sources
  const live = {
    async runs() { return (await getJSON("api/runs")); },
    async series(run, keys, view, width, markers) {
      const q = new URLSearchParams({ run: run.id, keys: keys.join(","), width: String(width), markers: markers ? "1" : "0" });
      if (view) { q.set("from", String(view[0])); q.set("to", String(view[1])); }
      return getJSON("api/series?" + q.toString());
    },
    async events(run) { return (await getJSON("api/events?run=" + run.id)).events; },
  };
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }
  const embedded = {
    async runs() { return { server_time: STATIC.generated, runs: STATIC.runs }; },
    async series(run, keys, view) {
      const src = STATIC.series[run.id], out = { keys: {}, loading: [] };
      const inView = (x) => !view || (x >= view[0] && x <= view[1]);
      for (const k of keys) {
        const s = src.keys[k];
        if (!s) continue;
        const idx = s.x.map((x, i) => i).filter((i) => inView(s.x[i]));
        out.keys[k] = Object.fromEntries(Object.entries(s).map(([f, arr]) => [f, idx.map((i) => arr[i])]));
      }
      out.spikes = src.spikes.filter((p) => inView(p.step));
      out.markers = Object.fromEntries(Object.entries(src.markers).map(([k, m]) => [k, m.filter((p) => inView(p.step))]));
      out.range = view || src.range;
      return out;
    },
    async events(run) { return STATIC.events[run.id]; },
  };
  const source = STATIC ? embedded : live;

  // ------------------------------------------------------------------ tooltip
  const tip = $("#tooltip");
  function showTip(ev, lines) {
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 320) + "px";
    tip.style.top = ev.clientY + 12 + "px";
  }
  const hideTip = () => { tip.hidden = true; };
  function hoverable(node, lines) {
    node.addEventListener("mouseenter", (ev) => showTip(ev, lines()));
    node.addEventListener("mousemove", (ev) => showTip(ev, lines()));
    node.addEventListener("mouseleave", hideTip);
  }

  // ------------------------------------------------------------------ charts
  class Chart {
    constructor(spec) {
      this.spec = spec;
      this.canvas = el("canvas", { "data-chart": spec.id });
      this.overlay = el("div", { class: "overlay" });
      this.empty = el("div", { class: "empty" }, "");
      this.note = el("span", { class: "nodata-note" }, "");
      this.root = el("div", { class: "chart", id: "chart-" + spec.id }, el("h3", {}, spec.title, this.note),
        el("div", { class: "plot" }, this.canvas, this.overlay, this.empty));
      this.data = [];
      this.attachZoom();
    }
    keysFor(run) {
      if (this.spec.prefix) return (run.keys || []).filter((k) => k.startsWith(this.spec.prefix));
      if (this.spec.evalKey) return (run.keys || []).filter((k) => k === this.spec.evalKey || evalGroupOf(k) === this.spec.evalKey);
      return this.spec.keys.filter((k) => (run.keys || []).includes(k) || (run.loading || []).includes(k));
    }
    get log() { return this.spec.log || (this.spec.logToggle && state.logLoss); }
    width() { return Math.max(100, Math.floor(this.canvas.clientWidth || 500)); }
    attachZoom() {
      const xAt = (ev) => this.fromPx(ev.clientX - this.canvas.getBoundingClientRect().left);
      this.canvas.addEventListener("mousedown", (ev) => { this.drag = { x: xAt(ev), px: [ev.clientX, ev.clientX] }; });
      this.canvas.addEventListener("mousemove", (ev) => { if (this.drag) { this.drag.px[1] = ev.clientX; this.draw(); } });
      window.addEventListener("mouseup", (ev) => {
        if (!this.drag) return;
        const d = this.drag, end = xAt(ev);
        this.drag = null;
        if (Math.abs(d.px[1] - d.px[0]) > 4 && Number.isFinite(end) && Number.isFinite(d.x)) setView([Math.min(d.x, end), Math.max(d.x, end)]);
        else this.draw();
      });
      this.canvas.addEventListener("dblclick", () => setView(null));
    }
    fromPx(px) {
      const g = this.geom;
      return g ? g.x0 + ((px - g.left) / g.w) * (g.x1 - g.x0) : NaN;
    }
    async load() {
      const width = this.width();
      const parts = [];
      for (const run of state.runs.filter((r) => state.selected.has(r.id))) {
        const keys = this.keysFor(run);
        if (!keys.length) continue;
        const s = await source.series(run, keys, state.view, width, Boolean(this.spec.markers));
        parts.push({ run, keys, s });
      }
      this.data = parts;
      this.draw();
    }
    draw() {
      const c = this.canvas, dpr = window.devicePixelRatio || 1;
      const W = this.width(), H = 220;
      c.width = W * dpr; c.height = H * dpr;
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      if (this.overlay.contains(document.querySelector(".spike:hover, .mark:hover"))) hideTip();  // its marker goes
      this.overlay.replaceChildren();
      const series = [];
      for (const p of this.data) for (const k of p.keys) if (p.s.keys[k]) series.push({ run: p.run, key: k, d: p.s.keys[k], part: p });
      const loading = this.data.some((p) => p.s.loading && p.s.loading.length);
      const ok = (v) => v !== null && Number.isFinite(v) && (!this.log || v > 0);
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, points = 0;
      for (const { d, part } of series) {
        const lo = d.lo || d.y, hi = d.hi || d.y;
        for (let i = 0; i < d.x.length; i++) {
          if (!ok(lo[i]) && !ok(hi[i])) continue;
          points++;
          x0 = Math.min(x0, d.x[i]); x1 = Math.max(x1, d.x[i]);
          if (part.s.range) x1 = Math.max(x1, part.s.range[1]);  // a bucket's x is its first step
          if (ok(lo[i])) y0 = Math.min(y0, lo[i]);
          if (ok(hi[i])) y1 = Math.max(y1, hi[i]);
        }
      }
      if (state.view) { x0 = state.view[0]; x1 = state.view[1]; }
      c.dataset.points = String(points);
      c.dataset.lastStep = Number.isFinite(x1) ? String(x1) : "";
      this.showNoData(!points && !loading);
      if (!points) {
        this.empty.textContent = loading ? "loading…" : "";
        this.geom = null;
        return;
      }
      this.empty.textContent = "";
      if (x0 === x1) { x0 -= 1; x1 += 1; }
      const T = this.log ? Math.log10 : (v) => v;
      const [t0, t1] = this.yRange(T, y0, y1);
      c.dataset.yMin = String(this.log ? 10 ** t0 : t0);
      const g = { left: 62, top: 8, w: W - 62 - 10, h: H - 8 - 24, x0, x1 };
      this.geom = g;
      const px = (x) => g.left + ((x - x0) / (x1 - x0)) * g.w;
      const py = (y) => g.top + (1 - (T(y) - t0) / (t1 - t0)) * g.h;
      this.px = px; this.py = py;
      // axes and grid
      ctx.strokeStyle = "#e3e6ea"; ctx.fillStyle = "#667085"; ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
      for (let i = 0; i <= 4; i++) {
        const t = t0 + ((t1 - t0) * i) / 4, y = g.top + (1 - i / 4) * g.h;
        ctx.beginPath(); ctx.moveTo(g.left, y); ctx.lineTo(g.left + g.w, y); ctx.stroke();
        ctx.textAlign = "right"; ctx.fillText(fmt(this.log ? 10 ** t : t), g.left - 4, y + 4);
      }
      for (let i = 0; i <= 5; i++) {
        const x = x0 + ((x1 - x0) * i) / 5;
        ctx.textAlign = i === 0 ? "left" : i === 5 ? "right" : "center";
        ctx.fillText(fmt(Math.round(x)), px(x), H - 6);
      }
      ctx.save();
      ctx.beginPath(); ctx.rect(g.left, g.top, g.w, g.h); ctx.clip();
      const sources = this.spec.prefix || this.spec.evalKey ? [...new Set(series.map((s) => s.key))] : [];
      for (const { run, key, d } of series) {
        const col = color(run);
        const dash = sources.length ? [[], [6, 3], [2, 2], [8, 2, 2, 2]][sources.indexOf(key) % 4] : [];
        ctx.setLineDash(dash);
        const smooth = this.spec.smooth && state.smoothing > 0;
        ctx.strokeStyle = col; ctx.globalAlpha = smooth ? 0.3 : 1; ctx.lineWidth = 1.2;
        this.rawPath(ctx, d, px, py, ok);
        if (smooth) { ctx.globalAlpha = 1; ctx.lineWidth = 2; this.smoothPath(ctx, d, px, py, ok); }
        ctx.globalAlpha = 1;
      }
      ctx.setLineDash([]);
      ctx.restore();
      if (this.drag) {
        const r = c.getBoundingClientRect();
        ctx.fillStyle = "rgba(31,119,180,0.12)";
        const a = this.drag.px[0] - r.left, b = this.drag.px[1] - r.left;
        ctx.fillRect(Math.min(a, b), g.top, Math.abs(b - a), g.h);
      }
      if (sources.length) this.legend(ctx, sources);
      if (this.spec.spikes) this.drawSpikes(g, px, py);
      if (this.spec.markers) this.drawMarkers(g, px);
    }
    // A chart with nothing to draw (peak memory on CPU) collapses to its title line and says why.
    showNoData(none) {
      this.root.classList.toggle("nodata", none);
      this.note.textContent = !none ? "" : !this.data.length ? " — no data: not logged by the selected runs"
        : state.view ? " — no data in this step range" : " — no data: every logged value is empty";
    }
    // Axis range [t0, t1] in axis units (log10 on a log axis): the data plus 6 % margins, except that
    // the linear axis of a non-negative series starts at 0 (a margin below an LR warm-up from 0 drew
    // a -6.00e-4 tick that no value can have).
    yRange(T, y0, y1) {
      if (this.spec.fromZero && !this.log && y0 >= 0) return [0, y1 > 0 ? y1 * 1.06 : 1];
      let t0 = T(y0), t1 = T(y1);
      if (t0 === t1) { t0 -= 0.5; t1 += 0.5; }
      const pad = (t1 - t0) * 0.06;
      return [t0 - pad, t1 + pad];
    }
    rawPath(ctx, d, px, py, ok) {
      ctx.beginPath();
      let pen = false;
      const connect = this.spec.sparse;
      for (let i = 0; i < d.x.length; i++) {
        const x = px(d.x[i]);
        const pts = d.y ? [d.y[i]] : [d.lo[i], d.hi[i]];
        if (!pts.some(ok)) { if (!connect) pen = false; continue; }
        for (const v of pts) {
          if (!ok(v)) continue;
          if (pen) ctx.lineTo(x, py(v)); else ctx.moveTo(x, py(v));
          pen = true;
        }
        if (this.spec.sparse) ctx.fillRect(x - 2, py(pts[0] ?? pts[1]) - 2, 4, 4);
      }
      ctx.stroke();
    }
    smoothPath(ctx, d, px, py, ok) {
      // TensorBoard-style debiased EWM; a bucket of n steps decays the weight n times.
      const vals = d.y || d.mean, counts = d.count;
      let last = 0, weight = 0, pen = false;
      ctx.beginPath();
      for (let i = 0; i < d.x.length; i++) {
        const v = vals[i];
        if (!ok(v)) continue;
        const n = counts ? Math.max(1, counts[i]) : 1, w = state.smoothing ** n;
        last = last * w + (1 - w) * v; weight = weight * w + (1 - w);
        const y = last / weight;
        if (pen) ctx.lineTo(px(d.x[i]), py(y)); else ctx.moveTo(px(d.x[i]), py(y));
        pen = true;
      }
      ctx.stroke();
    }
    legend(ctx, sources) {
      ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.fillStyle = "#1d2330";
      sources.forEach((s, i) => ctx.fillText(["—", "- -", "···", "-·-"][i % 4] + " " + s.slice(this.spec.strip || 5), 70 + i * 110, 20));
    }
    drawSpikes(g, px, py) {
      const key = this.spec.spikes;
      for (const p of this.data) {
        for (const sp of p.s.spikes || []) {
          if (state.view && (sp.step < state.view[0] || sp.step > state.view[1])) continue;
          const v = num(sp[key]);
          const y = Number.isFinite(v) && (!this.log || v > 0) ? Math.max(g.top, Math.min(g.top + g.h, py(v))) : g.top;
          const m = el("div", { class: "spike" + (sp.reason === "trainer" ? " trainer-only" : ""), "data-step": String(sp.step),
                                "data-run": String(p.run.id), style: `left:${px(sp.step)}px;top:${y}px` });
          hoverable(m, () => spikeLines(p.run, sp));
          this.overlay.append(m);
        }
      }
    }
    drawMarkers(g, px) {
      for (const p of this.data) {
        for (const [kind, list] of Object.entries(p.s.markers || {})) {
          for (const mk of list) {
            const m = el("div", { class: "mark " + kind, "data-step": String(mk.step), style: `left:${px(mk.step)}px;top:${g.top + g.h - 9}px` });
            hoverable(m, () => [`${p.run.name}: step ${fmt(mk.step)}`, `${fmt(mk.n)} ${kind === "nan" ? "NaN" : "skipped"} step(s)` +
              (mk.count > 1 ? ` (${mk.count} marks in this pixel range)` : "")]);
            this.overlay.append(m);
          }
        }
      }
    }
  }

  function spikeLines(run, sp) {
    const lines = [`${run.name}: spike at step ${fmt(sp.step)}`, `reason: ${sp.reason}`,
      `loss ${fmt(sp.loss)}  baseline ${fmt(sp.baseline_loss)}  ratio ${fmt(sp.ratio)}×`,
      `grad norm ${fmt(sp.grad_norm)}  baseline ${fmt(sp.baseline_grad_norm)}  ratio ${fmt(sp.grad_ratio)}×`,
      `action: ${sp.action}`];
    if (sp.count > 1) lines.push(`(${sp.count} spikes in this pixel range; the most severe is shown)`);
    return lines;
  }

  const charts = CHARTS.map((spec) => new Chart(spec));
  $("#charts").append(...charts.map((c) => c.root));

  function setView(v) {
    state.view = v;
    reloadCharts();
    renderTimeline();
  }
  // Downstream scores (train.eval_tasks): one chart per `eval/<task>/<metric>` key a selected run logged,
  // added the first time a key appears (its own scale: accuracy 0-100, perplexity, bits per byte); a
  // task's per-group keys (`eval/<task>/<group>/<metric>`) are more lines in its chart.
  const evalCharts = new Set();
  const evalKeys = new Set();
  function evalGroupOf(k) {  // eval/<task>/<group>/<metric> -> eval/<task>/<metric> when that is logged too
    const p = k.split("/");
    if (p.length !== 4 || p[0] !== "eval") return null;
    const top = `eval/${p[1]}/${p[3]}`;
    return evalKeys.has(top) ? top : null;
  }
  function addEvalCharts() {
    for (const r of state.runs) for (const k of r.keys || []) if (k.startsWith("eval/")) evalKeys.add(k);
    const keys = new Set();
    for (const r of state.runs) if (state.selected.has(r.id)) for (const k of r.keys || []) if (k.startsWith("eval/") && !evalGroupOf(k)) keys.add(k);
    for (const k of [...keys].sort()) {
      if (evalCharts.has(k)) continue;
      evalCharts.add(k);
      const strip = 6 + k.split("/")[1].length;  // the legend names the group: "<group>/<metric>"
      const chart = new Chart({ id: "eval-" + k.slice(5).replace(/[^A-Za-z0-9_-]+/g, "-"), title: "Downstream: " + k.slice(5),
                                keys: [k], sparse: true, evalKey: k, strip });
      charts.push(chart);
      $("#charts").append(chart.root);
    }
  }
  let loadingCharts = null;
  async function reloadCharts() {
    addEvalCharts();
    const run = async () => {
      for (const c of charts) {
        const any = state.runs.some((r) => state.selected.has(r.id) && c.keysFor(r).length);
        c.root.hidden = !any && (c.spec.prefix !== undefined || c.spec.evalKey !== undefined);
        await c.load();
      }
    };
    loadingCharts = (loadingCharts || Promise.resolve()).then(run, run);
    await loadingCharts;
  }

  // ------------------------------------------------------------------ run headers
  function renderRuns(serverTime) {
    const box = $("#runs");
    box.replaceChildren();
    for (const run of state.runs) {
      const m = run.model || {}, L = run.layout;
      const check = el("input", { type: "checkbox", "data-run": String(run.id) });
      check.checked = state.selected.has(run.id);
      check.addEventListener("change", () => {
        if (check.checked) state.selected.add(run.id); else state.selected.delete(run.id);
        reloadCharts(); renderEvents();
      });
      const modelText = [m.name, m.num_layers && `${m.num_layers} layers × ${m.hidden_size} hidden`,
        m.num_attention_heads && `${m.num_attention_heads} heads`, m.seq_length && `seq ${m.seq_length}`,
        run.precision].filter(Boolean).join(" · ") || "model unknown (no config.yaml)";
      const layoutText = L ? `TP${L.tp} × PP${L.pp} × DP${L.dp}${L.vpp ? ` (VPP ${L.vpp})` : ""} · ${L.world_size} GPUs` : "layout unknown (no start event)";
      const pct = run.progress === null || run.progress === undefined ? null : Math.min(1, run.progress);
      const since = Number.isFinite(run.last_metric_time) ? serverTime - run.last_metric_time : NaN;
      const card = el("div", { class: "run", "data-run": String(run.id), style: `--run-color:${color(run)}` },
        el("label", { class: "name" }, check, " ", run.name),
        el("div", { class: "row muted" }, run.kind === "textlog" ? "Megatron-LM text log: " + run.path : run.path),
        el("div", { class: "row model" }, modelText),
        el("div", { class: "row layout" }, layoutText),
        el("div", { class: "progress" }, el("div", { style: `width:${pct === null ? 0 : (pct * 100).toFixed(1)}%` })),
        el("div", { class: "row" }, el("span", { class: "last-step" }, `step ${fmt(run.last_step ?? NaN)}`),
          run.planned_steps ? ` / ${fmt(run.planned_steps)} (${(100 * pct).toFixed(1)} % of planned)` : "",
          run.tokens !== null && run.tokens !== undefined ? ` · ${fmt(run.tokens)} tokens` : "",
          run.planned_tokens ? ` of ${fmt(run.planned_tokens)}` : ""),
        el("div", { class: "row" },
          run.ended ? el("span", { class: "ended" }, run.done ? "finished" : "stopped") : `ETA ${fmtDuration(run.eta_s ?? NaN)}`,
          " · last metric ", el("span", { class: run.stalled ? "stalled since" : "since" }, `${fmtDuration(since)} ago`),
          run.stalled ? el("span", { class: "stalled" }, " STALLED ") : "",
          ` · ${run.spikes} spike(s)`, run.superseded ? ` · ${fmt(run.superseded)} rows re-logged after restarts` : ""),
        run.loading && run.loading.length ? el("div", { class: "row muted" }, `loading ${run.loading.length} more columns…`) : null,
        run.bad_lines || run.bad_event_lines ? el("div", { class: "row problem bad-lines" },
          `${run.bad_lines} bad line(s) in metrics, ${run.bad_event_lines} in events (skipped)`) : null,
        ...(run.errors || []).slice(0, 3).map((e) => el("div", { class: "row problem" }, e)),
        run.config_error ? el("div", { class: "row problem" }, run.config_error) : null);
      box.append(card);
    }
  }

  // ------------------------------------------------------------------ events
  function eventDetails(e) {
    switch (e.kind) {
      case "start": case "restart": {
        const L = e.layout || {};
        return `world size ${e.world_size}, TP${L.tp} PP${L.pp} DP${L.dp}${L.vpp ? " VPP" + L.vpp : ""}`;
      }
      case "checkpoint_saved": case "checkpoint_loaded": return e.path;
      case "spike": return `loss ${fmt(e.loss)} (baseline ${fmt(e.baseline_loss)}), grad norm ${fmt(e.grad_norm)}, action ${e.action}`;
      case "rollback": return `to step ${e.to_step} from ${e.path}`;
      case "skip": return `samples ${fmt(e.first_sample)}–${fmt(e.last_sample)}`;
      case "stop": return `${e.reason}, exit code ${e.exit_code}`;
      case "downstream_eval": return Object.entries(e.metrics || {}).map(([k, v]) => `${k.slice(5)} ${fmt(v)}`).join(", ") +
        ` (${fmt(e.seconds)} s)`;
      default: return "";
    }
  }
  function selectedEvents() {
    const out = [];
    for (const run of state.runs) if (state.selected.has(run.id)) for (const e of state.events[run.id] || []) out.push({ run, e });
    return out;
  }
  function renderEvents() {
    const body = $("#events tbody");
    const rows = selectedEvents().sort((a, b) => num(b.e.time) - num(a.e.time)).slice(0, 500);
    body.replaceChildren(...rows.map(({ run, e }) => el("tr", { "data-kind": String(e.kind) },
      el("td", {}, Number.isFinite(num(e.time)) ? new Date(num(e.time) * 1000).toISOString().replace("T", " ").slice(0, 19) : ""),
      el("td", {}, run.name), el("td", {}, fmt(e.step)),
      el("td", { class: "kind" }, el("span", { class: "k-" + String(e.kind).replace(/[^a-z_]/g, "") }, String(e.kind))),
      el("td", {}, String(e.message)), el("td", {}, String(eventDetails(e) ?? "")))));
    renderTimeline();
  }
  function renderTimeline() {
    const box = $("#timeline");
    box.replaceChildren();
    const evs = selectedEvents();
    const g = charts[0].geom;
    let x0, x1;
    if (state.view) [x0, x1] = state.view;
    else if (g) { x0 = g.x0; x1 = g.x1; }
    else {
      const steps = evs.map(({ e }) => e.step);
      x0 = Math.min(...steps); x1 = Math.max(...steps);
    }
    if (!(x1 > x0)) x1 = x0 + 1;
    for (const { run, e } of evs) {
      if (e.step < x0 || e.step > x1) continue;
      const t = el("div", { class: "tick k-" + String(e.kind).replace(/[^a-z_]/g, ""), style: `left:${(100 * (e.step - x0)) / (x1 - x0)}%` });
      hoverable(t, () => [`${run.name}: ${e.kind} at step ${fmt(e.step)}`, String(e.message), String(eventDetails(e) ?? "")]);
      box.append(t);
    }
  }

  // ------------------------------------------------------------------ polling
  async function poll(first) {
    let res;
    try {
      res = await source.runs();
    } catch (err) {
      $("#live").textContent = "server unreachable, retrying…";
      return;
    }
    const known = new Set(state.runs.map((r) => r.id));
    state.runs = res.runs;
    for (const r of res.runs) if (!known.has(r.id)) state.selected.add(r.id);
    renderRuns(res.server_time);
    const changed = res.runs.filter((r) => state.versions[r.id] !== r.version);
    for (const r of changed) {
      state.versions[r.id] = r.version;
      state.events[r.id] = await source.events(r);
    }
    if (changed.length || first) { renderEvents(); await reloadCharts(); renderTimeline(); }
    $("#live").textContent = STATIC ? `report generated ${new Date(STATIC.generated * 1000).toISOString()}` :
      `live · updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "1";
  }

  $("#smoothing").addEventListener("input", (ev) => {
    state.smoothing = Number(ev.target.value);
    $("#smoothing-value").textContent = state.smoothing.toFixed(2);
    charts.forEach((c) => c.draw());
  });
  $("#log-loss").addEventListener("change", (ev) => { state.logLoss = ev.target.checked; charts[0].draw(); });
  $("#reset-zoom").addEventListener("click", () => setView(null));
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(reloadCharts, 200); });

  (async function main() {
    await poll(true);
    if (!STATIC) {
      const loop = async () => { await poll(false); setTimeout(loop, 1000); };
      setTimeout(loop, 1000);
    }
  })();
})();
