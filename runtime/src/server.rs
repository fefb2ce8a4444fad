//! The HTTP server: accepts connections, routes each request to the control
//! API or the data plane, and shuts down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::host::SharedHost;
use crate::http::{error_response, json, Body};

/// The app named by the Host header, when it is `<app>.<domain>`.
fn app_from_host(host: &SharedHost, req: &Request<Incoming>) -> Option<String> {
    let domain = host.config.domain.as_deref()?;
    let value = req.headers().get(hyper::header::HOST)?.to_str().ok()?;
    let name = value.split(':').next()?;
    let app = name.strip_suffix(domain)?.strip_suffix('.')?;
    crate::validate::is_app_id(app).then(|| app.to_string())
}

/// The path after the first `skip` segments, with its leading slash.
fn tail(path: &str, skip: usize) -> &str {
    let mut rest = path;
    for _ in 0..skip {
        rest = rest.trim_start_matches('/');
        rest = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    }
    rest
}

/// `uri` is the request's own (a clone shares its bytes), so the path stays
/// borrowable while the request moves on.
async fn route(
    host: SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
    uri: &hyper::Uri,
) -> Response<Body> {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let (Some(app), ["_do", name, id, ..]) = (app_from_host(&host, &req), segments.as_slice()) {
        let rest = tail(path, 3);
        return Box::pin(crate::object_plane::serve_object(
            &host, req, remote, &app, name, id, rest,
        ))
        .await;
    }
    match segments.as_slice() {
        ["v1", app, "_do", name, id, ..] => {
            let rest = tail(path, 5);
            Box::pin(crate::object_plane::serve_object(
                &host, req, remote, app, name, id, rest,
            ))
            .await
        }
        ["health"] if req.method() == Method::GET => {
            json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
        }
        // Lets the test suite prove that a panic costs only its request.
        ["_churn", "test", "panic"] if host.config.test_routes => {
            panic!("deliberate panic for the test suite")
        }
        ["v1", app, "realtime"] if req.method() == Method::GET => {
            Box::pin(crate::realtime::serve_realtime(&host, req, remote, app)).await
        }
        ["v1", app, "fn", name, ..] => {
            crate::data_plane::serve_function(&host, req, remote, app, name).await
        }
        ["v1", app, rest @ ..] if !rest.is_empty() => {
            // Boxed, like the other rarer routes, so that the future hyper
            // holds for every request stays the size of the data plane's.
            Box::pin(crate::api::handle(&host, req, app, rest)).await
        }
        _ => error_response(&crate::api::route_not_found(path)),
    }
}

/// Routes one request; a panic becomes a 500 and the host keeps serving.
async fn handle(
    host: SharedHost,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    match AssertUnwindSafe(route(host, req, remote, &uri))
        .catch_unwind()
        .await
    {
        Ok(res) => Ok(res),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let id = uuid::Uuid::new_v4();
            let path = uri.path();
            tracing::error!(request_id = %id, %method, %path, "panic while handling a request: {what}");
            Ok(error_response(&ApiError::internal(format!(
                "internal error (request id {id})"
            ))))
        }
    }
}

/// Runs hyper's background tasks (HTTP/2 streams) on the worker thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// One worker's accept loop: serves connections on this thread until told to
/// stop, then lets its open connections finish (up to 10 s).
async fn accept_loop(
    host: SharedHost,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("worker cannot listen: {e}");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(LocalExec);
    // One buffer per response, sent with one send(2): cheaper in the kernel
    // than writev(2) of the head and body for the small responses most
    // functions give.
    builder.http1().writev(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let host = host.clone();
                let service = service_fn(move |req| handle(host.clone(), req, remote));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::task::spawn_local(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {remote} ended: {e}");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after 10 s");
    }
    drop(done);
}

/// Serves on every worker thread until `shutdown` resolves, then lets open
/// connections finish and flushes every app's data.
pub async fn serve(
    host: SharedHost,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let pool = host.apps.dispatcher.pool().clone();
    let mut listeners = Vec::new();
    for _ in 0..pool.threads() {
        let l = listener.try_clone()?;
        l.set_nonblocking(true)?;
        listeners.push(std::sync::Mutex::new(Some(l)));
    }
    let listeners = std::sync::Arc::new(listeners);
    {
        let host = host.clone();
        pool.spawn_on_each(std::sync::Arc::new(move |index: usize| {
            let host = host.clone();
            let stop = stop_rx.clone();
            let done = done_tx.clone();
            let listener = listeners
                .get(index)
                .and_then(|l| l.lock().ok().and_then(|mut l| l.take()));
            Box::pin(async move {
                if let Some(listener) = listener {
                    accept_loop(host, listener, stop, done).await;
                }
            })
        }));
    }
    drop(listener);

    let housekeeping = {
        let host = host.clone();
        tokio::spawn(async move {
            let idle = Duration::from_secs(host.config.isolate_idle_secs);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            for round in 0u64.. {
                tick.tick().await;
                let apps = host.clone();
                // Disk writes stay off the request path.
                let _ = tokio::task::spawn_blocking(move || apps.apps.flush_logs()).await;
                if round % 60 == 59 {
                    host.apps.dispatcher.pool().evict_idle(idle);
                    host.apps.persist_usage();
                }
            }
        })
    };
    shutdown.await;
    let _ = stop_tx.send(true);
    // Every worker drops its `done` sender once its connections are closed.
    let _ = done_rx.recv().await;
    housekeeping.abort();
    host.apps.flush_all();
    Ok(())
}
