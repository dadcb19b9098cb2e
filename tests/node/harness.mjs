// harness.mjs: starts the real parts for the Node.js client tests, as
// tests/python/ferry_harness.py does for Python: one etcd and one
// ferry-coordinator on free loopback ports in a temporary directory, and the
// ferry.v1 and grpc.health.v1 services loaded from proto/ with
// @grpc/proto-loader (nothing generated, nothing in git).
//
// FERRY_SOURCE_DIR and FERRY_BUILD_DIR (set by CTest) say where proto/ and
// coordinator/ferry-coordinator are; without them the repository this file
// sits in and its build/ are used.
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

function stopProc(proc, signal, timeoutMs) {
  if (!proc || exited(proc)) return Promise.resolve(proc ? proc.exitCode : null);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pid ${proc.pid} did not exit`)), timeoutMs);
    proc.once('exit', (code) => { clearTimeout(timer); resolve(code); });
    proc.kill(signal);
  });
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

  async start() {
    const port = await freePort();
    const peer = await freePort();
    this.etcdEndpoint = `http://127.0.0.1:${port}`;
    const etcdLog = fs.openSync(path.join(this.tmp, 'etcd.log'), 'a');
    this.etcd = spawn('etcd', [
      '--name', 't', '--data-dir', path.join(this.tmp, 'etcd'),
      '--listen-client-urls', this.etcdEndpoint, '--advertise-client-urls', this.etcdEndpoint,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `t=http://127.0.0.1:${peer}`], { stdio: ['ignore', etcdLog, etcdLog] });
    await waitUntil(() => etcdHealthy(this.etcdEndpoint), 20000, 'etcd to answer');

    const portFile = path.join(this.tmp, `${this.name}.port`);
    this.logPath = path.join(this.tmp, `${this.name}.log`);
    const log = fs.openSync(this.logPath, 'a');
    this.coordinator = spawn(COORDINATOR, [
      '--listen', '127.0.0.1:0', '--etcd', this.etcdEndpoint, '--ttl', String(this.ttl),
      '--name', this.name, '--port-file', portFile, '--grace-ms', '1000',
      '--log-level', 'debug'], { stdio: ['ignore', log, log] });
    await waitUntil(() => fs.existsSync(portFile) || exited(this.coordinator), 20000,
      'the coordinator to listen');
    if (exited(this.coordinator)) {
      throw new Error(`coordinator exited: ${fs.readFileSync(this.logPath, 'utf8')}`);
    }
    this.target = `127.0.0.1:${fs.readFileSync(portFile, 'utf8').trim()}`;
  }

  async close() {
    const rc = await stopProc(this.coordinator, 'SIGTERM', 15000);
    await stopProc(this.etcd, 'SIGTERM', 10000);
    fs.rmSync(this.tmp, { recursive: true, force: true });
    return rc;
  }
}
