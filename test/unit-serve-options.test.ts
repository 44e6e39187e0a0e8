/**
 * How a request's computations queue (src/http/serve.ts): the abort signal is made only when read (a cache
 * hit never reads it), and it is aborted whether the caller went away before or after that.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { describe, test } from 'node:test';
import type { Client } from '../src/accounting/clients.ts';
import { deadlineMs, serveOptions } from '../src/http/serve.ts';

/** The parts of a ServerResponse the signal reads. */
class FakeResponse extends EventEmitter {
  destroyed = false;
  writableFinished = false;
}

const client = { id: 'c', weight: 2 } as unknown as Client;

describe('serveOptions', () => {
  test('the signal is made when first read, is the same object after, and aborts when the caller goes away', () => {
    const res = new FakeResponse();
    const o = serveOptions(client, {}, 0, res as unknown as ServerResponse, 100);
    assert.equal(res.listenerCount('close'), 0, 'nothing made before it is read');
    assert.deepEqual(
      { weight: o.weight, priority: o.priority, arrivedAt: o.arrivedAt, deadline: o.deadline },
      { weight: 2, priority: 'interactive', arrivedAt: 100, deadline: undefined },
    );
    const signal = o.signal!;
    assert.equal(o.signal, signal);
    assert.equal(signal.aborted, false);
    res.destroyed = true;
    res.emit('close');
    assert.equal(signal.aborted, true);
  });

  test('read after the caller went away: already aborted; after the answer was sent: never', () => {
    const gone = new FakeResponse();
    gone.destroyed = true;
    assert.equal(serveOptions(client, {}, 0, gone as unknown as ServerResponse, 0).signal!.aborted, true);
    const answered = new FakeResponse();
    const signal = serveOptions(client, {}, 0, answered as unknown as ServerResponse, 0).signal!;
    answered.writableFinished = true;
    answered.destroyed = true;
    answered.emit('close');
    assert.equal(signal.aborted, false);
  });

  test('a copy (as the pipeline makes with its client) carries the signal', () => {
    const res = new FakeResponse();
    const copy = { ...serveOptions(client, {}, 0, res as unknown as ServerResponse, 0), client: 'c' };
    res.destroyed = true;
    res.emit('close');
    assert.equal(copy.signal!.aborted, true);
  });

  test('deadline: the header when below the configured timeout; batch priority on request', () => {
    assert.equal(deadlineMs('250', 1000), 250);
    assert.equal(deadlineMs('5000', 1000), 1000);
    assert.equal(deadlineMs('abc', 1000), 1000);
    assert.equal(serveOptions(client, { 'x-request-timeout-ms': '50', 'x-polyray-priority': 'batch' }, 1000, undefined, 10).deadline, 60);
    assert.equal(serveOptions(client, { 'x-polyray-priority': 'BATCH ' }, 0, undefined, 0).priority, 'batch');
    assert.equal(serveOptions(client, {}, 0, undefined, 0).signal, undefined);
  });
});
