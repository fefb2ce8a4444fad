// Stand-in for Deno's ext:deno_telemetry/util.ts: span helpers that do nothing while tracing is off.
(function () {
const { internals } = globalThis.__bootstrap;
internals.__telemetryUtil = {
  updateSpanFromClientResponse() {},
  updateSpanFromError() {},
  updateSpanFromRequest() {},
};
return internals.__telemetryUtil;
})();
