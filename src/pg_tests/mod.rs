//! In-database tests (`cargo pgrx test`): each runs inside one transaction that is rolled back,
//! so they cover what happens within a transaction; tests/ covers commits and other sessions.
//!
//! They live beside what they test: `evaluate/pg_tests.rs` (the insert path), `scheduler/pg_tests.rs`
//! (scheduled and threshold triggers), `deliver/pg_tests.rs` (templates, secrets), `triggers.rs`
//! (definitions); `metrics.rs` here tests sql/metrics.sql, which has no Rust module; and the tests
//! below check the catalog as a whole. `cargo pgrx test` calls them all in a schema named `tests`.

mod metrics;

use pgrx::prelude::*;

/// Runs a statement, panicking with it and the error.
pub fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The bigint a query returns (0 for NULL).
pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or(0)
}

/// The text a query returns.
pub fn text(sql: &str) -> Option<String> {
    Spi::get_one::<String>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Catalog-wide checks.
#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{run, text};
    use pgrx::prelude::*;

    #[pg_test]
    fn every_public_function_has_a_comment() {
        let missing = text(
            "SELECT string_agg(p.proname, ', ') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'engage' AND obj_description(p.oid, 'pg_proc') IS NULL",
        );
        assert_eq!(missing, None);
    }

    /// The value sets Rust and SQL share have one SQL definition each, a domain listing exactly
    /// the values of the Rust enum, and every column holding a channel is checked against it.
    #[pg_test]
    fn each_shared_value_set_is_one_domain_listing_the_rust_enum() {
        fn domain_values(domain: &str) -> Vec<String> {
            let check = text(&format!(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.contypid = 'engage.{domain}'::regtype"
            ))
            .unwrap_or_default();
            let mut values: Vec<String> = check.split('\'').skip(1).step_by(2).map(str::to_string).collect();
            values.sort();
            values
        }
        fn sorted(values: impl Iterator<Item = &'static str>) -> Vec<String> {
            let mut v: Vec<String> = values.map(str::to_string).collect();
            v.sort();
            v
        }
        use crate::stored::{MessageCategory, MessageStatus, StoredOutcome};
        assert_eq!(domain_values("channel"), sorted(crate::rule::Channel::ALL.iter().map(|c| c.as_str())));
        assert_eq!(domain_values("suppression_reason"), sorted(crate::policy::Reason::ALL.iter().map(|r| r.as_str())));
        assert_eq!(domain_values("decision_outcome"), sorted(StoredOutcome::ALL.iter().map(|o| o.as_str())));
        assert_eq!(domain_values("message_category"), sorted(MessageCategory::ALL.iter().map(|c| c.as_str())));
        assert_eq!(domain_values("message_status"), sorted(MessageStatus::ALL.iter().map(|s| s.as_str())));
        let checked = text(
            "SELECT string_agg(c.conrelid::regclass::text, ', ' ORDER BY c.conrelid::regclass::text) FROM pg_constraint c
              WHERE c.contype = 'c' AND c.connamespace = 'engage'::regnamespace
                AND pg_get_constraintdef(c.oid) LIKE '%::engage.channel%'",
        );
        assert_eq!(
            checked.as_deref(),
            Some(
                "engage.channels, engage.frequency_caps, engage.messages, engage.outbox, engage.suppressions, \
                 engage.templates"
            )
        );
        // The suppression list takes a channel or "all", checked by the domain.
        run("INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('c1', 'all', 'manual'), ('c1', 'sms', 'manual')");
        let refused = PgTryBuilder::new(|| {
            run("INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('c2', 'fax', 'manual')");
            false
        })
        .catch_others(|_| true)
        .execute();
        assert!(refused, "a suppression on an unknown channel is refused");
    }
}
