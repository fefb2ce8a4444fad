// The function host inside an isolate: pulls requests from Rust, runs the user's handler, returns responses.
import { core, primordials } from "ext:core/mod.js";
import { http } from "ext:churn_fn/05_http.js";

const { op_fn_next_request, op_fn_try_next_request, op_fn_done, op_fn_config } =
  core.ops;
const {
  ArrayPrototypePush,
  ObjectDefineProperty,
  ObjectFreeze,
  SafePromisePrototypeFinally,
  PromiseReject,
  PromiseResolve,
  SafeMap,
  TypeError,
} = primordials;

/** Finds the entry point: `handler`, a default function, or Workers' `export default { fetch }`. */
function pickHandler(mod) {
  if (typeof mod.handler === "function") return mod.handler;
  const def = mod.default;
  if (typeof def === "function") return def;
  if (def !== null && typeof def === "object" && typeof def.fetch === "function") {
    return (req, ctx) => def.fetch(req, ctx.env, ctx);
  }
  return null;
}

/**
 * The handler's `ctx`. Its parts are built on first use (most handlers read
 * few of them) and cannot be reassigned.
 */
class Context {
  #r;
  #config;
  #user;
  #caller;
  #request;
  /** Promises passed to `waitUntil` (null until there is one). */
  waits = null;

  constructor(r, config) {
    this.#r = r;
    this.#config = config;
  }

  get env() {
    return this.#config.env;
  }

  get user() {
    if (this.#user === undefined) {
      this.#user = this.#r.userId === null ? null : ObjectFreeze({ id: this.#r.userId });
    }
    return this.#user;
  }

  get caller() {
    this.#caller ??= ObjectFreeze({ type: this.#r.caller });
    return this.#caller;
  }

  get request() {
    this.#request ??= ObjectFreeze({
      id: this.#r.requestId,
      ip: this.#r.ip,
      functionName: this.#config.functionName,
    });
    return this.#request;
  }

  waitUntil(promise) {
    this.waits ??= [];
    ArrayPrototypePush(this.waits, PromiseResolve(promise));
  }

  passThroughOnException() {}
}

/** Whether `value` must be awaited (a promise or another thenable). */
function isThenable(value) {
  return value !== null &&
    (typeof value === "object" || typeof value === "function") &&
    typeof value.then === "function";
}

/**
 * Runs one request. A handler that answers synchronously is answered in the
 * same turn (no await in between).
 */
async function handle(handler, config, r) {
  let error = null;
  const ctx = new Context(r, config);
  try {
    const req = http.makeRequest(r);
    let res = handler(req, ctx);
    if (isThenable(res)) res = await res;
    const streaming = http.sendResponse(r.id, res);
    if (streaming !== null) await streaming;
  } catch (e) {
    error = http.describeError(e);
  }
  if (ctx.waits !== null) await http.settle(r.id, ctx.waits, config.waitUntilMs);
  op_fn_done(r.id, error);
}

/**
 * Takes requests from the host: every one already queued at once, then waits
 * for the next.
 */
async function serve(handler, config) {
  while (true) {
    let next = op_fn_try_next_request();
    if (next === null) {
      next = await op_fn_next_request();
      if (next === null) return;
    }
    const r = http.toEvent(next);
    http.withRequest(r.id, () => handle(handler, config, r));
  }
}

/** Hides the host's internals before any user code runs. */
export function hideInternals() {
  delete globalThis.__churnStart;
  delete globalThis.__churnDoStart;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
  http.setUnhandledRejectionLogger();
}

/** Reads the isolate's configuration once. */
export function readConfig() {
  const raw = op_fn_config();
  return ObjectFreeze({
    env: ObjectFreeze(raw.env),
    functionName: raw.functionName,
    className: raw.className,
    waitUntilMs: raw.waitUntilMs,
    idleMs: raw.idleMs,
    maxSubrequests: raw.maxSubrequests,
    fetchTimeoutMs: raw.fetchTimeoutMs,
  });
}

/**
 * Outbound fetch limits: at most `maxSubrequests` in flight per request, each
 * cut off after `fetchTimeoutMs`. (Where fetch may connect to is enforced in
 * Rust, on every resolved address.)
 */
export function installFetchLimits(config) {
  const inner = globalThis.fetch;
  const inFlight = new SafeMap();
  const release = (id) => {
    const n = inFlight.get(id) - 1;
    if (n <= 0) inFlight.delete(id);
    else inFlight.set(id, n);
  };
  function fetch(input, init = undefined) {
    const id = http.currentRequest.get() ?? 0;
    const n = inFlight.get(id) ?? 0;
    if (n >= config.maxSubrequests) {
      return PromiseReject(
        new TypeError(
          `too many concurrent subrequests: at most ${config.maxSubrequests} fetches may be in flight per request`,
        ),
      );
    }
    const timeout = AbortSignal.timeout(config.fetchTimeoutMs);
    let userSignal = init?.signal;
    if (userSignal === undefined && input instanceof Request) {
      userSignal = input.signal;
    }
    const signal = userSignal ? AbortSignal.any([userSignal, timeout]) : timeout;
    inFlight.set(id, n + 1);
    let promise;
    try {
      promise = inner(input, { ...init, signal });
    } catch (e) {
      release(id);
      throw e;
    }
    return SafePromisePrototypeFinally(promise, () => release(id));
  }
  globalThis.fetch = fetch;
}

/**
 * Called once per isolate by the generated entry module: hides the host's
 * internals, imports the user's module and starts serving requests.
 */
async function start(importUserModule) {
  hideInternals();
  const config = readConfig();
  installFetchLimits(config);
  const mod = await importUserModule();
  const handler = pickHandler(mod);
  if (handler === null) {
    throw new TypeError(
      "the module exports no handler: add `export async function handler(req, ctx) { ... }`",
    );
  }
  serve(handler, config);
}

ObjectDefineProperty(globalThis, "__churnStart", {
  __proto__: null,
  value: start,
  configurable: true,
  enumerable: false,
  writable: false,
});
