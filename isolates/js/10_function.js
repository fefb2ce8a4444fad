// The function host inside an isolate: pulls requests from Rust, runs the user's handler, returns responses.
import { core, primordials } from "ext:core/mod.js";
import { http } from "ext:churn_fn/05_http.js";

const { op_fn_next_request, op_fn_done, op_fn_config } = core.ops;
const { ArrayPrototypePush, ObjectDefineProperty, ObjectFreeze, PromiseResolve, TypeError } =
  primordials;

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

async function handle(handler, config, r) {
  const waits = [];
  let error = null;
  try {
    const req = http.makeRequest(r);
    const ctx = ObjectFreeze({
      env: config.env,
      user: r.userId === null ? null : ObjectFreeze({ id: r.userId }),
      caller: ObjectFreeze({ type: r.caller }),
      request: ObjectFreeze({
        id: r.requestId,
        ip: r.ip,
        functionName: config.functionName,
      }),
      waitUntil(promise) {
        ArrayPrototypePush(waits, PromiseResolve(promise));
      },
      passThroughOnException() {},
    });
    const res = await handler(req, ctx);
    await http.sendResponse(r.id, res);
  } catch (e) {
    error = http.describeError(e);
  }
  if (waits.length > 0) await http.settle(r.id, waits, config.waitUntilMs);
  op_fn_done(r.id, error);
}

async function serve(handler, config) {
  while (true) {
    const r = await op_fn_next_request();
    if (r === null) return;
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
  });
}

/**
 * Called once per isolate by the generated entry module: hides the host's
 * internals, imports the user's module and starts serving requests.
 */
async function start(importUserModule) {
  hideInternals();
  const mod = await importUserModule();
  const handler = pickHandler(mod);
  if (handler === null) {
    throw new TypeError(
      "the module exports no handler: add `export async function handler(req, ctx) { ... }`",
    );
  }
  serve(handler, readConfig());
}

ObjectDefineProperty(globalThis, "__churnStart", {
  __proto__: null,
  value: start,
  configurable: true,
  enumerable: false,
  writable: false,
});
