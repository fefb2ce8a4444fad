//! Property test: random and mutated bodies thrown at the control API of the
//! running binary. Every answer must be a well-formed JSON error (or success)
//! with a sensible status, and the host must keep serving.
//!
//! CI runs a short, fixed-seed run; for a longer one:
//! `CHURN_FUZZ_CASES=5000 cargo test --test all fuzz -- --nocapture`.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

use crate::support::{temp_dir, Server};

fn valid_deploy() -> Value {
    json!({
        "name": "fuzzed",
        "code": "export function handler() { return new Response('ok'); }",
        "trigger": { "type": "http", "config": { "auth": "none" } },
        "envVars": { "A": "1" },
        "timeoutMs": 1000,
    })
}

/// A JSON value of any shape.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body: raw bytes, any JSON, or a valid deploy body with one field replaced.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "name",
        "code",
        "trigger",
        "triggers",
        "envVars",
        "timeoutMs",
        "memoryLimitMb",
        "description",
        "extra",
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        (0..fields.len(), any_json()).prop_map(move |(i, v)| {
            let mut body = valid_deploy();
            body[fields[i]] = v;
            body.to_string().into_bytes()
        }),
        (0..200usize).prop_map(|cut| {
            let text = valid_deploy().to_string();
            text.as_bytes()[..cut.min(text.len())].to_vec()
        }),
    ]
}

#[tokio::test]
async fn the_control_api_survives_random_bodies() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let cases: u32 = std::env::var("CHURN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let routes = [
        ("POST", "/v1/fuzz_app/functions"),
        ("PATCH", "/v1/fuzz_app/env"),
        ("PATCH", "/v1/fuzz_app/functions/fuzzed/env"),
        ("POST", "/v1/fuzz_app/functions/fuzzed/invoke"),
        ("POST", "/v1/fuzz_app/auth/tokens"),
        ("POST", "/v1/fuzz_app/durable-objects"),
        ("PUT", "/v1/fuzz_app/durable-objects/env/KEY"),
    ];
    let strategy = (0..routes.len(), body());
    let inputs: Vec<(usize, Vec<u8>)> = (0..cases)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("generate input")
                .current()
        })
        .collect();
    let auth = format!("Bearer {}", s.key);
    for (route, body) in inputs {
        let (method, path) = routes[route];
        let res = s
            .http
            .send(
                method,
                &s.url(path),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            )
            .await;
        assert!(
            matches!(res.status, 200 | 201 | 400 | 404 | 413 | 500),
            "{method} {path} with {:?} answered {}: {}",
            String::from_utf8_lossy(&body),
            res.status,
            res.text()
        );
        let parsed: Value = serde_json::from_slice(&res.body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", res.text()));
        if res.status >= 400 {
            assert!(parsed["error"]["code"].as_str().is_some(), "{}", res.text());
            // 500 is only allowed for a function that ran and failed.
            if res.status == 500 {
                assert_eq!(parsed["error"]["code"], "FUNCTION_ERROR", "{}", res.text());
            }
        }
        assert_eq!(s.get("/health").await.status, 200);
    }
    // The host still deploys and serves.
    let res = s
        .api("POST", "/v1/fuzz_app/functions", Some(valid_deploy()))
        .await;
    assert!(res.status == 200 || res.status == 201, "{}", res.text());
    assert_eq!(s.get("/v1/fuzz_app/fn/fuzzed").await.text(), "ok");
}

/// Random frames at the realtime endpoint: every one is answered with an
/// error or an event response, and the socket stays open.
#[tokio::test]
async fn the_realtime_endpoint_survives_random_frames() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "fuzz_app",
        "listener",
        "export async function handler(req: Request) { return Response.json(await req.json()); }",
        json!({ "trigger": { "type": "websocket", "config": { "event": "ping", "auth": "none" } } }),
    )
    .await;
    let url = format!(
        "{}/v1/fuzz_app/realtime",
        s.base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let _connected = ws.next().await;
    let cases: u32 = std::env::var("CHURN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]),
    );
    let frame = prop_oneof![
        any_json().prop_map(|v| Message::text(v.to_string())),
        any_json().prop_map(|p| Message::text(
            json!({ "type": "event", "event": "ping", "payload": p }).to_string()
        )),
        ".{0,64}".prop_map(Message::text),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
    ];
    for _ in 0..cases {
        let message = frame.new_tree(&mut runner).expect("frame").current();
        ws.send(message.clone()).await.expect("send");
        let reply = loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json reply");
                    if v["type"] != "heartbeat" {
                        break v;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?} after {message:?}"),
            }
        };
        assert!(
            reply["type"] == "error" || reply["type"] == "event_response",
            "{message:?} -> {reply}"
        );
    }
    assert_eq!(s.get("/health").await.status, 200);
}
