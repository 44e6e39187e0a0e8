#!/usr/bin/env -S npx tsx
/**
 * The `polyray` CLI: `serve`, `models build|add`, `clients add|list`, `simulate`, `accounting migrate-books`, `usage report`, `db migrate`.
 */
import { parseFlags } from '../src/cli-args.ts';
import { loadConfig } from '../src/config/index.ts';
import { buildModels } from '../src/models/build.ts';
import { createProgressWriter } from '../src/models/progress.ts';
import { CLIENTS_USAGE, clientsCommand } from '../src/accounting/cli.ts';
import { ACCOUNTING_USAGE, accountingCommand } from '../src/accounting/migrate.ts';
import { createLogger } from '../src/log.ts';
import { USAGE_USAGE, usageCommand } from '../src/usage/cli.ts';

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
${CLIENTS_USAGE}${ACCOUNTING_USAGE}${USAGE_USAGE}`;

async function run(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  if (cmd === 'serve') {
    await import('../src/main.ts');
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
    const { runSimulate } = await import('../src/policy/cli.ts');
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
    const { pullModel } = await import('../src/models/pull.ts');
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
    const { addModel } = await import('../src/models/add.ts');
    await addModel(folder, { modelsDir: values.dir ?? loadConfig().models.dir, name: values.name, out: (s) => process.stdout.write(s) });
    return 0;
  }
  process.stderr.write(USAGE);
  return cmd === undefined || cmd === 'help' || cmd === '--help' ? 0 : 2;
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
