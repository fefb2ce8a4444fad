//! Group commit: many writers' batches share one `fsync`.
//!
//! A writer applies its batch to sled (atomic, not yet durable), takes a
//! ticket, and may wait for the ticket to become durable. One flusher thread
//! per database turns "applied" into "durable" for every ticket at once.

use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

/// The order number of an applied batch.
pub type Ticket = u64;

#[derive(Default)]
struct State {
    applied: Ticket,
    durable: Ticket,
    waiters: Vec<(Ticket, oneshot::Sender<Result<(), String>>)>,
    closed: bool,
}

/// The commit coordinator of one sled database.
pub struct GroupCommit {
    state: Arc<(Mutex<State>, Condvar)>,
}

impl GroupCommit {
    pub fn new(db: sled::Db) -> Self {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let shared = state.clone();
        let spawned = std::thread::Builder::new()
            .name("churn-group-commit".into())
            .spawn(move || flusher(db, shared));
        if let Err(e) = spawned {
            tracing::error!("cannot start the group-commit thread: {e}");
        }
        GroupCommit { state }
    }

    /// Records that a batch was applied; call after applying it.
    pub fn applied(&self) -> Ticket {
        let (lock, _) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        s.applied += 1;
        s.applied
    }

    /// Resolves once `ticket` (and everything before it) is on disk.
    pub fn durable(&self, ticket: Ticket) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let (lock, cvar) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        if ticket <= s.durable {
            let _ = tx.send(Ok(()));
        } else {
            s.waiters.push((ticket, tx));
            cvar.notify_one();
        }
        rx
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cvar.notify_one();
    }
}

fn flusher(db: sled::Db, state: Arc<(Mutex<State>, Condvar)>) {
    let (lock, cvar) = &*state;
    loop {
        let target = {
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            while s.waiters.is_empty() && !s.closed {
                s = cvar.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.closed && s.waiters.is_empty() {
                return;
            }
            s.applied
        };
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_ok() {
            s.durable = s.durable.max(target);
        }
        let durable = s.durable;
        let waiters = std::mem::take(&mut s.waiters);
        for (ticket, tx) in waiters {
            if ticket <= durable {
                let _ = tx.send(Ok(()));
            } else if let Err(e) = &result {
                let _ = tx.send(Err(e.clone()));
            } else {
                s.waiters.push((ticket, tx));
            }
        }
    }
}
