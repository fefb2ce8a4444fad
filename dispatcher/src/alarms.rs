//! Fires Durable Object alarms at (never before) their time, retrying a
//! throwing `alarm()` with exponential backoff from 2 s, up to 6 retries.
//!
//! Alarm times live in the class's durable storage; this keeps the schedule
//! in memory and is told of every change (and, at start, of every stored
//! alarm) through [`AlarmListener`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use churn_isolates::{AlarmListener, CodeKind, IsolatePool};
use tokio::sync::mpsc;

use crate::objects::{lookup, ObjectTable};

/// Retries after the first failure.
pub const MAX_ALARM_RETRIES: u32 = 6;
/// The first retry's delay; each next one doubles it.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);

type Target = (String, String, String);

enum Message {
    Set {
        target: Target,
        at_ms: Option<u64>,
    },
    Retry {
        target: Target,
        at_ms: u64,
        retry: u32,
    },
    Done {
        target: Target,
    },
}

/// The handle user code's alarm ops report to.
pub struct AlarmScheduler {
    tx: mpsc::UnboundedSender<Message>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AlarmListener for AlarmScheduler {
    fn alarm_changed(&self, app: &str, class: &str, instance: &str, at_ms: Option<u64>) {
        let _ = self.tx.send(Message::Set {
            target: (app.to_string(), class.to_string(), instance.to_string()),
            at_ms,
        });
    }
}

impl AlarmScheduler {
    /// Starts the scheduler task (needs a tokio runtime).
    pub(crate) fn start(objects: ObjectTable, pool: IsolatePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, tx.clone(), objects, pool));
        AlarmScheduler { tx }
    }
}

#[derive(Default)]
struct Schedule {
    /// `(time, retry, target)` in firing order.
    queue: BTreeSet<(u64, u32, Target)>,
    /// When each target is due, and its retry count.
    due: HashMap<Target, (u64, u32)>,
    /// Targets whose alarm is running now.
    running: HashMap<Target, u64>,
}

impl Schedule {
    fn set(&mut self, target: Target, at: Option<u64>, retry: u32) {
        if let Some((old, old_retry)) = self.due.remove(&target) {
            self.queue.remove(&(old, old_retry, target.clone()));
        }
        if let Some(at) = at {
            self.queue.insert((at, retry, target.clone()));
            self.due.insert(target, (at, retry));
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    tx: mpsc::UnboundedSender<Message>,
    objects: ObjectTable,
    pool: IsolatePool,
) {
    let mut schedule = Schedule::default();
    loop {
        let next = schedule.queue.iter().next().map(|(at, _, _)| *at);
        let sleep = match next {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { return };
                match message {
                    Message::Set { target, at_ms } => schedule.set(target, at_ms, 0),
                    Message::Retry { target, at_ms, retry } => {
                        schedule.running.remove(&target);
                        // A new alarm set meanwhile wins over the retry.
                        if !schedule.due.contains_key(&target) {
                            schedule.set(target, Some(at_ms), retry);
                        }
                    }
                    Message::Done { target } => {
                        schedule.running.remove(&target);
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {
                let now = now_ms();
                while let Some((at, retry, target)) = schedule.queue.iter().next().cloned() {
                    if at > now {
                        break;
                    }
                    if schedule.running.contains_key(&target) {
                        // Still running: look again shortly.
                        schedule.queue.remove(&(at, retry, target.clone()));
                        schedule.queue.insert((now + 50, retry, target.clone()));
                        schedule.due.insert(target, (now + 50, retry));
                        continue;
                    }
                    schedule.queue.remove(&(at, retry, target.clone()));
                    schedule.due.remove(&target);
                    schedule.running.insert(target.clone(), at);
                    tokio::spawn(fire(target, at, retry, objects.clone(), pool.clone(), tx.clone()));
                }
            }
        }
    }
}

async fn fire(
    target: Target,
    at: u64,
    retry: u32,
    objects: ObjectTable,
    pool: IsolatePool,
    tx: mpsc::UnboundedSender<Message>,
) {
    let (app, class, instance) = target.clone();
    let Some(object) = lookup(&objects, &app, &class) else {
        // The class is gone; so is its storage.
        let _ = tx.send(Message::Done { target });
        return;
    };
    let CodeKind::DurableObject(binding) = &object.code.kind else {
        let _ = tx.send(Message::Done { target });
        return;
    };
    let store = binding.store.clone();
    let completion = pool.alarm(&object.code, instance.clone(), retry).await;
    match completion.error {
        None => {
            // Done: clear it, unless alarm() set a new time.
            if let Ok(Some(stored)) = store.get_alarm(&class, &instance) {
                if stored == at {
                    if let Err(e) = store.set_alarm(&class, &instance, None) {
                        tracing::error!(%app, %class, %instance, "cannot clear alarm: {e}");
                    }
                }
            }
            let _ = tx.send(Message::Done { target });
        }
        Some(error) if retry < MAX_ALARM_RETRIES => {
            let delay = FIRST_RETRY_DELAY * 2u32.pow(retry);
            tracing::info!(%app, %class, %instance, retry, "alarm threw ({}); retrying in {delay:?}", error.message);
            let _ = tx.send(Message::Retry {
                target,
                at_ms: now_ms() + delay.as_millis() as u64,
                retry: retry + 1,
            });
        }
        Some(error) => {
            tracing::warn!(%app, %class, %instance, "alarm failed {} times, giving up: {}", retry + 1, error.message);
            let _ = store.set_alarm(&class, &instance, None);
            let _ = tx.send(Message::Done { target });
        }
    }
}
