/**
 * `polyray clients add|list`: manage the clients file. `add` prints the new key once, on stdout; it is
 * stored only as a hash.
 */
import { parseFlags, positiveNumber } from '../cli-args.ts';
import { parseBudget } from '../usage/budget.ts';
import { addClient, readClientsFileSync, type Role } from './clients.ts';

export const CLIENTS_USAGE = `  clients add --id ID --name NAME [--role admin|client] [--models a,b | --models '*']
              [--rate UNITS_PER_S --burst UNITS] [--weight W] [--priority interactive|batch]
              [--budget UNITS|none [--budget-period month|day|Nd] [--budget-alerts 0.8,0.95]]
              [--replace-keys] [--file PATH]
                                create or update a client and print a new API key (shown once)
  clients list [--file PATH]    list clients (never keys)
`;

export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Runs `clients <sub> ...`; returns the exit code. `defaultFile` is POLYRAY_CLIENTS_FILE. */
export async function clientsCommand(sub: string | undefined, args: string[], defaultFile: string | undefined, io: CliIO): Promise<number> {
  const values = parseFlags(args, {
    strings: ['id', 'name', 'role', 'models', 'rate', 'burst', 'weight', 'priority', 'file', 'budget', 'budget-period', 'budget-alerts'],
    booleans: ['replace-keys'],
  });
  const file = values.file ?? defaultFile;
  if (!file) {
    io.err('no clients file: set POLYRAY_CLIENTS_FILE or pass --file PATH\n');
    return 2;
  }
  if (sub === 'add') {
    if (!values.id) {
      io.err('clients add needs --id ID\n');
      return 2;
    }
    if (values.role !== undefined && values.role !== 'admin' && values.role !== 'client')
      throw new TypeError(`--role must be admin or client, received "${values.role}"`);
    const models =
      values.models === undefined
        ? undefined
        : values.models.trim() === '*'
          ? ('*' as const)
          : values.models
              .split(',')
              .map((m) => m.trim())
              .filter(Boolean);
    if (values.priority !== undefined && values.priority !== 'interactive' && values.priority !== 'batch')
      throw new TypeError(`--priority must be interactive or batch, received "${values.priority}"`);
    const weight = positiveNumber(values.weight, 'weight');
    const rate = positiveNumber(values.rate, 'rate');
    const burst = positiveNumber(values.burst, 'burst');
    if (values.budget === undefined && (values['budget-period'] !== undefined || values['budget-alerts'] !== undefined))
      throw new TypeError('--budget-period and --budget-alerts need --budget UNITS');
    const budget =
      values.budget === undefined || values.budget === 'none' ? values.budget : cliBudget(values.budget, values['budget-period'], values['budget-alerts']);
    const { key, client, created } = await addClient(file, {
      id: values.id,
      ...(values.name !== undefined ? { name: values.name } : {}),
      ...(values.role !== undefined ? { role: values.role as Role } : {}),
      ...(models !== undefined ? { models } : {}),
      ...(rate !== undefined ? { rate } : {}),
      ...(burst !== undefined ? { burst } : {}),
      ...(weight !== undefined ? { weight } : {}),
      ...(values.priority !== undefined ? { priority: values.priority as 'interactive' | 'batch' } : {}),
      ...(budget !== undefined ? { budget } : {}),
      replaceKeys: values['replace-keys'] ?? false,
    });
    io.err(
      `${created ? 'created' : 'updated'} client ${client.id} (${client.role}, models ${client.models === '*' ? '*' : client.models.join(',')}, ` +
        `rate ${client.quota.rate}/s, burst ${client.quota.burst}, ${client.keys.length} key(s)) in ${file}\n` +
        'the API key below is shown once; store it now:\n',
    );
    io.out(`${key}\n`);
    return 0;
  }
  if (sub === 'list') {
    for (const c of readClientsFileSync(file).clients) {
      io.out(`${JSON.stringify({ id: c.id, name: c.name, role: c.role, models: c.models, quota: c.quota, keys: c.keys.length })}\n`);
    }
    return 0;
  }
  io.err(`unknown clients command "${sub ?? ''}"\n${CLIENTS_USAGE}`);
  return 2;
}

/** `--budget`, `--budget-period`, `--budget-alerts` as a clients file `budget`, with errors naming the flags. */
function cliBudget(cost: string, period: string | undefined, alerts: string | undefined): ReturnType<typeof parseBudget> {
  try {
    return parseBudget(
      {
        cost: positiveNumber(cost, 'budget'),
        period: period ?? 'month',
        ...(alerts !== undefined ? { alerts: alerts.split(',').map(Number) } : {}),
      },
      'flags',
    );
  } catch (e) {
    const m = (e as Error).message;
    throw new TypeError(
      m.replace('flags.budget.period', '--budget-period').replace('flags.budget.alerts', '--budget-alerts').replace('flags.budget.cost', '--budget'),
    );
  }
}
