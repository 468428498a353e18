//! Every setting (GUC) of pg_engage, defined in one place with typed getters.
//!
//! | setting | read by | takes effect |
//! | --- | --- | --- |
//! | `engage.conflict_window` | the insert path | per statement; superuser or a role granted SET (engage_admin) |
//! | `engage.default_timezone` | the insert path, the deliverer, the scheduler | on reload |
//! | `engage.database` | both workers | at restart (postmaster-level, defined only when preloaded) |
//! | `engage.worker_enabled`, `batch_size`, `concurrency`, `poll_interval`, `http_timeout`, `lease`, `allowed_hosts` | the deliverer | on reload |
//! | `engage.tick_interval` | the scheduler | on reload |
//! | `engage.keep_closed_messages`, `engage.keep_history` | the scheduler's retention pass | on reload |

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

static CONFLICT_WINDOW_S: GucSetting<i32> = GucSetting::<i32>::new(600);
static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
static DEFAULT_TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(200);
static CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(8);
static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static LEASE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static TICK_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);
static KEEP_CLOSED_MESSAGES_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
static KEEP_HISTORY_S: GucSetting<i32> = GucSetting::<i32>::new(0);

fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().and_then(|c| c.into_string().ok())
}

fn seconds(setting: &GucSetting<i32>) -> Duration {
    Duration::from_secs(setting.get().max(0) as u64)
}

/// Candidates of different triggers for one customer compete when their events are at most this
/// far apart in event time.
pub fn conflict_window() -> Duration {
    seconds(&CONFLICT_WINDOW_S)
}

/// The database both workers connect to.
pub fn database() -> String {
    text(&DATABASE).unwrap_or_else(|| "postgres".into())
}

/// The time zone of customers whose profile has none (checked when set: see [`check_time_zone`]).
pub fn default_timezone() -> String {
    text(&DEFAULT_TIMEZONE).unwrap_or_else(|| "UTC".into())
}

/// Whether the built-in deliverer sends messages.
pub fn worker_enabled() -> bool {
    WORKER_ENABLED.get()
}

/// Messages the deliverer claims per batch.
pub fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

/// Parallel sends within one batch.
pub fn concurrency() -> usize {
    CONCURRENCY.get().max(1) as usize
}

/// How often the idle deliverer looks for due messages without being woken.
pub fn poll_interval() -> Duration {
    Duration::from_millis(POLL_INTERVAL_MS.get().max(10) as u64)
}

/// Timeout of one provider request.
pub fn http_timeout() -> Duration {
    Duration::from_millis(HTTP_TIMEOUT_MS.get().max(100) as u64)
}

/// How long a claimed message is leased to the deliverer.
pub fn lease() -> Duration {
    seconds(&LEASE_S).max(Duration::from_secs(1))
}

/// The egress policy: hosts the deliverer may reach over plain http or SMTP, or at non-public
/// addresses.
pub fn egress() -> crate::deliver::egress::Egress {
    crate::deliver::egress::Egress::parse(&text(&ALLOWED_HOSTS).unwrap_or_default())
}

/// How often the scheduler ticks; `None` when it is switched off (0), as when pg_cron runs the
/// same calls.
pub fn tick_interval() -> Option<Duration> {
    Some(seconds(&TICK_INTERVAL_S)).filter(|d| !d.is_zero())
}

/// How long closed outbox rows stay (0: for ever).
pub fn keep_closed_messages() -> Duration {
    seconds(&KEEP_CLOSED_MESSAGES_S)
}

/// How late events may arrive and still be decided on full history (0: keep history for ever).
pub fn keep_history() -> Duration {
    seconds(&KEEP_HISTORY_S)
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
    let known =
        value.is_some_and(|zone| zone.parse::<chrono_tz::Tz>().is_ok() && !pgrx::pg_sys::pg_tzset(*newval).is_null());
    if !known {
        pgrx::pg_sys::GUC_check_errhint_string = pgrx::pg_sys::pstrdup(
            c"engage.default_timezone is an IANA time zone name such as UTC, Europe/Berlin or America/New_York."
                .as_ptr(),
        );
    }
    known
}

/// Called from _PG_init: defines every setting; `engage.database` only when preloading (it is
/// postmaster-level, and only the workers read it).
pub fn define(preloading: bool) {
    GucRegistry::define_int_guc(
        c"engage.conflict_window",
        c"Event-time distance within which different triggers compete for one customer.",
        c"When several triggers fire for one customer with events at most this far apart (in one statement or across statements), only the highest priority is sent; the others are suppressed as conflicts.",
        &CONFLICT_WINDOW_S,
        0,
        i32::MAX,
        // It changes what is decided: a superuser, or a role granted SET on it (engage_admin),
        // sets it; an app cannot switch conflicts off for its own inserts.
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
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
        &WORKER_ENABLED,
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
    GucRegistry::define_int_guc(
        c"engage.tick_interval",
        c"How often the scheduler fires time-based triggers and refreshes the metrics rollups (0: never).",
        c"Each tick runs engage.tick(), engage.refresh_metrics() and engage.purge() in the database named by engage.database.",
        &TICK_INTERVAL_S,
        0,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"engage.keep_closed_messages",
        c"How long sent, dead, cancelled and suppressed outbox rows stay before the scheduler deletes them (0: for ever).",
        c"The sent log engage.messages keeps a row per delivered message.",
        &KEEP_CLOSED_MESSAGES_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"engage.keep_history",
        c"How late events may arrive and still be decided on full history (0: keep events and decisions for ever).",
        c"Events and decisions older in event time than this plus the longest window a trigger reads (engage.history_needed()) are deleted.",
        &KEEP_HISTORY_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}
