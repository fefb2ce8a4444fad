//! The CPU-time limit. Each isolate poll is registered with a watchdog
//! thread; one that has run longer than its limit on the isolate thread's CPU
//! clock is stopped with `terminate_execution`, and the isolate is then
//! discarded by its worker.
//!
//! The poll's start is read with `CLOCK_THREAD_CPUTIME_ID` on the worker; the
//! watchdog reads the same clock of that thread from
//! `/proc/self/task/<tid>/schedstat` (both are the task's `sum_exec_runtime`).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use deno_core::v8;

/// Why an isolate was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Killed {
    Cpu,
    Memory,
}

impl Killed {
    pub fn reason(self) -> &'static str {
        match self {
            Killed::Cpu => "cpu",
            Killed::Memory => "memory",
        }
    }
}

/// One isolate's registration.
pub struct Slot {
    handle: v8::IsolateHandle,
    tid: Option<u32>,
    limit: Duration,
    /// Wall-clock start of the current poll (ns since `EPOCH`), 0 when idle.
    poll_wall: AtomicU64,
    /// Thread CPU time at the start of the current poll, in ns.
    poll_cpu: AtomicU64,
    killed: AtomicU8,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static SLOTS: LazyLock<Mutex<Vec<Weak<Slot>>>> = LazyLock::new(|| {
    let spawned = std::thread::Builder::new()
        .name("churn-watchdog".into())
        .spawn(watch);
    if let Err(e) = spawned {
        tracing::error!("cannot start the CPU watchdog: {e}");
    }
    Mutex::new(Vec::new())
});

thread_local! {
    static TID: Option<u32> = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok());
}

fn wall_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

fn thread_cpu_ns() -> u64 {
    cpu_time::ThreadTime::try_now()
        .map(|t| t.as_duration().as_nanos() as u64)
        .unwrap_or(0)
}

fn cpu_of(tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

impl Slot {
    /// Registers an isolate living on the current thread.
    pub fn register(handle: v8::IsolateHandle, limit: Duration) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            handle,
            tid: TID.with(|t| *t),
            limit,
            poll_wall: AtomicU64::new(0),
            poll_cpu: AtomicU64::new(0),
            killed: AtomicU8::new(0),
        });
        let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    pub fn begin_poll(&self) {
        self.poll_cpu.store(thread_cpu_ns(), Ordering::Relaxed);
        self.poll_wall.store(wall_ns().max(1), Ordering::Release);
    }

    pub fn end_poll(&self) {
        self.poll_wall.store(0, Ordering::Release);
    }

    /// Stops the isolate for `why` (used for the memory limit too).
    pub fn kill(&self, why: Killed) {
        let code = match why {
            Killed::Cpu => 1,
            Killed::Memory => 2,
        };
        if self
            .killed
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.handle.terminate_execution();
        }
    }

    pub fn killed(&self) -> Option<Killed> {
        match self.killed.load(Ordering::Acquire) {
            1 => Some(Killed::Cpu),
            2 => Some(Killed::Memory),
            _ => None,
        }
    }

    fn check(&self) {
        let started = self.poll_wall.load(Ordering::Acquire);
        if started == 0 || self.killed.load(Ordering::Relaxed) != 0 {
            return;
        }
        let limit = self.limit.as_nanos() as u64;
        // Cheap filter first: a poll can't have used more CPU than wall time.
        if wall_ns().saturating_sub(started) < limit {
            return;
        }
        let used = match self.tid.and_then(cpu_of) {
            Some(now) => now.saturating_sub(self.poll_cpu.load(Ordering::Relaxed)),
            // No per-thread clock: fall back to wall time.
            None => wall_ns().saturating_sub(started),
        };
        if used >= limit && self.poll_wall.load(Ordering::Acquire) == started {
            self.kill(Killed::Cpu);
        }
    }
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let slots: Vec<Arc<Slot>> = SLOTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for slot in slots {
            slot.check();
        }
    }
}
