//! The scheduler: a background worker that runs `engage.tick()` (sql/scheduler.sql) every
//! `engage.tick_interval`, then refreshes the metrics rollups (`engage.refresh_metrics()`) and
//! applies the retention settings (`engage.purge(...)`, src/retention.rs).
//!
//! Registered only when pg_engage is in `shared_preload_libraries`, like the deliverer. Without
//! it, schedule the same calls with pg_cron; a tick is idempotent, so both may run.

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
pub mod zones;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// Called from _PG_init when preloading: registers the worker.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_engage scheduler")
        .set_type("pg_engage scheduler")
        .set_library("pg_engage")
        .set_function("pg_engage_scheduler_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_engage_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = crate::settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // Names resolve in pg_catalog only (engage objects are qualified): see the deliverer.
    BackgroundWorker::transaction(|| Spi::run("SET search_path = pg_catalog, pg_temp"))
        .unwrap_or_else(|e| error!("pg_engage scheduler could not configure its session: {e}"));
    crate::workers::started(crate::workers::Worker::Scheduler);
    log!("pg_engage scheduler started on database \"{database}\"");
    loop {
        let interval = crate::settings::tick_interval();
        if interval.is_some() {
            tick();
        }
        // Switched off: look at the setting again every minute (a reload also wakes the latch).
        let wait = interval.unwrap_or(Duration::from_secs(60));
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break; // SIGTERM
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, as PostgreSQL's own workers do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    log!("pg_engage scheduler stopped");
    crate::workers::exit_to_be_restarted();
}

/// One tick, then the rollups, each in its own transaction (an error in one is logged by
/// PostgreSQL and restarts the worker; the next tick covers the time missed).
fn tick() {
    let installed = BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_engage')")
    });
    if !matches!(installed, Ok(Some(true))) {
        return; // CREATE EXTENSION has not run yet in this database
    }
    let fired = BackgroundWorker::transaction(|| Spi::get_one::<i64>("SELECT sum(fired)::int8 FROM engage.tick()"));
    if let Ok(Some(n)) = fired {
        if n > 0 {
            log!("pg_engage scheduler: {n} scheduled occasions fired");
        }
    }
    // Catch up a backlog in batches, but give the next tick its turn.
    for _ in 0..10 {
        let refreshed =
            BackgroundWorker::transaction(|| Spi::get_one::<i32>("SELECT engage.refresh_metrics()")).ok().flatten();
        if refreshed.unwrap_or(0) == 0 {
            break;
        }
    }
    // Retention, the same way: short transactions, so vacuum can follow.
    for _ in 0..10 {
        let purged = BackgroundWorker::transaction(crate::retention::purge_with_settings).ok().flatten();
        if purged.unwrap_or(0) == 0 {
            break;
        }
    }
}
