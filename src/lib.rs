//! pg_engage: event-triggered customer messaging inside PostgreSQL.
//!
//! Modules, in the order an event flows through them:
//! - `rule`: the trigger-definition language (parse, validate, evaluate predicates);
//! - `triggers`: SQL functions that manage trigger definitions;
//! - `evaluate`: the statement-level AFTER INSERT trigger on engage.events (the hot path);
//! - `policy`: caps and priority conflicts among the statement's candidates;
//! - `deliver`: the background worker, channel adapters and templates that send queued messages;
//! - `workers`: the built-in workers' registration, shared state and `engage.worker_status()`;
//! - `scheduler`: the scheduler worker that fires occasions (engage.tick, sql/scheduler.sql);
//! - `predict`: customer-behaviour models fitted in the database (BG/NBD);
//! - `jsonb`: reading jsonb values into serde values without failing on what jsonb can hold;
//! - `settings`: every setting (GUC), with typed getters;
//! - `sql_error`: the PostgreSQL errors raised to users.
//!
//! The tables, the idempotency trigger and the Segment-style helpers are SQL, in sql/schema.sql
//! (Segment-shaped batches in sql/ingest.sql);
//! the claim / complete / fail contract of the outbox is SQL too, in sql/outbox.sql; the views
//! for the on-call engineer are in sql/operations.sql.

use pgrx::prelude::*;

mod deliver;
mod evaluate;
mod instant;
mod jsonb;
mod policy;
mod predict;
mod retention;
mod rule;
mod scheduler;
mod settings;
mod sql_error;
mod stored;
mod triggers;
mod workers;

::pgrx::pg_module_magic!();

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a flag PostgreSQL sets while loading preload libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    settings::define(preloading);
    if preloading {
        workers::register();
    }
}

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        triggers::validate_trigger,
        triggers::compiled_trigger,
        deliver::template::validate_template,
        evaluate::evaluate_events,
        evaluate::rules_changed,
        evaluate::skip_duplicate_event,
        evaluate::consent::consent_key,
        evaluate::consent::check_consent
    ]
);
extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["schema"]);
extension_sql_file!("../sql/ingest.sql", name = "ingest", requires = ["schema"]);
extension_sql_file!("../sql/metrics.sql", name = "metrics", requires = ["outbox"]);
extension_sql_file!("../sql/predict.sql", name = "predict", requires = ["schema", predict::bgnbd_fit]);
extension_sql_file!(
    "../sql/scheduler.sql",
    name = "scheduler",
    requires = ["predict", "metrics", scheduler::zones::known_time_zones]
);
extension_sql_file!("../sql/retention.sql", name = "retention", requires = ["scheduler", retention::history_needed]);
extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = ["retention", "ingest", workers::worker_status, evaluate::rule_cache::rule_cache_loads]
);
extension_sql_file!(
    "../sql/comments.sql",
    name = "comments",
    requires = [
        "operations",
        triggers::validate_trigger,
        triggers::compiled_trigger,
        triggers::create_trigger,
        triggers::update_trigger,
        triggers::enable_trigger,
        triggers::disable_trigger,
        triggers::drop_trigger,
        scheduler::zones::known_time_zones,
        evaluate::evaluate_events,
        evaluate::rules_changed,
        evaluate::skip_duplicate_event,
        evaluate::consent::consent_key,
        evaluate::consent::check_consent,
        deliver::template::validate_template,
        workers::worker_status,
        evaluate::rule_cache::rule_cache_loads,
        predict::bgnbd_fit,
        predict::bgnbd_p_alive,
        predict::bgnbd_expected_purchases
    ]
);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
