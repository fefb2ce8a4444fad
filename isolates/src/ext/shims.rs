//! Two small stand-ins for Deno extensions that `deno_fetch` loads scripts
//! from (`deno_net` for TLS key pairs, `deno_telemetry` for tracing spans).
//! churn ships neither: user code gets no sockets and no tracer, so these
//! provide just the exports fetch reads, with nothing behind them.

deno_core::extension!(
    deno_net,
    lazy_loaded_js = [dir "js/shims", "02_tls.js"],
);

deno_core::extension!(
    deno_telemetry,
    lazy_loaded_js = [
        dir "js/shims",
        "ext:deno_telemetry/telemetry.ts" = "telemetry.js",
        "ext:deno_telemetry/util.ts" = "telemetry_util.js",
    ],
);
