//! Limits and isolation: a runaway, a memory bomb, a slow handler, a crowd, a
//! fetch storm, hostile input. Each costs only its own request, with a clear
//! answer, while another app's function keeps answering.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{temp_dir, Gate, Server};

const WELL_BEHAVED: &str = "export function handler() { return new Response('fine'); }";

async fn deploy_other_app(s: &Server) {
    let res = s
        .deploy(
            "other_app",
            "steady",
            WELL_BEHAVED,
            json!({ "trigger": { "type": "http", "config": { "auth": "none" } } }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
}

async fn assert_other_app_fine(s: &Server) {
    let res = s.get("/v1/other_app/fn/steady").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "fine");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_runaway_loop_is_stopped_on_its_cpu_limit() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_other_app(&s).await;
    let res = s
        .deploy(
            "shop",
            "spin",
            "export function handler(req: Request) { if (req.url.endsWith('/ok')) return new Response('recovered'); while (true) {} }",
            json!({ "cpuLimitMs": 200, "trigger": { "type": "http", "config": { "auth": "none" } } }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let spin = {
        let http = s.http.clone();
        let url = s.url("/v1/shop/fn/spin");
        tokio::spawn(async move { http.send("GET", &url, &[], "").await })
    };
    // Another app answers while the loop runs and after it is stopped.
    assert_other_app_fine(&s).await;
    let res = spin.await.expect("task");
    assert_eq!(res.status, 546, "{}", res.text());
    assert_eq!(res.error_code(), "WORKER_LIMIT");
    assert_eq!(res.json()["error"]["reason"], "cpu");
    assert_other_app_fine(&s).await;
    // A fresh isolate serves the next request.
    assert_eq!(s.get("/v1/shop/fn/spin/ok").await.text(), "recovered");
    let logs = s.logs("shop", "spin", 2).await;
    let killed = logs
        .iter()
        .find(|l| l["status"] == 546)
        .expect("killed entry");
    assert_eq!(killed["limit"], "cpu");
    assert!(killed["cpu_ms"].as_f64().is_some());
    let res = s.api("GET", "/v1/shop/functions/spin", None).await;
    assert_eq!(res.json()["limits"]["cpuLimitMs"], 200);
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_and_leaves_no_leak() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_other_app(&s).await;
    s.deploy(
        "shop",
        "bomb",
        "export function handler() { const hoard: number[][] = []; while (true) hoard.push(new Array(100000).fill(Math.random())); }",
        json!({ "memoryLimitMb": 16, "trigger": { "type": "http", "config": { "auth": "none" } } }),
    )
    .await;
    let kill = || async {
        let res = s.get("/v1/shop/fn/bomb").await;
        assert_eq!(res.status, 546, "{}", res.text());
        assert_eq!(res.json()["error"]["reason"], "memory");
    };
    for _ in 0..20 {
        kill().await;
    }
    assert_other_app_fine(&s).await;
    let before = rss_kib(s.pid());
    for _ in 0..200 {
        kill().await;
    }
    assert_other_app_fine(&s).await;
    let after = rss_kib(s.pid());
    // ArrayBuffers live outside V8's heap; they count against the limit too.
    s.deploy(
        "shop",
        "buffers",
        "export function handler() { const hoard: ArrayBuffer[] = []; while (true) hoard.push(new ArrayBuffer(8 * 1024 * 1024)); }",
        json!({ "memoryLimitMb": 32, "trigger": { "type": "http", "config": { "auth": "none" } } }),
    )
    .await;
    for _ in 0..3 {
        let res = s.get("/v1/shop/fn/buffers").await;
        assert_eq!(res.status, 546, "{}", res.text());
        assert_eq!(res.json()["error"]["reason"], "memory");
    }
    assert_other_app_fine(&s).await;
    assert!(
        after < before + 64 * 1024,
        "resident memory grew from {before} KiB to {after} KiB over 200 killed isolates"
    );
}

#[tokio::test]
async fn a_slow_handler_times_out_with_504() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_other_app(&s).await;
    s.deploy(
        "shop",
        "slow",
        "export async function handler() { await new Promise((r) => setTimeout(r, 60000)); return new Response('late'); }",
        json!({ "timeoutMs": 300, "trigger": { "type": "http", "config": { "auth": "none" } } }),
    )
    .await;
    let res = s.get("/v1/shop/fn/slow").await;
    assert_eq!(res.status, 504);
    assert_eq!(res.error_code(), "FUNCTION_TIMEOUT");
    assert!(res.json()["error"]["duration_ms"]
        .as_u64()
        .is_some_and(|d| d >= 300));
    assert_other_app_fine(&s).await;
}

#[tokio::test]
async fn a_hundred_and_fifty_concurrent_requests_meet_a_limit_of_a_hundred() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    deploy_other_app(&s).await;
    s.deploy_public(
        "shop",
        "crowd",
        &format!("export async function handler() {{ await fetch('{}/wait/crowd'); return new Response('served'); }}", gate.base),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let http = s.http.clone();
        let url = s.url("/v1/shop/fn/crowd");
        tasks.push(tokio::spawn(async move {
            http.send("GET", &url, &[], "").await
        }));
    }
    // The 50 over the limit are refused at once; the 100 admitted ones wait
    // at the gate until it opens.
    let mut refused = 0;
    let mut waiting = tasks;
    for _ in 0..500 {
        let mut next = Vec::new();
        for t in waiting.drain(..) {
            if t.is_finished() {
                let res = t.await.expect("task");
                assert_eq!(res.status, 429, "{}", res.text());
                assert_eq!(res.error_code(), "TOO_MANY_REQUESTS");
                assert!(res.headers.contains_key("retry-after"));
                refused += 1;
            } else {
                next.push(t);
            }
        }
        waiting = next;
        if refused == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, 50);
    assert_other_app_fine(&s).await;
    gate.open("crowd");
    let mut served = 0;
    for t in waiting {
        let res = t.await.expect("task");
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "served");
        served += 1;
    }
    assert_eq!(served, 100);
}

#[tokio::test]
async fn a_fetch_storm_is_capped_per_request() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_FETCH_TIMEOUT_MS", "500")]);
    let gate = Gate::start().await;
    deploy_other_app(&s).await;
    let code = format!(
        r#"export async function handler(req: Request) {{
            if (req.url.endsWith("/timeout")) {{
                try {{ await fetch("{0}/wait/never"); return new Response("no timeout"); }}
                catch (e) {{ return new Response(e.name); }}
            }}
            const all = await Promise.allSettled(Array.from({{ length: 80 }}, () => fetch("{0}/hit/storm")));
            const rejected = all.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
            return Response.json({{ ok: all.length - rejected.length, rejected: rejected.length, message: rejected[0]?.reason?.message }});
        }}"#,
        gate.base
    );
    s.deploy_public("shop", "storm", &code).await;
    let res = s.get("/v1/shop/fn/storm").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["ok"], 50);
    assert_eq!(body["rejected"], 30);
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("at most 50")));
    assert_eq!(gate.hits("storm"), 50);
    assert_eq!(
        s.get("/v1/shop/fn/storm/timeout").await.text(),
        "TimeoutError"
    );
    assert_other_app_fine(&s).await;
}

#[tokio::test]
async fn outbound_fetch_cannot_reach_private_ranges_or_the_control_api() {
    let dir = temp_dir();
    // The default policy: private and loopback addresses are off limits.
    let s = Server::start_with_env(dir.path(), &[("CHURN_FETCH_ALLOW_PRIVATE", "false")]);
    let gate = Gate::start().await;
    let code = r#"export async function handler(req: Request) {
        const target = new URL(req.url).searchParams.get("target")!;
        try { const r = await fetch(target); return new Response("reached " + r.status); }
        catch (e) { return new Response("blocked"); }
    }"#;
    s.deploy_public("shop", "probe", code).await;
    let probe = |target: String| {
        let s = &s;
        async move {
            let encoded: String = target.bytes().map(|b| format!("%{b:02X}")).collect();
            s.get(&format!("/v1/shop/fn/probe?target={encoded}"))
                .await
                .text()
        }
    };
    assert_eq!(probe(format!("{}/hit/private", gate.base)).await, "blocked");
    assert_eq!(probe("http://10.1.2.3/".into()).await, "blocked");
    assert_eq!(
        probe("http://169.254.169.254/latest/meta-data".into()).await,
        "blocked"
    );
    assert_eq!(probe(s.url("/v1/shop/functions")).await, "blocked");
    assert_eq!(probe("file:///etc/passwd".into()).await, "blocked");
    assert_eq!(gate.hits("private"), 0);

    // Even with private ranges allowed, the host's own API stays off limits.
    let dir2 = temp_dir();
    let s2 = Server::start(dir2.path());
    s2.deploy_public("shop", "probe", code).await;
    let target = s2.url("/v1/shop/functions");
    let encoded: String = target.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(
        s2.get(&format!("/v1/shop/fn/probe?target={encoded}"))
            .await
            .text(),
        "blocked"
    );
    let target = format!("{}/hit/allowed", gate.base);
    let encoded: String = target.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(
        s2.get(&format!("/v1/shop/fn/probe?target={encoded}"))
            .await
            .text(),
        "reached 200"
    );
}

#[tokio::test]
async fn user_code_has_no_host_capabilities() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let code = r#"export async function handler() {
        const g: any = globalThis;
        const tries: Record<string, string> = {};
        const attempt = async (name: string, f: () => any) => {
            try { await f(); tries[name] = "allowed"; } catch (e) { tries[name] = "refused"; }
        };
        await attempt("import file", () => import("file:///etc/passwd"));
        await attempt("import npm", () => import("npm:left-pad"));
        return Response.json({
            deno: typeof g.Deno, process: typeof g.process, require: typeof g.require,
            bootstrap: typeof g.__bootstrap, start: typeof g.__churnStart,
            eval: eval("1 + 1"), fn: new Function("a", "return a * 2")(21),
            ...tries,
        });
    }"#;
    s.deploy_public("shop", "sandbox", code).await;
    let res = s.get("/v1/shop/fn/sandbox").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({
            "deno": "undefined", "process": "undefined", "require": "undefined",
            "bootstrap": "undefined", "start": "undefined", "eval": 2, "fn": 42,
            "import file": "refused", "import npm": "refused",
        })
    );
}

#[tokio::test]
async fn apps_cannot_reach_each_other() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "app_a",
        "secret",
        "export function handler(req: Request, ctx: any) { return new Response(ctx.env.TOKEN); }",
        json!({ "envVars": { "TOKEN": "a-only" } }),
    )
    .await;
    s.deploy("app_b", "open", WELL_BEHAVED, json!({})).await;
    let store = "export class Vault { constructor(private state: any) {} async fetch(req: Request) { const u = new URL(req.url); if (u.pathname === '/put') { await this.state.storage.put('k', 'a-secret'); } return Response.json((await this.state.storage.get('k')) ?? null); } }";
    for app in ["app_a", "app_b"] {
        let res = s
            .api(
                "POST",
                &format!("/v1/{app}/durable-objects"),
                Some(json!({ "name": "vault", "code": store, "access_mode": "public" })),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    assert_eq!(
        s.get("/v1/app_a/_do/vault/x/put").await.json(),
        json!("a-secret")
    );
    // Same class name and id in another app: separate storage.
    assert_eq!(s.get("/v1/app_b/_do/vault/x").await.json(), Value::Null);

    // A user token of app A means nothing to app B.
    let res = s
        .api(
            "POST",
            "/v1/app_a/auth/tokens",
            Some(json!({ "sub": "alice" })),
        )
        .await;
    let token = res.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let auth = format!("Bearer {token}");
    let res = s
        .http
        .send(
            "GET",
            &s.url("/v1/app_b/fn/open"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(res.status, 401);
    let res = s
        .http
        .send(
            "GET",
            &s.url("/v1/app_a/fn/secret"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(res.text(), "a-only");

    // Crafted names and paths never cross over.
    for path in [
        "/v1/app_b/fn/..%2F..%2Fapp_a%2Ffn%2Fsecret",
        "/v1/app_b/fn/../../app_a/fn/secret",
        "/v1/app_b%00/fn/secret",
        "/v1/%2e%2e/fn/secret",
        "/v1/app_b/_do/vault/..%2F..%2Fapp_a",
    ] {
        let res = s
            .http
            .send("GET", &s.url(path), &[("authorization", &auth)], "")
            .await;
        assert!(
            !res.text().contains("a-only") && !res.text().contains("a-secret"),
            "{path}: {}",
            res.text()
        );
        assert!(
            res.status >= 400 || res.json() == Value::Null,
            "{path}: {} {}",
            res.status,
            res.text()
        );
    }
    let long = "a".repeat(5000);
    let res = s.api("GET", &format!("/v1/{long}/functions"), None).await;
    assert_eq!(res.status, 400);
    let res = s
        .api("GET", &format!("/v1/app_b/functions/{long}"), None)
        .await;
    assert_eq!(res.status, 404);
    // Logs are per app and function.
    s.get("/v1/app_b/fn/open").await;
    let res = s.api("GET", "/v1/app_b/functions/secret/logs", None).await;
    assert_eq!(res.status, 404);
}

#[tokio::test]
async fn a_panic_costs_only_its_request() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_TEST_ROUTES", "true")]);
    deploy_other_app(&s).await;
    for _ in 0..3 {
        let res = s.get("/_churn/test/panic").await;
        assert_eq!(res.status, 500);
        assert_eq!(res.error_code(), "INTERNAL");
        assert!(res.text().contains("request id"));
        assert_other_app_fine(&s).await;
    }
}
