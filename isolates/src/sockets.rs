//! WebSockets accepted by Durable Object instances. The registry outlives the
//! instances' JavaScript objects, so an instance can be evicted from memory
//! while its (hibernatable) sockets stay open, and be rebuilt with their tags
//! and attachments when the next message arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Most tags one socket may carry.
pub const MAX_TAGS: usize = 10;
/// Largest serialized attachment.
pub const MAX_ATTACHMENT: usize = 16 * 1024;

/// What the instance sends down a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Binary(Bytes),
    Close(u16, String),
}

struct Entry {
    instance: String,
    tags: Vec<String>,
    attachment: Option<Vec<u8>>,
    /// Accepted through `state.acceptWebSocket` (may outlive the object).
    hibernatable: bool,
    /// Closed; kept until the instance has handled the close.
    closed: bool,
    out: mpsc::UnboundedSender<Outgoing>,
    pending: Option<mpsc::UnboundedReceiver<Outgoing>>,
}

/// The sockets of one Durable Object class.
#[derive(Default)]
pub struct SocketRegistry {
    next: AtomicU64,
    sockets: Mutex<HashMap<u64, Entry>>,
    /// Per instance: (request text, response text) answered by the host.
    auto: Mutex<HashMap<String, (String, String)>>,
}

impl SocketRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new socket (one half of a `WebSocketPair`) for `instance`.
    pub fn create(&self, instance: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (out, rx) = mpsc::unbounded_channel();
        self.lock().insert(
            id,
            Entry {
                instance: instance.to_string(),
                tags: Vec::new(),
                attachment: None,
                hibernatable: false,
                closed: false,
                out,
                pending: Some(rx),
            },
        );
        id
    }

    /// Hands the outgoing queue to the connection task (once).
    pub fn take_outgoing(&self, id: u64) -> Option<mpsc::UnboundedReceiver<Outgoing>> {
        self.lock().get_mut(&id)?.pending.take()
    }

    pub fn instance_of(&self, id: u64) -> Option<String> {
        self.lock().get(&id).map(|e| e.instance.clone())
    }

    pub fn accept(&self, id: u64, hibernatable: bool, tags: Vec<String>) -> bool {
        match self.lock().get_mut(&id) {
            Some(e) => {
                e.hibernatable = hibernatable;
                e.tags = tags;
                true
            }
            None => false,
        }
    }

    pub fn send(&self, id: u64, message: Outgoing) -> bool {
        match self.lock().get(&id) {
            Some(e) => e.out.send(message).is_ok(),
            None => false,
        }
    }

    /// Hibernatable sockets of `instance`, optionally with `tag`, oldest first.
    pub fn list(&self, instance: &str, tag: Option<&str>) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.instance == instance && e.hibernatable && !e.closed)
            .filter(|(_, e)| tag.is_none_or(|t| e.tags.iter().any(|x| x == t)))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn tags(&self, id: u64) -> Vec<String> {
        self.lock()
            .get(&id)
            .map(|e| e.tags.clone())
            .unwrap_or_default()
    }

    pub fn is_hibernatable(&self, id: u64) -> bool {
        self.lock().get(&id).is_some_and(|e| e.hibernatable)
    }

    pub fn set_attachment(&self, id: u64, value: Option<Vec<u8>>) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.attachment = value;
        }
    }

    pub fn attachment(&self, id: u64) -> Option<Vec<u8>> {
        self.lock().get(&id).and_then(|e| e.attachment.clone())
    }

    /// The socket closed: it leaves `list` but keeps its tags and attachment
    /// until [`SocketRegistry::remove`].
    pub fn mark_closed(&self, id: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.closed = true;
        }
    }

    /// The socket is gone (closed by either side).
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Whether `instance` has sockets that need its object in memory (ones
    /// accepted with the standard `accept()`).
    pub fn has_standard(&self, instance: &str) -> bool {
        self.lock()
            .values()
            .any(|e| e.instance == instance && !e.hibernatable && e.pending.is_none())
    }

    /// Closes every socket (redeploy, delete).
    pub fn close_all(&self, code: u16, reason: &str) {
        for e in self.lock().values() {
            let _ = e.out.send(Outgoing::Close(code, reason.to_string()));
        }
    }

    pub fn set_auto_response(&self, instance: &str, pair: Option<(String, String)>) {
        let mut auto = self.auto.lock().unwrap_or_else(|p| p.into_inner());
        match pair {
            Some(p) => {
                auto.insert(instance.to_string(), p);
            }
            None => {
                auto.remove(instance);
            }
        }
    }

    pub fn auto_response(&self, instance: &str) -> Option<(String, String)> {
        self.auto
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned()
    }

    /// Sockets open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
