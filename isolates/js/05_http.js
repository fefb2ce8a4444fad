// Shared by the function and Durable Object hosts: request objects in, responses and logs out.
import { core, primordials } from "ext:core/mod.js";
import { web } from "ext:churn_fn/00_globals.js";

const {
  op_fn_respond,
  op_fn_stream_write,
  op_fn_stream_end,
  op_fn_log,
} = core.ops;
const {
  ArrayPrototypePush,
  ArrayPrototypeSlice,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  PromiseAllSettled,
  PromiseRace,
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

/** The event array from `op_fn_next_request` as an object. */
function toEvent(a) {
  return {
    id: a[0],
    kind: a[1],
    instance: a[2],
    retryCount: a[3],
    socket: a[4],
    text: a[5],
    binary: a[6],
    code: a[7],
    reason: a[8],
    wasClean: a[9],
    method: a[10],
    url: a[11],
    headers: a[12],
    body: a[13],
    userId: a[14],
    caller: a[15],
    requestId: a[16],
    ip: a[17],
  };
}

/** `[name, value, name, value, ...]` as the `[[name, value], ...]` fetch wants. */
function headerList(flat) {
  const list = [];
  for (let i = 0; i + 1 < flat.length; i += 2) {
    ArrayPrototypePush(list, [flat[i], flat[i + 1]]);
  }
  return list;
}

/** Builds the `Request` for an event from the host. */
function makeRequest(r) {
  let body = null;
  if (r.body !== null) {
    body = new InnerBody({ body: r.body, consumed: false });
    body.length = r.body.byteLength;
    body.source = r.body;
  }
  return fromInnerRequest(
    newInnerRequest(r.method, r.url, () => headerList(r.headers), body, false),
    "immutable",
  );
}

/** Runs `fn` with `id` as the current request (for console attribution). */
function withRequest(id, fn) {
  const previous = currentRequest.enter(id);
  try {
    return fn();
  } finally {
    core.setAsyncContext(previous);
  }
}

function log(id, level, message) {
  op_fn_log(id, level, message);
}

function setUnhandledRejectionLogger() {
  core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
    op_fn_log(
      currentRequest.get() ?? 0,
      3,
      `Uncaught (in promise) ${describeError(reason).message}\n`,
    );
    return true;
  });
}

/** Sends a response head with no body (a WebSocket upgrade). */
function respondHead(id, status, headers) {
  op_fn_respond(id, status, headers, EMPTY, false);
}

export const http = ObjectFreeze({
  toEvent,
  respondHead,
  describeError,
  makeRequest,
  sendResponse,
  settle,
  withRequest,
  log,
  setUnhandledRejectionLogger,
  currentRequest,
});
