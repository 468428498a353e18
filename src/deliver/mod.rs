//! Delivery: the background worker, its settings, its status, and how committed work wakes it.
//!
//! The worker is registered only when pg_engage is in `shared_preload_libraries`. A transaction
//! that queued due messages sets the worker's latch from its commit callback, so delivery starts
//! at once instead of at the next poll; `engage.poll_interval` is the fallback.

pub mod channels;
pub mod egress;
pub mod template;
mod worker;

use crate::sql_error;
use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, Ordering};

/// Settings (GUCs). Those read by the worker take effect on reload (SIGHUP), except
/// `engage.database`, which needs a restart.
pub mod settings {
    use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
    use std::ffi::CString;
    use std::time::Duration;

    static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
    static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
    static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(200);
    static CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(8);
    static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
    static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
    static LEASE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
    static DEFAULT_TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
    static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

    pub fn database() -> String {
        DATABASE.get().and_then(|c| c.into_string().ok()).unwrap_or_else(|| "postgres".into())
    }
    pub fn worker_enabled() -> bool {
        ENABLED.get()
    }
    pub fn batch_size() -> i32 {
        BATCH_SIZE.get()
    }
    pub fn concurrency() -> usize {
        CONCURRENCY.get().max(1) as usize
    }
    pub fn poll_interval() -> Duration {
        Duration::from_millis(POLL_INTERVAL_MS.get().max(10) as u64)
    }
    pub fn http_timeout() -> Duration {
        Duration::from_millis(HTTP_TIMEOUT_MS.get().max(100) as u64)
    }
    /// The egress policy (engage.allowed_hosts).
    pub fn egress() -> super::egress::Egress {
        let hosts = ALLOWED_HOSTS.get().and_then(|c| c.into_string().ok()).unwrap_or_default();
        super::egress::Egress::parse(&hosts)
    }
    pub fn default_timezone() -> String {
        DEFAULT_TIMEZONE.get().and_then(|c| c.into_string().ok()).unwrap_or_else(|| "UTC".into())
    }
    pub fn lease_seconds() -> f64 {
        f64::from(LEASE_S.get().max(1))
    }

    /// Refuses a time zone that either side cannot read: the insert path and the deliverer
    /// (chrono-tz) and the SQL of the scheduler (PostgreSQL's own zone database).
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn check_time_zone(
        newval: *mut *mut std::ffi::c_char,
        _extra: *mut *mut std::ffi::c_void,
        _source: pgrx::pg_sys::GucSource::Type,
    ) -> bool {
        let value = if (*newval).is_null() { None } else { std::ffi::CStr::from_ptr(*newval).to_str().ok() };
        let known = value
            .is_some_and(|zone| zone.parse::<chrono_tz::Tz>().is_ok() && !pgrx::pg_sys::pg_tzset(*newval).is_null());
        if !known {
            pgrx::pg_sys::GUC_check_errhint_string = pgrx::pg_sys::pstrdup(
                c"engage.default_timezone is an IANA time zone name such as UTC, Europe/Berlin or America/New_York."
                    .as_ptr(),
            );
        }
        known
    }

    /// Defines the delivery GUCs; `engage.database` only when preloading (it is postmaster-level).
    pub fn define(preloading: bool) {
        if preloading {
            GucRegistry::define_string_guc(
                c"engage.database",
                c"Database the pg_engage background workers connect to.",
                c"The database where CREATE EXTENSION pg_engage was run.",
                &DATABASE,
                GucContext::Postmaster,
                GucFlags::default(),
            );
        }
        // SAFETY: the check hook is guarded and reads only its argument.
        unsafe {
            GucRegistry::define_string_guc_with_hooks(
                c"engage.default_timezone",
                c"IANA time zone for customers whose profile has none (quiet hours, calendar triggers).",
                c"A name such as Europe/Berlin; a value that is not one is refused when set.",
                &DEFAULT_TIMEZONE,
                GucContext::Sighup,
                GucFlags::default(),
                Some(check_time_zone),
                None,
                None,
            )
        };
        GucRegistry::define_string_guc(
            c"engage.allowed_hosts",
            c"Hosts the deliverer may reach over plain http or SMTP, or at non-public addresses.",
            c"Comma-separated host names or IP addresses, each optionally with :port. Every other provider URL must be https to a public address.",
            &ALLOWED_HOSTS,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_bool_guc(
            c"engage.worker_enabled",
            c"Whether the built-in deliverer sends messages.",
            c"",
            &ENABLED,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"engage.batch_size",
            c"Messages the deliverer claims per batch.",
            c"",
            &BATCH_SIZE,
            1,
            10_000,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"engage.concurrency",
            c"Parallel sends within one batch.",
            c"",
            &CONCURRENCY,
            1,
            256,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"engage.poll_interval",
            c"How often the idle deliverer looks for due messages without being woken.",
            c"",
            &POLL_INTERVAL_MS,
            10,
            3_600_000,
            GucContext::Sighup,
            GucFlags::UNIT_MS,
        );
        GucRegistry::define_int_guc(
            c"engage.http_timeout",
            c"Timeout of one provider request.",
            c"",
            &HTTP_TIMEOUT_MS,
            100,
            600_000,
            GucContext::Sighup,
            GucFlags::UNIT_MS,
        );
        GucRegistry::define_int_guc(
            c"engage.lease",
            c"How long a claimed message is leased to the deliverer.",
            c"A message whose lease expires before it is completed or failed is claimed again.",
            &LEASE_S,
            1,
            86_400,
            GucContext::Sighup,
            GucFlags::UNIT_S,
        );
    }
}

// Worker state in shared memory, readable from any session through engage.worker_status().
static PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_engage_worker_pid") };
static SENT: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_sent") };
static FAILED: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_failed") };
static LAST_BATCH: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_worker_last_batch") };
static SCHEDULER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_engage_scheduler_pid") };

/// Ends a worker that was asked to stop (SIGTERM: `pg_terminate_backend`, or a server shutdown)
/// with exit code 1, so that the postmaster starts it again after its restart interval (5 s);
/// during a shutdown it starts nothing. (Exit code 0 would unregister the worker for good.)
pub fn exit_to_be_restarted() -> ! {
    // SAFETY: called from a background worker's main function, outside any transaction.
    unsafe { pg_sys::proc_exit(1) }
}

/// Updates of the shared worker state.
pub mod status {
    use super::*;

    /// The built-in workers whose process id worker_status() shows.
    #[derive(Clone, Copy)]
    pub enum Worker {
        Deliverer = 0,
        Scheduler = 1,
    }

    fn pid_slot(worker: Worker) -> &'static PgAtomic<AtomicI32> {
        match worker {
            Worker::Deliverer => &PID,
            Worker::Scheduler => &SCHEDULER_PID,
        }
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

    pub fn batch_done(results: &[worker::Outcome]) {
        let sent = results.iter().filter(|(_, r)| r.is_ok()).count() as i64;
        SENT.get().fetch_add(sent, Ordering::AcqRel);
        FAILED.get().fetch_add(results.len() as i64 - sent, Ordering::AcqRel);
        // SAFETY: reads the clock.
        LAST_BATCH.get().store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Release);
    }
}

/// Whether this process got pg_engage from shared_preload_libraries (so shared memory exists).
static PRELOADED: AtomicBool = AtomicBool::new(false);
/// The transaction for which a wake-up is already registered.
static WAKE_REGISTERED_FOR: AtomicU32 = AtomicU32::new(0);

/// Called from _PG_init.
pub fn init() {
    // SAFETY: reading a flag PostgreSQL sets while loading preload libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    settings::define(preloading);
    if !preloading {
        return;
    }
    pg_shmem_init!(PID = AtomicI32::new(0));
    pg_shmem_init!(SENT = AtomicI64::new(0));
    pg_shmem_init!(FAILED = AtomicI64::new(0));
    pg_shmem_init!(LAST_BATCH = AtomicI64::new(0));
    pg_shmem_init!(SCHEDULER_PID = AtomicI32::new(0));
    BackgroundWorkerBuilder::new("pg_engage deliverer")
        .set_type("pg_engage deliverer")
        .set_library("pg_engage")
        .set_function("pg_engage_deliverer_main")
        .enable_spi_access()
        .set_restart_time(Some(std::time::Duration::from_secs(5)))
        .load();
    PRELOADED.store(true, Ordering::Release);
}

/// Makes the deliverer wake up when the current transaction commits (once per transaction).
pub fn wake_after_commit() {
    if !PRELOADED.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: the inserting transaction has an xid (it wrote rows).
    let xid = unsafe { pg_sys::GetCurrentTransactionId() }.into_inner();
    if WAKE_REGISTERED_FOR.swap(xid, Ordering::AcqRel) == xid {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        let pid = PID.get().load(Ordering::Acquire);
        if pid > 0 {
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

/// Returns true for a template that parses and is bounded, or raises an ERROR saying why not.
/// engage.templates uses it as a CHECK; NULL is valid (an optional part).
#[pg_extern(immutable, parallel_safe)]
fn validate_template(template: Option<&str>) -> bool {
    if let Some(text) = template {
        if let Err(problem) = template::validate(text) {
            sql_error::invalid_argument(
                format!("invalid template: {problem}"),
                "Templates use Liquid syntax: {{ profile.first_name | default: \"there\" }}.",
            );
        }
    }
    true
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
    if !PRELOADED.load(Ordering::Acquire) {
        return TableIterator::once((false, None, 0, 0, None, false, None));
    }
    let scheduler = SCHEDULER_PID.get().load(Ordering::Acquire);
    let pid = PID.get().load(Ordering::Acquire);
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
