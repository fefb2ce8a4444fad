// The function host inside an isolate: pulls requests from Rust, runs the user's handler, returns responses.
import { core, primordials } from "ext:core/mod.js";
import { web } from "ext:churn_fn/00_globals.js";

const {
  op_fn_next_request,
  op_fn_respond,
  op_fn_stream_write,
  op_fn_stream_end,
  op_fn_log,
  op_fn_done,
  op_fn_config,
} = core.ops;
const {
  ArrayPrototypePush,
  ArrayPrototypeSlice,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  PromiseAllSettled,
  PromiseRace,
  PromiseResolve,
  String,
  TypeError,
  Uint8Array,
  ArrayBufferPrototype,
} = primordials;

const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");
const { newInnerRequest, fromInnerRequest } = web.request;
const { ResponsePrototype, toInnerResponseForDenoServe, wireHeaderList } =
  web.response;
const { ReadableStream } = web.streams;

const EMPTY = new Uint8Array(0);

/** The id of the request whose code is running, carried across awaits. */
const currentRequest = new core.AsyncVariable();

const hostConsole = new web.console.Console((msg, level) => {
  op_fn_log(currentRequest.get() ?? 0, level, msg);
});
core.defineGlobalProperties(globalThis, {
  console: core.propNonEnumerable(hostConsole),
});

function describeError(e) {
  if (e !== null && typeof e === "object" && "message" in e) {
    const stack = typeof e.stack === "string" ? e.stack : null;
    return { message: String(e.message), stack };
  }
  return { message: String(e), stack: null };
}

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

function toBytes(chunk) {
  if (typeof chunk === "string") return core.encode(chunk);
  if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, chunk)) {
    return new Uint8Array(chunk);
  }
  if (ArrayBuffer.isView(chunk)) {
    return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  throw new TypeError("a response stream chunk must be a Uint8Array or a string");
}

async function pump(id, stream) {
  const reader = stream.getReader();
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      if (!(await op_fn_stream_write(id, toBytes(value)))) {
        // The client went away: stop producing.
        await reader.cancel();
        break;
      }
    }
    op_fn_stream_end(id, null);
  } catch (e) {
    op_fn_stream_end(id, describeError(e).message);
    throw e;
  }
}

function sendResponse(id, res) {
  if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, res)) {
    const got = res === null ? "null" : typeof res;
    throw new TypeError(
      `handler must return a Response (got ${got}); return new Response(body) or Response.json(data)`,
    );
  }
  const inner = toInnerResponseForDenoServe(res);
  const headers = wireHeaderList(inner);
  const body = inner.body;
  if (body === null) {
    op_fn_respond(id, inner.status, headers, EMPTY, false);
    return null;
  }
  const source = body.streamOrStatic;
  if (!(source instanceof ReadableStream)) {
    let bytes = source.body;
    if (typeof bytes === "string") bytes = core.encode(bytes);
    source.consumed = true;
    op_fn_respond(id, inner.status, headers, bytes, false);
    return null;
  }
  op_fn_respond(id, inner.status, headers, EMPTY, true);
  return pump(id, body.stream);
}

async function settle(id, waits, waitUntilMs) {
  let timer;
  const deadline = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), waitUntilMs);
  });
  const all = (async () => {
    let seen = 0;
    while (seen < waits.length) {
      const batch = ArrayPrototypeSlice(waits, seen);
      seen = waits.length;
      const results = await PromiseAllSettled(batch);
      for (const r of results) {
        if (r.status === "rejected") {
          op_fn_log(id, 3, `waitUntil promise rejected: ${describeError(r.reason).message}\n`);
        }
      }
    }
    return true;
  })();
  const finished = await PromiseRace([all, deadline]);
  clearTimeout(timer);
  if (!finished) {
    op_fn_log(id, 2, `waitUntil work was cut off ${waitUntilMs} ms after the response\n`);
  }
}

async function handle(handler, config, r) {
  const waits = [];
  let error = null;
  try {
    let body = null;
    if (r.body !== null) {
      body = new InnerBody({ body: r.body, consumed: false });
      body.length = r.body.byteLength;
      body.source = r.body;
    }
    const req = fromInnerRequest(
      newInnerRequest(r.method, r.url, () => r.headers, body, false),
      "immutable",
    );
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
    await sendResponse(r.id, res);
  } catch (e) {
    error = describeError(e);
  }
  if (waits.length > 0) await settle(r.id, waits, config.waitUntilMs);
  op_fn_done(r.id, error);
}

async function serve(handler, config) {
  while (true) {
    const r = await op_fn_next_request();
    if (r === null) return;
    const previous = currentRequest.enter(r.id);
    try {
      handle(handler, config, r);
    } finally {
      core.setAsyncContext(previous);
    }
  }
}

/**
 * Called once per isolate by the generated entry module: hides the host's
 * internals, imports the user's module and starts serving requests.
 */
async function start(importUserModule) {
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
  core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
    op_fn_log(
      currentRequest.get() ?? 0,
      3,
      `Uncaught (in promise) ${describeError(reason).message}\n`,
    );
    return true;
  });
  const mod = await importUserModule();
  const handler = pickHandler(mod);
  if (handler === null) {
    throw new TypeError(
      "the module exports no handler: add `export async function handler(req, ctx) { ... }`",
    );
  }
  const raw = op_fn_config();
  const config = ObjectFreeze({
    env: ObjectFreeze(raw.env),
    functionName: raw.functionName,
    waitUntilMs: raw.waitUntilMs,
  });
  serve(handler, config);
}

ObjectDefineProperty(globalThis, "__churnStart", {
  __proto__: null,
  value: start,
  configurable: true,
  enumerable: false,
  writable: false,
});
