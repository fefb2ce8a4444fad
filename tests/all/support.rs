//! Starting the real binary and talking HTTP to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// A running `churn serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub key: String,
    pub http: Http,
}

impl Server {
    /// Starts on a fresh data directory and reads the first service key.
    pub fn start(data_dir: &Path) -> Server {
        Self::spawn(data_dir, None, &[])
    }

    /// Starts on an existing data directory whose key is already known.
    pub fn restart(data_dir: &Path, key: &str) -> Server {
        Self::spawn(data_dir, Some(key.to_string()), &[])
    }

    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, None, env)
    }

    /// Starts with a known key (if any) and extra environment.
    pub fn spawn_with(data_dir: &Path, key: Option<String>, env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, key, env)
    }

    fn spawn(data_dir: &Path, key: Option<String>, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_churn"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("CHURN_CONFIG")
            .env("CHURN_LOG", "warn")
            // Tests fetch a local helper server (Gate); the default blocks
            // private addresses, which limits.rs checks on its own.
            .env("CHURN_FETCH_ALLOW_PRIVATE", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn churn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut key = key;
        let base = loop {
            let line = lines
                .next()
                .expect("churn exited before listening")
                .expect("read stdout");
            if let Some(rest) = line.split("store it now): ").nth(1) {
                key = Some(rest.trim().to_string());
            }
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            key: key.expect("no service key was printed"),
            http: Http::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the process (no graceful shutdown).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A control-API call with the service key.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {}", self.key);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.http
            .send(
                method,
                &self.url(path),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
    }

    /// Deploys `code` as function `name` of `app` with extra fields merged in.
    pub async fn deploy(&self, app: &str, name: &str, code: &str, extra: Value) -> Resp {
        let mut body = json!({ "name": name, "code": code });
        if let (Some(obj), Some(more)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        self.api("POST", &format!("/v1/{app}/functions"), Some(body))
            .await
    }

    /// Deploys a function anyone may call.
    pub async fn deploy_public(&self, app: &str, name: &str, code: &str) -> Resp {
        let res = self
            .deploy(
                app,
                name,
                code,
                json!({ "trigger": { "type": "http", "config": { "auth": "none" } } }),
            )
            .await;
        assert!(
            res.status == 201 || res.status == 200,
            "deploy failed: {res:?}"
        );
        res
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.http.send("GET", &self.url(path), &[], "").await
    }

    /// Waits until the function's logs hold `n` entries (they are written
    /// after the response) and returns them, newest first.
    pub async fn logs(&self, app: &str, name: &str, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let res = self
                .api(
                    "GET",
                    &format!("/v1/{app}/functions/{name}/logs?limit=1000"),
                    None,
                )
                .await;
            let logs = res.json()["logs"].as_array().cloned().unwrap_or_default();
            if logs.len() >= n {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fewer than {n} log entries appeared for {app}/{name}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Http {
    pub fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The underlying client, for requests that may fail.
    pub fn raw(&self) -> &Client<HttpConnector, Full<Bytes>> {
        &self.client
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        self.client.request(req).await.expect("send request")
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let res = self.request(method, url, headers, body).await;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("read body")
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A local HTTP server that user code can `fetch`, to make tests
/// deterministic: `GET /wait/<name>` blocks until the test calls
/// [`Gate::open`]; `GET /hit/<name>` is counted.
pub struct Gate {
    pub base: String,
    state: std::sync::Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    gates:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
    hits: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl GateState {
    fn gate(&self, name: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        self.gates
            .lock()
            .expect("lock")
            .entry(name.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(0)))
            .clone()
    }
}

impl Gate {
    pub async fn start() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = std::sync::Arc::new(GateState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                if let Some(name) = path.strip_prefix("/wait/") {
                                    let gate = st.gate(name);
                                    let _permit = gate.acquire().await.expect("gate");
                                } else if let Some(name) = path.strip_prefix("/hit/") {
                                    *st.hits
                                        .lock()
                                        .expect("lock")
                                        .entry(name.to_string())
                                        .or_default() += 1;
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from("ok"),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gate { base, state }
    }

    pub fn open(&self, name: &str) {
        self.state.gate(name).add_permits(1_000);
    }

    pub fn hits(&self, name: &str) -> usize {
        self.state
            .hits
            .lock()
            .expect("lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}
