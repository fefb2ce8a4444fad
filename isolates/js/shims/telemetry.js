// Stand-in for Deno's ext:deno_telemetry/telemetry.ts: tracing is off, so fetch creates no spans.
(function () {
const { internals } = globalThis.__bootstrap;
const DID_NOT_ENTER = Symbol("DID_NOT_ENTER");
internals.__telemetry = {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  DID_NOT_ENTER,
  builtinTracer() {
    throw new Error("telemetry is not available");
  },
  ContextManager: { active: () => undefined },
  enterSpan: () => DID_NOT_ENTER,
  exitSpan: () => {},
};
return internals.__telemetry;
})();
