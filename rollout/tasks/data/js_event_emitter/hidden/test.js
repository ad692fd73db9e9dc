'use strict';
// Hidden tests: prints one line per test and a final "N passed, M failed".
const { Emitter } = require('./emitter.js');

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const eq = (a, b, what) => {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}: ${JSON.stringify(a)} !== ${JSON.stringify(b)}`);
  }
};

test('on and emit pass arguments in order', () => {
  const e = new Emitter();
  const calls = [];
  e.on('x', (a, b) => calls.push(['first', a, b]));
  e.on('x', (a) => calls.push(['second', a]));
  eq(e.emit('x', 1, 2), true, 'emit result');
  eq(calls, [['first', 1, 2], ['second', 1]], 'calls');
  eq(e.emit('nothing'), false, 'no listeners');
});

test('unsubscribe function and off', () => {
  const e = new Emitter();
  let n = 0;
  const f = () => n++;
  const unsub = e.on('x', f);
  e.emit('x');
  unsub();
  e.emit('x');
  e.on('x', f);
  e.on('x', f);
  e.off('x', f);
  eq(e.listenerCount('x'), 1, 'one registration removed');
  e.emit('x');
  eq(n, 2, 'count');
});

test('once runs a single time and can be removed', () => {
  const e = new Emitter();
  let n = 0;
  const f = () => n++;
  e.once('x', f);
  e.emit('x');
  e.emit('x');
  eq(n, 1, 'once count');
  e.once('y', f);
  e.off('y', f);
  eq(e.listenerCount('y'), 0, 'removed once listener');
});

test('listeners added during emit wait for the next emit', () => {
  const e = new Emitter();
  const calls = [];
  e.on('x', () => { calls.push('a'); e.on('x', () => calls.push('late')); });
  e.emit('x');
  eq(calls, ['a'], 'first emit');
});

test('a throwing listener does not stop the others', () => {
  const e = new Emitter();
  const calls = [];
  e.on('x', () => { throw new Error('boom'); });
  e.on('x', () => calls.push('ran'));
  let caught = null;
  try { e.emit('x'); } catch (err) { caught = err; }
  eq(calls, ['ran'], 'second listener ran');
  eq(caught && caught.message, 'boom', 'error rethrown');
});

test('unhandled error event throws', () => {
  const e = new Emitter();
  const err = new Error('bad');
  let caught = null;
  try { e.emit('error', err); } catch (x) { caught = x; }
  eq(caught === err, true, 'same error');
  e.on('error', () => {});
  eq(e.emit('error', err), true, 'handled');
});

let passed = 0;
let failed = 0;
for (const t of tests) {
  try {
    t.fn();
    passed++;
    console.log(`ok - ${t.name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${t.name}: ${e && e.message}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
