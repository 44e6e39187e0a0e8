/* Polyray dashboard: fetches /dashboard/data.json and draws it with Chart.js (served locally). */
/* global Chart */
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const key = params.get('key');
  const headers = key ? { 'x-api-key': key } : {};
  const REFRESH_MS = Number(params.get('refresh') || 10000);
  const COLORS = ['#3b6fd8', '#e07b39', '#2a9d6f', '#b04fc4', '#c9a227', '#d64550', '#4aa3b5', '#7a869a'];
  const TIER_COLORS = { memory: '#2a9d6f', global: '#3b6fd8', computed: '#e07b39' };
  const charts = {};
  window.__polyray = { charts, data: null, renders: 0 };

  Chart.defaults.animation = false;
  Chart.defaults.font.size = 11;
  Chart.defaults.maintainAspectRatio = false;

  function bytes(n) {
    if (n >= 1024 ** 3) return `${+(n / 1024 ** 3).toFixed(1)} GB`;
    if (n >= 1024 ** 2) return `${+(n / 1024 ** 2).toFixed(1)} MB`;
    if (n >= 1024) return `${+(n / 1024).toFixed(1)} KB`;
    return `${n} B`;
  }
  function duration(ms) {
    if (ms === null) return 'no tier';
    if (ms === 0) return 'none';
    const units = [
      ['d', 86400000],
      ['h', 3600000],
      ['min', 60000],
      ['s', 1000],
    ];
    for (const [u, f] of units) if (ms >= f) return `${+(ms / f).toFixed(1)} ${u}`;
    return `${ms} ms`;
  }
  function joules(j) {
    const a = Math.abs(j);
    if (a >= 1e6) return `${(j / 1e6).toFixed(2)} MJ`;
    if (a >= 1e3) return `${(j / 1e3).toFixed(2)} kJ`;
    if (a >= 1) return `${j.toFixed(1)} J`;
    return `${(j * 1e3).toFixed(2)} mJ`;
  }
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  // A simulated rate with its 95 % error bar (none when the window is not sampled).
  const pctErr = (x, e) => (e > 0 ? `${pct(x)} <span class="err">±${(e * 100).toFixed(1)}</span>` : pct(x));
  const num = (x) => Math.round(x).toLocaleString('en-US');
  const setting = (s) =>
    `memory ${bytes(s.memoryBytes)}, TTL ${duration(s.memoryTtlMs)}; global ${s.globalTtlMs === null ? 'no tier' : `TTL ${duration(s.globalTtlMs)}`}`;

  function upsert(id, config) {
    const existing = charts[id];
    if (existing) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update('none');
      return existing;
    }
    charts[id] = new Chart(document.getElementById(id), config);
    return charts[id];
  }

  function stackedByModel(rows, field) {
    const clients = [...new Set(rows.map((r) => r.client))];
    const models = [...new Set(rows.map((r) => r.model))];
    return {
      labels: clients,
      datasets: models.map((m, i) => ({
        label: m,
        backgroundColor: COLORS[i % COLORS.length],
        data: clients.map((c) => rows.filter((r) => r.client === c && r.model === m).reduce((s, r) => s + r[field], 0)),
      })),
    };
  }

  function renderUsage(d) {
    const u = d.usage;
    document.getElementById('usage-unit').textContent =
      `(${u.unit}${u.source === 'trace' ? ', estimated from the trace window' : u.fleetWide ? ', fleet-wide' : ', this replica'})`;
    const stacked = { x: { stacked: true }, y: { stacked: true, beginAtZero: true } };
    upsert('chart-cost', { type: 'bar', data: stackedByModel(u.rows, 'cost'), options: { scales: stacked, plugins: { legend: { position: 'bottom' } } } });
    upsert('chart-items', { type: 'bar', data: stackedByModel(u.rows, 'items'), options: { scales: stacked, plugins: { legend: { position: 'bottom' } } } });
  }

  let historyRange = '24h';

  /** Cost over time from the usage database (the books of record): stacked bars per client, by hour or day. */
  function renderHistory(d) {
    const h = d.history;
    const none = document.getElementById('history-none');
    const canvas = document.getElementById('chart-history');
    none.hidden = h !== null;
    canvas.parentElement.hidden = h === null;
    for (const r of ['24h', '30d']) document.getElementById(`history-${r}`).classList.toggle('on', r === historyRange);
    if (h === null) return;
    const points = historyRange === '24h' ? h.last24h : h.last30d;
    const hourly = historyRange === '24h';
    document.getElementById('history-sub').textContent = `(${h.unit}, ${hourly ? 'last 24 h by hour' : 'last 30 days by day'}, UTC)`;
    const label = (iso) => (hourly ? `${iso.slice(11, 13)}:00` : iso.slice(5, 10));
    const starts = [...new Set(points.map((p) => p.start))].sort();
    const clients = [...new Set(points.map((p) => p.client))];
    upsert('chart-history', {
      type: 'bar',
      data: {
        labels: starts.map(label),
        datasets: clients.map((c, i) => ({
          label: c,
          backgroundColor: COLORS[i % COLORS.length],
          data: starts.map((s) => points.filter((p) => p.client === c && p.start === s).reduce((sum, p) => sum + p.cost, 0)),
        })),
      },
      options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } }, plugins: { legend: { position: 'bottom' } } },
    });
  }
  for (const r of ['24h', '30d']) {
    document.getElementById(`history-${r}`).addEventListener('click', () => {
      historyRange = r;
      if (window.__polyray.data) renderHistory(window.__polyray.data);
    });
  }

  function renderHits(d) {
    const pts = d.hitRates;
    const total = (p) => p.memory + p.global + p.computed;
    const series = (tier) => pts.map((p) => (total(p) > 0 ? (100 * p[tier]) / total(p) : null));
    upsert('chart-hits', {
      type: 'line',
      data: {
        labels: pts.map((p) => new Date(p.t).toLocaleTimeString('en-GB')),
        datasets: ['memory', 'global', 'computed'].map((tier) => ({
          label: tier,
          data: series(tier),
          borderColor: TIER_COLORS[tier],
          backgroundColor: TIER_COLORS[tier],
          pointRadius: pts.length > 60 ? 0 : 2,
          spanGaps: true,
          tension: 0.2,
        })),
      },
      options: { scales: { y: { min: 0, max: 100, title: { display: true, text: '% of items' } } }, plugins: { legend: { position: 'bottom' } } },
    });
  }

  function markers(labelOf, p) {
    return [
      {
        label: 'current',
        data: [{ x: labelOf(p.current), y: p.current.costPerHour }],
        pointStyle: 'rectRot',
        pointRadius: 9,
        borderColor: '#1d2330',
        backgroundColor: '#ffffff',
        borderWidth: 2,
        showLine: false,
        order: -1,
      },
      {
        label: 'recommended',
        data: [{ x: labelOf(p.recommended), y: p.recommended.costPerHour }],
        pointStyle: 'star',
        pointRadius: 12,
        borderColor: '#d64550',
        backgroundColor: '#d64550',
        borderWidth: 3,
        showLine: false,
        order: -2,
      },
    ];
  }

  function curve(grid, xOf, xLabel, seriesOf, seriesLabel, sortX) {
    const xs = [...new Set(grid.map(xOf))].sort(sortX);
    const series = [...new Set(grid.map(seriesOf))].sort((a, b) => (a ?? -1) - (b ?? -1));
    return {
      labels: xs.map(xLabel),
      datasets: series.map((s, i) => ({
        label: seriesLabel(s),
        data: xs.map((x) => {
          const g = grid.find((r) => xOf(r) === x && seriesOf(r) === s);
          return g ? g.costPerHour : null;
        }),
        borderColor: COLORS[i % COLORS.length],
        backgroundColor: COLORS[i % COLORS.length],
        pointRadius: 3,
        spanGaps: true,
      })),
    };
  }

  function renderPolicy(d) {
    const p = d.policy;
    const advice = document.getElementById('advice');
    if (!p) {
      for (const id of ['chart-size', 'chart-ttl']) upsert(id, { type: 'line', data: { labels: [], datasets: [] }, options: {} });
      advice.innerHTML =
        '<p>Waiting for the first simulation of the live trace window.</p>' +
        `<p class="muted">${num(d.trace.sampled)} samples so far at rate ${d.trace.sampleRate}.</p>`;
      return;
    }
    const rec = p.recommended;
    const yAxis = { title: { display: true, text: 'J per hour' }, beginAtZero: false };
    // Cost over memory size: one line per memory TTL, at the recommended global TTL.
    const sameGlobal = p.grid.filter((g) => g.globalTtlMs === rec.globalTtlMs);
    const size = curve(
      sameGlobal,
      (g) => g.memoryBytes,
      bytes,
      (g) => g.memoryTtlMs,
      (t) => `TTL ${duration(t)}`,
      (a, b) => a - b,
    );
    size.datasets.push(...markers((s) => bytes(s.memoryBytes), p));
    upsert('chart-size', {
      type: 'line',
      data: size,
      options: {
        scales: { x: { title: { display: true, text: 'memory tier size' } }, y: yAxis },
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 10 } } },
      },
    });
    // Cost over memory TTL at the recommended size: one line per global TTL.
    const sameSize = p.grid.filter((g) => g.memoryBytes === rec.memoryBytes);
    const ttl = curve(
      sameSize,
      (g) => g.memoryTtlMs || Infinity,
      (t) => duration(t === Infinity ? 0 : t),
      (g) => g.globalTtlMs,
      (t) => (t === null ? 'no global tier' : `global ${duration(t)}`),
      (a, b) => a - b,
    );
    ttl.datasets.push(...markers((s) => duration(s.memoryTtlMs), p));
    document.getElementById('ttl-sub').textContent = `(J/h at ${bytes(rec.memoryBytes)})`;
    upsert('chart-ttl', {
      type: 'line',
      data: ttl,
      options: {
        scales: { x: { title: { display: true, text: 'memory TTL' } }, y: yAxis },
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 10 } } },
      },
    });
    const row = (name, r) =>
      `<tr><th>${name}</th><td>${bytes(r.memoryBytes)} · ${duration(r.memoryTtlMs)}<br><span class="muted">global ${r.globalTtlMs === null ? 'no tier' : duration(r.globalTtlMs)}</span></td>` +
      `<td>${pctErr(r.memoryHitRate, r.memoryHitRateError)}<br><span class="muted">${pctErr(r.globalHitRate, r.globalHitRateError)}</span></td>` +
      `<td>${joules(r.costPerHour)}/h${r.costPerHourError > 0 ? `<br><span class="err">±${joules(r.costPerHourError)}/h</span>` : ''}</td></tr>`;
    const saving =
      p.savingFraction > 0
        ? `saves ${pct(p.savingFraction)} (${joules(p.savingPerHour)}/h${p.savingPerHourError > 0 ? ` ±${joules(p.savingPerHourError)}/h` : ''})` +
          (p.significant ? '' : '<br><span class="muted">within its error bar: not a reliable saving at this sample rate (auto-apply waits)</span>')
        : 'current setting is the cheapest';
    advice.innerHTML =
      `<div class="saving">${saving}</div>` +
      '<table><tr><th></th><th>memory size · TTL</th><th>hits mem / global</th><th>cost</th></tr>' +
      row('current', p.current) +
      row('recommended', rec) +
      '</table>' +
      `<p class="muted">Simulated ${num(p.windowRecords)} samples (rate ${p.sampleRate}; ${pct(p.exactShare)} of items from heavy keys traced at rate 1) over ${duration(Math.round(p.windowSpanMs))}, at ${new Date(p.computedAt).toLocaleTimeString('en-GB')}. ` +
      '± is the 95 % error bar of the sample. ' +
      `Auto-apply of TTLs is ${d.setting.autoApply ? 'on' : 'off'}. Cost = compute + storage + serving energy (docs/CACHE-POLICY.md).</p>`;
  }

  function renderSummary(d) {
    const p = d.policy;
    const parts = [`running: <b>${setting(d.setting)}</b>`];
    if (p) {
      // Like for like: measured and simulated over the same window of trace records and the same models
      // (text and image alike); joins and repeats within a call count as memory hits on both sides.
      const all = p.measured.allKeys;
      const sampled = p.measured.sampledKeys;
      parts.push(
        `window: <b>${duration(Math.round(p.windowSpanMs))}</b>, ${p.models.join(', ')}`,
        `memory hits, measured (all keys): <b id="measured-all">${all ? pct(all.memoryHitRate) : '–'}</b>`,
        `measured (sampled keys): <b id="measured-sampled">${pct(sampled.memoryHitRate)}</b>`,
        `simulated (running setting): <b id="simulated">${pctErr(p.current.memoryHitRate, p.current.memoryHitRateError)}</b>`,
      );
      if (p.current.globalHitRate > 0 || (all && all.globalHitRate > 0))
        parts.push(
          `global hits, measured / simulated: <b>${all ? pct(all.globalHitRate) : '–'} / ${pctErr(p.current.globalHitRate, p.current.globalHitRateError)}</b>`,
        );
    } else {
      parts.push('<span class="muted">measured and simulated rates appear with the first simulation of the window</span>');
    }
    parts.push(
      `trace: <b>${num(d.trace.sampled)}</b> samples at ${d.trace.sampleRate}${d.trace.heavyKeys ? ` (+${num(d.trace.heavyKeys)} heavy keys at 1)` : ''}${d.trace.dropped ? `, ${num(d.trace.dropped)} dropped` : ''}`,
    );
    document.getElementById('summary').innerHTML = parts.map((x) => `<span>${x}</span>`).join('');
  }

  async function refresh() {
    try {
      const res = await fetch('/dashboard/data.json', { headers });
      if (!res.ok) {
        document.getElementById('summary').textContent = `data.json: HTTP ${res.status}`;
        return;
      }
      const d = await res.json();
      window.__polyray.data = d;
      renderSummary(d);
      renderUsage(d);
      renderHistory(d);
      renderHits(d);
      renderPolicy(d);
      window.__polyray.renders++;
      document.body.dataset.ready = 'true';
    } catch (e) {
      document.getElementById('summary').textContent = `could not load data: ${e.message}`;
    }
  }

  refresh();
  if (REFRESH_MS > 0) setInterval(refresh, REFRESH_MS);
})();
