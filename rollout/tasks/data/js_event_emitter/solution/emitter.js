'use strict';

class Emitter {
  constructor() {
    this._listeners = new Map();  // event -> [{fn, original}]
  }

  _list(event) {
    let list = this._listeners.get(event);
    if (!list) this._listeners.set(event, (list = []));
    return list;
  }

  on(event, fn) {
    this._list(event).push({ fn, original: fn });
    return () => this.off(event, fn);
  }

  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, fn);
      return fn(...args);
    };
    this._list(event).push({ fn: wrapper, original: fn });
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const list = this._listeners.get(event);
    if (!list) return;
    const i = list.findIndex((l) => l.original === fn);
    if (i >= 0) list.splice(i, 1);
  }

  emit(event, ...args) {
    const list = (this._listeners.get(event) || []).slice();
    if (list.length === 0) {
      if (event === 'error') {
        throw args[0] !== undefined ? args[0] : new Error('unhandled error event');
      }
      return false;
    }
    let firstError = null;
    for (const l of list) {
      try {
        l.fn(...args);
      } catch (e) {
        if (firstError === null) firstError = e;
      }
    }
    if (firstError !== null) throw firstError;
    return true;
  }

  listenerCount(event) {
    const list = this._listeners.get(event);
    return list ? list.length : 0;
  }
}

module.exports = { Emitter };
