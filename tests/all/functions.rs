//! Deploying functions and calling them.

use serde_json::json;

use crate::support::{temp_dir, Server};

#[tokio::test]
async fn deploy_then_call_returns_the_exact_body() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s
        .deploy(
            "shop",
            "hello",
            "export async function handler(req: Request): Promise<Response> { return new Response('hello, world'); }",
            json!({ "trigger": { "type": "http", "config": { "auth": "none" } } }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let body = res.json();
    assert_eq!(body["name"], "hello");
    assert_eq!(body["version"], 1);
    assert_eq!(body["url"], format!("{}/v1/shop/fn/hello", s.base));
    assert_eq!(
        body["triggers"],
        json!([{ "type": "http", "config": { "auth": "none" } }])
    );
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["deployedAt"].as_str().is_some());

    let res = s.get("/v1/shop/fn/hello").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello, world");
    assert_eq!(res.headers["content-length"], "12");
}

#[tokio::test]
async fn typescript_features_work() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let code = r#"
        enum Level { Low = 1, High = 10 }
        interface Item { name: string; qty: number }
        abstract class Shape { abstract area(): number; describe(): string { return `${this.constructor.name}:${this.area()}`; } }
        class Square extends Shape { constructor(private side: number) { super(); } area(): number { return this.side ** 2; } }
        type Pair<T> = [T, T];
        const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
        function total<T extends Item>(items: T[]): number { return items.reduce((a, i) => a + i.qty, 0); }
        export async function handler(req: Request): Promise<Response> {
            await wait(5);
            const p: Pair<number> = [Level.Low, Level.High];
            const items: Item[] = [{ name: "a", qty: 2 }, { name: "b", qty: 3 }];
            const data = await Promise.all([1, 2].map(async (n) => n * 2));
            return Response.json({ pair: p, total: total(items), shape: new Square(3).describe(), data, level: Level[10] });
        }
    "#;
    s.deploy_public("shop", "ts", code).await;
    let res = s.get("/v1/shop/fn/ts").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({ "pair": [1, 10], "total": 5, "shape": "Square:9", "data": [2, 4], "level": "High" })
    );
}

#[tokio::test]
async fn syntax_errors_and_missing_handlers_are_refused_with_position() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s
        .deploy(
            "shop",
            "bad",
            "export async function handler() {\n  const x = ;\n}\n",
            json!({}),
        )
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "VALIDATION_INVALID_SCHEMA");
    let message = res.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(message.contains("line 2, column"), "{message}");

    let res = s
        .deploy(
            "shop",
            "nohandler",
            "export function other() { return 1; }",
            json!({}),
        )
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "VALIDATION_INVALID_SCHEMA");
    assert!(res.text().contains("handler"), "{}", res.text());

    // Nothing was deployed: the app does not exist.
    let res = s.api("GET", "/v1/shop/functions", None).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "APP_NOT_FOUND");
}

#[tokio::test]
async fn default_export_and_workers_module_syntax() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "def",
        "export default async function (req: Request) { return new Response('default'); }",
    )
    .await;
    s.deploy_public(
        "shop",
        "worker",
        "export default { async fetch(req: Request, env: any, ctx: any) { return new Response('worker:' + env.K); } };",
    )
    .await;
    s.api(
        "PATCH",
        "/v1/shop/functions/worker/env",
        Some(json!({ "envVars": { "K": "v" } })),
    )
    .await;
    assert_eq!(s.get("/v1/shop/fn/def").await.text(), "default");
    assert_eq!(s.get("/v1/shop/fn/worker").await.text(), "worker:v");
}

#[tokio::test]
async fn a_throwing_handler_answers_500_without_internals() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "boom",
        "export function handler() { console.error('about to fail'); throw new Error('out of stock'); }",
    )
    .await;
    let res = s.get("/v1/shop/fn/boom").await;
    assert_eq!(res.status, 500);
    let body = res.json();
    assert_eq!(body["error"]["code"], "FUNCTION_ERROR");
    assert_eq!(body["error"]["message"], "out of stock");
    assert!(
        !res.text().contains("ext:churn_fn"),
        "no host internals: {}",
        res.text()
    );

    let logs = s.logs("shop", "boom", 1).await;
    assert_eq!(logs[0]["status"], 500);
    assert_eq!(logs[0]["error"], "out of stock");
    assert!(logs[0]["stack"]
        .as_str()
        .is_some_and(|st| st.contains("out of stock")));
    assert_eq!(logs[0]["logs"][0]["level"], "error");
    assert_eq!(logs[0]["logs"][0]["message"], "about to fail");

    // Returning something that is not a Response is an error too.
    s.deploy_public(
        "shop",
        "notresp",
        "export function handler() { return { ok: true }; }",
    )
    .await;
    let res = s.get("/v1/shop/fn/notresp").await;
    assert_eq!(res.status, 500);
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("must return a Response"));
}

#[tokio::test]
async fn unknown_apps_and_functions_are_404() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s.get("/v1/nosuchapp/fn/x").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "FUNCTION_NOT_FOUND");
    s.deploy_public(
        "shop",
        "a",
        "export function handler() { return new Response('a'); }",
    )
    .await;
    let res = s.get("/v1/shop/fn/b").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "FUNCTION_NOT_FOUND");
}

#[tokio::test]
async fn redeploy_changes_the_answer_and_delete_removes_it() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "v",
        "export function handler() { return new Response('one'); }",
    )
    .await;
    assert_eq!(s.get("/v1/shop/fn/v").await.text(), "one");
    let res = s
        .deploy_public(
            "shop",
            "v",
            "export function handler() { return new Response('two'); }",
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["version"], 2);
    assert_eq!(s.get("/v1/shop/fn/v").await.text(), "two");

    let res = s.api("DELETE", "/v1/shop/functions/v", None).await;
    assert_eq!(res.status, 200);
    assert_eq!(s.get("/v1/shop/fn/v").await.status, 404);
    assert_eq!(s.api("GET", "/v1/shop/functions/v", None).await.status, 404);
}

#[tokio::test]
async fn the_request_reaches_the_handler_intact() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "echo",
        r#"export async function handler(req: Request, ctx: any) {
            return Response.json({
                url: req.url, method: req.method, h: req.headers.get("x-thing"),
                body: await req.text(), requestId: ctx.request.id, fn: ctx.request.functionName,
                ip: ctx.request.ip, caller: ctx.caller.type, user: ctx.user,
                deno: typeof (globalThis as any).Deno, frozen: Object.isFrozen(ctx.env),
            });
        }"#,
    )
    .await;
    let res = s
        .http
        .send(
            "PUT",
            &s.url("/v1/shop/fn/echo/a/b?q=1"),
            &[("x-thing", "yes")],
            "payload",
        )
        .await;
    assert_eq!(res.status, 200);
    let body = res.json();
    assert_eq!(body["url"], format!("{}/v1/shop/fn/echo/a/b?q=1", s.base));
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["h"], "yes");
    assert_eq!(body["body"], "payload");
    assert_eq!(body["fn"], "echo");
    assert_eq!(body["ip"], "127.0.0.1");
    assert_eq!(body["caller"], "anonymous");
    assert_eq!(body["user"], serde_json::Value::Null);
    assert_eq!(body["deno"], "undefined");
    assert_eq!(body["frozen"], true);
    assert_eq!(
        body["requestId"].as_str(),
        res.headers["x-churn-request-id"].to_str().ok()
    );
}

#[tokio::test]
async fn a_hundred_concurrent_requests_all_succeed() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "slowish",
        "export async function handler(req: Request) { const n = new URL(req.url).searchParams.get('n'); await new Promise(r => setTimeout(r, 20)); return new Response('n=' + n); }",
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let http = s.http.clone();
        let url = s.url(&format!("/v1/shop/fn/slowish?n={i}"));
        tasks.push(tokio::spawn(async move {
            (i, http.send("GET", &url, &[], "").await)
        }));
    }
    for t in tasks {
        let (i, res) = t.await.expect("task");
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("n={i}"));
    }
}

#[tokio::test]
async fn invoke_runs_a_function_from_the_control_api() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "calc",
        "export async function handler(req: Request, ctx: any) { const b = await req.json(); return Response.json({ sum: b.a + b.b, path: new URL(req.url).pathname, caller: ctx.caller.type }); }",
        json!({}),
    )
    .await;
    let res = s
        .api(
            "POST",
            "/v1/shop/functions/calc/invoke",
            Some(json!({ "method": "POST", "path": "/x", "body": { "a": 2, "b": 3 } })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["status"], 200);
    assert_eq!(
        body["body"],
        json!({ "sum": 5, "path": "/v1/shop/fn/calc/x", "caller": "service_key" })
    );
    assert_eq!(body["headers"]["content-type"], "application/json");
    assert!(body["duration_ms"].as_u64().is_some());
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_old_version() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = crate::support::Gate::start().await;
    let v1 = format!(
        "export async function handler() {{ await fetch('{0}/hit/v1'); await fetch('{0}/wait/v1'); return new Response('one'); }}",
        gate.base
    );
    s.deploy_public("shop", "ver", &v1).await;
    let running = {
        let http = s.http.clone();
        let url = s.url("/v1/shop/fn/ver");
        tokio::spawn(async move { http.send("GET", &url, &[], "").await })
    };
    // Wait until the request is running in the old version.
    while gate.hits("v1") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    s.deploy_public(
        "shop",
        "ver",
        "export function handler() { return new Response('two'); }",
    )
    .await;
    assert_eq!(s.get("/v1/shop/fn/ver").await.text(), "two");
    gate.open("v1");
    assert_eq!(running.await.expect("task").text(), "one");
}

#[tokio::test]
async fn every_response_shape_reaches_the_client_as_built() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy_public(
        "shop",
        "shapes",
        r#"export async function handler(req: Request) {
            const kind = new URL(req.url).searchParams.get("k");
            switch (kind) {
                case "text": return new Response("plain");
                case "bytes": return new Response(new Uint8Array([0, 1, 255]));
                case "json": return Response.json({ a: 1 });
                case "typed": return new Response("<b>hi</b>", { headers: { "content-type": "text/html" } });
                case "status": return new Response("made", { status: 201 });
                case "headers": {
                    const res = new Response("with header");
                    res.headers.set("x-extra", "1");
                    return res;
                }
                case "empty": return new Response(null, { status: 204 });
                case "read": {
                    const res = new Response("once");
                    await res.text();
                    return res;
                }
                case "copy": {
                    // A request built from the incoming one keeps its URL, method and headers.
                    const copy = new Request(req, { headers: { "x-copy": "yes" } });
                    return Response.json({ url: copy.url, method: copy.method, h: copy.headers.get("x-copy") });
                }
                default: return new Response("?", { status: 400 });
            }
        }"#,
    )
    .await;

    let res = s.get("/v1/shop/fn/shapes?k=text").await;
    assert_eq!((res.status, res.text()), (200, "plain".to_string()));
    assert_eq!(res.headers["content-type"], "text/plain;charset=UTF-8");
    assert_eq!(res.headers["content-length"], "5");

    let res = s.get("/v1/shop/fn/shapes?k=bytes").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.as_ref(), &[0u8, 1, 255][..]);
    assert!(res.headers.get("content-type").is_none());

    let res = s.get("/v1/shop/fn/shapes?k=json").await;
    assert_eq!(res.json(), json!({ "a": 1 }));
    assert_eq!(res.headers["content-type"], "application/json");

    let res = s.get("/v1/shop/fn/shapes?k=typed").await;
    assert_eq!(res.text(), "<b>hi</b>");
    assert_eq!(res.headers["content-type"], "text/html");

    let res = s.get("/v1/shop/fn/shapes?k=status").await;
    assert_eq!((res.status, res.text()), (201, "made".to_string()));

    let res = s.get("/v1/shop/fn/shapes?k=headers").await;
    assert_eq!(res.text(), "with header");
    assert_eq!(res.headers["x-extra"], "1");
    assert_eq!(res.headers["content-type"], "text/plain;charset=UTF-8");

    let res = s.get("/v1/shop/fn/shapes?k=empty").await;
    assert_eq!((res.status, res.text()), (204, String::new()));

    let res = s.get("/v1/shop/fn/shapes?k=read").await;
    assert_eq!(res.status, 500);
    assert_eq!(res.json()["error"]["code"], "FUNCTION_ERROR");
    assert_eq!(
        res.json()["error"]["message"],
        "the Response's body was already read; return a new Response"
    );

    let res = s.get("/v1/shop/fn/shapes?k=copy").await;
    assert_eq!(
        res.json(),
        json!({ "url": format!("{}/v1/shop/fn/shapes?k=copy", s.base), "method": "GET", "h": "yes" })
    );
}
