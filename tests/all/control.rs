//! The control API's bookkeeping: env vars, function details, logs, bad input.

use serde_json::json;

use crate::support::{temp_dir, Server};

const ENV_ECHO: &str =
    "export function handler(req: Request, ctx: any) { return Response.json(ctx.env); }";

#[tokio::test]
async fn env_vars_and_their_precedence() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "env",
        ENV_ECHO,
        json!({ "envVars": { "A": "fn", "ONLY_FN": "1" }, "trigger": { "type": "http", "config": { "auth": "none" } } }),
    )
    .await;
    let res = s
        .api(
            "PATCH",
            "/v1/shop/env",
            Some(json!({ "envVars": { "A": "app", "B": "app" } })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["keys"], json!(["A", "B"]));
    assert_eq!(
        s.get("/v1/shop/fn/env").await.json(),
        json!({ "A": "fn", "B": "app", "ONLY_FN": "1" })
    );

    // null deletes; a function var can be removed to reveal the app's.
    let res = s
        .api(
            "PATCH",
            "/v1/shop/functions/env/env",
            Some(json!({ "envVars": { "A": null, "C": "c" } })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["envKeys"], json!(["C", "ONLY_FN"]));
    assert_eq!(
        s.get("/v1/shop/fn/env").await.json(),
        json!({ "A": "app", "B": "app", "C": "c", "ONLY_FN": "1" })
    );

    // Keys only, never values.
    let res = s.api("GET", "/v1/shop/functions/env", None).await;
    assert_eq!(res.json()["envKeys"], json!(["C", "ONLY_FN"]));
    assert!(!res.text().contains("\"c\""), "{}", res.text());
    let res = s.api("GET", "/v1/shop/env", None).await;
    assert_eq!(res.json(), json!({ "keys": ["A", "B"] }));

    for bad in [
        json!({ "envVars": { "CHURN_X": "1" } }),
        json!({ "envVars": { "lower": "1" } }),
        json!({ "envVars": { "A": 5 } }),
    ] {
        let res = s.api("PATCH", "/v1/shop/env", Some(bad)).await;
        assert_eq!(res.status, 400);
        assert_eq!(res.error_code(), "VALIDATION_INVALID_SCHEMA");
    }
}

#[tokio::test]
async fn function_details_include_code_triggers_and_stats() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "stats",
        "export function handler(req: Request) { if (req.url.endsWith('fail')) throw new Error('x'); return new Response('ok'); }",
        json!({ "description": "counts", "envVars": { "SECRET": "hunter2" }, "timeoutMs": 5000, "trigger": { "type": "http", "config": { "auth": "none" } } }),
    )
    .await;
    s.get("/v1/shop/fn/stats").await;
    s.get("/v1/shop/fn/stats/fail").await;
    s.logs("shop", "stats", 2).await;
    let res = s.api("GET", "/v1/shop/functions/stats", None).await;
    let body = res.json();
    assert!(body["code"]
        .as_str()
        .is_some_and(|c| c.contains("export function handler")));
    assert_eq!(body["description"], "counts");
    assert_eq!(body["envKeys"], json!(["SECRET"]));
    assert!(!res.text().contains("hunter2"));
    assert_eq!(body["timeoutMs"], 5000);
    assert_eq!(body["limits"]["timeoutMs"], 5000);
    assert_eq!(body["stats"]["invocationCount"], 2);
    assert_eq!(body["stats"]["errorCount"], 1);
    assert!(body["stats"]["lastInvoked"].as_str().is_some());
    assert!(body["stats"]["avgDuration"].as_f64().is_some());

    let res = s.api("GET", "/v1/shop/functions", None).await;
    let list = res.json()["functions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "stats");
}

#[tokio::test]
async fn logs_hold_console_lines_and_filter_by_level() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "chatty",
        "export function handler(req: Request) { console.log('visit', { n: 1 }); console.warn('careful'); if (req.url.endsWith('/fail')) throw new Error('nope'); return new Response('ok'); }",
    )
    .await;
    s.get("/v1/shop/fn/chatty").await;
    s.get("/v1/shop/fn/chatty/fail").await;
    let logs = s.logs("shop", "chatty", 2).await;
    // Newest first.
    assert_eq!(logs[0]["path"], "/v1/shop/fn/chatty/fail");
    assert_eq!(logs[1]["status"], 200);
    assert_eq!(logs[1]["method"], "GET");
    assert_eq!(logs[1]["logs"][0]["level"], "log");
    assert_eq!(logs[1]["logs"][0]["message"], "visit { n: 1 }");
    assert_eq!(logs[1]["logs"][1]["level"], "warn");
    assert_eq!(logs[1]["logs"][1]["message"], "careful");
    let res = s
        .api("GET", "/v1/shop/functions/chatty/logs?level=error", None)
        .await;
    let errors = res.json()["logs"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"], "nope");
    let res = s
        .api("GET", "/v1/shop/functions/chatty/logs?limit=1", None)
        .await;
    assert_eq!(res.json()["logs"].as_array().map(Vec::len), Some(1));
    let res = s
        .api(
            "GET",
            "/v1/shop/functions/chatty/logs?since=2999-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(res.json()["logs"], json!([]));
    let res = s
        .api("GET", "/v1/shop/functions/chatty/logs?limit=abc", None)
        .await;
    assert_eq!(res.status, 400);
}

#[tokio::test]
async fn bad_deploy_bodies_get_precise_400s() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let ok_code = "export function handler() { return new Response('x'); }";
    let cases = [
        (json!({ "code": ok_code }), "name"),
        (json!({ "name": "x" }), "code"),
        (json!({ "name": "Bad Name", "code": ok_code }), "name"),
        (json!({ "name": "x", "code": ok_code, "bogus": 1 }), "bogus"),
        (json!({ "name": "x", "code": 5 }), "string"),
        (
            json!({ "name": "x", "code": ok_code, "timeoutMs": 0 }),
            "timeoutMs",
        ),
        (
            json!({ "name": "x", "code": ok_code, "trigger": { "type": "smtp" } }),
            "smtp",
        ),
        (
            json!({ "name": "x", "code": ok_code, "trigger": { "type": "http", "config": { "auth": "maybe" } } }),
            "auth",
        ),
        (
            json!({ "name": "x", "code": "import x from 'npm:y'; export function handler() {}" }),
            "import",
        ),
    ];
    for (body, needle) in cases {
        let res = s
            .api("POST", "/v1/shop/functions", Some(body.clone()))
            .await;
        assert_eq!(res.status, 400, "{body}: {}", res.text());
        assert_eq!(res.error_code(), "VALIDATION_INVALID_SCHEMA", "{body}");
        assert!(res.text().contains(needle), "{body}: {}", res.text());
    }
    let res = s
        .http
        .send(
            "POST",
            &s.url("/v1/shop/functions"),
            &[("authorization", &format!("Bearer {}", s.key))],
            "{not json",
        )
        .await;
    assert_eq!(res.status, 400);
    let res = s
        .api(
            "POST",
            "/v1/Bad-App/functions",
            Some(json!({ "name": "x", "code": ok_code })),
        )
        .await;
    assert_eq!(res.status, 400);
    let res = s.api("GET", "/v1/shop/nothing-here", None).await;
    assert_eq!(res.status, 404);
    let res = s.api("PUT", "/v1/shop/functions", None).await;
    assert_eq!(res.status, 405);
}
