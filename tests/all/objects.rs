//! Durable Objects end to end: the actor guarantees, storage semantics and
//! durability, alarms, validation and access modes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{temp_dir, Gate, Server};

/// A class with one route per storage feature under test.
const STORE: &str = r#"
import { DurableObject } from "cloudflare:workers";

let constructed = 0;

export class Store extends DurableObject {
  constructor(ctx: DurableObjectState, env: any) {
    super(ctx, env);
    constructed++;
  }

  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const q = url.searchParams;
    const s = this.ctx.storage;
    switch (url.pathname) {
      case "/incr": {
        let v: number = (await s.get("count")) ?? 0;
        v++;
        await s.put("count", v);
        return new Response(String(v));
      }
      case "/incr-after-fetch": {
        await fetch(q.get("url")!);
        const v = ((await s.get("count")) ?? 0) + 1;
        s.put("count", v);
        return new Response(String(v));
      }
      case "/count":
        return Response.json((await s.get("count")) ?? 0);
      case "/put": {
        await s.put(q.get("k")!, JSON.parse(q.get("v") ?? "true"));
        return new Response("ok");
      }
      case "/put-many": {
        const entries = await request.json();
        await s.put(entries);
        return new Response("ok");
      }
      case "/get-many":
        return Response.json(Object.fromEntries(await s.get(q.get("keys")!.split(","))));
      case "/delete": {
        const keys = q.get("keys")!.split(",");
        return Response.json(keys.length === 1 ? await s.delete(keys[0]) : await s.delete(keys));
      }
      case "/list": {
        const opts = JSON.parse(q.get("opts") ?? "{}");
        return Response.json([...(await s.list(opts)).keys()]);
      }
      case "/delete-all":
        await s.deleteAll();
        return new Response("ok");
      case "/big": {
        try {
          await s.put("big", "x".repeat(Number(q.get("n"))));
          return new Response("stored");
        } catch (e) {
          return new Response(`${e.name}: ${e.message}`, { status: 400 });
        }
      }
      case "/bad-key": {
        try {
          await s.get("k".repeat(2049));
          return new Response("accepted");
        } catch (e) {
          return new Response(e.name, { status: 400 });
        }
      }
      case "/too-many": {
        const keys = Array.from({ length: 129 }, (_, i) => `k${i}`);
        try {
          await s.get(keys);
          return new Response("accepted");
        } catch (e) {
          return new Response(e.name, { status: 400 });
        }
      }
      case "/txn": {
        try {
          await s.transaction(async (txn) => {
            await txn.put("t1", 1);
            await txn.put("t2", 2);
            if (q.get("fail")) throw new Error("abort");
          });
        } catch (e) {
          return new Response("rolled back");
        }
        return new Response("committed");
      }
      case "/txn-rollback": {
        await s.transaction(async (txn) => {
          await txn.put("r1", 1);
          txn.rollback();
        });
        return Response.json((await s.get("r1")) ?? null);
      }
      case "/types": {
        const value = { d: new Date(0), m: new Map([["a", 1]]), b: new Uint8Array([1, 2]), n: 10n, nested: { x: [1, "two"] } };
        await s.put("typed", value);
        const back: any = await s.get("typed");
        return Response.json({
          date: back.d instanceof Date && back.d.getTime() === 0,
          map: back.m.get("a"),
          bytes: Array.from(back.b),
          big: String(back.n),
          nested: back.nested,
        });
      }
      case "/constructed":
        return Response.json(constructed);
      case "/id":
        return Response.json({ id: this.ctx.id.toString(), name: this.ctx.id.name, env: this.env.GREETING ?? null });
      case "/throw":
        throw new Error("deliberate failure");
      case "/echo":
        return Response.json({ method: request.method, body: await request.text(), h: request.headers.get("x-h"), search: url.search });
    }
    return new Response("not found", { status: 404 });
  }
}
"#;

async fn deploy_store(s: &Server, access: &str) {
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "store", "code": STORE, "access_mode": access })),
        )
        .await;
    assert!(res.status == 201 || res.status == 200, "{}", res.text());
}

async fn call(s: &Server, id: &str, path_and_query: &str) -> crate::support::Resp {
    s.get(&format!("/v1/shop/_do/store/{id}{path_and_query}"))
        .await
}

#[tokio::test]
async fn deploy_answers_with_the_class_and_routes_reach_fetch() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "store", "code": STORE, "access_mode": "public" })),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let body = res.json();
    assert_eq!(body["name"], "store");
    assert_eq!(body["class_name"], "Store");
    assert_eq!(body["status"], "READY");
    assert_eq!(body["access_mode"], "public");
    assert!(body["last_deployed_at"].as_str().is_some());

    let res = s
        .http
        .send(
            "POST",
            &s.url("/v1/shop/_do/store/abc/echo?x=1"),
            &[("x-h", "yes")],
            "payload",
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({ "method": "POST", "body": "payload", "h": "yes", "search": "?x=1" })
    );
    assert_eq!(call(&s, "room%201", "/id").await.json()["id"], "room 1");
    assert_eq!(call(&s, "abc", "/id").await.json()["name"], "abc");

    let res = s.api("GET", "/v1/shop/durable-objects/store", None).await;
    assert!(res.json()["code"]
        .as_str()
        .is_some_and(|c| c.contains("class Store")));
    let res = s.api("GET", "/v1/shop/durable-objects", None).await;
    assert_eq!(res.json()["durable_objects"][0]["name"], "store");

    assert_eq!(s.get("/v1/shop/_do/nope/abc").await.status, 404);
    assert_eq!(s.get("/v1/nosuch/_do/store/abc").await.status, 404);

    let res = s
        .api("GET", "/v1/shop/durable-objects/store/usage", None)
        .await;
    assert_eq!(res.status, 200);
    assert!(res.json()["do_requests"].as_u64().is_some_and(|n| n >= 3));
    assert!(res.json()["do_cpu_ms"].as_u64().is_some());
}

#[tokio::test]
async fn concurrent_increments_never_duplicate() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let http = s.http.clone();
        let url = s.url("/v1/shop/_do/store/counter/incr");
        tasks.push(tokio::spawn(async move {
            http.send("GET", &url, &[], "").await
        }));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        let res = t.await.expect("task");
        assert_eq!(res.status, 200, "{}", res.text());
        assert!(
            seen.insert(res.text().parse::<u32>().expect("number")),
            "duplicate"
        );
    }
    assert_eq!(seen, (1..=30).collect::<BTreeSet<u32>>());
    // Another id is a separate instance with its own storage.
    assert_eq!(call(&s, "other", "/incr").await.text(), "1");
    assert_eq!(call(&s, "counter", "/count").await.json(), json!(30));
}

#[tokio::test]
async fn increments_stay_unique_across_an_awaited_fetch() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    deploy_store(&s, "public").await;
    let hit = format!("{}/hit/x", gate.base);
    let path = format!(
        "/v1/shop/_do/store/c/incr-after-fetch?url={}",
        hit.replace(':', "%3A").replace('/', "%2F")
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = s.http.clone();
        let url = s.url(&path);
        tasks.push(tokio::spawn(async move {
            http.send("GET", &url, &[], "").await
        }));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        let res = t.await.expect("task");
        assert_eq!(res.status, 200, "{}", res.text());
        assert!(seen.insert(res.text().parse::<u32>().expect("number")));
    }
    assert_eq!(seen, (1..=20).collect::<BTreeSet<u32>>());
    assert_eq!(gate.hits("x"), 20);
}

#[tokio::test]
async fn list_orders_keys_and_honours_every_option() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    let entries = json!({ "b": 1, "a": 2, "ba": 3, "bb": 4, "c": 5, "d": 6, "é": 7 });
    let res = s
        .http
        .send(
            "POST",
            &s.url("/v1/shop/_do/store/l/put-many"),
            &[],
            entries.to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let list = |opts: Value| {
        let s = &s;
        async move {
            let q = opts.to_string();
            let encoded: String = q.bytes().map(|b| format!("%{b:02X}")).collect();
            call(s, "l", &format!("/list?opts={encoded}")).await.json()
        }
    };
    assert_eq!(
        list(json!({})).await,
        json!(["a", "b", "ba", "bb", "c", "d", "é"])
    );
    assert_eq!(
        list(json!({ "prefix": "b" })).await,
        json!(["b", "ba", "bb"])
    );
    assert_eq!(
        list(json!({ "start": "b", "end": "c" })).await,
        json!(["b", "ba", "bb"])
    );
    assert_eq!(
        list(json!({ "startAfter": "b", "limit": 2 })).await,
        json!(["ba", "bb"])
    );
    assert_eq!(
        list(json!({ "reverse": true, "limit": 3 })).await,
        json!(["é", "d", "c"])
    );
    assert_eq!(
        list(json!({ "prefix": "b", "reverse": true })).await,
        json!(["bb", "ba", "b"])
    );
    // Keys order by their UTF-8 bytes: "é" sorts after "z".
    assert_eq!(list(json!({ "start": "z" })).await, json!(["é"]));
    assert_eq!(
        list(json!({ "start": "zz", "end": "zzz" })).await,
        json!([])
    );

    assert_eq!(
        call(&s, "l", "/get-many?keys=a,zz,c").await.json(),
        json!({ "a": 2, "c": 5 })
    );
    assert_eq!(call(&s, "l", "/delete?keys=a").await.json(), json!(true));
    assert_eq!(call(&s, "l", "/delete?keys=a").await.json(), json!(false));
    assert_eq!(
        call(&s, "l", "/delete?keys=b,c,nope").await.json(),
        json!(2)
    );
    assert_eq!(list(json!({})).await, json!(["ba", "bb", "d", "é"]));
    assert_eq!(call(&s, "l", "/delete-all").await.text(), "ok");
    assert_eq!(list(json!({})).await, json!([]));
}

#[tokio::test]
async fn limits_transactions_and_value_types() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "t", "/big?n=100000").await.text(), "stored");
    let res = call(&s, "t", "/big?n=140000").await;
    assert_eq!(res.status, 400);
    assert!(res.text().starts_with("RangeError"), "{}", res.text());
    assert_eq!(call(&s, "t", "/bad-key").await.text(), "RangeError");
    assert_eq!(call(&s, "t", "/too-many").await.text(), "RangeError");

    assert_eq!(call(&s, "t", "/txn?fail=1").await.text(), "rolled back");
    assert_eq!(
        call(&s, "t", "/get-many?keys=t1,t2").await.json(),
        json!({})
    );
    assert_eq!(call(&s, "t", "/txn").await.text(), "committed");
    assert_eq!(
        call(&s, "t", "/get-many?keys=t1,t2").await.json(),
        json!({ "t1": 1, "t2": 2 })
    );
    assert_eq!(call(&s, "t", "/txn-rollback").await.json(), Value::Null);

    assert_eq!(
        call(&s, "t", "/types").await.json(),
        json!({ "date": true, "map": 1, "bytes": [1, 2], "big": "10", "nested": { "x": [1, "two"] } })
    );
}

#[tokio::test]
async fn an_exception_answers_500_and_the_instance_carries_on() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "e", "/incr").await.text(), "1");
    let res = call(&s, "e", "/throw").await;
    assert_eq!(res.status, 500);
    assert_eq!(res.json()["error"]["message"], "deliberate failure");
    assert_eq!(call(&s, "e", "/incr").await.text(), "2");
    assert_eq!(call(&s, "e", "/constructed").await.json(), json!(1));
}

#[tokio::test]
async fn storage_survives_redeploys_restarts_and_eviction() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_OBJECT_IDLE_MS", "100")]);
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "p", "/incr").await.text(), "1");
    assert_eq!(call(&s, "p", "/constructed").await.json(), json!(1));
    // Idle instances leave memory; their storage stays.
    let mut evicted = false;
    for _ in 0..50 {
        // Each check is itself activity: leave the instance alone for longer
        // than the idle time before asking.
        tokio::time::sleep(Duration::from_millis(400)).await;
        if call(&s, "p", "/constructed").await.json() == json!(2) {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "the idle instance was never evicted");
    assert_eq!(call(&s, "p", "/incr").await.text(), "2");

    // A redeploy evicts instances but keeps storage.
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "p", "/constructed").await.json(), json!(1));
    assert_eq!(call(&s, "p", "/incr").await.text(), "3");

    let key = s.key.clone();
    s.stop();
    let s = Server::restart(dir.path(), &key);
    assert_eq!(call(&s, "p", "/incr").await.text(), "4");
}

#[tokio::test]
async fn kill_9_during_a_write_burst_loses_no_acknowledged_write() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let http = s.http.clone();
        let base = s.base.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let instance = format!("burst{}", worker % 4);
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{worker}-{n}");
                let url = format!("{base}/v1/shop/_do/store/{instance}/put?k={key}");
                let req = hyper::Request::get(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                match http.raw().request(req).await {
                    Ok(res) if res.status() == 200 => {
                        acked.lock().expect("lock").push((instance.clone(), key));
                    }
                    _ => break,
                }
            }
        }));
    }
    // Let the burst run, then pull the plug mid-flight.
    while acked.lock().expect("lock").len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = s.key.clone();
    s.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);

    let s = Server::restart(dir.path(), &key);
    let mut stored = BTreeSet::new();
    for i in 0..4 {
        let instance = format!("burst{i}");
        let mut start_after: Option<String> = None;
        loop {
            let opts = match &start_after {
                Some(k) => json!({ "limit": 500, "startAfter": k }),
                None => json!({ "limit": 500 }),
            };
            let encoded: String = opts
                .to_string()
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            let keys = call(&s, &instance, &format!("/list?opts={encoded}"))
                .await
                .json();
            let keys: Vec<String> = serde_json::from_value(keys).expect("keys");
            if keys.is_empty() {
                break;
            }
            start_after = keys.last().cloned();
            for k in keys {
                stored.insert((instance.clone(), k));
            }
        }
    }
    let lost: Vec<_> = acked.iter().filter(|a| !stored.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test]
async fn deleting_a_class_purges_its_storage() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "x", "/incr").await.text(), "1");
    assert_eq!(call(&s, "x", "/incr").await.text(), "2");
    let res = s
        .api("DELETE", "/v1/shop/durable-objects/store", None)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(call(&s, "x", "/incr").await.status, 404);
    assert_eq!(
        s.api("DELETE", "/v1/shop/durable-objects/store", None)
            .await
            .status,
        404
    );
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "x", "/incr").await.text(), "1");
}

#[tokio::test]
async fn env_vars_reach_this_env_and_evict_instances() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_store(&s, "public").await;
    assert_eq!(call(&s, "e", "/id").await.json()["env"], Value::Null);
    let res = s
        .api(
            "PUT",
            "/v1/shop/durable-objects/env/GREETING",
            Some(json!({ "value": "hello" })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(call(&s, "e", "/id").await.json()["env"], "hello");
    assert_eq!(call(&s, "e", "/constructed").await.json(), json!(1));
    let res = s.api("GET", "/v1/shop/durable-objects/env", None).await;
    assert_eq!(res.json(), json!({ "keys": ["GREETING"] }));
    for (key, body) in [
        ("lower", json!({ "value": "x" })),
        ("STORE", json!({ "value": "x" })),
        ("BIG", json!({ "value": "x".repeat(8 * 1024 + 1) })),
    ] {
        let res = s
            .api(
                "PUT",
                &format!("/v1/shop/durable-objects/env/{key}"),
                Some(body),
            )
            .await;
        assert_eq!(res.status, 400, "{key}: {}", res.text());
    }
    let res = s
        .api("DELETE", "/v1/shop/durable-objects/env/GREETING", None)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(call(&s, "e", "/id").await.json()["env"], Value::Null);
}

#[tokio::test]
async fn block_concurrency_while_holds_other_events() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    let code = format!(
        r#"export class Loader {{
            ready = false;
            constructor(state: any) {{
                state.blockConcurrencyWhile(async () => {{
                    await fetch("{}/wait/load");
                    this.ready = true;
                }});
            }}
            async fetch() {{ return new Response(String(this.ready)); }}
        }}"#,
        gate.base
    );
    s.api(
        "POST",
        "/v1/shop/durable-objects",
        Some(json!({ "name": "loader", "code": code, "access_mode": "public" })),
    )
    .await;
    let http = s.http.clone();
    let url = s.url("/v1/shop/_do/loader/one");
    let pending = tokio::spawn(async move { http.send("GET", &url, &[], "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "the event ran before blockConcurrencyWhile settled"
    );
    gate.open("load");
    assert_eq!(pending.await.expect("task").text(), "true");
}

#[tokio::test]
async fn apps_are_reachable_by_host_name() {
    let dir = temp_dir();
    let s = Server::start_with_env(dir.path(), &[("CHURN_DOMAIN", "churn.test")]);
    deploy_store(&s, "public").await;
    let res = s
        .http
        .send(
            "GET",
            &s.url("/_do/store/h/incr"),
            &[("host", "shop.churn.test")],
            "",
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "1");
    assert_eq!(call(&s, "h", "/count").await.json(), json!(1));
}
