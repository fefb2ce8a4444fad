// The Durable Object host: one isolate per class holds its live instances and delivers each instance's events one at a time (Cloudflare's input gate).
import { core, primordials } from "ext:core/mod.js";
import { http } from "ext:churn_fn/05_http.js";
import { web } from "ext:churn_fn/00_globals.js";
import {
  hideInternals,
  installFetchLimits,
  readConfig,
} from "ext:churn_fn/10_function.js";
import {
  DurableObjectStorage,
  Instance,
  outputGate,
} from "ext:churn_fn/20_do_storage.js";
import {
  CLOSED,
  installWebSocketGlobals,
  kSocketId,
  kUpgrade,
  ownSocket,
  socketFor,
  WebSocketRequestResponsePair,
} from "ext:churn_fn/21_do_sockets.js";

const {
  op_ws_list,
  op_ws_tags,
  op_ws_set_auto_response,
  op_ws_auto_response,
  op_fn_next_request,
  op_fn_done,
} = core.ops;
const {
  ArrayIsArray,
  ArrayPrototypePush,
  ObjectDefineProperty,
  PromiseResolve,
  SafeMap,
  SafeSet,
  String,
  TypeError,
} = primordials;

const { MessageEvent, CloseEvent, ErrorEvent } = web.event;

let config = null;
let ObjectClass = null;
/** Live instances by id. */
const instances = new SafeMap();
/** Instances with events waiting. */
const ready = new SafeSet();

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
// The input gate for I/O: an instance's awaited I/O (fetch, body reads,
// timers, crypto) resumes through the same delivery pump as new events, one
// at a time per instance, so that no two of its continuations can run
// between a storage call and the code that uses its result.

function enqueueResume(inst, fn) {
  ArrayPrototypePush(inst.resumes, fn);
  ready.add(inst);
  schedulePump();
}

/** `promise`, but settling through the input gate of the current instance. */
function gated(promise) {
  const inst = http.currentInstance.get();
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
    const inst = http.currentInstance.get();
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
    http.withRequest(ev.id, () => runEvent(inst, ev), inst);
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
