/**
 * Packaging (docs/DEPLOY.md): the Dockerfile, deploy/compose.yaml and the Kubernetes manifests in deploy/k8s.
 *
 * The manifests are linted for what decides whether a replica serves and drains: every YAML under deploy/ is
 * parsed; each environment is validated by the service's own `loadConfig` on top of the image's ENV (so the
 * grace period, port and clients file are the values the service would use); probes, the preStop/grace
 * arithmetic, requests, HPA, PDB, Service, Secret mount and the GPU variant are checked against each other.
 *
 * The image's build is then run without a container runtime, from the Dockerfile itself: the stages the
 * runtime stage needs are run in order, one clean folder per stage standing for its WORKDIR; COPY copies from
 * the working tree (its sources are checked against .dockerignore above) or from an earlier stage's folder, RUN lines
 * run as written with the stage's ARG and ENV, offline from the npm cache. The runtime folder's CMD is then
 * started with the runtime stage's ENV (HOST, PORT and the clients file moved to loopback and a temporary
 * file), must answer /healthz, /readyz and an authenticated embedding, pass the HEALTHCHECK command, and exit 0
 * on SIGTERM. One substitution, to save about 40 s and 1.8 GB of writes: the build stage's full `npm ci` is
 * the checkout's node_modules, linked — CI has just made it with `npm ci` from the same lockfile. The
 * production `npm ci --omit=dev` runs for real, as it decides whether the service runs without devDependencies.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { parseClientsFile } from '../src/accounting/clients.ts';
import { loadConfig, type PolyrayConfig } from '../src/config/index.ts';
import { freePort } from './helpers/redis-server.ts';

const run = promisify(execFile);
const ROOT = process.cwd();
const DEPLOY = path.join(ROOT, 'deploy');
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/**
 * What a stopping replica may take beyond POLYRAY_SHUTDOWN_GRACE_MS: the last-resort timer at grace + 5 s,
 * then a book flush bounded to 2 s (src/main.ts, docs/OPERATIONS.md "Shutdown").
 */
const SHUTDOWN_TAIL_S = 5 + 2;

// ---------------------------------------------------------------------------------------------------------
// The Dockerfile, parsed: enough of the format for this one file (continuations, comments, flags, ARG/ENV).

interface Instruction {
  op: string;
  flags: Record<string, string>;
  rest: string;
  line: number;
}

interface Stage {
  name: string;
  /** The FROM argument with global ARGs expanded: an image, or an earlier stage's name. */
  base: string;
  instructions: Instruction[];
}

interface Dockerfile {
  globalArgs: Record<string, string>;
  stages: Stage[];
}

function expand(s: string, vars: Record<string, string | undefined>): string {
  return s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a: string | undefined, b: string | undefined) => vars[(a ?? b)!] ?? '');
}

function parseInstruction(text: string, line: number): Instruction {
  const m = /^(\w+)\s*(.*)$/s.exec(text);
  assert.ok(m, `Dockerfile line ${line}: cannot read "${text}"`);
  const op = m[1]!.toUpperCase();
  let rest = m[2]!;
  const flags: Record<string, string> = {};
  if (['COPY', 'RUN', 'HEALTHCHECK', 'FROM'].includes(op)) {
    for (let f = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest); f; f = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest)) {
      flags[f[1]!] = f[2] ?? '';
      rest = rest.slice(f[0].length);
    }
  }
  return { op, flags, rest: rest.trim(), line };
}

function parseDockerfile(text: string): Dockerfile {
  const logical: { text: string; line: number }[] = [];
  let buf = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const t = raw.trim();
    if (t.startsWith('#') || (buf === '' && t === '')) return; // comments, also inside a continuation
    if (buf === '') start = i + 1;
    if (t.endsWith('\\')) {
      buf += `${t.slice(0, -1)} `;
      return;
    }
    logical.push({ text: buf + t, line: start });
    buf = '';
  });
  const df: Dockerfile = { globalArgs: {}, stages: [] };
  for (const { text: t, line } of logical) {
    const ins = parseInstruction(t, line);
    if (ins.op === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.rest);
      assert.ok(m, `Dockerfile line ${line}: FROM image [AS name]`);
      df.stages.push({ name: m[2] ?? String(df.stages.length), base: expand(m[1]!, df.globalArgs), instructions: [] });
    } else if (df.stages.length === 0) {
      assert.equal(ins.op, 'ARG', `Dockerfile line ${line}: only ARG may come before the first FROM`);
      const [k, v = ''] = ins.rest.split('=', 2) as [string, string?];
      df.globalArgs[k] = v;
    } else df.stages.at(-1)!.instructions.push(ins);
  }
  return df;
}

const stageOf = (df: Dockerfile, name: string): Stage => {
  const s = df.stages.find((x) => x.name === name);
  assert.ok(s, `Dockerfile has no stage "${name}"`);
  return s;
};

const workdirOf = (stage: Stage): string => stage.instructions.find((i) => i.op === 'WORKDIR')?.rest ?? '/';

/** The stage whose own lines made the absolute path `p` of `stage`, following COPY --from (one source each). */
function producer(df: Dockerfile, stage: Stage, p: string): Stage {
  for (const ins of [...stage.instructions].reverse()) {
    if (ins.op !== 'COPY' || !ins.flags['from']) continue;
    const { from, srcs, dest } = copyArgs(ins);
    const destAbs = path.posix.resolve(workdirOf(stage), dest);
    if (srcs.length !== 1 || (p !== destAbs && !p.startsWith(`${destAbs}/`))) continue;
    const fromStage = stageOf(df, from!);
    return producer(df, fromStage, path.posix.join(path.posix.resolve(workdirOf(fromStage), srcs[0]!), path.posix.relative(destAbs, p)));
  }
  return stage;
}

/** ENV KEY=VALUE pairs of a stage, in order. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const ins of stage.instructions.filter((i) => i.op === 'ENV')) {
    assert.match(ins.rest, /^(\w+=("[^"]*"|\S*)\s*)+$/, `Dockerfile line ${ins.line}: ENV in KEY=VALUE form`);
    for (const m of ins.rest.matchAll(/(\w+)=("([^"]*)"|\S*)/g)) env[m[1]!] = m[3] ?? m[2]!;
  }
  return env;
}

/** `COPY [--from=S] src... dest`, split. */
function copyArgs(ins: Instruction): { from?: string; srcs: string[]; dest: string } {
  const parts = ins.rest.split(/\s+/);
  assert.ok(parts.length >= 2, `Dockerfile line ${ins.line}: COPY src... dest`);
  return { ...(ins.flags['from'] ? { from: ins.flags['from'] } : {}), srcs: parts.slice(0, -1), dest: parts.at(-1)! };
}

/** The JSON array of an exec-form CMD (HEALTHCHECK's after its flags). */
function execForm(ins: Instruction | undefined, what: string): string[] {
  assert.ok(ins, `${what} is missing`);
  const json = ins.op === 'HEALTHCHECK' ? ins.rest.replace(/^CMD\s+/, '') : ins.rest;
  assert.ok(json.startsWith('['), `${what} must be in exec form (["node", ...]): a shell as PID 1 does not pass SIGTERM on`);
  const argv = JSON.parse(json) as string[];
  assert.ok(Array.isArray(argv) && argv.length > 0 && argv.every((a) => typeof a === 'string'), `${what}: a JSON array of strings`);
  return argv;
}

/** .dockerignore, as Docker reads it: globs over context-relative paths, a matching folder covers its contents, the last match wins. */
function dockerignore(text: string): (rel: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const glob = path.posix.normalize((negate ? l.slice(1) : l).replace(/^\/+/, ''));
      const re = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*\*|\*|\?/g, (t) => (t === '**' ? '.*' : t === '*' ? '[^/]*' : '[^/]'));
      return { negate, re: new RegExp(`^${re}(/.*)?$`) };
    });
  return (rel) => {
    let ignored = false;
    for (const r of rules) if (r.re.test(rel)) ignored = !r.negate;
    return ignored;
  };
}

// ---------------------------------------------------------------------------------------------------------
// YAML helpers.

type Obj = Record<string, unknown>;
const obj = (v: unknown, what: string): Obj => {
  assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v), `${what} must be a mapping`);
  return v as Obj;
};
const arr = (v: unknown, what: string): unknown[] => {
  assert.ok(Array.isArray(v), `${what} must be a list`);
  return v;
};

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? yamlFiles(path.join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [path.join(dir, e.name)] : [],
  );
}

function loadDocs(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { merge: true });
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) {
    assert.deepEqual(
      d.errors.map((e) => e.message),
      [],
      path.relative(ROOT, file),
    );
    assert.deepEqual(
      d.warnings.map((e) => e.message),
      [],
      path.relative(ROOT, file),
    );
  }
  return list.map((d) => d.toJS() as Obj).filter((d) => d !== null);
}

/** `20s`, `1m30s` (compose durations) in seconds. */
function seconds(d: string): number {
  let total = 0;
  for (const m of d.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  assert.ok(total > 0, `duration "${d}"`);
  return total;
}

const subset = (small: Obj, big: Obj): boolean => Object.entries(small).every(([k, v]) => big[k] === v);

// ---------------------------------------------------------------------------------------------------------

const DF = parseDockerfile(read('Dockerfile'));
const RUNTIME = DF.stages.at(-1)!;
const IMAGE_ENV = envOf(RUNTIME);
const IMAGE_UID = Number(
  [...RUNTIME.instructions]
    .reverse()
    .find((i) => i.op === 'USER')
    ?.rest.split(':')[0],
);
const WORKDIR = workdirOf(RUNTIME);
const GPU = DF.stages.find((s) => s.name === 'runtime-gpu');
/** The configuration a replica would run with: its image's ENV under `env` (as a container runtime lays them). */
const configWith = (env: Record<string, string>, imageEnv = IMAGE_ENV): PolyrayConfig => loadConfig({ ...imageEnv, ...env });

describe('Dockerfile', () => {
  test('the default target is the runtime stage: numeric non-root USER, exec-form CMD, HEALTHCHECK on a probe route', () => {
    assert.equal(RUNTIME.name, 'runtime');
    assert.ok(
      Number.isInteger(IMAGE_UID) && IMAGE_UID > 0,
      `USER must be a numeric uid > 0 (Kubernetes' runAsNonRoot can verify only numbers), got ${IMAGE_UID}`,
    );
    assert.deepEqual(
      execForm(
        RUNTIME.instructions.find((i) => i.op === 'CMD'),
        'CMD',
      ).slice(0, 2),
      ['node', 'dist/main.js'],
    );
    const hc = RUNTIME.instructions.find((i) => i.op === 'HEALTHCHECK');
    assert.match(execForm(hc, 'HEALTHCHECK').join(' '), /\/(readyz|healthz)/);
    assert.ok(hc!.flags['start-period'], 'HEALTHCHECK --start-period covers model loading');
    assert.ok(
      RUNTIME.instructions.some((i) => i.op === 'EXPOSE' && i.rest === IMAGE_ENV['PORT']),
      'EXPOSE the PORT the image sets',
    );
    assert.ok(!RUNTIME.instructions.some((i) => i.op === 'RUN'), 'nothing is built in the runtime stage');
  });

  test('production dependencies come from `npm ci --omit=dev`; models and dist/ from the build stage', () => {
    const made = (p: string): Stage => producer(DF, RUNTIME, path.posix.join(WORKDIR, p));
    const deps = made('node_modules');
    assert.ok(
      deps.instructions.some((i) => i.op === 'RUN' && /\bnpm ci\b[^;&|]*--omit=dev/.test(i.rest)),
      `stage ${deps.name}, where node_modules comes from, runs npm ci --omit=dev`,
    );
    const build = made('models');
    assert.notEqual(build.name, RUNTIME.name);
    assert.ok(
      build.instructions.some((i) => i.op === 'RUN' && /\bmodels build\b/.test(i.rest)),
      `stage ${build.name} builds the models`,
    );
    assert.equal(made('dist').name, build.name);
    assert.equal(IMAGE_ENV['POLYRAY_BUILD_MISSING'], 'false', 'the image never builds models at run time');
    assert.equal(IMAGE_ENV['NODE_ENV'], 'production');
    // The one writable folder (trace files without Redis) belongs to the image's user.
    const cache = RUNTIME.instructions.find((i) => i.op === 'COPY' && copyArgs(i).dest.replace(/\/$/, '') === './.cache');
    assert.equal(cache?.flags['chown'], `${IMAGE_UID}:${IMAGE_UID}`);
  });

  test('every npm ci runs after .npmrc is in place (onnxruntime-node-install=skip)', () => {
    assert.match(read('.npmrc'), /^onnxruntime-node-install=skip$/m);
    for (const stage of DF.stages) {
      let npmrc = false;
      for (const ins of stage.instructions) {
        if (ins.op === 'COPY' && !ins.flags['from'] && copyArgs(ins).srcs.includes('.npmrc')) npmrc = true;
        if (ins.op === 'RUN' && /\bnpm ci\b/.test(ins.rest)) assert.ok(npmrc, `Dockerfile line ${ins.line}: npm ci before COPY .npmrc`);
      }
    }
  });

  test('.dockerignore lets in every COPY source and keeps node_modules, dist, models and .git out', () => {
    const ignored = dockerignore(read('.dockerignore'));
    for (const stage of DF.stages)
      for (const ins of stage.instructions.filter((i) => i.op === 'COPY' && !i.flags['from']))
        for (const src of copyArgs(ins).srcs) {
          assert.ok(existsSync(path.join(ROOT, src)), `Dockerfile line ${ins.line}: ${src} exists`);
          assert.ok(!ignored(src), `Dockerfile line ${ins.line}: ${src} is excluded by .dockerignore`);
        }
    for (const p of ['node_modules', 'dist', 'models', '.git', 'node_modules/typescript/package.json']) assert.ok(ignored(p), `${p} stays out of the context`);
  });

  test('runtime-gpu: the runtime image on CUDA 12, with Node and the CUDA EP binaries; the rest in step with runtime', () => {
    assert.ok(GPU, 'a runtime-gpu stage');
    assert.match(GPU.base, /^nvidia\/cuda:12\.[\d.]+-cudnn-runtime-/);
    assert.ok(
      GPU.instructions.some((i) => i.op === 'COPY' && /\/node$/.test(i.rest)),
      'the CUDA image gets the node binary',
    );
    assert.ok(
      GPU.instructions.some((i) => i.op === 'RUN' && /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install/.test(i.rest)),
    );
    for (const p of ['node_modules', 'dist', 'models', 'schema'])
      assert.equal(producer(DF, GPU, path.posix.join(WORKDIR, p)).name, producer(DF, RUNTIME, path.posix.join(WORKDIR, p)).name, p);
    const same = (st: Stage): string[] =>
      st.instructions.filter((i) => ['WORKDIR', 'USER', 'EXPOSE', 'HEALTHCHECK', 'CMD'].includes(i.op)).map((i) => `${i.op} ${i.rest}`);
    assert.deepEqual(same(GPU), same(RUNTIME));
    const { POLYRAY_PROVIDERS, ...rest } = envOf(GPU);
    assert.deepEqual(rest, IMAGE_ENV);
    assert.equal(POLYRAY_PROVIDERS?.split(',')[0], 'cuda');
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('deploy/: compose and Kubernetes manifests', () => {
  const files = yamlFiles(DEPLOY);
  const k8s = files.filter((f) => f.includes(`${path.sep}k8s${path.sep}`)).flatMap((f) => loadDocs(f).map((doc) => ({ file: f, doc })));
  const kind = (k: string): { file: string; doc: Obj }[] => k8s.filter((x) => x.doc['kind'] === k);
  const meta = (d: Obj): Obj => obj(d['metadata'], 'metadata');
  const podSpec = (d: Obj): Obj => obj(obj(obj(d['spec'], 'spec')['template'], 'template')['spec'], 'pod spec');
  const podLabels = (d: Obj): Obj => obj(obj(obj(obj(d['spec'], 'spec')['template'], 'template')['metadata'], 'template metadata')['labels'], 'labels');
  const container = (d: Obj): Obj => {
    const cs = arr(podSpec(d)['containers'], 'containers');
    return obj(
      cs.find((c) => obj(c, 'container')['name'] === 'polyray'),
      'container polyray',
    );
  };
  /** A container's env as the service sees it; optional secret references are left out (absent secret). */
  const containerEnv = (c: Obj): Record<string, string> => {
    const env: Record<string, string> = {};
    for (const e of arr(c['env'] ?? [], 'env').map((x) => obj(x, 'env entry'))) {
      if (typeof e['value'] === 'string') env[e['name'] as string] = e['value'];
      else assert.equal(obj(obj(e['valueFrom'], 'valueFrom')['secretKeyRef'], 'secretKeyRef')['optional'], true, `${e['name']}: only optional references`);
    }
    return env;
  };

  test('every YAML file under deploy/ parses, and every manifest names its kind', () => {
    assert.ok(files.length >= 10, `found ${files.length}`);
    for (const f of files) loadDocs(f);
    const known: Record<string, string> = {
      Deployment: 'apps/v1',
      Service: 'v1',
      Secret: 'v1',
      HorizontalPodAutoscaler: 'autoscaling/v2',
      PodDisruptionBudget: 'policy/v1',
      Kustomization: 'kustomize.config.k8s.io/v1beta1',
    };
    for (const { file, doc } of k8s) {
      assert.equal(doc['apiVersion'], known[doc['kind'] as string], `${path.relative(ROOT, file)}: ${doc['kind']}`);
      if (doc['kind'] !== 'Kustomization') assert.ok(meta(doc)['name'], `${path.relative(ROOT, file)}: metadata.name`);
      else for (const r of arr(doc['resources'], 'resources')) assert.ok(existsSync(path.join(path.dirname(file), r as string)), `${file}: ${r}`);
    }
  });

  test('Deployments: probes, drain arithmetic, requests, non-root, a valid configuration', () => {
    const deployments = kind('Deployment');
    assert.equal(deployments.length, 2, 'the CPU Deployment and its GPU variant');
    for (const { file, doc } of deployments) {
      const where = path.relative(ROOT, file);
      const c = container(doc);
      const config = configWith(containerEnv(c));
      const ports = arr(c['ports'], 'ports').map((p) => obj(p, 'port'));
      const http = ports.find((p) => p['containerPort'] === config.http.port);
      assert.ok(http, `${where}: a containerPort is the service's PORT (${config.http.port})`);
      const probePort = (probe: string): void => {
        const get = obj(obj(c[probe], probe)['httpGet'], `${probe}.httpGet`);
        assert.ok(get['port'] === http['name'] || get['port'] === http['containerPort'], `${where}: ${probe} on the container port`);
      };
      assert.equal(obj(obj(c['readinessProbe'], 'readinessProbe')['httpGet'], 'httpGet')['path'], '/readyz', where);
      assert.equal(obj(obj(c['livenessProbe'], 'livenessProbe')['httpGet'], 'httpGet')['path'], '/healthz', where);
      probePort('readinessProbe');
      probePort('livenessProbe');
      if (c['startupProbe']) probePort('startupProbe');

      // SIGTERM comes after preStop; the kubelet kills at terminationGracePeriodSeconds counted from preStop's start.
      const preStop = obj(obj(c['lifecycle'], 'lifecycle')['preStop'], 'preStop');
      const command = preStop['exec'] ? arr(obj(preStop['exec'], 'exec')['command'], 'command') : undefined;
      if (command) assert.equal(command[0], 'sleep', `${where}: preStop runs sleep`);
      const sleepS = command ? Number(command[1]) : Number(obj(preStop['sleep'], 'sleep')['seconds']);
      assert.ok(sleepS >= 2, `${where}: preStop sleeps while the endpoints drop the pod`);
      const grace = podSpec(doc)['terminationGracePeriodSeconds'] as number;
      assert.ok(containerEnv(c)['POLYRAY_SHUTDOWN_GRACE_MS'], `${where}: POLYRAY_SHUTDOWN_GRACE_MS is set where the arithmetic can see it`);
      const need = sleepS + config.shutdownGraceMs / 1000 + SHUTDOWN_TAIL_S;
      assert.ok(
        grace > need,
        `${where}: terminationGracePeriodSeconds ${grace} > preStop ${sleepS} s + grace ${config.shutdownGraceMs / 1000} s + ${SHUTDOWN_TAIL_S} s`,
      );

      const requests = obj(obj(c['resources'], 'resources')['requests'], 'requests');
      assert.ok(requests['cpu'] && requests['memory'], `${where}: cpu and memory requests`);
      const sc = obj(podSpec(doc)['securityContext'], 'securityContext');
      assert.equal(sc['runAsNonRoot'], true, where);
      assert.equal(sc['runAsUser'], IMAGE_UID, `${where}: the image's uid`);
      assert.ok(
        subset(obj(obj(obj(doc['spec'], 'spec')['selector'], 'selector')['matchLabels'], 'matchLabels'), podLabels(doc)),
        `${where}: selector matches the pods`,
      );

      // Read-only root: the folders the service or Node may write are volumes.
      if (obj(c['securityContext'], 'securityContext')['readOnlyRootFilesystem']) {
        const mounts = arr(c['volumeMounts'], 'volumeMounts').map((m) => obj(m, 'mount')['mountPath']);
        for (const dir of ['/tmp', path.posix.join(WORKDIR, '.cache')]) assert.ok(mounts.includes(dir), `${where}: ${dir} is writable`);
      }
    }
  });

  test('the clients file is the Secret, mounted where POLYRAY_CLIENTS_FILE points, and the template is a valid clients file', () => {
    const [secret, ...more] = kind('Secret');
    assert.ok(secret && more.length === 0, 'one Secret');
    const data = obj(secret.doc['stringData'] ?? secret.doc['data'], 'Secret data');
    for (const { file, doc } of kind('Deployment')) {
      const where = path.relative(ROOT, file);
      const c = container(doc);
      const clientsFile = configWith(containerEnv(c)).accounting.clientsFile;
      assert.ok(clientsFile, `${where}: a clients file is configured`);
      const mount = arr(c['volumeMounts'], 'volumeMounts')
        .map((m) => obj(m, 'mount'))
        .find((m) => m['mountPath'] === path.posix.dirname(clientsFile));
      assert.ok(mount, `${where}: a volume is mounted at ${path.posix.dirname(clientsFile)}`);
      assert.equal(mount['subPath'], undefined, `${where}: no subPath (it would never see the Secret change)`);
      const volume = arr(podSpec(doc)['volumes'], 'volumes')
        .map((v) => obj(v, 'volume'))
        .find((v) => v['name'] === mount['name']);
      const ref = obj(volume?.['secret'], `${where}: the mounted volume is a Secret`);
      assert.equal(ref['secretName'], meta(secret.doc)['name']);
      const item = arr(ref['items'] ?? [], 'items')
        .map((i) => obj(i, 'item'))
        .find((i) => i['path'] === path.posix.basename(clientsFile));
      const key = (item?.['key'] as string | undefined) ?? path.posix.basename(clientsFile);
      assert.ok(key in data, `${where}: the Secret has key ${key}`);
      const text = secret.doc['stringData'] ? (data[key] as string) : Buffer.from(data[key] as string, 'base64').toString();
      parseClientsFile(JSON.parse(text), 'deploy/k8s/secret.yaml');
    }
  });

  test('HPA scales the CPU Deployment on CPU; PDBs and the Service select the pods', () => {
    const deployments = kind('Deployment').map((x) => x.doc);
    const [hpa, ...more] = kind('HorizontalPodAutoscaler').map((x) => x.doc);
    assert.ok(hpa && more.length === 0);
    const spec = obj(hpa['spec'], 'hpa spec');
    const target = obj(spec['scaleTargetRef'], 'scaleTargetRef');
    assert.equal(target['kind'], 'Deployment');
    assert.equal(target['apiVersion'], 'apps/v1');
    const scaled = deployments.find((d) => meta(d)['name'] === target['name']);
    assert.ok(scaled, `the HPA's target ${target['name']} is a Deployment here`);
    assert.ok(obj(obj(container(scaled)['resources'], 'resources')['requests'], 'requests')['cpu'], 'utilisation is relative to the CPU request');
    const cpu = arr(spec['metrics'], 'metrics')
      .map((m) => obj(obj(m, 'metric')['resource'] ?? {}, 'resource'))
      .find((r) => r['name'] === 'cpu');
    assert.equal(obj(cpu?.['target'], 'cpu target')['type'], 'Utilization');
    assert.ok((spec['minReplicas'] as number) >= 2, 'at least two replicas, so a drain never leaves none');

    const pdbs = kind('PodDisruptionBudget').map((x) => x.doc);
    for (const d of deployments) {
      const selecting = pdbs.filter((p) => subset(obj(obj(obj(p['spec'], 'pdb spec')['selector'], 'selector')['matchLabels'], 'matchLabels'), podLabels(d)));
      assert.equal(selecting.length, 1, `one PDB selects the pods of ${meta(d)['name']}`);
    }
    const [service] = kind('Service').map((x) => x.doc);
    assert.ok(service);
    const svc = obj(service['spec'], 'service spec');
    for (const d of deployments) {
      assert.ok(subset(obj(svc['selector'], 'selector'), podLabels(d)), `the Service selects ${meta(d)['name']}`);
      const named = arr(container(d)['ports'], 'ports').map((p) => obj(p, 'port')['name']);
      for (const p of arr(svc['ports'], 'ports')) assert.ok(named.includes(obj(p, 'port')['targetPort']), 'targetPort is a named container port');
    }
  });

  test('the GPU variant asks for nvidia.com/gpu and prefers the CUDA provider', () => {
    const gpu = kind('Deployment').filter((x) => obj(obj(container(x.doc)['resources'], 'resources')['limits'] ?? {}, 'limits')['nvidia.com/gpu']);
    assert.equal(gpu.length, 1);
    const c = container(gpu[0]!.doc);
    const res = obj(c['resources'], 'resources');
    assert.ok(Number(obj(res['limits'], 'limits')['nvidia.com/gpu']) >= 1);
    if (obj(res['requests'], 'requests')['nvidia.com/gpu'] !== undefined)
      assert.equal(obj(res['requests'], 'requests')['nvidia.com/gpu'], obj(res['limits'], 'limits')['nvidia.com/gpu'], 'extended resources: requests = limits');
    assert.equal(configWith(containerEnv(c), envOf(GPU!)).inference.providers[0], 'cuda');
    assert.match(c['image'] as string, /gpu/);
  });

  test('compose: Redis, two Polyray replicas behind one name, the posts subgraph and the gateway', () => {
    const compose = parseYaml(readFileSync(path.join(DEPLOY, 'compose.yaml'), 'utf8'), { merge: true }) as Obj;
    const services = obj(compose['services'], 'services') as Record<string, Obj>;
    const stages = new Set(DF.stages.map((s) => s.name));
    for (const [name, s] of Object.entries(services)) {
      if (!s['build']) continue;
      const b = obj(s['build'], `${name}.build`);
      assert.ok(existsSync(path.join(DEPLOY, b['context'] as string, 'Dockerfile')), `${name}: the build context holds the Dockerfile`);
      assert.ok(stages.has(b['target'] as string), `${name}: target ${b['target']} is a stage`);
    }
    for (const [name, s] of Object.entries(services))
      for (const v of arr(s['volumes'] ?? [], `${name}.volumes`)) {
        const src = (v as string).split(':')[0]!;
        if (src.startsWith('.') && src !== './secrets') assert.ok(existsSync(path.join(DEPLOY, src)), `${name}: ${src} exists`);
      }
    assert.match(read('deploy/.gitignore'), /^secrets\/$/m, 'the compose clients file stays out of git');

    const redis = new Map(Object.entries(services).filter(([, s]) => /^redis:/.test(String(s['image']))));
    assert.ok(redis.size >= 1, 'Redis');
    const policy = (name: string): string | undefined => {
      const cmd = arr(redis.get(name)?.['command'] ?? [], 'redis command') as string[];
      const at = cmd.indexOf('--maxmemory-policy');
      return at < 0 ? undefined : cmd[at + 1];
    };
    const replicas = Object.entries(services).filter(([, s]) => obj(s['build'] ?? {}, 'build')['target'] === RUNTIME.name);
    assert.equal(replicas.length, 2, 'two Polyray replicas');
    const routerConfigMount = (s: Obj): string =>
      arr(s['volumes'], 'gateway volumes')
        .map((v) => (v as string).split(':')[0]!)
        .find((v) => /router\.ya?ml$/.test(v))!;
    const gateway = Object.entries(services).find(([, s]) => /apollographql\/router:v2\./.test(String(s['image'])));
    assert.ok(gateway, 'the gateway is the Apollo Router (v2)');
    const router = parseYaml(readFileSync(path.join(DEPLOY, routerConfigMount(gateway[1])), 'utf8')) as Obj;
    const polyrayUrl = new URL(obj(router['override_subgraph_url'], 'override_subgraph_url')['polyray'] as string);
    const listen = obj(router['supergraph'], 'supergraph')['listen'] as string;
    assert.ok(
      arr(gateway[1]['ports'], 'gateway ports').some((p) => String(p).endsWith(`:${listen.split(':').at(-1)}`)),
      'the router listens on a published port',
    );
    for (const [name, s] of replicas) {
      const env = obj(s['environment'], `${name}.environment`) as Record<string, string>;
      const config = configWith(env);
      assert.equal(config.cache.redis.kind, 'standalone');
      assert.equal(config.accounting.redis.kind, 'standalone');
      const cacheHost = new URL(env['REDIS_URL']!).hostname;
      const booksHost = new URL(config.accounting.redis.kind === 'standalone' ? config.accounting.redis.url : '').hostname;
      for (const host of [cacheHost, booksHost]) {
        assert.ok(redis.has(host), `${name}: ${host} is a Redis service`);
        assert.ok(obj(s['depends_on'], 'depends_on')[host], `${name} waits for ${host}`);
      }
      // Bucket, flush-marker and liveness keys carry TTLs: an evicting policy would drop them (a lost marker
      // reads as lost books, restored once more), so the accounting Redis must not evict.
      assert.equal(policy(booksHost) ?? 'noeviction', 'noeviction', `${name}: the accounting Redis never evicts`);
      const mounts = arr(s['volumes'], 'volumes').map((v) => (v as string).split(':')[1]);
      assert.ok(mounts.includes(path.posix.dirname(config.accounting.clientsFile!)), `${name}: the clients file's folder is mounted`);
      assert.ok(seconds(s['stop_grace_period'] as string) > config.shutdownGraceMs / 1000 + SHUTDOWN_TAIL_S, `${name}: stop_grace_period covers the drain`);
      const aliases = arr(obj(obj(s['networks'], 'networks')['default'], 'default network')['aliases'], 'aliases');
      assert.ok(aliases.includes(polyrayUrl.hostname), `${name} answers to ${polyrayUrl.hostname}, the router's URL for polyray`);
      assert.equal(Number(polyrayUrl.port), config.http.port);
      assert.equal(polyrayUrl.pathname, '/graphql');
      assert.equal(
        obj(obj(gateway[1]['depends_on'], 'gateway depends_on')[name], name)['condition'],
        'service_healthy',
        `the gateway waits for ${name}'s HEALTHCHECK`,
      );
    }
    const posts = Object.entries(services).find(([, s]) =>
      arr(s['command'] ?? [], 'command')
        .join(' ')
        .includes('examples/supergraph/posts.ts'),
    );
    assert.ok(posts, 'the posts subgraph');
    assert.ok(existsSync(path.join(ROOT, 'examples/supergraph/posts.ts')));
    // posts.ts listens on 127.0.0.1 only: it shares the router's network namespace, where supergraph.yaml's URL reaches it.
    assert.equal(posts[1]['network_mode'], `service:${gateway[0]}`);
    const sg = parseYaml(read('examples/supergraph/supergraph.yaml')) as { subgraphs: Record<string, { routing_url: string }> };
    assert.equal(new URL(sg.subgraphs['posts']!.routing_url).hostname, '127.0.0.1');
    assert.ok(sg.subgraphs['polyray'], 'the router overrides a subgraph that exists');
    const composer = Object.entries(services).find(([, s]) =>
      arr(s['command'] ?? [], 'command')
        .join(' ')
        .includes('examples/supergraph/compose.ts'),
    );
    assert.ok(composer, 'a one-shot service composes the supergraph');
    assert.equal(obj(obj(gateway[1]['depends_on'], 'gateway depends_on')[composer[0]], composer[0])['condition'], 'service_completed_successfully');
  });
});

// ---------------------------------------------------------------------------------------------------------
// The build, run from the Dockerfile's own lines in a clean folder per stage.

interface Built {
  dirs: Map<string, string>;
  skipped?: string;
}

async function runDockerfile(df: Dockerfile, work: string, target: string): Promise<Built> {
  const built: Built = { dirs: new Map() };
  const log: string[] = [];
  const buildStage = async (name: string): Promise<void> => {
    if (built.dirs.has(name) || built.skipped) return;
    const stage = stageOf(df, name);
    const dir = path.join(work, name);
    if (df.stages.some((s) => s.name === stage.base)) {
      await buildStage(stage.base);
      await run('cp', ['-al', built.dirs.get(stage.base)!, dir]);
    } else mkdirSync(dir);
    let workdir: string | undefined;
    const args: Record<string, string> = {};
    const env: Record<string, string> = {};
    /** An absolute path inside the stage's WORKDIR, as a path in its folder. */
    const local = (stageDir: string, wd: string | undefined, p: string): string => {
      const rel = path.posix.isAbsolute(p) ? path.posix.relative(wd ?? '/', p) : p;
      assert.ok(!rel.startsWith('..'), `${p} is outside the stage's WORKDIR ${wd} (not runnable here)`);
      return path.join(stageDir, rel);
    };
    for (const ins of stage.instructions) {
      if (built.skipped) return;
      if (ins.op === 'WORKDIR') {
        assert.ok(workdir === undefined || workdir === ins.rest, `Dockerfile line ${ins.line}: one WORKDIR per stage`);
        workdir = ins.rest;
      } else if (ins.op === 'ARG') {
        const [k, v] = ins.rest.split('=', 2) as [string, string?];
        args[k] = v ?? df.globalArgs[k] ?? '';
      } else if (ins.op === 'ENV') Object.assign(env, envOf({ ...stage, instructions: [ins] }));
      else if (ins.op === 'COPY') {
        const { from, srcs, dest } = copyArgs(ins);
        const target = local(dir, workdir, dest);
        const intoDir = dest.endsWith('/') || srcs.length > 1;
        for (const src of srcs) {
          let source: string;
          if (from) {
            await buildStage(from);
            if (built.skipped) return;
            const fromStage = stageOf(df, from);
            source = local(built.dirs.get(from)!, fromStage.instructions.find((i) => i.op === 'WORKDIR')?.rest, src);
          } else source = path.join(ROOT, src);
          const isDir = statSync(source).isDirectory();
          const to = isDir || !intoDir ? target : path.join(target, path.basename(src));
          mkdirSync(isDir ? to : path.dirname(to), { recursive: true });
          // Hard links from a stage (fast, same bytes); a plain copy from the working tree, which keeps changing.
          await run('cp', [from ? '-al' : '-a', isDir ? `${source}/.` : source, isDir ? `${to}/` : to]);
        }
      } else if (ins.op === 'RUN') {
        const command = ins.rest;
        if (/^npm ci(\s+--[\w-]+(=\S+)?)*$/.test(command) && !/--omit=dev/.test(command)) {
          // The full install the checkout already is (header comment): linked, not repeated.
          symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
          log.push(`${name}: ${command} -> linked the checkout's node_modules`);
          continue;
        }
        const started = Date.now();
        // A container's environment, not this process's (CI exports POLYRAY_TEST_* and the like); npm offline,
        // from the cache the project's own install filled. umask 022 is Docker's.
        const childEnv = {
          PATH: process.env['PATH'] ?? '',
          HOME: process.env['HOME'] ?? '',
          ...(process.env['npm_config_cache'] ? { npm_config_cache: process.env['npm_config_cache'] } : {}),
          npm_config_offline: 'true',
          npm_config_update_notifier: 'false',
          ...args,
          ...env,
        };
        try {
          await run('sh', ['-c', `umask 022; ${command}`], { cwd: dir, env: childEnv, timeout: 180_000, maxBuffer: 64 * 1024 * 1024 });
        } catch (e) {
          const out = `${(e as { stdout?: string }).stdout ?? ''}${(e as { stderr?: string }).stderr ?? ''}`;
          if (/ENOTCACHED/.test(out)) {
            built.skipped = `the npm cache lacks packages for an offline \`${command}\` (run the project's npm ci first): ${out.slice(-500)}`;
            return;
          }
          throw new Error(`Dockerfile line ${ins.line} failed in ${dir}: ${command}\n${out.slice(-3000)}`);
        }
        log.push(`${name}: ${command.slice(0, 80)} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
      } else assert.ok(['USER', 'EXPOSE', 'HEALTHCHECK', 'CMD'].includes(ins.op), `Dockerfile line ${ins.line}: ${ins.op} is not run here`);
    }
    built.dirs.set(name, dir);
  };
  await buildStage(target);
  process.stderr.write(`# packaging: ${log.join('; ')}\n`);
  return built;
}

describe("the image's build and CMD, run from the Dockerfile in a clean folder", () => {
  let work = '';
  let built: Built = { dirs: new Map() };
  let runtimeDir = '';

  before(
    async () => {
      work = mkdtempSync(path.join(tmpdir(), 'polyray-packaging-'));
      built = await runDockerfile(DF, work, RUNTIME.name);
      runtimeDir = built.dirs.get(RUNTIME.name) ?? '';
    },
    { timeout: 200_000 },
  );
  after(() => {
    // Removes the build stage's node_modules link, never what it points at.
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('the runtime folder: compiled code, built models, production dependencies only, readable by the image user', (t) => {
    if (built.skipped) return t.skip(built.skipped);
    for (const f of ['dist/main.js', 'dist/runtime/worker-entry.mjs', 'models/text-glove/manifest.json', 'node_modules/onnxruntime-node/package.json'])
      assert.ok(existsSync(path.join(runtimeDir, f)), f);
    for (const f of ['src', 'node_modules/typescript', 'node_modules/tsx', 'node_modules/@biomejs'])
      assert.ok(!existsSync(path.join(runtimeDir, f)), `${f} is not in the image`);
    // Files are root's in the image; uid 1000 reads them through the "other" bits.
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        const st = lstatSync(p);
        if (st.isSymbolicLink()) continue;
        if (st.isDirectory()) {
          assert.equal(st.mode & 0o005, 0o005, `${path.relative(runtimeDir, p)}/ is listable by others`);
          walk(p);
        } else assert.equal(st.mode & 0o004, 0o004, `${path.relative(runtimeDir, p)} is readable by others`);
      }
    };
    walk(runtimeDir);
  });

  test('the compiled CLI runs in the image (docs/DEPLOY.md: `node dist/cli.js clients add`) and sees the built models', async (t) => {
    if (built.skipped) return t.skip(built.skipped);
    const env = { PATH: process.env['PATH'] ?? '', ...IMAGE_ENV };
    const { stdout } = await run(process.execPath, ['dist/cli.js', 'models', 'list', '--json'], { cwd: runtimeDir, env });
    const names = (JSON.parse(stdout) as { name: string }[]).map((m) => m.name);
    for (const m of ['text-glove', 'text-bert-synthetic', 'image-mobilenet']) assert.ok(names.includes(m), `${m} in ${names.join(', ')}`);
  });

  test('the installed command, bin/polyray.mjs, runs in the image (dist/ only, no src/ to build from)', async (t) => {
    if (built.skipped) return t.skip(built.skipped);
    const { stdout } = await run(process.execPath, ['bin/polyray.mjs', '--version'], {
      cwd: runtimeDir,
      env: { PATH: process.env['PATH'] ?? '', ...IMAGE_ENV },
    });
    assert.match(stdout, /^\d+\.\d+\.\d+/);
  });

  test('CMD serves with the image ENV: /healthz, /readyz, an authenticated embedding; HEALTHCHECK passes; SIGTERM exits 0', { timeout: 150_000 }, async (t) => {
    if (built.skipped) return t.skip(built.skipped);
    const port = await freePort();
    const key = `prk_packaging_${randomBytes(32).toString('base64url')}`;
    const clientsFile = path.join(work, 'clients.json');
    writeFileSync(
      clientsFile,
      JSON.stringify({
        clients: [
          {
            id: 'packaging',
            name: 'Packaging test',
            models: ['text-glove'],
            quota: { rate: 1000, burst: 100_000 },
            keys: [{ sha256: createHash('sha256').update(key).digest('hex'), createdAt: new Date(0).toISOString() }],
          },
        ],
      }),
    );
    // The image's ENV; loopback instead of 0.0.0.0, a free port, the clients file where this test wrote it.
    const env = { PATH: process.env['PATH'] ?? '', ...IMAGE_ENV, HOST: '127.0.0.1', PORT: String(port), POLYRAY_CLIENTS_FILE: clientsFile, LOG_LEVEL: 'warn' };
    const argv = (what: 'CMD' | 'HEALTHCHECK'): [string, string[]] => {
      const [cmd, ...rest] = execForm(
        RUNTIME.instructions.find((i) => i.op === what),
        what,
      );
      return [cmd === 'node' ? process.execPath : cmd!, rest];
    };
    const healthcheck = async (): Promise<number> =>
      run(...argv('HEALTHCHECK'), { cwd: runtimeDir, env, timeout: 10_000 }).then(
        () => 0,
        (e: { code?: number }) => e.code ?? -1,
      );
    const child: ChildProcess = spawn(...argv('CMD'), { cwd: runtimeDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    const keep = (b: Buffer): void => {
      log = (log + b.toString()).slice(-4000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const url = `http://127.0.0.1:${port}`;
    try {
      const deadline = Date.now() + 90_000;
      for (;;) {
        assert.equal(child.exitCode, null, `the service exited during start-up:\n${log}`);
        const status = await fetch(`${url}/readyz`).then(
          (r) => r.status,
          () => 0,
        );
        if (status === 200) break;
        assert.ok(Date.now() < deadline, `ready within 90 s:\n${log}`);
        await sleep(200);
      }
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
      assert.equal(await healthcheck(), 0, 'HEALTHCHECK passes against a ready replica');

      const embed = (headers: Record<string, string>): Promise<Response> =>
        fetch(`${url}/v1/embeddings`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify({ model: 'text-glove', input: ['packaged and served'], encoding_format: 'float' }),
        });
      assert.equal((await embed({})).status, 401, 'NODE_ENV=production with a clients file: a key is required');
      const res = await embed({ authorization: `Bearer ${key}` });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(((await res.json()) as { data: { embedding: number[] }[] }).data[0]!.embedding.length, 100);

      const grace = configWith({ POLYRAY_CLIENTS_FILE: clientsFile }).shutdownGraceMs;
      const stopped = Date.now();
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const code = await Promise.race([exited, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), grace + SHUTDOWN_TAIL_S * 1000)))]);
      clearTimeout(timer);
      assert.equal(code, 0, `exit code after SIGTERM (${Date.now() - stopped} ms):\n${log}`);
      assert.notEqual(await healthcheck(), 0, 'HEALTHCHECK fails once the replica is gone');
    } finally {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    }
  });
});
