//! Durable Object alarms: on time, once, retried after a throw, and kept
//! across a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{temp_dir, Server};

const ALARMS: &str = r#"
export class Clock {
  state: any;
  constructor(state: any) { this.state = state; }
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const s = this.state.storage;
    if (url.pathname === "/set") {
      const at = Date.now() + Number(url.searchParams.get("in"));
      await s.put("scheduled", at);
      await s.put("mode", url.searchParams.get("mode") ?? "ok");
      await s.setAlarm(at);
      return Response.json(await s.getAlarm() === at);
    }
    if (url.pathname === "/state") {
      return Response.json({ runs: (await s.get("runs")) ?? [], alarm: await s.getAlarm(), scheduled: await s.get("scheduled") });
    }
    if (url.pathname === "/cancel") {
      await s.deleteAlarm();
      return Response.json(await s.getAlarm());
    }
    return new Response("?", { status: 404 });
  }
  async alarm(info: { retryCount: number; isRetry: boolean }) {
    const s = this.state.storage;
    const runs = (await s.get("runs")) ?? [];
    runs.push({ at: Date.now(), retryCount: info.retryCount, isRetry: info.isRetry });
    await s.put("runs", runs);
    if ((await s.get("mode")) === "fail-once" && info.retryCount === 0) {
      throw new Error("first attempt fails");
    }
  }
}
"#;

async fn deploy_clock(s: &Server) {
    let res = s
        .api(
            "POST",
            "/v1/shop/durable-objects",
            Some(json!({ "name": "clock", "code": ALARMS, "access_mode": "service_key" })),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
}

async fn clock_state(s: &Server, id: &str) -> Value {
    s.api("GET", &format!("/v1/shop/_do/clock/{id}/state"), None)
        .await
        .json()
}

async fn wait_for_runs(s: &Server, id: &str, n: usize) -> Value {
    for _ in 0..400 {
        let state = clock_state(s, id).await;
        if state["runs"].as_array().map(Vec::len).unwrap_or(0) >= n {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("alarm for {id} did not run {n} times");
}

#[tokio::test]
async fn alarms_fire_once_on_time_and_retry_after_a_throw() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_clock(&s).await;

    assert_eq!(
        s.api("GET", "/v1/shop/_do/clock/a/set?in=300", None)
            .await
            .json(),
        json!(true)
    );
    let state = wait_for_runs(&s, "a", 1).await;
    let run = &state["runs"][0];
    assert!(
        run["at"].as_f64() >= state["scheduled"].as_f64(),
        "fired early: {state}"
    );
    assert_eq!(run["retryCount"], 0);
    assert_eq!(run["isRetry"], false);
    // It does not fire again, and it is cleared.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let state = clock_state(&s, "a").await;
    assert_eq!(state["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(state["alarm"], Value::Null);

    // A throwing alarm is retried (after about 2 s) with isRetry set.
    s.api("GET", "/v1/shop/_do/clock/b/set?in=10&mode=fail-once", None)
        .await;
    let state = wait_for_runs(&s, "b", 2).await;
    assert_eq!(state["runs"][0]["retryCount"], 0);
    assert_eq!(state["runs"][1]["retryCount"], 1);
    assert_eq!(state["runs"][1]["isRetry"], true);
    let gap = state["runs"][1]["at"].as_f64().unwrap_or(0.0)
        - state["runs"][0]["at"].as_f64().unwrap_or(0.0);
    assert!(gap >= 2000.0, "retried after {gap} ms");

    // A deleted alarm never fires.
    s.api("GET", "/v1/shop/_do/clock/c/set?in=200", None).await;
    assert_eq!(
        s.api("GET", "/v1/shop/_do/clock/c/cancel", None)
            .await
            .json(),
        Value::Null
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(clock_state(&s, "c").await["runs"], json!([]));
}

#[tokio::test]
async fn alarms_survive_a_restart() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    deploy_clock(&s).await;
    s.api("GET", "/v1/shop/_do/clock/r/set?in=1500", None).await;
    let key = s.key.clone();
    s.stop();
    let s = Server::restart(dir.path(), &key);
    let state = wait_for_runs(&s, "r", 1).await;
    assert!(state["runs"][0]["at"].as_f64() >= state["scheduled"].as_f64());
}
