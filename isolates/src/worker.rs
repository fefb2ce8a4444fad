//! One warm isolate serving one function revision: created from the snapshot,
//! loads the user's module, then serves requests until its job channel closes.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deno_core::{
    JsRuntime, ModuleSpecifier, PollEventLoopOptions, RuntimeOptions, StaticModuleLoader,
};
use tokio::sync::mpsc;

use std::time::Duration;

use crate::buffers::{allocator, Budget};
use crate::entered::EnteredRuntime;
use crate::ext::do_ops::DoContext;
use crate::ext::fn_inbox::{FnConfig, FnInbox};
use crate::invocation::{CodeKind, FunctionCode, Job};
use crate::snapshot::{RESIDUAL_LAZY_ESM, RESIDUAL_LAZY_JS, SNAPSHOT};
use crate::watchdog::{Killed, Slot};

const USER_SPECIFIER: &str = "churn:user";
const MAIN_SPECIFIER: &str = "churn:main";
const WORKERS_SPECIFIER: &str = "cloudflare:workers";

/// The entry module of a function isolate: takes the start function off the
/// global before any user code runs, then imports the user's module through it.
const FUNCTION_MAIN: &str = r#"const start = globalThis.__churnStart;
await start(() => import("churn:user"));
"#;

/// The entry module of a Durable Object class isolate.
const DURABLE_OBJECT_MAIN: &str = r#"const start = globalThis.__churnDoStart;
await start(() => import("churn:user"));
"#;

/// `cloudflare:workers`, the one module Durable Object code may import.
const CLOUDFLARE_WORKERS: &str = r#"export class DurableObject {
  constructor(ctx, env) { this.ctx = ctx; this.env = env; }
}
export class WorkerEntrypoint {
  constructor(ctx, env) { this.ctx = ctx; this.env = env; }
}
export class RpcTarget {}
"#;

fn specifier(s: &str) -> Result<ModuleSpecifier, String> {
    ModuleSpecifier::parse(s).map_err(|e| e.to_string())
}

/// Where user code's outbound `fetch` may not go.
#[derive(Clone, Debug, Default)]
pub struct NetPolicy {
    /// Hosts, `host:port`s, IP addresses and CIDR ranges (`10.0.0.0/8`);
    /// checked against every resolved address before a connection is made.
    pub deny: Vec<String>,
}

static NET_POLICY: std::sync::OnceLock<NetPolicy> = std::sync::OnceLock::new();

/// Sets the process-wide outbound policy (once, before isolates start).
pub fn set_net_policy(policy: NetPolicy) {
    let _ = NET_POLICY.set(policy);
}

fn permissions() -> Result<deno_permissions::PermissionsContainer, String> {
    let parser = Arc::new(deno_permissions::RuntimePermissionDescriptorParser::new(
        sys_traits::impls::RealSys,
    ));
    let deny = NET_POLICY.get().map(|p| p.deny.clone()).unwrap_or_default();
    // Outbound fetch is the only capability user code has (and the op layer
    // offers no file system, process or socket ops at all): net is allowed
    // except for the denied ranges; everything else stays denied.
    let options = deno_permissions::PermissionsOptions {
        allow_net: Some(Vec::new()),
        deny_net: (!deny.is_empty()).then_some(deny),
        prompt: false,
        ..Default::default()
    };
    let perms = deno_permissions::Permissions::from_options(parser.as_ref(), &options)
        .map_err(|e| format!("invalid outbound network policy: {e}"))?;
    Ok(deno_permissions::PermissionsContainer::new(parser, perms))
}

fn new_runtime(code: &FunctionCode, budget: Arc<Budget>) -> Result<JsRuntime, String> {
    let mut modules = vec![(specifier(USER_SPECIFIER)?, code.js.to_string())];
    if matches!(code.kind, CodeKind::DurableObject(_)) {
        modules.push((
            specifier(WORKERS_SPECIFIER)?,
            CLOUDFLARE_WORKERS.to_string(),
        ));
    }
    let loader = StaticModuleLoader::new(modules);
    let heap_max = (code.limits.memory_limit_mb as usize).saturating_mul(1024 * 1024);
    let runtime = JsRuntime::try_new(RuntimeOptions {
        module_loader: Some(Rc::new(loader)),
        startup_snapshot: Some(SNAPSHOT),
        residual_lazy_js_sources: RESIDUAL_LAZY_JS,
        residual_lazy_esm_sources: RESIDUAL_LAZY_ESM,
        extensions: crate::extensions::extensions(),
        create_params: Some(
            deno_core::v8::CreateParams::default()
                .heap_limits(0, heap_max)
                .array_buffer_allocator(allocator(budget)),
        ),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    Ok(runtime)
}

/// Runs one isolate to completion on the current thread. Jobs that arrive
/// while it cannot serve are answered with an error.
pub async fn run_isolate(code: Arc<FunctionCode>, jobs: mpsc::UnboundedReceiver<Job>) {
    let (class_name, idle_ms) = match &code.kind {
        CodeKind::Function => (None, 0),
        CodeKind::DurableObject(b) => (Some(b.class_name.clone()), b.idle_ms),
    };
    let inbox = FnInbox::new(
        jobs,
        FnConfig {
            env: code.env.clone(),
            function_name: code.name.clone(),
            wait_until_ms: code.limits.wait_until_ms,
            class_name,
            idle_ms,
            max_subrequests: code.limits.max_subrequests,
            fetch_timeout_ms: code.limits.fetch_timeout_ms,
        },
    );
    match serve(&code, inbox.clone()).await {
        Ok(()) => {
            if inbox.in_flight() > 0 {
                inbox.fail_all(
                    "the isolate's event loop ended before the request finished",
                    None,
                );
            }
        }
        Err(Failure::Error(message)) => {
            tracing::warn!(app = %code.app, function = %code.name, "isolate stopped: {message}");
            inbox.fail_all(&message, None);
            inbox.reject_queued(&message, None);
        }
        Err(Failure::Killed(killed)) => {
            let message = match killed {
                Killed::Cpu => format!(
                    "the script used more than {} ms of CPU time without yielding",
                    code.limits.cpu_ms
                ),
                Killed::Memory => format!(
                    "the script used more than {} MiB of memory",
                    code.limits.memory_limit_mb
                ),
            };
            tracing::info!(app = %code.app, function = %code.name, "isolate killed: {message}");
            inbox.fail_all(&message, Some(killed.reason()));
            inbox.reject_queued(&message, Some(killed.reason()));
        }
    }
}

/// Why an isolate stopped early.
enum Failure {
    Killed(Killed),
    Error(String),
}

async fn serve(code: &FunctionCode, inbox: Rc<FnInbox>) -> Result<(), Failure> {
    let permissions = permissions().map_err(Failure::Error)?;
    let heap_max = (code.limits.memory_limit_mb as usize).saturating_mul(1024 * 1024);
    let budget = Budget::new(heap_max);
    let mut runtime =
        EnteredRuntime::new(new_runtime(code, budget.clone()).map_err(Failure::Error)?);
    let slot = runtime.with(|runtime| {
        {
            let state = runtime.op_state();
            let mut state = state.borrow_mut();
            state.put(inbox.clone());
            state.put(permissions);
            if let CodeKind::DurableObject(binding) = &code.kind {
                state.put(Rc::new(DoContext {
                    app: code.app.clone(),
                    class: code.name.clone(),
                    store: binding.store.clone(),
                    alarms: binding.alarms.clone(),
                    sockets: binding.sockets.clone(),
                }));
            }
        }
        let handle = runtime.v8_isolate().thread_safe_handle();
        let cpu_limit = match code.limits.cpu_ms {
            0 => Duration::MAX,
            ms => Duration::from_millis(ms),
        };
        let slot = Slot::register(handle, cpu_limit);
        let on_heap_limit = slot.clone();
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            // Stop the script; the isolate is discarded afterwards. Raise the
            // limit a little so V8 can unwind instead of aborting the process.
            on_heap_limit.kill(Killed::Memory);
            current.saturating_mul(2)
        });
        slot
    });
    budget.watch(slot.clone());
    if code.limits.cpu_ms > 0 {
        runtime.watch(slot.clone());
    }
    let result = serve_module(code, &mut runtime, &inbox).await;
    // A terminated isolate may end its event loop with or without an error.
    match (slot.killed(), result) {
        (Some(killed), _) => Err(Failure::Killed(killed)),
        (None, Ok(())) => Ok(()),
        (None, Err(message)) => Err(Failure::Error(message)),
    }
}

/// Loads the user's module and serves events until the job channel closes.
async fn serve_module(
    code: &FunctionCode,
    runtime: &mut EnteredRuntime,
    inbox: &Rc<FnInbox>,
) -> Result<(), String> {
    let main = specifier(MAIN_SPECIFIER)?;
    let entry = match code.kind {
        CodeKind::Function => FUNCTION_MAIN,
        CodeKind::DurableObject(_) => DURABLE_OBJECT_MAIN,
    };
    let id = runtime
        .run(|rt| rt.load_main_es_module_from_code(&main, entry))
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .run(|rt| {
            let evaluation = rt.mod_evaluate(id);
            rt.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default())
        })
        .await
        .map_err(|e| e.to_string())?;
    // Serve until the job channel closes, counting the CPU time spent in JS.
    let cpu = code.cpu_micros.clone();
    let charge = inbox.clone();
    runtime
        .run(|rt| {
            std::future::poll_fn(move |cx| {
                let started = cpu_time::ThreadTime::try_now().ok();
                let result = rt.poll_event_loop(cx, PollEventLoopOptions::default());
                if let Some(spent) = started.and_then(|t| t.try_elapsed().ok()) {
                    let micros = spent.as_micros() as u64;
                    cpu.fetch_add(micros, Ordering::Relaxed);
                    charge.charge_cpu(micros);
                }
                result
            })
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
