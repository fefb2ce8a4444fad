// The Durable Object host: one isolate per class holds its live instances, delivers each instance's events one at a time (Cloudflare's input gate) and keeps their storage.
import { core, primordials } from "ext:core/mod.js";
import { http } from "ext:churn_fn/05_http.js";
import { web } from "ext:churn_fn/00_globals.js";
import {
  hideInternals,
  installFetchLimits,
  readConfig,
} from "ext:churn_fn/10_function.js";

const {
  op_ws_create,
  op_ws_accept,
  op_ws_send_text,
  op_ws_send_binary,
  op_ws_close,
  op_ws_list,
  op_ws_tags,
  op_ws_set_attachment,
  op_ws_attachment,
  op_ws_set_auto_response,
  op_ws_auto_response,
  op_fn_next_request,
  op_fn_done,
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
  DatePrototypeGetTime,
  MapPrototypeGet,
  NumberIsInteger,
  ObjectDefineProperty,
  ObjectKeys,
  ObjectPrototypeIsPrototypeOf,
  DatePrototype,
  PromiseResolve,
  RangeError,
  SafeMap,
  SafeSet,
  String,
  StringPrototypeCodePointAt,
  StringPrototypeStartsWith,
  Symbol,
  TypeError,
  ArrayBuffer,
  Uint8Array,
} = primordials;

const { EventTarget, MessageEvent, CloseEvent, ErrorEvent } = web.event;

const MAX_KEY_BYTES = 2048;
const MAX_VALUE_BYTES = 131072;
const MAX_BATCH = 128;
const DELETED = Symbol("deleted");

let config = null;
let ObjectClass = null;
/** Live instances by id. */
const instances = new SafeMap();
/** Instances with events waiting. */
const ready = new SafeSet();

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

class DurableObjectId {
  #id;
  constructor(id) {
    this.#id = id;
  }
  toString() {
    return this.#id;
  }
  get name() {
    return this.#id;
  }
  equals(other) {
    return other !== null && other !== undefined && String(other) === this.#id;
  }
}

class DurableObjectState {
  #inst;
  #generation;

  constructor(inst) {
    this.#inst = inst;
    this.#generation = inst.generation;
    this.id = new DurableObjectId(inst.id);
    this.storage = new DurableObjectStorage(inst);
  }

  /** Holds every other event of this instance until `fn` settles. */
  blockConcurrencyWhile(fn) {
    const inst = this.#inst;
    const generation = this.#generation;
    inst.blocked++;
    let promise;
    try {
      promise = PromiseResolve(fn());
    } catch (e) {
      promise = Promise.reject(e);
    }
    return promise.then(
      (value) => {
        inst.blocked--;
        schedulePump();
        return value;
      },
      (error) => {
        inst.blocked--;
        if (inst.generation === generation) resetInstance(inst);
        schedulePump();
        throw error;
      },
    );
  }

  acceptWebSocket(ws, tags = []) {
    const inst = this.#inst;
    ownSocket(inst, ws);
    if (!ArrayIsArray(tags) || tags.some((t) => typeof t !== "string")) {
      throw new TypeError("tags must be an array of strings");
    }
    ws.markHibernatable(tags);
  }

  getWebSockets(tag = undefined) {
    const inst = this.#inst;
    return op_ws_list(inst.id, tag ?? null).map((id) => socketFor(inst, id));
  }

  getTags(ws) {
    return op_ws_tags(ownSocket(this.#inst, ws));
  }

  setWebSocketAutoResponse(pair = undefined) {
    if (pair === undefined || pair === null) {
      op_ws_set_auto_response(this.#inst.id, null);
      return;
    }
    if (!(pair instanceof WebSocketRequestResponsePair)) {
      throw new TypeError("setWebSocketAutoResponse takes a WebSocketRequestResponsePair");
    }
    op_ws_set_auto_response(this.#inst.id, [pair.request, pair.response]);
  }

  getWebSocketAutoResponse() {
    const pair = op_ws_auto_response(this.#inst.id);
    return pair === null ? null : new WebSocketRequestResponsePair(pair[0], pair[1]);
  }

  waitUntil(promise) {
    PromiseResolve(promise).catch((e) =>
      http.log(0, 3, `waitUntil promise rejected: ${http.describeError(e).message}\n`)
    );
  }
}

/** Drops the instance's object (its storage stays); the next event builds a new one. */
function resetInstance(inst) {
  inst.object = null;
  inst.state = null;
  inst.pending = new SafeMap();
  inst.deleteAll = false;
  inst.generation++;
}

function ensureObject(inst) {
  if (inst.object !== null) return;
  const state = new DurableObjectState(inst);
  inst.state = state;
  inst.object = new ObjectClass(state, config.env);
}

// ---------------------------------------------------------------------------
// WebSockets (Cloudflare's API, with hibernation)

const kSocketId = Symbol("socket id");
const kUpgrade = Symbol("webSocket upgrade");
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** Sends queued behind unflushed writes go out once those are durable. */
async function drainSends(inst) {
  inst.sendDraining = true;
  try {
    while (inst.sendQueue.length > 0) {
      await outputGate(inst);
      const batch = inst.sendQueue.splice(0);
      for (const send of batch) send();
    }
  } finally {
    inst.sendDraining = false;
  }
}

function toSocketBytes(data) {
  if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, data)) {
    return new Uint8Array(data);
  }
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  throw new TypeError("WebSocket.send() takes a string, an ArrayBuffer or a typed array");
}

class WebSocket extends EventTarget {
  #inst;
  #hibernatable = false;
  #accepted = false;
  readyState = OPEN;

  constructor(inst, id, hibernatable) {
    super();
    this.#inst = inst;
    this[kSocketId] = id;
    this.#hibernatable = hibernatable;
    this.#accepted = hibernatable;
  }

  static get CONNECTING() { return 0; }
  static get OPEN() { return OPEN; }
  static get CLOSING() { return CLOSING; }
  static get CLOSED() { return CLOSED; }

  get url() { return null; }
  get protocol() { return ""; }
  get extensions() { return ""; }

  get hibernatable() { return this.#hibernatable; }
  get accepted() { return this.#accepted; }

  /** The standard model: events arrive as "message"/"close"/"error". */
  accept() {
    if (this.#accepted) throw new TypeError("this WebSocket was already accepted");
    op_ws_accept(this[kSocketId], false, []);
    this.#accepted = true;
    this.#inst.standardSockets++;
  }

  markHibernatable(tags) {
    if (this.#accepted) throw new TypeError("this WebSocket was already accepted");
    op_ws_accept(this[kSocketId], true, tags);
    this.#accepted = true;
    this.#hibernatable = true;
  }

  send(data) {
    if (this.readyState !== OPEN) {
      throw new TypeError("the WebSocket is not open");
    }
    const id = this[kSocketId];
    const send = typeof data === "string"
      ? () => op_ws_send_text(id, data)
      : ((bytes) => () => op_ws_send_binary(id, bytes))(toSocketBytes(data));
    const inst = this.#inst;
    flush(inst);
    if (inst.lastTicket <= inst.durableTicket && inst.sendQueue.length === 0) {
      send();
      return;
    }
    ArrayPrototypePush(inst.sendQueue, send);
    if (!inst.sendDraining) drainSends(inst);
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    const id = this[kSocketId];
    const inst = this.#inst;
    const close = () => op_ws_close(id, code, String(reason));
    if (inst.sendQueue.length > 0 || inst.lastTicket > inst.durableTicket) {
      ArrayPrototypePush(inst.sendQueue, close);
      if (!inst.sendDraining) drainSends(inst);
    } else {
      close();
    }
  }

  serializeAttachment(value) {
    const bytes = value === undefined || value === null
      ? null
      : core.serialize(value, { forStorage: true });
    op_ws_set_attachment(this[kSocketId], bytes);
  }

  deserializeAttachment() {
    const bytes = op_ws_attachment(this[kSocketId]);
    return bytes === null ? null : decode(bytes);
  }
}

/** The half of a pair handed to `new Response(null, { status: 101, webSocket })`. */
class ClientWebSocket {
  constructor(id) {
    this[kSocketId] = id;
  }
}

class WebSocketPair {
  constructor() {
    const inst = currentInstance.get();
    if (inst === undefined) {
      throw new TypeError("WebSocketPair can only be created while a Durable Object handles an event");
    }
    const id = op_ws_create(inst.id);
    const server = new WebSocket(inst, id, false);
    inst.sockets.set(id, server);
    this[0] = new ClientWebSocket(id);
    this[1] = server;
  }
}

class WebSocketRequestResponsePair {
  #request;
  #response;
  constructor(request, response) {
    if (typeof request !== "string" || typeof response !== "string") {
      throw new TypeError("WebSocketRequestResponsePair takes two strings");
    }
    this.#request = request;
    this.#response = response;
  }
  get request() { return this.#request; }
  get response() { return this.#response; }
}

/** The wrapper for socket `id` of `inst` (rebuilt after an eviction). */
function socketFor(inst, id) {
  let ws = inst.sockets.get(id);
  if (ws === undefined) {
    ws = new WebSocket(inst, id, true);
    inst.sockets.set(id, ws);
  }
  return ws;
}

function ownSocket(inst, ws) {
  const id = ws?.[kSocketId];
  if (id === undefined || inst.sockets.get(id) !== ws) {
    throw new TypeError("not a WebSocket of this Durable Object");
  }
  return id;
}

/** Lets `new Response(null, { status: 101, webSocket })` through. */
function installWebSocketGlobals() {
  const BaseResponse = globalThis.Response;
  class Response extends BaseResponse {
    constructor(body = null, init = undefined) {
      if (init?.status === 101) {
        const ws = init.webSocket;
        if (ws?.[kSocketId] === undefined || !(ws instanceof ClientWebSocket)) {
          throw new RangeError("a 101 response needs webSocket: the client half of a WebSocketPair");
        }
        super(null, { ...init, status: 200 });
        this[kUpgrade] = ws;
      } else {
        super(body, init);
      }
    }
    get status() {
      return this[kUpgrade] ? 101 : super.status;
    }
    get webSocket() {
      return this[kUpgrade] ?? null;
    }
  }
  core.defineGlobalProperties(globalThis, {
    Response: core.propNonEnumerable(Response),
    WebSocket: core.propNonEnumerable(WebSocket),
    WebSocketPair: core.propNonEnumerable(WebSocketPair),
    WebSocketRequestResponsePair: core.propNonEnumerable(WebSocketRequestResponsePair),
  });
}

// ---------------------------------------------------------------------------
// The input gate for I/O: an instance's awaited I/O (fetch, body reads,
// timers, crypto) resumes through the same delivery pump as new events, one
// at a time per instance, so that no two of its continuations can run
// between a storage call and the code that uses its result.

/** The instance whose code is running, carried across awaits. */
const currentInstance = new core.AsyncVariable();

function enqueueResume(inst, fn) {
  ArrayPrototypePush(inst.resumes, fn);
  ready.add(inst);
  schedulePump();
}

/** `promise`, but settling through the input gate of the current instance. */
function gated(promise) {
  const inst = currentInstance.get();
  if (inst === undefined) return promise;
  return new Promise((resolve, reject) => {
    promise.then(
      (value) => enqueueResume(inst, () => resolve(value)),
      (error) => enqueueResume(inst, () => reject(error)),
    );
  });
}

function gateMethods(proto, names) {
  for (const name of names) {
    const original = proto[name];
    if (typeof original !== "function") continue;
    ObjectDefineProperty(proto, name, {
      __proto__: null,
      value: function (...args) {
        return gated(original.apply(this, args));
      },
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
}

function gateTimer(original) {
  return function (callback, delay, ...args) {
    const inst = currentInstance.get();
    if (inst === undefined || typeof callback !== "function") {
      return original(callback, delay, ...args);
    }
    return original(() => enqueueResume(inst, () => callback(...args)), delay);
  };
}

/** Routes every I/O completion of instance code through the input gate. */
function installInputGate() {
  const fetch = globalThis.fetch;
  globalThis.fetch = function fetch_(...args) {
    return gated(fetch(...args));
  };
  ObjectDefineProperty(globalThis.fetch, "name", { value: "fetch" });
  const bodyMethods = ["arrayBuffer", "blob", "bytes", "formData", "json", "text"];
  gateMethods(globalThis.Response.prototype, bodyMethods);
  gateMethods(globalThis.Request.prototype, bodyMethods);
  gateMethods(globalThis.SubtleCrypto.prototype, [
    "decrypt", "deriveBits", "deriveKey", "digest", "encrypt", "exportKey",
    "generateKey", "importKey", "sign", "unwrapKey", "verify", "wrapKey",
  ]);
  globalThis.setTimeout = gateTimer(globalThis.setTimeout);
  globalThis.setInterval = gateTimer(globalThis.setInterval);
}

/** Runs `fn` as code of `inst` handling event `id`. */
function asInstance(inst, id, fn) {
  const previous = currentInstance.enter(inst);
  try {
    return http.withRequest(id, fn);
  } finally {
    core.setAsyncContext(previous);
  }
}

// ---------------------------------------------------------------------------
// Event delivery

async function runEvent(inst, ev) {
  let error = null;
  try {
    const object = inst.object;
    if (ev.kind === "alarm") {
      if (typeof object.alarm !== "function") {
        throw new TypeError(`${config.className} has no alarm() method`);
      }
      await object.alarm({ retryCount: ev.retryCount, isRetry: ev.retryCount > 0 });
      await outputGate(inst);
    } else if (ev.kind === "ws_message") {
      const ws = socketFor(inst, ev.socket);
      const data = ev.text ?? ev.binary.buffer;
      if (ws.hibernatable) {
        if (typeof object.webSocketMessage === "function") {
          await object.webSocketMessage(ws, data);
        }
      } else {
        ws.dispatchEvent(new MessageEvent("message", { data }));
      }
      await outputGate(inst);
    } else if (ev.kind === "ws_close" || ev.kind === "ws_error") {
      const ws = socketFor(inst, ev.socket);
      inst.sockets.delete(ev.socket);
      if (!ws.hibernatable && ws.accepted) inst.standardSockets--;
      if (ev.kind === "ws_error") {
        if (ws.hibernatable) {
          if (typeof object.webSocketError === "function") {
            await object.webSocketError(ws, new Error(ev.reason));
          }
        } else {
          ws.dispatchEvent(new ErrorEvent("error", { message: ev.reason }));
        }
      } else {
        ws.readyState = CLOSED;
        if (ws.hibernatable) {
          if (typeof object.webSocketClose === "function") {
            await object.webSocketClose(ws, ev.code, ev.reason, ev.wasClean);
          }
        } else {
          ws.dispatchEvent(
            new CloseEvent("close", { code: ev.code, reason: ev.reason, wasClean: ev.wasClean }),
          );
        }
      }
      await outputGate(inst);
    } else {
      if (typeof object.fetch !== "function") {
        throw new TypeError(`${config.className} has no fetch() method`);
      }
      const res = await object.fetch(http.makeRequest(ev));
      await outputGate(inst);
      const client = res?.[kUpgrade];
      if (client !== undefined) {
        const server = inst.sockets.get(client[kSocketId]);
        if (server === undefined || !server.accepted) {
          throw new TypeError(
            "call server.accept() or state.acceptWebSocket(server) before returning the 101 response",
          );
        }
        http.respondHead(ev.id, 101, [["x-churn-websocket", String(client[kSocketId])]]);
      } else {
        await http.sendResponse(ev.id, res);
      }
    }
  } catch (e) {
    error = http.describeError(e);
    try {
      await outputGate(inst);
    } catch (gateError) {
      error = http.describeError(gateError);
    }
  } finally {
    inst.active--;
    inst.lastUsed = Date.now();
  }
  op_fn_done(ev.id, error);
}

let pumpQueued = false;

function makeImmediate(fn) {
  const immediate = {
    _idleNext: null,
    _idlePrev: null,
    _onImmediate: fn,
    _argv: undefined,
    _destroyed: false,
    asyncId: 0,
    triggerAsyncId: 0,
  };
  immediate[core.kRefed] = true;
  return immediate;
}

/**
 * Delivery runs as an immediate: after every microtask of the previous
 * phase has drained, so a new event never starts while another event of the
 * same instance is between a storage call and its continuation.
 */
function schedulePump() {
  if (pumpQueued) return;
  pumpQueued = true;
  core.immediateRefCount(true);
  core.queueImmediate(makeImmediate(pump));
}

/** Resumes or starts at most one thing per instance. */
function pump() {
  pumpQueued = false;
  let more = false;
  for (const inst of ready) {
    if (inst.resumes.length > 0) {
      const resume = inst.resumes.shift();
      resume();
      more = more || inst.resumes.length > 0 || inst.queue.length > 0;
      continue;
    }
    if (inst.queue.length === 0) {
      ready.delete(inst);
      continue;
    }
    if (inst.object === null) {
      try {
        ensureObject(inst);
      } catch (e) {
        resetInstance(inst);
        const ev = inst.queue.shift();
        op_fn_done(ev.id, http.describeError(e));
        more = more || inst.queue.length > 0;
        continue;
      }
    }
    if (inst.blocked > 0) continue;
    const ev = inst.queue.shift();
    if (inst.queue.length === 0) ready.delete(inst);
    else more = true;
    inst.active++;
    inst.lastUsed = Date.now();
    asInstance(inst, ev.id, () => runEvent(inst, ev));
  }
  if (more) schedulePump();
}

function sweep() {
  const now = Date.now();
  for (const inst of instances.values()) {
    if (
      inst.active === 0 && inst.queue.length === 0 && inst.blocked === 0 &&
      !inst.flushQueued && inst.pending.size === 0 && !inst.deleteAll &&
      inst.resumes.length === 0 && inst.standardSockets === 0 &&
      inst.sendQueue.length === 0 &&
      now - inst.lastUsed >= config.idleMs
    ) {
      instances.delete(inst.id);
      ready.delete(inst);
    }
  }
}

async function serve() {
  const sweeper = setInterval(sweep, Math.max(10, Math.min(config.idleMs, 5000)));
  while (true) {
    const next = await op_fn_next_request();
    if (next === null) break;
    const ev = http.toEvent(next);
    let inst = instances.get(ev.instance);
    if (inst === undefined) {
      inst = new Instance(ev.instance);
      instances.set(ev.instance, inst);
    }
    ArrayPrototypePush(inst.queue, ev);
    inst.lastUsed = Date.now();
    ready.add(inst);
    schedulePump();
  }
  clearInterval(sweeper);
}

async function start(importUserModule) {
  hideInternals();
  config = readConfig();
  installFetchLimits(config);
  installInputGate();
  installWebSocketGlobals();
  const mod = await importUserModule();
  ObjectClass = mod[config.className];
  if (typeof ObjectClass !== "function") {
    throw new TypeError(`the module does not export the class ${config.className}`);
  }
  serve();
}

ObjectDefineProperty(globalThis, "__churnDoStart", {
  __proto__: null,
  value: start,
  configurable: true,
  enumerable: false,
  writable: false,
});
