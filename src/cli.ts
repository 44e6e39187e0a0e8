/**
 * The `polyray` CLI: `serve`, `models build|add`, `clients add|list`, `simulate`, `accounting migrate-books`, `usage report`, `db migrate`.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from './cli-args.ts';
import { parseManifest } from './runtime/manifest.ts';
import { loadConfig } from './config/index.ts';
import { buildModels } from './models/build.ts';
import { createProgressWriter } from './models/progress.ts';
import { CLIENTS_USAGE, clientsCommand } from './accounting/cli.ts';
import { ACCOUNTING_USAGE, accountingCommand } from './accounting/migrate.ts';
import { createLogger } from './log.ts';
import { USAGE_USAGE, usageCommand } from './usage/cli.ts';
import { packageVersion } from './version.ts';

const USAGE = `usage: polyray <command>

commands:
  serve                         start the service (same as npm start)
  models build [--force] [--only NAME ...] [--dir DIR]
                                build the bundled models into the models directory
  models pull ORG/NAME [--revision R] [--variant fp32|int8|fp16] [--name NAME] [--dir DIR]
                                download a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN):
                                resumable, checksum-verified, into the models directory
  models add FOLDER [--name NAME] [--dir DIR]
                                inspect a model folder (a Hugging Face export as it is, or one with our
                                manifest), print what it holds, copy it into the models directory
  simulate (--trace LOCATION | --synthetic zipf:...) [--grid ...] [--prices ...] [--json]
                                replay a trace for a grid of cache settings; recommend the cheapest
${CLIENTS_USAGE}${ACCOUNTING_USAGE}${USAGE_USAGE}

  models list [--dir DIR] [--json]
                                the models in the models directory: name, version, modality,
                                dimensions, token limit (what \`serve\` would load)
  schema print [--out FILE]     the subgraph SDL in one file, as \`_service { sdl }\` serves it (for
                                \`rover subgraph check/publish --schema FILE\`)
  help [COMMAND]                this text, or one command's (also \`polyray COMMAND --help\`)
  version                       the version (also \`--version\`)
`;

/** The usage lines of every command whose name starts with `prefix` ("models", "models build"). */
function usageOf(prefix: string): string | undefined {
  const blocks: string[][] = [];
  for (const line of USAGE.split('\n').slice(3)) {
    if (/^ {2}\S/.test(line)) blocks.push([line]);
    else if (line.trim() !== '') blocks.at(-1)?.push(line);
  }
  const matched = blocks.filter((b) => b[0]!.trim() === prefix || b[0]!.trim().startsWith(`${prefix} `));
  return matched.length === 0 ? undefined : `usage:\n${matched.map((b) => b.join('\n')).join('\n')}\n`;
}

/** `models list`: every folder of the models directory with a manifest, or the reason it cannot load. */
function listModels(dir: string, json: boolean): string {
  const rows: Record<string, unknown>[] = [];
  const entries = existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()) : [];
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const file = path.join(dir, e.name, 'manifest.json');
    if (!existsSync(file)) continue;
    try {
      const m = parseManifest(JSON.parse(readFileSync(file, 'utf8')), file);
      rows.push({ name: m.name, version: m.version, modality: m.modality, dimensions: m.dimensions, maxTokens: m.maxTokens, costFactor: m.costFactor });
    } catch (err) {
      rows.push({ name: e.name, error: (err as Error).message.slice(0, 200) });
    }
  }
  if (json) return `${JSON.stringify(rows, null, 2)}\n`;
  if (rows.length === 0) return `no models in ${dir} (npm run models:build builds the bundled ones)\n`;
  const cols = ['name', 'version', 'modality', 'dimensions', 'maxTokens', 'costFactor'] as const;
  const cells = [cols.map(String), ...rows.map((r) => (r['error'] ? [String(r['name']), `invalid: ${String(r['error'])}`] : cols.map((c) => String(r[c]))))];
  const widths = cols.map((_, i) => Math.max(...cells.map((c) => (c[i] ?? '').length)));
  return `${cells.map((c) => c.map((v, i) => (i === c.length - 1 ? v : v.padEnd(widths[i]!))).join('  ')).join('\n')}\n`;
}

async function run(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  const out = (text: string): number => {
    process.stdout.write(text);
    return 0;
  };
  if (cmd === '--version' || cmd === '-v' || cmd === 'version' || argv.includes('--version')) return out(`${packageVersion()}\n`);
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    const topic = cmd === 'help' ? [sub, ...rest].filter(Boolean).join(' ') : '';
    const text = topic ? usageOf(topic) : USAGE;
    if (text) return out(text);
    process.stderr.write(`unknown command "${topic}"\n${USAGE}`);
    return 2;
  }
  // `COMMAND --help` prints that command's usage and does nothing else (`serve --help` starts no server).
  if (argv.includes('--help') || argv.includes('-h')) {
    const words = argv.filter((a) => !a.startsWith('-'));
    for (let n = words.length; n > 0; n--) {
      const text = usageOf(words.slice(0, n).join(' '));
      if (text) return out(text);
    }
    process.stderr.write(`unknown command "${cmd}"\n${USAGE}`);
    return 2;
  }
  if (cmd === 'schema' && sub === 'print') {
    const values = parseFlags(rest, { strings: ['out'] });
    // Exactly what the subgraph answers to `{ _service { sdl } }` (what a router or rover reads from it).
    const { buildSchema } = await import('./resolvers/index.ts');
    const { graphql } = await import('graphql');
    const { schemaOptionsOf } = await import('./resolvers/demand-control.ts');
    const res = await graphql({ schema: buildSchema(schemaOptionsOf(loadConfig())), source: '{ _service { sdl } }' });
    const sdl = `${(res.data as { _service: { sdl: string } })._service.sdl.trim()}\n`;
    if (values.out === undefined) return out(sdl);
    writeFileSync(values.out, sdl);
    process.stderr.write(`wrote the subgraph SDL to ${values.out}\n`);
    return 0;
  }
  if (cmd === 'models' && sub === 'list') {
    const values = parseFlags(rest, { strings: ['dir'], booleans: ['json'] });
    return out(listModels(values.dir ?? loadConfig().models.dir, values.json ?? false));
  }
  if (cmd === 'serve') {
    await import('./main.ts');
    return -1;
  }
  if (cmd === 'clients') {
    return clientsCommand(sub, rest, loadConfig().accounting.clientsFile, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
  }
  if (cmd === 'accounting') {
    return accountingCommand(sub, rest, loadConfig().accounting, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
  }
  if (cmd === 'usage' || cmd === 'db') {
    const config = loadConfig();
    return usageCommand(cmd, sub, rest, config, createLogger(config.log.level === 'info' ? 'warn' : config.log.level), {
      out: (s) => process.stdout.write(s),
      err: (s) => process.stderr.write(s),
    });
  }
  if (cmd === 'simulate') {
    const { runSimulate } = await import('./policy/cli.ts');
    await runSimulate(argv.slice(1), loadConfig(), { out: (s) => process.stdout.write(s) });
    return 0;
  }
  if (cmd === 'models' && sub === 'build') {
    const values = parseFlags(rest, { strings: ['dir'], lists: ['only'], booleans: ['force'] });
    const config = loadConfig();
    const modelsDir = values.dir ?? config.models.dir;
    const bar = createProgressWriter({ stream: process.stderr });
    const summary = await buildModels({ modelsDir, force: values.force ?? false, ...(values.only ? { only: values.only } : {}), onProgress: bar.update });
    bar.finish();
    for (const s of summary) console.log(JSON.stringify(s));
    return 0;
  }
  if (cmd === 'models' && sub === 'pull') {
    const [repo, ...flags] = rest;
    if (!repo || repo.startsWith('--')) throw new TypeError('models pull needs a repository: polyray models pull org/name [--variant int8]');
    const values = parseFlags(flags, { strings: ['revision', 'variant', 'name', 'dir'] });
    if (values.variant !== undefined && !['fp32', 'int8', 'fp16'].includes(values.variant))
      throw new TypeError(`--variant must be fp32, int8 or fp16, received "${values.variant}"`);
    const config = loadConfig();
    const { pullModel } = await import('./models/pull.ts');
    const bar = createProgressWriter({ stream: process.stderr });
    await pullModel({
      repo,
      revision: values.revision,
      variant: values.variant as 'fp32' | 'int8' | 'fp16' | undefined,
      name: values.name,
      modelsDir: values.dir ?? config.models.dir,
      hubUrl: config.models.hubEndpoint,
      token: config.models.hubToken,
      onProgress: bar.update,
      out: (s) => process.stdout.write(s),
    }).finally(() => bar.finish());
    return 0;
  }
  if (cmd === 'models' && sub === 'add') {
    const [folder, ...flags] = rest;
    if (!folder || folder.startsWith('--')) throw new TypeError('models add needs a FOLDER: polyray models add ./my-model [--name NAME]');
    const values = parseFlags(flags, { strings: ['name', 'dir'] });
    const { addModel } = await import('./models/add.ts');
    await addModel(folder, { modelsDir: values.dir ?? loadConfig().models.dir, name: values.name, out: (s) => process.stdout.write(s) });
    return 0;
  }
  process.stderr.write(`unknown command "${[cmd, sub].filter(Boolean).join(' ')}"\n${USAGE}`);
  return 2;
}

run(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  },
);
