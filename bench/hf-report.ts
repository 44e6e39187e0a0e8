/**
 * The "Hugging Face folders" section of bench/RESULTS.md, from bench/hf-results.json (written by
 * bench/hf-bench.ts). The section sits between markers so `npm run bench` (which rewrites the rest of
 * the file) and `npm run bench:hf` each keep the other's part.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { Latency } from './load.ts';
import type { ProbeResult } from './transformer.ts';

export interface TokenizeRow {
  tokenizer: string;
  /** Mean tokens per text. */
  tokens: number;
  /** 0: the event loop tokenises; 1: a tokenizer thread. */
  threads: number;
  items: number;
  /** Event-loop busy time per item, in microseconds. */
  loopUsPerItem: number;
  itemsPerS: number;
}

export interface HfResults {
  conditions: {
    startedAt: string;
    wallSeconds: number;
    git: string;
    host: { cpuModel: string; cores: number; availableParallelism: number; memTotalGiB: number; kernel: string };
    node: string;
    quick: boolean;
    transformersJs: string;
    tokenizers: string;
    onnxruntime: string;
  };
  folder: { name: string; layers: number; hidden: number; maxSeq: number; minCosineVsPeer: number };
  tokenize: TokenizeRow[];
  flood: { threads: number; refusalsPerS: number; firstError: string; mainThreadCores: number; probe: ProbeResult }[];
  loads: { server: string; tokens: number; concurrency: number; itemsPerS: number; latencyMs: Latency; errors: number; serviceCores: number }[];
}

const f1 = (x: number): string => x.toFixed(1);

export function renderHfSection(r: HfResults): string {
  const c = r.conditions;
  const lines: string[] = [
    '## Hugging Face folders (issue 22): tokenisation off the event loop, a BERT-small folder vs transformers.js',
    '',
    `Measured ${c.startedAt} by \`npm run bench:hf\`${c.quick ? ' --quick' : ''} (${f1(c.wallSeconds)} s) on ${c.host.cpuModel}, ${c.host.cores} cores, ` +
      `Node ${c.node}, onnxruntime-node ${c.onnxruntime}, @huggingface/tokenizers ${c.tokenizers}, transformers.js ${c.transformersJs}; source ${c.git}. ` +
      'Load generator and services share the machine.',
    '',
    '### Tokenisation cost on the event loop, per item',
    '',
    'Batches of 16 texts, 4 batches in flight; event-loop busy time (`performance.eventLoopUtilization`) over the items tokenised. ' +
      '`threads 0` is the behaviour before (the event loop tokenises); `threads 1` is the default now (`POLYRAY_TOKENIZER_THREADS`).',
    '',
    '| tokenizer | tokens/text | event loop µs/item, threads 0 | event loop µs/item, threads 1 | × less on the loop | items/s, threads 0 | items/s, threads 1 |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const groups = new Map<string, TokenizeRow[]>();
  for (const row of r.tokenize) {
    const k = `${row.tokenizer}|${row.tokens}`;
    groups.set(k, [...(groups.get(k) ?? []), row]);
  }
  for (const rows of groups.values()) {
    const a = rows.find((x) => x.threads === 0);
    const b = rows.find((x) => x.threads === 1);
    if (!a || !b) continue;
    lines.push(
      `| ${a.tokenizer} | ${a.tokens} | ${f1(a.loopUsPerItem)} | ${f1(b.loopUsPerItem)} | ${f1(a.loopUsPerItem / b.loopUsPerItem)} | ${a.itemsPerS.toFixed(0)} | ${b.itemsPerS.toFixed(0)} |`,
    );
  }
  lines.push(
    '',
    '### A flood of over-long texts while cached embeddings are asked for',
    '',
    `16 clients send ~60 KB texts to \`${r.folder.name}\` (refused with INPUT_TOO_LARGE once tokenised: > ${r.folder.maxSeq} tokens) while a probe asks for ` +
      'one cached embedding every 20 ms (50/s, open loop).',
    '',
    '| tokenisation | refusals/s | service main thread (cores) | probe answered | probe p50 ms | probe p90 ms | probe p99 ms | probe max ms |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const f of r.flood) {
    const p = f.probe;
    lines.push(
      `| ${f.threads === 0 ? 'on the event loop (threads 0)' : 'tokenizer thread (threads 1)'} | ${f1(f.refusalsPerS)} | ${f.mainThreadCores.toFixed(2)} | ${p.answered}/${p.sent} | ${f1(p.latencyMs.p50)} | ${f1(p.latencyMs.p90)} | ${f1(p.latencyMs.p99)} | ${f1(p.latencyMs.max)} |`,
    );
  }
  lines.push(
    '',
    `### ${r.folder.name}: Polyray vs transformers.js on the same folder`,
    '',
    `A generated BERT (${r.folder.layers} layers, hidden ${r.folder.hidden}, MiniLM-L6 shape) in the Optimum / sentence-transformers layout: ` +
      '`onnx/model.onnx` with output `last_hidden_state`, `modules.json` with mean pooling and Normalize. Polyray serves the folder as it is (pooling in ' +
      'the inference worker); the peer is transformers.js `pipe(texts, {pooling: "mean", normalize: true})` in a node:http server (bench/peer-server.ts). ' +
      `Cache misses only (every text distinct), one text per request, N closed-loop clients. Vectors agree: min cosine ${r.folder.minCosineVsPeer.toFixed(6)}.`,
    '',
    '| server | tokens/text | N | items/s | p50 ms | p99 ms | errors | service CPU (cores) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const l of r.loads) {
    lines.push(
      `| ${l.server} | ${l.tokens} | ${l.concurrency} | ${f1(l.itemsPerS)} | ${f1(l.latencyMs.p50)} | ${f1(l.latencyMs.p99)} | ${l.errors} | ${l.serviceCores.toFixed(2)} |`,
    );
  }
  return lines.join('\n');
}

/** Puts `body` into `file` between the markers of section `name` (bench/rest-bench.ts and others). */
export function writeSection(file: string, name: string, body: string): void {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const section = `${start}\n${body}\n${end}`;
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  const next = a >= 0 && b > a ? text.slice(0, a) + section + text.slice(b + end.length) : `${text.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}

/** Every marked section in `file` (`<!-- name:start -->` … `<!-- name:end -->`), for a report that rewrites the rest. */
export function keptSections(file: string): string {
  if (!existsSync(file)) return '';
  const text = readFileSync(file, 'utf8');
  const kept: string[] = [];
  for (const m of text.matchAll(/<!-- ([a-z-]+):start -->[\s\S]*?<!-- \1:end -->/g)) kept.push(m[0]);
  return kept.join('\n\n');
}
