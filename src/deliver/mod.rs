//! Delivery: the background worker that sends queued messages (`worker`), the channel adapters
//! (`channels`), the egress policy (`egress`), message templates (`template`), and how committed
//! work wakes the worker (`wake`). Its settings are in `crate::settings`, its shared state and
//! `engage.worker_status()` in `crate::workers`; the outbox's claim / complete / fail contract,
//! which the worker calls, is SQL in sql/outbox.sql.

pub mod channels;
pub mod egress;
#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
pub mod template;
pub mod wake;
mod worker;

use pgrx::bgworkers::BackgroundWorkerBuilder;

/// Called when preloading (`crate::workers::register`): registers the deliverer.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_engage deliverer")
        .set_type("pg_engage deliverer")
        .set_library("pg_engage")
        .set_function("pg_engage_deliverer_main")
        .enable_spi_access()
        .set_restart_time(Some(std::time::Duration::from_secs(5)))
        .load();
}
