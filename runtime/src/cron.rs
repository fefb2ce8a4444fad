//! Cron triggers: runs each scheduled function at its times (croner parses
//! the schedule, chrono-tz supplies the time zone), once per scheduled time,
//! retrying a failed run, and recording every attempt in the function's logs.
//!
//! Daylight saving (croner's rule, Vixie cron's): a job at a fixed time that
//! falls in a spring-forward gap runs once, right after the gap; a fixed time
//! that occurs twice in a fall-back hour runs once, at its first occurrence.
//! Wildcard and step fields follow wall-clock time.
//!
//! Restarts: the last scheduled time that was started is stored per function.
//! After downtime, missed ticks are not replayed; if any fell in the catch-up
//! window (default one hour), the most recent one runs once, marked as a
//! catch-up.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use churn_dispatcher::{CallerType, Invocation};
use croner::parser::CronParser;
use croner::Cron;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::apps::{now_rfc3339, App};
use crate::host::SharedHost;
use crate::records::{CronRun, FunctionRecord, LogEntry};
use crate::run::{invoke_error, request_id, to_response};

/// Attempts per scheduled time (the first run and two retries).
pub const MAX_ATTEMPTS: u32 = 3;

/// A validated `{schedule, timezone?, overlap?}`.
#[derive(Clone)]
pub struct CronSpec {
    pub schedule: String,
    pub timezone: Tz,
    pub overlap: bool,
    cron: Cron,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CronConfig {
    schedule: String,
    timezone: Option<String>,
    overlap: Option<bool>,
}

impl CronSpec {
    /// Checks a cron trigger's config; the error names the field at fault.
    pub fn parse(config: &serde_json::Value) -> Result<CronSpec, String> {
        let config: CronConfig = serde_json::from_value(config.clone()).map_err(|e| {
            format!("trigger.config: {e} (expected {{schedule, timezone?, overlap?}})")
        })?;
        let cron = CronParser::new().parse(config.schedule.trim()).map_err(|e| {
            format!(
                "trigger.config.schedule: {:?} is not a valid cron expression ({e}); use 5 fields (minute hour day month weekday), 6 with seconds first, or @hourly/@daily/@weekly/@monthly",
                config.schedule
            )
        })?;
        let zone = config.timezone.as_deref().unwrap_or("UTC");
        let timezone = Tz::from_str(zone).map_err(|_| {
            format!(
                "trigger.config.timezone: {zone:?} is not an IANA time zone (e.g. Europe/Berlin)"
            )
        })?;
        Ok(CronSpec {
            schedule: config.schedule,
            timezone,
            overlap: config.overlap.unwrap_or(false),
            cron,
        })
    }

    /// The spec of a function's cron trigger, if it has one.
    pub fn of(f: &FunctionRecord) -> Option<CronSpec> {
        let trigger = f.triggers.iter().find(|t| t.kind == "cron")?;
        CronSpec::parse(&trigger.config).ok()
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` scheduled times after now.
    pub fn upcoming(&self, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = Utc::now();
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }

    /// The last scheduled time in `(after, until]`, if any.
    fn latest_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = until.with_timezone(&self.timezone);
        let t = self
            .cron
            .find_previous_occurrence(&local, true)
            .ok()?
            .with_timezone(&Utc);
        (t > after).then_some(t)
    }
}

/// What the scheduler keeps on disk per function.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CronState {
    /// The last scheduled time that was started (ms since the epoch).
    pub last_scheduled_ms: Option<i64>,
}

enum Message {
    /// A function's cron trigger is new or changed (`restored`: loaded at
    /// start, so missed ticks may be caught up).
    Upsert {
        app: String,
        name: String,
        spec: Box<CronSpec>,
        restored: bool,
    },
    Remove {
        app: String,
        name: String,
    },
}

/// The handle the control API notifies of deploys and deletes.
#[derive(Clone)]
pub struct CronScheduler {
    tx: mpsc::UnboundedSender<Message>,
}

struct Job {
    spec: CronSpec,
    next: Option<DateTime<Utc>>,
    running: Arc<AtomicUsize>,
}

impl CronScheduler {
    /// Starts the scheduler task.
    pub fn start(host: SharedHost) -> CronScheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(host, rx));
        CronScheduler { tx }
    }

    /// Schedules (or reschedules) `f`, or stops it if it has no cron trigger.
    pub fn update(&self, app: &str, f: &FunctionRecord, restored: bool) {
        let message = match CronSpec::of(f) {
            Some(spec) => Message::Upsert {
                app: app.to_string(),
                name: f.name.clone(),
                spec: Box::new(spec),
                restored,
            },
            None => Message::Remove {
                app: app.to_string(),
                name: f.name.clone(),
            },
        };
        let _ = self.tx.send(message);
    }

    pub fn remove(&self, app: &str, name: &str) {
        let _ = self.tx.send(Message::Remove {
            app: app.to_string(),
            name: name.to_string(),
        });
    }
}

fn load_state(app: &App, name: &str) -> CronState {
    app.cron_state(name).unwrap_or_default()
}

async fn run(host: SharedHost, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut jobs: HashMap<(String, String), Job> = HashMap::new();
    loop {
        let now = Utc::now();
        let next_due = jobs.values().filter_map(|j| j.next).min();
        let sleep = next_due
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { return };
                match message {
                    Message::Upsert { app, name, spec, restored } => {
                        let running = jobs
                            .get(&(app.clone(), name.clone()))
                            .map(|j| j.running.clone())
                            .unwrap_or_default();
                        if restored {
                            catch_up(&host, &app, &name, &spec, &running);
                        }
                        let next = spec.next_after(Utc::now());
                        jobs.insert((app, name), Job { spec: *spec, next, running });
                    }
                    Message::Remove { app, name } => {
                        jobs.remove(&(app, name));
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {
                let now = Utc::now();
                for ((app, name), job) in jobs.iter_mut() {
                    let Some(due) = job.next else { continue };
                    if due > now {
                        continue;
                    }
                    job.next = job.spec.next_after(due);
                    start_run(&host, app, name, &job.spec, due, &job.running, false);
                }
            }
        }
    }
}

/// After a restart: runs the most recent missed tick once, if it is recent.
fn catch_up(
    host: &SharedHost,
    app_id: &str,
    name: &str,
    spec: &CronSpec,
    running: &Arc<AtomicUsize>,
) {
    let Some(app) = host.apps.get(app_id) else {
        return;
    };
    let Some(last) = load_state(&app, name)
        .last_scheduled_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis)
    else {
        return;
    };
    let now = Utc::now();
    let window = chrono::Duration::milliseconds(host.config.cron_catch_up_ms as i64);
    if let Some(missed) = spec.latest_between(last, now) {
        if now - missed <= window {
            start_run(host, app_id, name, spec, missed, running, true);
        }
    }
}

/// Claims scheduled time `at` (durably) and runs it, unless the previous run
/// is still going and overlap is off (then it is recorded as skipped).
fn start_run(
    host: &SharedHost,
    app_id: &str,
    name: &str,
    spec: &CronSpec,
    at: DateTime<Utc>,
    running: &Arc<AtomicUsize>,
    catch_up: bool,
) {
    let Some(app) = host.apps.get(app_id) else {
        return;
    };
    if let Err(e) = app.set_cron_state(
        name,
        &CronState {
            last_scheduled_ms: Some(at.timestamp_millis()),
        },
    ) {
        tracing::error!(
            app = app_id,
            function = name,
            "cannot store cron state: {e}"
        );
    }
    let info = CronRun {
        scheduled_time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        attempt: 1,
        catch_up,
        skipped: false,
    };
    if !spec.overlap && running.load(Ordering::Acquire) > 0 {
        let entry = LogEntry {
            id: request_id(),
            request_id: String::new(),
            timestamp: now_rfc3339(),
            trigger: "cron".into(),
            method: "POST".into(),
            path: format!("/v1/{app_id}/fn/{name}"),
            status: 0,
            duration_ms: 0,
            cpu_ms: 0.0,
            error: Some("skipped: the previous run is still going (set config.overlap to allow overlapping runs)".into()),
            stack: None,
            limit: None,
            logs: Vec::new(),
            cron: Some(CronRun {
                skipped: true,
                ..info
            }),
        };
        host.apps.record_invocation(&app, name, entry);
        return;
    }
    running.fetch_add(1, Ordering::AcqRel);
    let host = host.clone();
    let app_id = app_id.to_string();
    let name = name.to_string();
    let schedule = spec.schedule.clone();
    let running = running.clone();
    tokio::spawn(async move {
        for attempt in 1..=MAX_ATTEMPTS {
            let info = CronRun {
                attempt,
                ..info.clone()
            };
            let ok = run_once(&host, &app_id, &name, &schedule, at, "cron", Some(info)).await;
            if ok.is_some_and(|status| (200..300).contains(&status)) {
                break;
            }
            if attempt < MAX_ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
        }
        running.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Runs the function once as a cron invocation for `scheduled` and records
/// it. Returns the response status, or `None` if it failed without one.
pub async fn run_once(
    host: &SharedHost,
    app_id: &str,
    name: &str,
    schedule: &str,
    scheduled: DateTime<Utc>,
    trigger: &str,
    cron: Option<CronRun>,
) -> Option<u16> {
    let app = host.apps.get(app_id)?;
    let function = host.apps.dispatcher.get(app_id, name)?;
    let path = format!("/v1/{app_id}/fn/{name}");
    let body = serde_json::json!({
        "scheduledTime": scheduled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "cron": schedule,
    });
    let id = request_id();
    let invocation = Invocation {
        method: "POST".into(),
        url: format!("{}{path}", host.public_base),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-churn-trigger".into(), trigger.into()),
        ],
        body: body.to_string().into(),
        user_id: None,
        caller: CallerType::Cron,
        request_id: id.clone(),
        ip: "127.0.0.1".into(),
    };
    let timestamp = now_rfc3339();
    let started = Instant::now();
    let slot = host.apps.dispatcher.admit(&function);
    let (status, mut error, mut stack, limit, completion) = match slot {
        Err(e) => (429, Some(e.to_string()), None, None, None),
        Ok(_slot) => {
            let run = host.apps.dispatcher.invoke(&function, invocation).await;
            match run.head {
                Ok(head) => {
                    let status = head.status;
                    // Drain the body so the run is finished when recorded.
                    let body = to_response(head).into_body().collect().await;
                    let error = body
                        .err()
                        .map(|e| format!("the response stream failed: {e}"));
                    (status, error, None, None, run.completion.await.ok())
                }
                Err(e) => {
                    let api = invoke_error(&e, started.elapsed().as_millis() as u64);
                    let limit = match &e {
                        churn_isolates::InvokeError::Limit { reason, .. } => {
                            Some(reason.to_string())
                        }
                        churn_isolates::InvokeError::Timeout { .. } => Some("timeout".to_string()),
                        _ => None,
                    };
                    let stack = match &e {
                        churn_isolates::InvokeError::Script(s) => s.stack.clone(),
                        _ => None,
                    };
                    (api.status.as_u16(), Some(api.message), stack, limit, None)
                }
            }
        }
    };
    let (logs, cpu_micros) = match completion {
        Some(c) => {
            if error.is_none() {
                if let Some(e) = c.error {
                    error = Some(e.message);
                    stack = e.stack;
                }
            }
            (c.logs, c.cpu_micros)
        }
        None => (Vec::new(), 0),
    };
    if error.is_none() && !(200..300).contains(&status) {
        error = Some(format!("the function answered {status}"));
    }
    let entry = LogEntry {
        id: id.clone(),
        request_id: id,
        timestamp,
        trigger: trigger.to_string(),
        method: "POST".into(),
        path,
        status,
        duration_ms: started.elapsed().as_millis() as u64,
        cpu_ms: cpu_micros as f64 / 1000.0,
        error,
        stack,
        limit,
        logs,
        cron,
    };
    host.apps.record_invocation(&app, name, entry);
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: &str, tz: &str) -> CronSpec {
        CronSpec::parse(&serde_json::json!({ "schedule": schedule, "timezone": tz }))
            .expect("valid")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn refuses_bad_expressions_and_zones_naming_the_field() {
        let e = CronSpec::parse(&serde_json::json!({ "schedule": "61 * * * *" }))
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("trigger.config.schedule"), "{e}");
        let e = CronSpec::parse(
            &serde_json::json!({ "schedule": "* * * * *", "timezone": "Mars/Olympus" }),
        )
        .err()
        .unwrap_or_default();
        assert!(e.starts_with("trigger.config.timezone"), "{e}");
        assert!(CronSpec::parse(&serde_json::json!({ "schedule": "@hourly" })).is_ok());
        assert!(CronSpec::parse(&serde_json::json!({ "schedule": "0 9 * * MON-FRI" })).is_ok());
        assert!(CronSpec::parse(&serde_json::json!({ "schedule": "*/5 * * * * *" })).is_ok());
    }

    #[test]
    fn a_daily_0230_job_runs_once_on_dst_days() {
        // Europe/Berlin springs forward on 2026-03-29 (02:00 -> 03:00) and
        // falls back on 2026-10-25 (03:00 -> 02:00).
        let s = spec("30 2 * * *", "Europe/Berlin");
        let spring = s.next_after(utc("2026-03-28T12:00:00Z")).expect("next");
        assert_eq!(
            spring,
            utc("2026-03-29T01:00:00Z"),
            "runs once, right after the gap (03:00 local)"
        );
        let after = s.next_after(spring).expect("next");
        assert_eq!(
            after,
            utc("2026-03-30T00:30:00Z"),
            "then back to 02:30 local (CEST)"
        );

        let fall = s.next_after(utc("2026-10-24T12:00:00Z")).expect("next");
        assert_eq!(fall, utc("2026-10-25T00:30:00Z"), "first 02:30 (CEST)");
        let after = s.next_after(fall).expect("next");
        assert_eq!(
            after,
            utc("2026-10-26T01:30:00Z"),
            "not again at the second 02:30 (CET)"
        );
    }

    #[test]
    fn lists_upcoming_times_in_order() {
        let s = spec("0 * * * *", "UTC");
        let next = s.upcoming(5);
        assert_eq!(next.len(), 5);
        for pair in next.windows(2) {
            assert_eq!((pair[1] - pair[0]).num_minutes(), 60);
        }
    }
}
