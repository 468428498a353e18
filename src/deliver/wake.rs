//! The commit wake-up: a transaction that queued due messages sets the deliverer's latch when it
//! commits, so delivery starts at once instead of at the next poll (`engage.poll_interval` is the
//! fallback).

use pgrx::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// The transaction for which a wake-up is already registered.
static REGISTERED_FOR: AtomicU32 = AtomicU32::new(0);

/// Makes the deliverer wake up when the current transaction commits (once per transaction).
pub fn after_commit() {
    if crate::workers::deliverer_pid().is_none() {
        return;
    }
    // SAFETY: the inserting transaction has an xid (it wrote rows).
    let xid = unsafe { pg_sys::GetCurrentTransactionId() }.into_inner();
    if REGISTERED_FOR.swap(xid, Ordering::AcqRel) == xid {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        if let Some(pid) = crate::workers::deliverer_pid() {
            // SAFETY: BackendPidGetProc returns the live PGPROC of that pid or null.
            unsafe {
                let proc_ = pg_sys::BackendPidGetProc(pid);
                if !proc_.is_null() {
                    pg_sys::SetLatch(&mut (*proc_).procLatch);
                }
            }
        }
    });
}
