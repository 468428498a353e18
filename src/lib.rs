//! pg_engage: event-triggered customer messaging inside PostgreSQL.
//!
//! Modules, in the order an event flows through them:
//! - `rule`: the trigger-definition language (parse, validate, evaluate predicates);
//! - `triggers`: SQL functions that manage trigger definitions;
//! - `evaluate`: the statement-level AFTER INSERT trigger on engage.events (the hot path);
//! - `policy`: caps and priority conflicts among the statement's candidates;
//! - `sql_error`: the PostgreSQL errors raised to users.
//!
//! The tables, the idempotency trigger and the Segment-style helpers are SQL, in sql/schema.sql.

use pgrx::prelude::*;

mod evaluate;
mod policy;
mod rule;
mod sql_error;
mod triggers;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", finalize);

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
