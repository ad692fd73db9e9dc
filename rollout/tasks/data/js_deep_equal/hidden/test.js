'use strict';
// Hidden tests: prints one line per test and a final "N passed, M failed".
const { deepEqual } = require('./deepEqual.js');

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const ok = (cond, what) => { if (!cond) throw new Error(what); };

test('primitives', () => {
  ok(deepEqual(1, 1), '1 == 1');
  ok(!deepEqual(1, '1'), "1 != '1'");
  ok(deepEqual('a', 'a'), 'strings');
  ok(deepEqual(null, null), 'null');
  ok(!deepEqual(null, undefined), 'null vs undefined');
  ok(deepEqual(NaN, NaN), 'NaN');
  ok(deepEqual(0, -0), '+0 == -0');
});

test('arrays', () => {
  ok(deepEqual([1, [2, 3]], [1, [2, 3]]), 'nested arrays');
  ok(!deepEqual([1, 2], [1, 2, 3]), 'length');
  ok(!deepEqual([1, 2], [2, 1]), 'order');
  ok(!deepEqual([1], { 0: 1, length: 1 }), 'array vs object');
});

test('objects', () => {
  ok(deepEqual({ a: 1, b: { c: [1] } }, { b: { c: [1] }, a: 1 }), 'key order');
  ok(!deepEqual({ a: 1 }, { a: 1, b: 2 }), 'extra key');
  ok(!deepEqual({ a: undefined }, { b: undefined }), 'different keys, undefined values');
  ok(!deepEqual({}, null), 'null vs {}');
});

test('dates', () => {
  ok(deepEqual(new Date(5), new Date(5)), 'same time');
  ok(!deepEqual(new Date(5), new Date(6)), 'different time');
  ok(!deepEqual(new Date(5), {}), 'date vs object');
});

test('maps and sets', () => {
  ok(deepEqual(new Set([1, 2]), new Set([2, 1])), 'set order');
  ok(!deepEqual(new Set([1, 2]), new Set([1, 3])), 'set members');
  ok(deepEqual(new Map([['a', { x: 1 }]]), new Map([['a', { x: 1 }]])), 'map values');
  ok(!deepEqual(new Map([['a', 1]]), new Map([['a', 2]])), 'map value differs');
  ok(!deepEqual(new Map(), new Set()), 'map vs set');
});

test('cycles', () => {
  const a = { name: 'x' }; a.self = a;
  const b = { name: 'x' }; b.self = b;
  ok(deepEqual(a, b), 'same-shape cycles');
  const c = { name: 'y' }; c.self = c;
  ok(!deepEqual(a, c), 'different cycles');
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
