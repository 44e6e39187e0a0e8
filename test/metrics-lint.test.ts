/**
 * `/metrics` follows Prometheus' conventions (issue 25), parsed with a Prometheus text-format parser
 * (parse-prometheus-text-format: families, help, types; it merges a labelled histogram's series into one,
 * so per-series observation counts are read from the `_count` samples) after real traffic: every family has help and a type; counters end in `_total` and only counters do; times are
 * seconds; request duration, queue wait, tier read latency and batch run time are histograms with
 * observations; Node's default process metrics and `polyray_build_info` are there; no means.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import parsePrometheusTextFormat, { type MetricFamily } from 'parse-prometheus-text-format';
import { startPolyray, type TestServer } from './helpers/polyray.ts';

describe('metrics conventions', () => {
  let t: TestServer;
  let families: MetricFamily[];
  let text: string;
  before(async () => {
    t = await startPolyray({ models: { serve: ['text-glove'] } } as never);
    const embed = '{ embed(model: "text-glove", inputs: [{ text: "counted and timed" }, { text: "twice" }]) { dimensions } }';
    for (let i = 0; i < 3; i++) assert.equal((await t.gql(embed)).errors, undefined);
    await fetch(`${t.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'text-glove', input: 'rest too' }),
    });
    text = await (await fetch(`${t.url}/metrics`)).text();
    families = parsePrometheusTextFormat(text);
  });
  after(async () => {
    await t?.stop();
  });

  const family = (name: string): MetricFamily => {
    const f = families.find((x) => x.name === name);
    assert.ok(f, `${name} is exposed`);
    return f;
  };

  test('names, help and types', () => {
    assert.ok(families.length > 40, `${families.length} families`);
    for (const f of families) {
      assert.match(f.name, /^[a-z_][a-z0-9_]*$/, f.name);
      assert.ok(f.help.trim().length > 0, `${f.name} has help`);
      assert.ok(['COUNTER', 'GAUGE', 'HISTOGRAM', 'SUMMARY'].includes(f.type), `${f.name}: ${f.type}`);
      if (f.type === 'COUNTER') assert.match(f.name, /_total$/, `counter ${f.name} ends in _total`);
      // prom-client's own Node.js gauges (nodejs_active_handles_total, …) keep the names it gives them.
      else if (!f.name.startsWith('nodejs_')) assert.doesNotMatch(f.name, /_total$/, `${f.type.toLowerCase()} ${f.name} does not end in _total`);
      assert.doesNotMatch(f.name, /millisecond|_ms$|_mean$/, `${f.name}: times in seconds, distributions as histograms`);
      if (f.type === 'HISTOGRAM') {
        for (const m of f.metrics) assert.ok(m.buckets && '+Inf' in m.buckets, `${f.name} has buckets`);
        assert.match(text, new RegExp(`^${f.name}_sum(\\{|\\s)`, 'm'), `${f.name} has _sum`);
        assert.match(text, new RegExp(`^${f.name}_count(\\{|\\s)`, 'm'), `${f.name} has _count`);
      }
    }
  });

  test('latency histograms with observations', () => {
    const observed = (name: string, labels: Record<string, string> = {}): number => {
      assert.equal(family(name).type, 'HISTOGRAM', `${name} is a histogram`);
      let n = 0;
      for (const line of text.split('\n')) {
        if (!line.startsWith(`${name}_count`)) continue;
        if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) n += Number(line.slice(line.lastIndexOf(' ') + 1));
      }
      return n;
    };
    assert.equal(family('polyray_request_duration_seconds').type, 'HISTOGRAM');
    assert.ok(observed('polyray_request_duration_seconds', { surface: 'graphql', code: 'OK' }) >= 3);
    assert.ok(observed('polyray_request_duration_seconds', { surface: 'openai' }) >= 1);
    assert.ok(observed('polyray_queue_wait_seconds', { model: 'text-glove' }) >= 2, 'queued inputs timed');
    assert.ok(observed('polyray_cache_tier_read_duration_seconds', { tier: 'memory' }) >= 3, 'memory tier reads timed');
    assert.ok(observed('polyray_inference_batch_seconds', { model: 'text-glove' }) >= 1);
    assert.equal(family('polyray_cache_tier_hits_total').type, 'COUNTER');
    assert.ok(Number(family('polyray_cache_tier_hits_total').metrics.find((m) => m.labels?.['tier'] === 'memory')?.value) >= 2);
  });

  test('process metrics and build info', () => {
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes'])
      family(name);
    const info = family('polyray_build_info').metrics[0]!;
    assert.equal(info.value, '1');
    assert.equal(info.labels?.['version'], (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
    assert.equal(info.labels?.['node'], process.version);
  });
});
