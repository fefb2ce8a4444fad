//! Several isolates on one thread.
//!
//! rusty_v8 enters an isolate when it is created and exits it when it is
//! dropped, which only works if a thread holds one isolate at a time or drops
//! them in reverse order. A worker thread holds many (one per function and
//! class it serves), so each isolate is exited right after creation and
//! entered around every use, as V8's own `Isolate::Scope` does in C++.

#![allow(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use deno_core::v8;
use deno_core::JsRuntime;

use crate::watchdog::Slot;

/// A `JsRuntime` that is entered only while it is being used.
pub struct EnteredRuntime {
    // Boxed so the isolate handle below keeps its address.
    runtime: Box<JsRuntime>,
    isolate: *const v8::Isolate,
    /// The CPU watchdog's view of this isolate's polls.
    slot: Option<Arc<Slot>>,
}

impl EnteredRuntime {
    /// Takes a just-created runtime (entered by its creation) and exits it.
    pub fn new(runtime: JsRuntime) -> Self {
        let mut runtime = Box::new(runtime);
        let isolate: *const v8::Isolate = &**runtime.v8_isolate();
        // SAFETY: the isolate was entered by its creation on this thread and
        // is the current one; exiting restores the previously entered one.
        unsafe { (*isolate).exit() };
        EnteredRuntime {
            runtime,
            isolate,
            slot: None,
        }
    }

    /// Puts every later poll under the CPU watchdog.
    pub fn watch(&mut self, slot: Arc<Slot>) {
        self.slot = Some(slot);
    }

    /// Runs `f` with the isolate entered.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut JsRuntime) -> R) -> R {
        // SAFETY: `isolate` points into `self.runtime`, which is alive and
        // pinned in its box; enter and exit are balanced on this thread.
        unsafe { (*self.isolate).enter() };
        if let Some(slot) = &self.slot {
            slot.begin_poll();
        }
        let result = f(&mut self.runtime);
        if let Some(slot) = &self.slot {
            slot.end_poll();
        }
        unsafe { (*self.isolate).exit() };
        result
    }

    /// Polls `make(runtime)`'s future with the isolate entered on each poll.
    pub async fn run<'a, F, R>(&'a mut self, make: impl FnOnce(&'a mut JsRuntime) -> F) -> R
    where
        F: Future<Output = R> + 'a,
    {
        let isolate = self.isolate;
        // SAFETY: as in `with`; creating the future may touch the isolate.
        unsafe { (*isolate).enter() };
        let future = make(&mut self.runtime);
        unsafe { (*isolate).exit() };
        EnteredFuture {
            isolate,
            slot: self.slot.clone(),
            future: Box::pin(future),
        }
        .await
    }
}

impl Drop for EnteredRuntime {
    fn drop(&mut self) {
        // SAFETY: rusty_v8 exits the isolate when dropping it and requires it
        // to be the current one then: enter it once more first.
        unsafe { (*self.isolate).enter() };
    }
}

struct EnteredFuture<'a, R> {
    isolate: *const v8::Isolate,
    slot: Option<Arc<Slot>>,
    future: Pin<Box<dyn Future<Output = R> + 'a>>,
}

impl<R> Future for EnteredFuture<'_, R> {
    type Output = R;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let isolate = self.isolate;
        // SAFETY: the runtime outlives this future (it borrows it).
        unsafe { (*isolate).enter() };
        if let Some(slot) = &self.slot {
            slot.begin_poll();
        }
        let result = self.future.as_mut().poll(cx);
        if let Some(slot) = &self.slot {
            slot.end_poll();
        }
        unsafe { (*isolate).exit() };
        result
    }
}
