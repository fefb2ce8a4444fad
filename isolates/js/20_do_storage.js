// Durable Object storage: keys and values, each instance's write buffer (atomic batches, the output gate) and the `state.storage` API.
import { core, primordials } from "ext:core/mod.js";

const {
  op_do_get,
  op_do_list,
  op_do_write,
  op_do_sync,
  op_do_alarm_get,
  op_do_alarm_set,
} = core.ops;
const {
  ArrayIsArray,
  ArrayPrototypePush,
  ArrayPrototypeSort,
  DatePrototype,
  DatePrototypeGetTime,
  MapPrototypeGet,
  NumberIsInteger,
  ObjectKeys,
  ObjectPrototypeIsPrototypeOf,
  RangeError,
  SafeMap,
  StringPrototypeCodePointAt,
  StringPrototypeStartsWith,
  Symbol,
  TypeError,
} = primordials;

const MAX_KEY_BYTES = 2048;
const MAX_VALUE_BYTES = 131072;
const MAX_BATCH = 128;
const DELETED = Symbol("deleted");

// ---------------------------------------------------------------------------
// Keys and values

function checkKey(key) {
  if (typeof key !== "string") {
    throw new TypeError(`storage keys must be strings, got ${typeof key}`);
  }
  if (core.byteLength(key) > MAX_KEY_BYTES) {
    throw new RangeError(
      `storage key is ${core.byteLength(key)} bytes; the limit is ${MAX_KEY_BYTES}`,
    );
  }
}

function checkBatch(count) {
  if (count > MAX_BATCH) {
    throw new RangeError(
      `a storage call takes at most ${MAX_BATCH} keys (got ${count})`,
    );
  }
}

function encode(value) {
  if (value === undefined) {
    throw new TypeError("cannot store undefined; use delete() to remove a key");
  }
  const bytes = core.serialize(value, { forStorage: true });
  if (bytes.byteLength > MAX_VALUE_BYTES) {
    throw new RangeError(
      `value is ${bytes.byteLength} bytes serialized; the limit is ${MAX_VALUE_BYTES}`,
    );
  }
  return bytes;
}

function decode(bytes) {
  return core.deserialize(bytes, { forStorage: true });
}

/** Orders keys by code point, which is the order of their UTF-8 bytes on disk. */
function compareKeys(a, b) {
  if (a === b) return 0;
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = StringPrototypeCodePointAt(a, i);
    const y = StringPrototypeCodePointAt(b, j);
    if (x !== y) return x < y ? -1 : 1;
    i += x > 0xffff ? 2 : 1;
    j += y > 0xffff ? 2 : 1;
  }
  return (a.length - i) - (b.length - j);
}

function listOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object") {
    throw new TypeError("list() options must be an object");
  }
  const out = {};
  for (const name of ["prefix", "start", "startAfter", "end"]) {
    if (options[name] !== undefined) {
      checkKey(options[name]);
      out[name] = options[name];
    }
  }
  if (out.start !== undefined && out.startAfter !== undefined) {
    throw new TypeError("list() takes start or startAfter, not both");
  }
  if (options.limit !== undefined) {
    if (!NumberIsInteger(options.limit) || options.limit < 1) {
      throw new RangeError("list() limit must be a positive integer");
    }
    out.limit = options.limit;
  }
  out.reverse = options.reverse === true;
  return out;
}

function inRange(key, o) {
  if (o.prefix !== undefined && !StringPrototypeStartsWith(key, o.prefix)) {
    return false;
  }
  if (o.start !== undefined && compareKeys(key, o.start) < 0) return false;
  if (o.startAfter !== undefined && compareKeys(key, o.startAfter) <= 0) {
    return false;
  }
  if (o.end !== undefined && compareKeys(key, o.end) >= 0) return false;
  return true;
}

/** Lays `overlay` (key -> bytes | DELETED) over `base` and applies order and limit. */
function mergeListed(base, overlay, o) {
  const merged = new SafeMap(base);
  for (const { 0: k, 1: v } of overlay) {
    if (!inRange(k, o)) continue;
    if (v === DELETED) merged.delete(k);
    else merged.set(k, v);
  }
  const keys = ArrayPrototypeSort([...merged.keys()], compareKeys);
  if (o.reverse) keys.reverse();
  const limit = o.limit ?? keys.length;
  const result = new SafeMap();
  for (let i = 0; i < keys.length && i < limit; i++) {
    result.set(keys[i], merged.get(keys[i]));
  }
  return result;
}

function decodeAll(map) {
  const out = new Map();
  for (const { 0: k, 1: v } of map) out.set(k, decode(v));
  return out;
}

// ---------------------------------------------------------------------------
// An instance and its write buffer

class Instance {
  constructor(id) {
    this.id = id;
    /** Continuations of running events whose I/O finished (run before new events). */
    this.resumes = [];
    this.queue = [];
    this.blocked = 0;
    this.active = 0;
    /** Writes since the last flush: key -> bytes | DELETED. */
    this.pending = new SafeMap();
    this.deleteAll = false;
    this.flushQueued = false;
    this.lastTicket = 0;
    this.durableTicket = 0;
    this.lastUsed = Date.now();
    this.object = null;
    this.state = null;
    this.generation = 0;
    /** WebSocket wrappers by socket id. */
    this.sockets = new SafeMap();
    /** Sockets accepted with the standard `accept()` (keep the object alive). */
    this.standardSockets = 0;
    /** Sends waiting for the output gate, in order. */
    this.sendQueue = [];
    this.sendDraining = false;
  }
}

/** Reads through the unflushed writes to disk (already-encoded bytes or null). */
function readBytes(inst, key) {
  const staged = MapPrototypeGet(inst.pending, key);
  if (staged !== undefined) return staged === DELETED ? null : staged;
  if (inst.deleteAll) return null;
  return op_do_get(inst.id, key);
}

function stage(inst, key, value) {
  inst.pending.set(key, value);
  queueFlush(inst);
}

/** Writes made without an intervening await are applied as one batch. */
function queueFlush(inst) {
  if (inst.flushQueued) return;
  inst.flushQueued = true;
  queueMicrotask(() => flush(inst));
}

function flush(inst) {
  inst.flushQueued = false;
  if (inst.pending.size === 0 && !inst.deleteAll) return;
  const writes = [];
  for (const { 0: k, 1: v } of inst.pending) {
    ArrayPrototypePush(writes, [k, v === DELETED ? null : v]);
  }
  const deleteAll = inst.deleteAll;
  inst.pending = new SafeMap();
  inst.deleteAll = false;
  const ticket = op_do_write(inst.id, deleteAll, writes);
  if (ticket > inst.lastTicket) inst.lastTicket = ticket;
}

/** Resolves once every write this instance has made is on disk. */
async function outputGate(inst) {
  flush(inst);
  const ticket = inst.lastTicket;
  if (ticket > inst.durableTicket) {
    await op_do_sync(ticket);
    if (ticket > inst.durableTicket) inst.durableTicket = ticket;
  }
}

function listFor(inst, o) {
  let deletes = 0;
  for (const v of inst.pending.values()) if (v === DELETED) deletes++;
  const fromDisk = inst.deleteAll ? [] : op_do_list(inst.id, {
    prefix: o.prefix ?? null,
    start: o.start ?? null,
    startAfter: o.startAfter ?? null,
    end: o.end ?? null,
    limit: o.limit === undefined ? null : o.limit + deletes,
    reverse: o.reverse,
  });
  return mergeListed(fromDisk, inst.pending, o);
}

function alarmTime(scheduled) {
  let ms = scheduled;
  if (ObjectPrototypeIsPrototypeOf(DatePrototype, scheduled)) {
    ms = DatePrototypeGetTime(scheduled);
  }
  if (typeof ms !== "number" || !Number.isFinite(ms)) {
    throw new TypeError("setAlarm() takes a Date or a number of milliseconds since the epoch");
  }
  return ms;
}

// ---------------------------------------------------------------------------
// The storage API (Cloudflare's `state.storage`)

/** `get(key | keys[])` over a byte reader (the storage's or a transaction's). */
async function getFrom(bytesOf, keys) {
  if (ArrayIsArray(keys)) {
    checkBatch(keys.length);
    keys.forEach(checkKey);
    const out = new Map();
    for (const k of ArrayPrototypeSort([...keys], compareKeys)) {
      const b = bytesOf(k);
      if (b !== null) out.set(k, decode(b));
    }
    return out;
  }
  checkKey(keys);
  const b = bytesOf(keys);
  return b === null ? undefined : decode(b);
}

/** `put(key, value | entries)`: checks everything before writing anything. */
async function putWith(write, keyOrEntries, value) {
  if (typeof keyOrEntries === "object" && keyOrEntries !== null) {
    const keys = ObjectKeys(keyOrEntries);
    checkBatch(keys.length);
    const encoded = [];
    for (const k of keys) {
      checkKey(k);
      ArrayPrototypePush(encoded, [k, encode(keyOrEntries[k])]);
    }
    for (const { 0: k, 1: v } of encoded) write(k, v);
    return;
  }
  checkKey(keyOrEntries);
  write(keyOrEntries, encode(value));
}

/** `delete(key | keys[])`: whether it existed, or how many did. */
async function deleteWith(bytesOf, remove, keys) {
  if (ArrayIsArray(keys)) {
    checkBatch(keys.length);
    keys.forEach(checkKey);
    let n = 0;
    for (const k of keys) {
      if (bytesOf(k) !== null) n++;
      remove(k);
    }
    return n;
  }
  checkKey(keys);
  const existed = bytesOf(keys) !== null;
  remove(keys);
  return existed;
}

class DurableObjectTransaction {
  #inst;
  #writes = new SafeMap();
  #deleteAll = false;
  rolledBack = false;

  constructor(inst) {
    this.#inst = inst;
  }

  #bytes(key) {
    const staged = MapPrototypeGet(this.#writes, key);
    if (staged !== undefined) return staged === DELETED ? null : staged;
    if (this.#deleteAll) return null;
    return readBytes(this.#inst, key);
  }

  get(keys) {
    return getFrom((k) => this.#bytes(k), keys);
  }

  put(keyOrEntries, value) {
    return putWith((k, v) => this.#writes.set(k, v), keyOrEntries, value);
  }

  delete(keys) {
    return deleteWith(
      (k) => this.#bytes(k),
      (k) => this.#writes.set(k, DELETED),
      keys,
    );
  }

  async list(options) {
    const o = listOptions(options);
    const base = this.#deleteAll
      ? new SafeMap()
      : listFor(this.#inst, { ...o, limit: undefined });
    return decodeAll(mergeListed(base, this.#writes, o));
  }

  async deleteAll() {
    this.#writes = new SafeMap();
    this.#deleteAll = true;
  }

  rollback() {
    this.rolledBack = true;
  }

  /** Moves the transaction's writes into the instance's next batch. */
  commitInto(inst) {
    if (this.#deleteAll) {
      inst.pending = new SafeMap();
      inst.deleteAll = true;
    }
    for (const { 0: k, 1: v } of this.#writes) inst.pending.set(k, v);
    queueFlush(inst);
  }
}

class DurableObjectStorage {
  #inst;

  constructor(inst) {
    this.#inst = inst;
  }

  get(keys) {
    const inst = this.#inst;
    return getFrom((k) => readBytes(inst, k), keys);
  }

  put(keyOrEntries, value) {
    const inst = this.#inst;
    return putWith((k, v) => stage(inst, k, v), keyOrEntries, value);
  }

  delete(keys) {
    const inst = this.#inst;
    return deleteWith(
      (k) => readBytes(inst, k),
      (k) => stage(inst, k, DELETED),
      keys,
    );
  }

  async list(options) {
    return decodeAll(listFor(this.#inst, listOptions(options)));
  }

  async deleteAll() {
    const inst = this.#inst;
    inst.pending = new SafeMap();
    inst.deleteAll = true;
    queueFlush(inst);
  }

  async transaction(closure) {
    if (typeof closure !== "function") {
      throw new TypeError("transaction() takes an async function");
    }
    const txn = new DurableObjectTransaction(this.#inst);
    const result = await closure(txn);
    if (!txn.rolledBack) txn.commitInto(this.#inst);
    return result;
  }

  async sync() {
    await outputGate(this.#inst);
  }

  async getAlarm() {
    return op_do_alarm_get(this.#inst.id);
  }

  async setAlarm(scheduled) {
    const inst = this.#inst;
    const ticket = op_do_alarm_set(inst.id, alarmTime(scheduled));
    if (ticket > inst.lastTicket) inst.lastTicket = ticket;
  }

  async deleteAlarm() {
    const inst = this.#inst;
    const ticket = op_do_alarm_set(inst.id, null);
    if (ticket > inst.lastTicket) inst.lastTicket = ticket;
  }
}

export { decode, DurableObjectStorage, flush, Instance, outputGate };
