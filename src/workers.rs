//! The built-in background workers, the deliverer (`deliver`) and the scheduler (`scheduler`):
//! their registration, their state in shared memory, how they end, and `engage.worker_status()`.
//! Registering them also sets up the rest of pg_engage's shared memory (the rule cache's load
//! counter, `evaluate::rule_cache`).
//!
//! They exist only when pg_engage is in `shared_preload_libraries`; without it, an external
//! deliverer uses the outbox's claim / complete / fail functions and pg_cron runs the scheduler's
//! calls.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

static DELIVERER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_engage_worker_pid") };
static SENT: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_sent") };
static FAILED: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_failed") };
static LAST_BATCH: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_last_batch") };
static SCHEDULER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_engage_scheduler_pid") };

/// Whether this process got pg_engage from shared_preload_libraries (so shared memory exists).
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from _PG_init when preloading: the shared state, then both workers.
pub fn register() {
    pg_shmem_init!(DELIVERER_PID = AtomicI32::new(0));
    pg_shmem_init!(SENT = AtomicI64::new(0));
    pg_shmem_init!(FAILED = AtomicI64::new(0));
    pg_shmem_init!(LAST_BATCH = AtomicI64::new(0));
    pg_shmem_init!(SCHEDULER_PID = AtomicI32::new(0));
    crate::evaluate::rule_cache::init_shared();
    crate::deliver::register();
    crate::scheduler::register();
    PRELOADED.store(true, Ordering::Release);
}

/// Whether this process has pg_engage's shared memory (pg_engage is in shared_preload_libraries).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Acquire)
}

/// The built-in workers whose process id worker_status() shows.
#[derive(Clone, Copy)]
pub enum Worker {
    Deliverer = 0,
    Scheduler = 1,
}

fn pid_slot(worker: Worker) -> &'static PgAtomic<AtomicI32> {
    match worker {
        Worker::Deliverer => &DELIVERER_PID,
        Worker::Scheduler => &SCHEDULER_PID,
    }
}

/// The deliverer's process id while it runs (None in a backend of a server without the preload).
pub fn deliverer_pid() -> Option<i32> {
    if !preloaded() {
        return None;
    }
    Some(DELIVERER_PID.get().load(Ordering::Acquire)).filter(|&pid| pid > 0)
}

/// Records this process as `worker`, and clears it again however the process exits.
pub fn started(worker: Worker) {
    // SAFETY: MyProcPid is set for the life of the process; the callback runs while shared
    // memory is still attached, however the process exits (including on ERROR).
    unsafe {
        pid_slot(worker).get().store(pg_sys::MyProcPid, Ordering::Release);
        pg_sys::before_shmem_exit(Some(clear_pid), pg_sys::Datum::from(worker as usize));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn clear_pid(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    let worker = if arg.value() == Worker::Scheduler as usize { Worker::Scheduler } else { Worker::Deliverer };
    stopped(worker);
}

pub fn stopped(worker: Worker) {
    pid_slot(worker).get().store(0, Ordering::Release);
}

/// Counts a batch the deliverer finished: how many of its messages were sent and how many failed.
pub fn batch_done(sent: usize, failed: usize) {
    SENT.get().fetch_add(sent as i64, Ordering::AcqRel);
    FAILED.get().fetch_add(failed as i64, Ordering::AcqRel);
    // SAFETY: reads the clock.
    LAST_BATCH.get().store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Release);
}

/// Ends a worker that was asked to stop (SIGTERM: `pg_terminate_backend`, or a server shutdown)
/// with exit code 1, so that the postmaster starts it again after its restart interval (5 s);
/// during a shutdown it starts nothing. (Exit code 0 would unregister the worker for good.)
pub fn exit_to_be_restarted() -> ! {
    // SAFETY: called from a background worker's main function, outside any transaction.
    unsafe { pg_sys::proc_exit(1) }
}

/// The built-in workers' state: whether the deliverer runs, its process id, messages sent and
/// failed since the server started, when it last finished a batch; whether the scheduler runs
/// and its process id. A worker that stopped is started again after 5 s, unless the server is
/// shutting down.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)] // the row type is the SQL signature pgrx generates
fn worker_status() -> TableIterator<
    'static,
    (
        name!(running, bool),
        name!(pid, Option<i32>),
        name!(sent, i64),
        name!(failed, i64),
        name!(last_batch_at, Option<TimestampWithTimeZone>),
        name!(scheduler_running, bool),
        name!(scheduler_pid, Option<i32>),
    ),
> {
    if !preloaded() {
        return TableIterator::once((false, None, 0, 0, None, false, None));
    }
    let scheduler = SCHEDULER_PID.get().load(Ordering::Acquire);
    let pid = DELIVERER_PID.get().load(Ordering::Acquire);
    let last = LAST_BATCH.get().load(Ordering::Acquire);
    let last = (last != 0).then(|| TimestampWithTimeZone::try_from(last).ok()).flatten();
    TableIterator::once((
        pid > 0,
        (pid > 0).then_some(pid),
        SENT.get().load(Ordering::Acquire),
        FAILED.get().load(Ordering::Acquire),
        last,
        scheduler > 0,
        (scheduler > 0).then_some(scheduler),
    ))
}
