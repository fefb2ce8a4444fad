// Shared by the function and Durable Object hosts: request objects in, responses and logs out.
import { core, primordials } from "ext:core/mod.js";
import { web } from "ext:churn_fn/00_globals.js";

const {
  op_fn_respond,
  op_fn_respond_text,
  op_fn_respond_bytes,
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
const { fromInnerRequest } = web.request;
const {
  ResponsePrototype,
  responseBodyUsed,
  toInnerResponseForDenoServe,
  wireHeaderList,
  serveFastStatusKey,
  serveFastBodyKey,
  serveFastConsumedKey,
  serveFastHeaderKindKey,
  serveFastContentTypeKey,
  SERVE_FAST_HEADER_CONTENT_TYPE,
} = web.response;
const { ReadableStream } = web.streams;

const EMPTY = new Uint8Array(0);

/**
 * The event whose code is running, carried across awaits in V8's
 * continuation-preserved embedder data: `{ id, instance }`, the request id
 * (log attribution, fetch limits) and, in Durable Objects, the instance.
 * One small object per event: deno_core's AsyncVariable costs a WeakMap
 * entry and a dictionary-mode object per event, which showed up as GC time
 * on the hello-world benchmark. Nothing else in the isolate reads the slot
 * (timers and promise jobs only carry it along). This is the request id.
 */
const currentRequest = ObjectFreeze({
  get: () => core.getAsyncContext()?.id,
});

/** The Durable Object instance whose code is running. */
const currentInstance = ObjectFreeze({
  get: () => core.getAsyncContext()?.instance,
});

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

/**
 * Sends a response that deno_fetch recorded as static when it was built (a
 * string or bytes body, at most a content type, nothing changed since): one
 * op call, without materialising its body or header list. The same fast
 * path Deno.serve takes.
 */
function sendStatic(id, res) {
  const status = res[serveFastStatusKey];
  const body = res[serveFastBodyKey];
  if (!status || body == null || res[serveFastConsumedKey]) return false;
  res[serveFastConsumedKey] = true;
  const kind = res[serveFastHeaderKindKey];
  const type = kind === SERVE_FAST_HEADER_CONTENT_TYPE
    ? res[serveFastContentTypeKey]
    : "";
  if (typeof body === "string") {
    op_fn_respond_text(id, status, kind, type, body);
  } else {
    op_fn_respond_bytes(id, status, kind, type, body);
  }
  return true;
}

function sendResponse(id, res) {
  if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, res)) {
    const got = res === null ? "null" : typeof res;
    throw new TypeError(
      `handler must return a Response (got ${got}); return new Response(body) or Response.json(data)`,
    );
  }
  if (responseBodyUsed(res)) {
    throw new TypeError(
      "the Response's body was already read; return a new Response",
    );
  }
  if (sendStatic(id, res)) return null;
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

/**
 * The inner request (deno_fetch's `InnerRequest` shape) of a request from
 * the host. A class rather than `newInnerRequest`'s object literal: that
 * literal defines its accessors at run time on every call, which made
 * building a request cost more than the rest of a hello-world request.
 * Headers and the URL list are built on first use.
 */
class IncomingRequest {
  constructor(method, url, flatHeaders, body) {
    this.method = method;
    this.href = url;
    this.flatHeaders = flatHeaders;
    this.headerListInner = null;
    this.urlListInner = null;
    this.urlListProcessedInner = null;
    this.body = body;
    this.redirectMode = "follow";
    this.redirectCount = 0;
    this.clientRid = null;
    this.blobUrlEntry = null;
  }

  get headerList() {
    if (this.headerListInner === null) {
      this.headerListInner = headerList(this.flatHeaders);
      this.flatHeaders = null;
    }
    return this.headerListInner;
  }

  set headerList(value) {
    this.headerListInner = value;
  }

  get urlList() {
    if (this.urlListInner === null) {
      const href = this.href;
      this.urlListInner = [() => href];
    }
    return this.urlListInner;
  }

  set urlList(value) {
    this.urlListInner = value;
  }

  get urlListProcessed() {
    if (this.urlListProcessedInner === null) {
      this.urlListProcessedInner = [this.href];
    }
    return this.urlListProcessedInner;
  }

  set urlListProcessed(value) {
    this.urlListProcessedInner = value;
  }

  url() {
    if (this.urlListInner === null) return this.href;
    const processed = this.urlListProcessed;
    if (processed[0] === undefined) processed[0] = this.urlList[0]();
    return processed[0];
  }

  currentUrl() {
    if (this.urlListInner === null) return this.href;
    const last = this.urlListInner.length - 1;
    const processed = this.urlListProcessed;
    if (processed[last] === undefined) {
      processed[last] = this.urlListInner[last]();
    }
    return processed[last];
  }
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
    new IncomingRequest(r.method, r.url, r.headers, body),
    "immutable",
  );
}

/**
 * Runs `fn` as the code handling request `id` (of Durable Object instance
 * `instance`, or null), so console lines and subrequests are attributed to it.
 */
function withRequest(id, fn, instance = null) {
  const previous = core.getAsyncContext();
  core.setAsyncContext({ id, instance });
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
  currentInstance,
});
