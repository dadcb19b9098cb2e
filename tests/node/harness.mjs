// harness.mjs: starts the real parts for the Node.js client tests, as
// tests/python/ferry_harness.py does for Python: one etcd and one
// ferry-coordinator on free loopback ports in a temporary directory, and the
// ferry.v1 and grpc.health.v1 services loaded from proto/ with
// @grpc/proto-loader (nothing generated, nothing in git).
//
// FERRY_SOURCE_DIR and FERRY_BUILD_DIR (set by CTest) say where proto/ and
// coordinator/ferry-coordinator are; without them the repository this file
// sits in and its build/ are used.
//
// Nothing started here outlives the test: a start that fails kills what it
// started, a stop that times out kills, and whatever still runs when Node
// exits is killed then.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SOURCE_DIR = process.env.FERRY_SOURCE_DIR || path.resolve(here, '..', '..');
export const BUILD_DIR = process.env.FERRY_BUILD_DIR || path.join(SOURCE_DIR, 'build');
const COORDINATOR = path.join(BUILD_DIR, 'coordinator', 'ferry-coordinator');

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Polls cond() (sync or async) until it is true or the deadline passes.
export async function waitUntil(cond, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

// The ferry.v1 and grpc.health.v1 packages. Field names as in the .proto
// (keepCase), longs as strings (int64 lease IDs do not fit a double), enums
// as their names, bytes as Buffers.
export function loadProtos() {
  const def = protoLoader.loadSync(
    ['ferry/v1/coordinator.proto', 'grpc/health/v1/health.proto'],
    { includeDirs: [path.join(SOURCE_DIR, 'proto')], keepCase: true, longs: String,
      enums: String, defaults: true, oneofs: true });
  return grpc.loadPackageDefinition(def);
}

async function etcdHealthy(endpoint) {
  try {
    const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return r.status === 200;
  } catch {
    return false;
  }
}

function exited(proc) {
  return proc.exitCode !== null || proc.signalCode !== null;
}

// Every child started here; the ones still running when Node exits (a
// failed before(), an uncaught error) are killed then.
const children = new Set();
process.on('exit', () => {
  for (const proc of children) {
    if (!exited(proc)) proc.kill('SIGKILL');
  }
});

function track(proc) {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

function killProc(proc) {
  if (!proc || exited(proc)) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => resolve());
    proc.kill('SIGKILL');
  });
}

// signal, then SIGKILL once timeoutMs has passed (and an error: it did not
// exit on signal).
function stopProc(proc, signal, timeoutMs) {
  if (!proc || exited(proc)) return Promise.resolve(proc ? proc.exitCode : null);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      const err = new Error(`pid ${proc.pid} did not exit on ${signal}: killed`);
      killProc(proc).then(() => reject(err));
    }, timeoutMs);
    proc.once('exit', (code) => { clearTimeout(timer); resolve(code); });
    proc.kill(signal);
  });
}

// Starts etcd in dir on free ports and waits until it answers. Another
// process may take a port between freePort() and etcd's bind: then it is
// tried again on new ports (3 tries, as tests/support/testproc.c does).
async function startEtcd(dir) {
  const logPath = path.join(dir, 'etcd.log');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const peer = await freePort();
    const endpoint = `http://127.0.0.1:${port}`;
    const offset = fs.existsSync(logPath) ? fs.statSync(logPath).size : 0;
    const log = fs.openSync(logPath, 'a');
    const proc = track(spawn('etcd', [
      '--name', 't', '--data-dir', path.join(dir, 'etcd'),
      '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `t=http://127.0.0.1:${peer}`], { stdio: ['ignore', log, log] }));
    fs.closeSync(log);
    try {
      await waitUntil(async () => exited(proc) || await etcdHealthy(endpoint), 20000,
        'etcd to answer');
    } catch (e) {
      await killProc(proc);
      throw e;
    }
    if (!exited(proc)) return { proc, endpoint };
    const said = fs.readFileSync(logPath, 'utf8').slice(offset);
    if (attempt < 3 && said.includes('address already in use')) {
      fs.rmSync(path.join(dir, 'etcd'), { recursive: true, force: true });
      continue;
    }
    throw new Error(`etcd exited with ${proc.exitCode}: ${said.slice(-4000)}`);
  }
}

// One etcd and one coordinator. start() resolves once the coordinator has
// written its port file; close() stops both and returns the coordinator's
// exit code after SIGTERM.
export class Cluster {
  constructor({ ttl = 3, name = 'c1' } = {}) {
    this.ttl = ttl;
    this.name = name;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-node-'));
  }

  // Whatever fails, nothing it started is left running, nor its directory.
  async start() {
    try {
      ({ proc: this.etcd, endpoint: this.etcdEndpoint } = await startEtcd(this.tmp));
      const portFile = path.join(this.tmp, `${this.name}.port`);
      this.logPath = path.join(this.tmp, `${this.name}.log`);
      const log = fs.openSync(this.logPath, 'a');
      this.coordinator = track(spawn(COORDINATOR, [
        '--listen', '127.0.0.1:0', '--etcd', this.etcdEndpoint, '--ttl', String(this.ttl),
        '--name', this.name, '--port-file', portFile, '--grace-ms', '1000',
        '--log-level', 'debug'], { stdio: ['ignore', log, log] }));
      fs.closeSync(log);
      await waitUntil(() => fs.existsSync(portFile) || exited(this.coordinator), 20000,
        'the coordinator to listen');
      if (exited(this.coordinator)) {
        throw new Error(`coordinator exited: ${fs.readFileSync(this.logPath, 'utf8')}`);
      }
      this.target = `127.0.0.1:${fs.readFileSync(portFile, 'utf8').trim()}`;
    } catch (e) {
      await killProc(this.coordinator);
      await killProc(this.etcd);
      fs.rmSync(this.tmp, { recursive: true, force: true });
      throw e;
    }
  }

  async close() {
    try {
      return await stopProc(this.coordinator, 'SIGTERM', 15000);
    } finally {
      await stopProc(this.etcd, 'SIGTERM', 10000).catch((e) => console.error(e.message));
      fs.rmSync(this.tmp, { recursive: true, force: true });
    }
  }
}
