//! Cron triggers against the real binary, with second-resolution schedules
//! so the tests take seconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::support::{temp_dir, Gate, Server};

const RECORDER: &str = r#"export async function handler(req: Request, ctx: any) {
    const body = await req.json();
    console.log(JSON.stringify({ body, trigger: req.headers.get("x-churn-trigger"), method: req.method, caller: ctx.caller.type, user: ctx.user }));
    return new Response("done");
}"#;

fn cron_trigger(schedule: &str) -> Value {
    json!({ "triggers": [{ "type": "cron", "config": { "schedule": schedule } }] })
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time string"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

async fn cron_logs(s: &Server, name: &str) -> Vec<Value> {
    let res = s
        .api(
            "GET",
            &format!("/v1/shop/functions/{name}/logs?limit=1000"),
            None,
        )
        .await;
    let mut logs = res.json()["logs"].as_array().cloned().unwrap_or_default();
    logs.retain(|l| l["trigger"] == "cron");
    logs.reverse(); // oldest first
    logs
}

async fn wait_cron_logs(
    s: &Server,
    name: &str,
    n: usize,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    for _ in 0..600 {
        let logs = cron_logs(s, name).await;
        if logs.iter().filter(|l| pred(l)).count() >= n {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} matching cron runs of {name}");
}

#[tokio::test]
async fn runs_happen_on_schedule_with_the_cron_request() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let res = s
        .deploy("shop", "tick", RECORDER, cron_trigger("* * * * * *"))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let logs = wait_cron_logs(&s, "tick", 3, |_| true).await;
    let runs: Vec<&Value> = logs.iter().take(3).collect();
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["status"], 200, "{run}");
        assert_eq!(run["cron"]["attempt"], 1);
        assert_eq!(run["cron"]["catch_up"], false);
        let scheduled = time(&run["cron"]["scheduled_time"]);
        assert_eq!(scheduled.timestamp_subsec_millis(), 0, "on a whole second");
        let started = time(&run["timestamp"]);
        let late = started - scheduled;
        assert!(
            late >= chrono::Duration::zero(),
            "started before its time: {run}"
        );
        assert!(
            late < chrono::Duration::seconds(1),
            "started {late} late: {run}"
        );
        if i > 0 {
            let previous = time(&runs[i - 1]["cron"]["scheduled_time"]);
            assert_eq!((scheduled - previous).num_seconds(), 1);
        }
        let line: Value =
            serde_json::from_str(run["logs"][0]["message"].as_str().expect("log line"))
                .expect("json");
        assert_eq!(line["body"]["cron"], "* * * * * *");
        assert_eq!(time(&line["body"]["scheduledTime"]), scheduled);
        assert_eq!(line["trigger"], "cron");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["caller"], "cron");
        assert_eq!(line["user"], Value::Null);
    }

    let res = s.api("GET", "/v1/shop/functions/tick", None).await;
    let next = res.json()["nextRuns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(next.len(), 5);
    for pair in next.windows(2) {
        assert_eq!((time(&pair[1]) - time(&pair[0])).num_seconds(), 1);
    }
}

#[tokio::test]
async fn a_failing_run_is_retried_and_every_attempt_recorded() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy(
        "shop",
        "flaky",
        "export function handler() { throw new Error('billing provider down'); }",
        cron_trigger("*/5 * * * * *"),
    )
    .await;
    let logs = wait_cron_logs(&s, "flaky", 3, |l| l["error"].as_str().is_some()).await;
    let first = &logs[0]["cron"]["scheduled_time"];
    let attempts: Vec<&Value> = logs
        .iter()
        .filter(|l| &l["cron"]["scheduled_time"] == first)
        .collect();
    assert_eq!(attempts.len(), 3, "{logs:?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["cron"]["attempt"], i as u64 + 1);
        assert_eq!(a["status"], 500);
        assert_eq!(a["error"], "billing provider down");
    }
    // No fourth attempt for that time.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let logs = cron_logs(&s, "flaky").await;
    assert_eq!(
        logs.iter()
            .filter(|l| &l["cron"]["scheduled_time"] == first)
            .count(),
        3
    );
    // A non-2xx answer counts as a failure too.
    s.deploy(
        "shop",
        "unhappy",
        "export function handler() { return new Response('nope', { status: 503 }); }",
        cron_trigger("*/5 * * * * *"),
    )
    .await;
    let logs = wait_cron_logs(&s, "unhappy", 2, |l| l["status"] == 503).await;
    assert_eq!(logs[1]["cron"]["attempt"], 2);
}

#[tokio::test]
async fn a_slow_run_is_not_overlapped_unless_allowed() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    let gate = Gate::start().await;
    let code = |tag: &str| {
        format!(
            "export async function handler() {{ await fetch('{0}/hit/{tag}'); await fetch('{0}/wait/{tag}'); return new Response('ok'); }}",
            gate.base
        )
    };
    s.deploy(
        "shop",
        "single",
        &code("single"),
        cron_trigger("* * * * * *"),
    )
    .await;
    let logs = wait_cron_logs(&s, "single", 2, |l| l["cron"]["skipped"] == true).await;
    let skipped: Vec<&Value> = logs
        .iter()
        .filter(|l| l["cron"]["skipped"] == true)
        .collect();
    assert!(skipped[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("still going")));
    assert_eq!(gate.hits("single"), 1, "only one run started");
    gate.open("single");
    wait_cron_logs(&s, "single", 1, |l| l["status"] == 200).await;

    let overlapping = json!({ "triggers": [{ "type": "cron", "config": { "schedule": "* * * * * *", "overlap": true } }] });
    s.deploy("shop", "multi", &code("multi"), overlapping).await;
    for _ in 0..200 {
        if gate.hits("multi") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gate.hits("multi") >= 2,
        "overlapping runs start while the first is still going"
    );
    gate.open("multi");
}

#[tokio::test]
async fn bad_schedules_and_zones_are_refused() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    for (config, field) in [
        (
            json!({ "schedule": "61 * * * *" }),
            "trigger.config.schedule",
        ),
        (
            json!({ "schedule": "every day" }),
            "trigger.config.schedule",
        ),
        (
            json!({ "schedule": "* * * * *", "timezone": "Mars/Olympus_Mons" }),
            "trigger.config.timezone",
        ),
        (json!({ "timezone": "UTC" }), "schedule"),
        (json!({ "schedule": "* * * * *", "when": "now" }), "when"),
    ] {
        let res = s
            .deploy(
                "shop",
                "bad",
                RECORDER,
                json!({ "trigger": { "type": "cron", "config": config } }),
            )
            .await;
        assert_eq!(res.status, 400, "{}", res.text());
        assert_eq!(res.error_code(), "VALIDATION_INVALID_SCHEMA");
        assert!(res.text().contains(field), "{field}: {}", res.text());
    }
    // Named days, @macros and a time zone are fine; cron sits beside http.
    let res = s
        .deploy(
            "shop",
            "good",
            RECORDER,
            json!({ "triggers": [
                { "type": "http", "config": { "auth": "none" } },
                { "type": "cron", "config": { "schedule": "0 9 * * MON-FRI", "timezone": "Europe/Berlin" } }
            ] }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = s
        .deploy("shop", "hourly", RECORDER, cron_trigger("@hourly"))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
}

#[tokio::test]
async fn trigger_runs_now_and_redeploy_or_delete_stop_the_schedule() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy("shop", "report", RECORDER, cron_trigger("0 0 1 1 *"))
        .await;
    let res = s
        .api("POST", "/v1/shop/functions/report/trigger", None)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["status"], 200);
    let logs = s.logs("shop", "report", 1).await;
    assert_eq!(logs[0]["trigger"], "manual");
    let res = s
        .api("POST", "/v1/shop/functions/report/invoke", Some(json!({})))
        .await;
    assert_eq!(res.status, 200);

    // Every second, then a new schedule that is a year away: runs stop at once.
    s.deploy("shop", "report", RECORDER, cron_trigger("* * * * * *"))
        .await;
    wait_cron_logs(&s, "report", 1, |_| true).await;
    s.deploy("shop", "report", RECORDER, cron_trigger("0 0 1 1 *"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cron_logs(&s, "report").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cron_logs(&s, "report").await.len(), before);

    s.deploy("shop", "gone", RECORDER, cron_trigger("* * * * * *"))
        .await;
    wait_cron_logs(&s, "gone", 1, |_| true).await;
    s.api("DELETE", "/v1/shop/functions/gone", None).await;
    s.deploy(
        "shop",
        "gone",
        "export function handler() { return new Response('new'); }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        cron_logs(&s, "gone").await.len(),
        0,
        "the deleted schedule is gone"
    );
}

#[tokio::test]
async fn after_downtime_one_catch_up_runs_not_every_missed_tick() {
    let dir = temp_dir();
    let s = Server::start(dir.path());
    s.deploy("shop", "nightly", RECORDER, cron_trigger("* * * * * *"))
        .await;
    let before = wait_cron_logs(&s, "nightly", 1, |_| true).await;
    let key = s.key.clone();
    s.stop();
    let stopped = before.len();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let s = Server::restart(dir.path(), &key);
    let logs = wait_cron_logs(&s, "nightly", 1, |l| l["cron"]["catch_up"] == true).await;
    let catch_ups: Vec<&Value> = logs
        .iter()
        .filter(|l| l["cron"]["catch_up"] == true)
        .collect();
    assert_eq!(catch_ups.len(), 1);
    // Nothing else ran for the missed seconds: the runs after the stop are
    // the catch-up and then ticks after the restart.
    let last_before = time(&logs[stopped - 1]["cron"]["scheduled_time"]);
    let caught = time(&catch_ups[0]["cron"]["scheduled_time"]);
    let missed = logs
        .iter()
        .filter(|l| l["cron"]["catch_up"] == false)
        .filter(|l| {
            let t = time(&l["cron"]["scheduled_time"]);
            t > last_before && t <= caught
        })
        .count();
    assert_eq!(missed, 0, "{logs:?}");
    assert!((caught - last_before).num_seconds() >= 2);
    s.stop();

    // Outside the catch-up window nothing is caught up.
    let s = Server::start_with_env(
        &dir.path().join("other"),
        &[("CHURN_CRON_CATCH_UP_MS", "500")],
    );
    s.deploy("shop", "nightly", RECORDER, cron_trigger("* * * * * *"))
        .await;
    wait_cron_logs(&s, "nightly", 1, |_| true).await;
    let key = s.key.clone();
    let path = dir.path().join("other");
    s.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = Server::spawn_with(&path, Some(key), &[("CHURN_CRON_CATCH_UP_MS", "500")]);
    wait_cron_logs(&s, "nightly", 2, |_| true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(cron_logs(&s, "nightly")
        .await
        .iter()
        .all(|l| l["cron"]["catch_up"] == false));
}
