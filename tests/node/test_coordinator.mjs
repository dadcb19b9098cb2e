// test_coordinator.mjs: drives a real ferry-coordinator over a real etcd from
// Node.js with @grpc/grpc-js and @grpc/proto-loader (from npm, pinned by the
// repository's package-lock.json): the contract is not C- or Python-specific.
// Run by CTest (node_coordinator) as `node tests/node/test_coordinator.mjs`.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { Cluster, loadProtos } from './harness.mjs';

let cluster;
let stub;
let health;

const deadline = (ms = 10000) => ({ deadline: Date.now() + ms });

// stub.<method>(req) as a promise.
function call(method, req, ms) {
  return new Promise((resolve, reject) => {
    stub[method](req, deadline(ms), (err, res) => (err ? reject(err) : resolve(res)));
  });
}

// Rejects with the gRPC error of a call that must fail; asserts its code.
async function failsWith(promise, code) {
  const err = await promise.then(
    (res) => assert.fail(`expected ${code}, got OK: ${JSON.stringify(res)}`), (e) => e);
  assert.equal(err.code, code, `${err.code} (${err.details}) instead of ${code}`);
  return err;
}

function metadata() {
  return {
    version: 1, kind: 'OPERATION_KIND_WRITE', worker_address: Buffer.alloc(64, 1),
    descriptors: [{ address: '65536', size: '4096', device: { kind: 'DEVICE_KIND_HOST' },
      rkey: Buffer.alloc(32, 'k') }],
    notification_key: crypto.randomBytes(16), worker_name: 'node-receiver',
    hostname: 'localhost',
  };
}

function register(rid, token = '') {
  return call('Register', { request_id: rid, metadata: metadata(), access_token: token,
    owner: 'node' });
}

// Opens a Watch stream. created: resolves on its first message (which must
// say created). events: resolves with the events collected until
// done(events) is true, when the stream is cancelled.
function watchUntil(req, done) {
  const stream = stub.Watch(req, deadline(30000));
  let onCreated;
  const created = new Promise((resolve) => { onCreated = resolve; });
  const events = new Promise((resolve, reject) => {
    const seen = [];
    let first = true;
    stream.on('data', (msg) => {
      if (first) {
        first = false;
        if (!msg.created) reject(new Error('first Watch message without created'));
        onCreated();
        return;
      }
      seen.push(...msg.events);
      if (done(seen)) {
        stream.cancel();
        resolve(seen);
      }
    });
    stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
  return { created, events };
}

before(async () => {
  cluster = new Cluster({ ttl: 3 });
  await cluster.start();
  const pkg = loadProtos();
  const creds = grpc.credentials.createInsecure();
  stub = new pkg.ferry.v1.Coordinator(cluster.target, creds);
  health = new pkg.grpc.health.v1.Health(cluster.target, creds);
});

after(async () => {
  stub?.close();
  health?.close();
  const rc = await cluster?.close();
  assert.equal(rc, 0, `coordinator exited with ${rc} after SIGTERM`);
});

test('health: the server and ferry.v1.Coordinator are SERVING', async () => {
  for (const service of ['', 'ferry.v1.Coordinator']) {
    const res = await new Promise((resolve, reject) => {
      health.Check({ service }, deadline(), (err, r) => (err ? reject(err) : resolve(r)));
    });
    assert.equal(res.status, 'SERVING', `service "${service}"`);
  }
});

test('register, lookup with wait, claim, complete, release; watch to the end', async () => {
  const rid = `node-flow-${crypto.randomBytes(4).toString('hex')}`;
  const token = `node-token-${crypto.randomBytes(8).toString('hex')}`;

  const watch = watchUntil({ request_id: rid },
    (evs) => evs.some((e) => e.type === 'WATCH_EVENT_TYPE_DELETE'));
  await watch.created;

  // The Lookup is sent before the operation exists and waits for it.
  const lookup = call('Lookup', { request_id: rid, access_token: token, wait_ms: '20000' }, 30000);
  const reg = await register(rid, token);
  assert.equal(reg.access_token, token);
  assert.ok(BigInt(reg.lease_id) > 0n);
  assert.match(reg.lease_token, /^[0-9a-f]{64}$/);

  const look = await lookup;
  assert.equal(look.operation.state, 'OPERATION_STATE_REGISTERED');
  assert.deepEqual(look.operation.metadata.worker_address, Buffer.alloc(64, 1));
  assert.equal(look.operation.metadata.descriptors[0].size, '4096');
  assert.equal(look.operation.token_sha256.length, 0);

  const claim = await call('Claim', { request_id: rid, access_token: token,
    claimant: 'node-writer', kind: 'OPERATION_KIND_WRITE' });
  assert.equal(claim.operation.state, 'OPERATION_STATE_CLAIMED');
  assert.equal(claim.operation.claimant, 'node-writer');
  assert.ok(BigInt(claim.claim_lease_id) > 0n);

  // Complete needs the claim lease's token: a wrong one changes nothing.
  await failsWith(call('Complete', { request_id: rid, access_token: token,
    claim_lease_id: claim.claim_lease_id, lease_token: 'f'.repeat(64) }),
  grpc.status.PERMISSION_DENIED);
  const done = await call('Complete', { request_id: rid, access_token: token,
    claim_lease_id: claim.claim_lease_id, lease_token: claim.lease_token });
  assert.equal(done.operation.state, 'OPERATION_STATE_COMPLETE');

  await call('Release', { request_id: rid, access_token: token });
  const events = await watch.events;
  assert.deepEqual(events.map((e) => [e.type, e.operation.state]), [
    ['WATCH_EVENT_TYPE_PUT', 'OPERATION_STATE_REGISTERED'],
    ['WATCH_EVENT_TYPE_PUT', 'OPERATION_STATE_CLAIMED'],
    ['WATCH_EVENT_TYPE_PUT', 'OPERATION_STATE_COMPLETE'],
    ['WATCH_EVENT_TYPE_DELETE', 'OPERATION_STATE_COMPLETE'],
  ]);
  for (const e of events) {
    assert.equal(e.operation.request_id, rid);
    assert.equal(e.operation.metadata, null, 'Watch never shows the metadata');
  }
  await failsWith(call('Get', { request_id: rid }), grpc.status.NOT_FOUND);
});

test('a duplicate request ID is ALREADY_EXISTS', async () => {
  await register('node-dup');
  const err = await failsWith(register('node-dup'), grpc.status.ALREADY_EXISTS);
  assert.match(err.details, /node-dup/);
});

test('a wrong access token is PERMISSION_DENIED, for Lookup and Claim', async () => {
  await register('node-token', 'right-token-0123456789');
  await failsWith(call('Lookup', { request_id: 'node-token',
    access_token: 'wrong-token-0123456789' }), grpc.status.PERMISSION_DENIED);
  await failsWith(call('Claim', { request_id: 'node-token',
    access_token: 'wrong-token-0123456789' }), grpc.status.PERMISSION_DENIED);
});

test('an unknown ID is NOT_FOUND, for Get, Lookup and Cancel', async () => {
  await failsWith(call('Get', { request_id: 'node-nobody' }), grpc.status.NOT_FOUND);
  await failsWith(call('Lookup', { request_id: 'node-nobody',
    access_token: 'some-token-0123456789' }), grpc.status.NOT_FOUND);
  await failsWith(call('Cancel', { request_id: 'node-nobody',
    access_token: 'some-token-0123456789' }), grpc.status.NOT_FOUND);
});

test('a malformed request ID is INVALID_ARGUMENT naming the field', async () => {
  const err = await failsWith(call('Get', { request_id: 'no spaces allowed' }),
    grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /request_id/);
});
