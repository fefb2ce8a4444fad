// Installs the Web platform globals (Deno's own extension scripts) on globalThis, as Workers expose them.
import { core } from "ext:core/mod.js";

const load = (specifier) => core.loadExtScript(specifier);

const webidl = load("ext:deno_webidl/00_webidl.js");
const url = load("ext:deno_web/00_url.js");
const urlPattern = load("ext:deno_web/01_urlpattern.js");
const domException = load("ext:deno_web/01_dom_exception.js");
const event = load("ext:deno_web/02_event.js");
const structuredClone = load("ext:deno_web/02_structured_clone.js");
const timers = load("ext:deno_web/02_timers.js");
const abortSignal = load("ext:deno_web/03_abort_signal.js");
const base64 = load("ext:deno_web/05_base64.js");
const streams = load("ext:deno_web/06_streams.js");
const encoding = load("ext:deno_web/08_text_encoding.js");
const file = load("ext:deno_web/09_file.js");
const fileReader = load("ext:deno_web/10_filereader.js");
const messagePort = load("ext:deno_web/13_message_port.js");
const compression = load("ext:deno_web/14_compression.js");
const performance = load("ext:deno_web/15_performance.js");
const console = load("ext:deno_web/01_console.js");
const crypto = load("ext:deno_crypto/00_crypto.js");
const headers = load("ext:deno_fetch/20_headers.js");
const formData = load("ext:deno_fetch/21_formdata.js");
const request = load("ext:deno_fetch/23_request.js");
const response = load("ext:deno_fetch/23_response.js");
const fetch = load("ext:deno_fetch/26_fetch.js");
load("ext:deno_fetch/22_body.js");
load("ext:deno_fetch/22_http_client.js");

// Console output never goes to a terminal: no colours.
console.setNoColorFns(() => true, () => true);

const writable = core.propWritable;
const nonEnumerable = core.propNonEnumerable;

core.defineGlobalProperties(globalThis, {
  URL: nonEnumerable(url.URL),
  URLSearchParams: nonEnumerable(url.URLSearchParams),
  URLPattern: nonEnumerable(urlPattern.URLPattern),
  DOMException: nonEnumerable(domException.DOMException),
  Event: nonEnumerable(event.Event),
  EventTarget: nonEnumerable(event.EventTarget),
  ErrorEvent: nonEnumerable(event.ErrorEvent),
  CloseEvent: nonEnumerable(event.CloseEvent),
  CustomEvent: nonEnumerable(event.CustomEvent),
  MessageEvent: nonEnumerable(event.MessageEvent),
  ProgressEvent: nonEnumerable(event.ProgressEvent),
  PromiseRejectionEvent: nonEnumerable(event.PromiseRejectionEvent),
  reportError: writable(event.reportError),
  structuredClone: writable(structuredClone.structuredClone),
  setTimeout: writable(timers.setTimeout),
  setInterval: writable(timers.setInterval),
  clearTimeout: writable(timers.clearTimeout),
  clearInterval: writable(timers.clearInterval),
  AbortController: nonEnumerable(abortSignal.AbortController),
  AbortSignal: nonEnumerable(abortSignal.AbortSignal),
  atob: writable(base64.atob),
  btoa: writable(base64.btoa),
  ReadableStream: nonEnumerable(streams.ReadableStream),
  ReadableStreamDefaultReader: nonEnumerable(
    streams.ReadableStreamDefaultReader,
  ),
  ReadableStreamBYOBReader: nonEnumerable(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: nonEnumerable(streams.ReadableStreamBYOBRequest),
  ReadableByteStreamController: nonEnumerable(
    streams.ReadableByteStreamController,
  ),
  ReadableStreamDefaultController: nonEnumerable(
    streams.ReadableStreamDefaultController,
  ),
  TransformStream: nonEnumerable(streams.TransformStream),
  TransformStreamDefaultController: nonEnumerable(
    streams.TransformStreamDefaultController,
  ),
  WritableStream: nonEnumerable(streams.WritableStream),
  WritableStreamDefaultWriter: nonEnumerable(
    streams.WritableStreamDefaultWriter,
  ),
  WritableStreamDefaultController: nonEnumerable(
    streams.WritableStreamDefaultController,
  ),
  ByteLengthQueuingStrategy: nonEnumerable(streams.ByteLengthQueuingStrategy),
  CountQueuingStrategy: nonEnumerable(streams.CountQueuingStrategy),
  TextEncoder: nonEnumerable(encoding.TextEncoder),
  TextDecoder: nonEnumerable(encoding.TextDecoder),
  TextEncoderStream: nonEnumerable(encoding.TextEncoderStream),
  TextDecoderStream: nonEnumerable(encoding.TextDecoderStream),
  Blob: nonEnumerable(file.Blob),
  File: nonEnumerable(file.File),
  FileReader: nonEnumerable(fileReader.FileReader),
  MessageChannel: nonEnumerable(messagePort.MessageChannel),
  MessagePort: nonEnumerable(messagePort.MessagePort),
  CompressionStream: nonEnumerable(compression.CompressionStream),
  DecompressionStream: nonEnumerable(compression.DecompressionStream),
  Performance: nonEnumerable(performance.Performance),
  PerformanceEntry: nonEnumerable(performance.PerformanceEntry),
  PerformanceMark: nonEnumerable(performance.PerformanceMark),
  PerformanceMeasure: nonEnumerable(performance.PerformanceMeasure),
  performance: writable(performance.performance),
  Crypto: nonEnumerable(crypto.Crypto),
  CryptoKey: nonEnumerable(crypto.CryptoKey),
  SubtleCrypto: nonEnumerable(crypto.SubtleCrypto),
  crypto: core.propGetterOnly(() => crypto.crypto),
  Headers: nonEnumerable(headers.Headers),
  FormData: nonEnumerable(formData.FormData),
  Request: nonEnumerable(request.Request),
  Response: nonEnumerable(response.Response),
  fetch: writable(fetch.fetch),
  navigator: nonEnumerable(Object.freeze({ userAgent: "churn" })),
  self: core.propGetterOnly(() => globalThis),
});

event.saveGlobalThisReference(globalThis);

/** The pieces of the Web APIs that the request path needs directly. */
export const web = {
  console,
  event,
  headers,
  request,
  response,
  streams,
  webidl,
};
