//! pg_engage: event-triggered customer messaging inside PostgreSQL.
//!
//! Modules, in the order an event flows through them:
//! - `rule`: the trigger-definition language (parse, validate, evaluate predicates);
//! - `triggers`: SQL functions that manage trigger definitions;
//! - `evaluate`: the statement-level AFTER INSERT trigger on engage.events (the hot path);
//! - `policy`: caps and priority conflicts among the statement's candidates;
//! - `deliver`: the background worker, channel adapters and templates that send queued messages;
//! - `schedule`: the scheduler worker that fires time-based triggers (engage.tick, sql/schedule.sql);
//! - `predict`: customer-behaviour models fitted in the database (BG/NBD);
//! - `jsonb`: reading jsonb values into serde values without failing on what jsonb can hold;
//! - `sql_error`: the PostgreSQL errors raised to users.
//!
//! The tables, the idempotency trigger and the Segment-style helpers are SQL, in sql/schema.sql;
//! the claim / complete / fail contract of the outbox is SQL too, in sql/outbox.sql.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;

mod deliver;
mod evaluate;
mod jsonb;
mod policy;
mod predict;
mod retention;
mod rule;
mod schedule;
mod sql_error;
mod triggers;

::pgrx::pg_module_magic!();

/// `engage.conflict_window`: candidates of different triggers for one customer compete when their
/// events are at most this far apart in event time (seconds; accepts units such as '10min').
pub static CONFLICT_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(600);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    GucRegistry::define_int_guc(
        c"engage.conflict_window",
        c"Event-time distance within which different triggers compete for one customer.",
        c"When several triggers fire for one customer with events at most this far apart (in one statement or across statements), only the highest priority is sent; the others are suppressed as conflicts.",
        &CONFLICT_WINDOW,
        0,
        i32::MAX,
        // It changes what is decided: a superuser, or a role granted SET on it (engage_admin),
        // sets it; an app cannot switch conflicts off for its own inserts.
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    deliver::init();
    retention::init();
    schedule::init();
}

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        triggers::validate_trigger,
        deliver::validate_template,
        evaluate::evaluate_events,
        evaluate::rules_changed,
        evaluate::skip_duplicate_event,
        evaluate::consent::consent_key,
        evaluate::consent::check_consent
    ]
);
extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["schema"]);
extension_sql_file!("../sql/metrics.sql", name = "metrics", requires = ["outbox", triggers::duration]);
extension_sql_file!("../sql/predict.sql", name = "predict", requires = ["schema", predict::bgnbd_fit]);
extension_sql_file!(
    "../sql/schedule.sql",
    name = "schedule",
    requires = ["predict", "metrics", schedule::zones::known_time_zones]
);
extension_sql_file!("../sql/retention.sql", name = "retention", requires = ["schedule", retention::history_needed]);
extension_sql_file!(
    "../sql/comments.sql",
    name = "comments",
    requires = [
        "retention",
        triggers::validate_trigger,
        triggers::create_trigger,
        triggers::update_trigger,
        triggers::enable_trigger,
        triggers::disable_trigger,
        triggers::drop_trigger,
        triggers::duration,
        schedule::zones::known_time_zones,
        evaluate::evaluate_events,
        evaluate::rules_changed,
        evaluate::skip_duplicate_event,
        evaluate::consent::consent_key,
        evaluate::consent::check_consent,
        deliver::validate_template,
        deliver::worker_status,
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
