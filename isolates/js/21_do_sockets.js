// Durable Object WebSockets: WebSocketPair, the server-side WebSocket (hibernatable or standard), auto-responses.
import { core, primordials } from "ext:core/mod.js";
import { web } from "ext:churn_fn/00_globals.js";
import { http } from "ext:churn_fn/05_http.js";
import { decode, flush, outputGate } from "ext:churn_fn/20_do_storage.js";

const {
  op_ws_create,
  op_ws_accept,
  op_ws_send_text,
  op_ws_send_binary,
  op_ws_close,
  op_ws_set_attachment,
  op_ws_attachment,
} = core.ops;
const {
  ArrayBuffer,
  ArrayPrototypePush,
  ObjectPrototypeIsPrototypeOf,
  RangeError,
  String,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;

const { EventTarget } = web.event;

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
    const inst = http.currentInstance.get();
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

export {
  ClientWebSocket,
  CLOSED,
  installWebSocketGlobals,
  kSocketId,
  kUpgrade,
  ownSocket,
  socketFor,
  WebSocketRequestResponsePair,
};
