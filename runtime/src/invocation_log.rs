//! Invocation records: each function's log entries and running stats, kept
//! in memory per function (never more than the log keeps) and written to the
//! app's sled database in one batch per flush, off the request path.

use std::sync::atomic::Ordering;

use churn_storage_kv::KvError;

use crate::apps::{App, Apps};
use crate::records::LogEntry;

/// Logs are stored in batches (one per flush): `name \0 micros seq count`,
/// each holding the entries oldest first; `count` lets trimming skip reading.
fn log_key(name: &str, ts_micros: u64, seq: u64, count: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 21);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_micros.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&count.to_be_bytes());
    k
}

fn batch_count(key: &[u8]) -> usize {
    key.len()
        .checked_sub(4)
        .and_then(|i| key.get(i..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
        .unwrap_or(0)
}

pub(crate) fn log_prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

impl App {
    /// Writes buffered invocation records and stats to sled.
    pub fn flush_logs(&self, keep_per_function: usize) {
        let pending =
            std::mem::take(&mut *self.unflushed.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.logs.is_empty() && pending.stats.is_empty() {
            return;
        }
        let mut touched: Vec<String> = Vec::new();
        let micros = chrono::Utc::now().timestamp_micros().max(0) as u64;
        for (name, entries) in pending.logs {
            let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
            let batch: Vec<LogEntry> = entries.into();
            let key = log_key(&name, micros, seq, batch.len() as u32);
            if let Err(e) = self.logs.put(&key, &batch) {
                tracing::error!(app = %self.id, "cannot record invocations: {e}");
            }
            if let Err(e) = self.trim_logs(&name, keep_per_function) {
                tracing::error!(app = %self.id, "cannot trim logs: {e}");
            }
        }
        for name in pending.stats {
            let stats = self
                .stats_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
            if let Some(stats) = stats {
                if let Err(e) = self.stats.put(name.as_bytes(), &stats) {
                    tracing::error!(app = %self.id, "cannot record stats: {e}");
                }
            }
            touched.push(name);
        }
    }

    /// Drops the oldest batches beyond the newest `keep` entries.
    fn trim_logs(&self, name: &str, keep: usize) -> Result<(), KvError> {
        let keys = self.logs.keys_prefix_rev(&log_prefix(name))?;
        let mut kept = 0;
        for key in keys {
            if kept >= keep {
                self.logs.delete(&key)?;
            } else {
                kept += batch_count(&key);
            }
        }
        Ok(())
    }

    /// Up to `limit` entries, newest first.
    pub fn logs(&self, name: &str, limit: usize) -> Result<Vec<LogEntry>, KvError> {
        let mut out = Vec::new();
        for (_, batch) in self
            .logs
            .scan_prefix_rev::<Vec<LogEntry>>(&log_prefix(name), usize::MAX)?
        {
            for entry in batch.into_iter().rev() {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(entry);
            }
        }
        Ok(out)
    }
}

impl Apps {
    /// Records a finished invocation: its log entry and the running stats.
    /// Both are kept in memory and written to disk in batches
    /// ([`Apps::flush_logs`]), off the request path.
    pub fn record_invocation(&self, app: &App, name: &str, entry: LogEntry) {
        let failed = entry.error.is_some() || entry.status >= 500;
        {
            let mut cache = app.stats_cache.lock().unwrap_or_else(|p| p.into_inner());
            if !cache.contains_key(name) {
                let stored = app
                    .stats
                    .get(name.as_bytes())
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                cache.insert(name.to_string(), stored);
            }
            if let Some(stats) = cache.get_mut(name) {
                stats.invocation_count += 1;
                if failed {
                    stats.error_count += 1;
                }
                stats.total_duration_ms += entry.duration_ms;
                stats.last_invoked = Some(entry.timestamp.clone());
            }
        }
        let mut unflushed = app.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        let queue = match unflushed.logs.get_mut(name) {
            Some(q) => q,
            None => unflushed.logs.entry(name.to_string()).or_default(),
        };
        if queue.len() >= self.logs_per_function.max(1) {
            queue.pop_front();
        }
        queue.push_back(entry);
        if !unflushed.stats.iter().any(|n| n == name) {
            unflushed.stats.push(name.to_string());
        }
    }

    /// Writes every app's buffered invocation records to disk.
    pub fn flush_logs(&self) {
        for app in self.all() {
            app.flush_logs(self.logs_per_function);
        }
    }

    pub fn logs_per_function(&self) -> usize {
        self.logs_per_function
    }
}
