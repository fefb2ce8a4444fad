//! The ArrayBuffer allocator of an isolate: backing stores live outside V8's
//! heap (so its heap limit does not see them), so each isolate gets a budget
//! of its own, the function's memory limit. An allocation past the budget
//! fails and the isolate is stopped for its memory limit.

#![allow(unsafe_code)]

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use deno_core::v8;

use crate::watchdog::{Killed, Slot};

/// One isolate's ArrayBuffer budget.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Set once the isolate exists; told when the budget runs out.
    slot: OnceLock<Arc<Slot>>,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            slot: OnceLock::new(),
        })
    }

    pub fn watch(&self, slot: Arc<Slot>) {
        let _ = self.slot.set(slot);
    }

    fn reserve(&self, len: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(len).filter(|n| *n <= self.limit) else {
                if let Some(slot) = self.slot.get() {
                    slot.kill(Killed::Memory);
                }
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => used = actual,
            }
        }
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::AcqRel);
    }
}

fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len.max(1), 16).ok()
}

unsafe extern "C" fn allocate(budget: &Arc<Budget>, len: usize) -> *mut c_void {
    match layout(len) {
        Some(l) if budget.reserve(len) => {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc_zeroed(l) };
            if p.is_null() {
                budget.release(len);
            }
            p as *mut c_void
        }
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn allocate_uninitialized(budget: &Arc<Budget>, len: usize) -> *mut c_void {
    match layout(len) {
        Some(l) if budget.reserve(len) => {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc(l) };
            if p.is_null() {
                budget.release(len);
            }
            p as *mut c_void
        }
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn free(budget: &Arc<Budget>, data: *mut c_void, len: usize) {
    if data.is_null() {
        return;
    }
    if let Some(l) = layout(len) {
        // SAFETY: V8 frees with the length it allocated, so the layout matches.
        unsafe { dealloc(data as *mut u8, l) };
        budget.release(len);
    }
}

unsafe extern "C" fn drop_handle(budget: *const Arc<Budget>) {
    // SAFETY: the handle was made by `Box::into_raw` in `allocator`.
    drop(unsafe { Box::from_raw(budget as *mut Arc<Budget>) });
}

static VTABLE: v8::RustAllocatorVtable<Arc<Budget>> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_handle,
};

/// An ArrayBuffer allocator that draws from `budget`.
pub fn allocator(budget: Arc<Budget>) -> v8::UniqueRef<v8::Allocator> {
    let handle = Box::into_raw(Box::new(budget));
    // SAFETY: `handle` stays valid until V8 calls `drop_handle`.
    unsafe { v8::new_rust_allocator(handle, &VTABLE) }
}
