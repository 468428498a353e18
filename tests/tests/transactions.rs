//! Transactions and idempotency: an event, its decisions and its outbox rows commit or roll back
//! together (whole transactions and savepoints), and an `idempotency_key` seen before — in an
//! earlier statement, earlier in the same statement or transaction, through `engage.track`, in a
//! COPY, or from a concurrent connection — is skipped: one event, one decision.

use pg_engage_it::*;
use std::time::Duration;

fn totals(c: &mut Client) -> (i64, i64, i64) {
    (
        count(c, "SELECT count(*) FROM engage.events"),
        count(c, "SELECT count(*) FROM engage.decisions"),
        count(c, "SELECT count(*) FROM engage.outbox"),
    )
}

fn welcome(c: &mut Client) {
    create_trigger(c, "welcome", json!({"event": "signed_up", "action": email("welcome")}));
}

// ---------------------------------------------------------------------------------------------
// rollback
// ---------------------------------------------------------------------------------------------

#[test]
fn rollback_leaves_no_event_decision_or_outbox_row() {
    let mut c = shared().create_db("tx_rollback");
    welcome(&mut c);
    c.batch_execute(
        "BEGIN; \
         INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'signed_up');",
    )
    .unwrap();
    // Inside the transaction everything is there …
    assert_eq!(totals(&mut c), (1, 1, 1), "inside the transaction");
    c.batch_execute("ROLLBACK").unwrap();
    // … and after the rollback nothing is.
    assert_eq!(totals(&mut c), (0, 0, 0), "after ROLLBACK");
}

#[test]
fn rollback_of_track_leaves_nothing() {
    let mut c = shared().create_db("tx_rollback_track");
    welcome(&mut c);
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT engage.track('c1', 'signed_up')", &[]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(totals(&mut c), (0, 0, 0));
}

#[test]
fn rolled_back_savepoint_keeps_only_the_rest_of_the_transaction() {
    let mut c = shared().create_db("tx_savepoint");
    welcome(&mut c);
    c.batch_execute(
        "BEGIN; \
         SAVEPOINT s; \
         INSERT INTO engage.events (customer_id, name) VALUES ('gone', 'signed_up'); \
         ROLLBACK TO SAVEPOINT s; \
         INSERT INTO engage.events (customer_id, name) VALUES ('kept', 'signed_up'); \
         COMMIT;",
    )
    .unwrap();
    assert_eq!(totals(&mut c), (1, 1, 1));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events WHERE customer_id = 'kept'"), 1);
}

#[test]
fn rolled_back_fired_decision_does_not_use_up_the_cap() {
    let mut c = shared().create_db("tx_rollback_cap");
    create_trigger(
        &mut c,
        "once",
        json!({"event": "signed_up", "action": email("once"), "cap": {"max": 1, "per": "1d"}}),
    );
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'signed_up', '2025-03-01T10:00:00Z')",
        &[],
    )
    .unwrap();
    tx.rollback().unwrap();
    let e = insert_event_at(&mut c, "c1", "signed_up", json!({}), "2025-03-01T10:05:00Z");
    assert_eq!(decisions_for(&mut c, e), vec![fired("once")]);
}

#[test]
fn failed_statement_later_in_the_transaction_rolls_everything_back() {
    let mut c = shared().create_db("tx_failed_statement");
    welcome(&mut c);
    let result = c.batch_execute(
        "BEGIN; \
         INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'signed_up'); \
         SELECT 1/0;",
    );
    expect_db_error(result, "22012", "division by zero");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(totals(&mut c), (0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// idempotency
// ---------------------------------------------------------------------------------------------

fn insert_keyed(c: &mut Client, customer: &str, key: &str, props: Value) -> u64 {
    c.execute(
        "INSERT INTO engage.events (customer_id, name, properties, idempotency_key) \
         VALUES ($1, 'signed_up', $2, $3)",
        &[&customer, &props, &key],
    )
    .unwrap_or_else(|e| panic!("insert with key {key}: {}", error_text(&e)))
}

#[test]
fn same_key_in_separate_statements_is_stored_and_decided_once() {
    let mut c = shared().create_db("idem_separate");
    welcome(&mut c);
    insert_keyed(&mut c, "c1", "k1", json!({"n": 1}));
    insert_keyed(&mut c, "c1", "k1", json!({"n": 2}));
    assert_eq!(totals(&mut c), (1, 1, 1));
    let kept: Value =
        c.query_one("SELECT properties::jsonb FROM engage.events WHERE idempotency_key = 'k1'", &[]).unwrap().get(0);
    assert_eq!(kept, json!({"n": 1}), "the first event is the one kept");
}

#[test]
fn same_key_twice_in_one_statement_keeps_the_first() {
    let mut c = shared().create_db("idem_same_statement");
    welcome(&mut c);
    c.execute(
        "INSERT INTO engage.events (customer_id, name, properties, idempotency_key) VALUES \
         ('c1', 'signed_up', '{\"n\": 1}', 'k1'), \
         ('c2', 'signed_up', '{\"n\": 2}', 'k2'), \
         ('c1', 'signed_up', '{\"n\": 3}', 'k1')",
        &[],
    )
    .unwrap();
    assert_eq!(totals(&mut c), (2, 2, 2));
    let kept: Value =
        c.query_one("SELECT properties::jsonb FROM engage.events WHERE idempotency_key = 'k1'", &[]).unwrap().get(0);
    assert_eq!(kept, json!({"n": 1}));
}

#[test]
fn same_key_twice_in_one_transaction_is_stored_once() {
    let mut c = shared().create_db("idem_same_transaction");
    welcome(&mut c);
    let mut tx = c.transaction().unwrap();
    for n in 0..3 {
        tx.execute(
            "INSERT INTO engage.events (customer_id, name, properties, idempotency_key) \
             VALUES ('c1', 'signed_up', $1, 'k1')",
            &[&json!({"n": n})],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    assert_eq!(totals(&mut c), (1, 1, 1));
}

#[test]
fn track_returns_null_for_a_key_seen_before() {
    let mut c = shared().create_db("idem_track");
    welcome(&mut c);
    let track = "SELECT engage.track('c1', 'signed_up', '{}'::jsonb, now(), 'k1')::int8";
    let first: Option<i64> = c.query_one(track, &[]).unwrap().get(0);
    let second: Option<i64> = c.query_one(track, &[]).unwrap().get(0);
    let first = first.expect("first track with a new key returns the event id");
    assert_eq!(second, None, "second track with the same key returns NULL");
    assert_eq!(totals(&mut c), (1, 1, 1));
    assert_eq!(decisions_for(&mut c, first), vec![fired("welcome")]);
    // A key first stored by a plain INSERT is seen by track too.
    insert_keyed(&mut c, "c2", "k2", json!({}));
    let third: Option<i64> =
        c.query_one("SELECT engage.track('c2', 'signed_up', '{}'::jsonb, now(), 'k2')::int8", &[]).unwrap().get(0);
    assert_eq!(third, None);
    assert_eq!(totals(&mut c), (2, 2, 2));
}

#[test]
fn events_without_a_key_are_never_deduplicated() {
    let mut c = shared().create_db("idem_no_key");
    welcome(&mut c);
    for _ in 0..2 {
        c.execute(
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at) \
             VALUES ('c1', 'signed_up', '{}', '2025-03-01T10:00:00Z')",
            &[],
        )
        .unwrap();
    }
    c.execute("SELECT engage.track('c1', 'signed_up')", &[]).unwrap();
    c.execute("SELECT engage.track('c1', 'signed_up')", &[]).unwrap();
    assert_eq!(totals(&mut c), (4, 4, 4));
}

#[test]
fn copy_skips_keys_seen_before_and_carries_on() {
    let mut c = shared().create_db("idem_copy");
    welcome(&mut c);
    insert_keyed(&mut c, "c0", "k0", json!({}));
    let mut w = c.copy_in("COPY engage.events (customer_id, name, properties, idempotency_key) FROM STDIN").unwrap();
    use std::io::Write;
    // k0 was stored before; k1 appears twice in the COPY; k2 once; one row without a key.
    w.write_all(
        b"c0\tsigned_up\t{\"n\": 1}\tk0\n\
          c1\tsigned_up\t{\"n\": 2}\tk1\n\
          c1\tsigned_up\t{\"n\": 3}\tk1\n\
          c2\tsigned_up\t{\"n\": 4}\tk2\n\
          c3\tsigned_up\t{\"n\": 5}\t\\N\n",
    )
    .unwrap();
    w.finish().unwrap_or_else(|e| panic!("COPY failed: {}", error_text(&e)));
    assert_eq!(totals(&mut c), (4, 4, 4));
    let kept: Value =
        c.query_one("SELECT properties::jsonb FROM engage.events WHERE idempotency_key = 'k1'", &[]).unwrap().get(0);
    assert_eq!(kept, json!({"n": 2}));
}

#[test]
fn concurrent_inserts_of_one_key_store_exactly_one() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 20;
    let db = "idem_concurrent";
    let mut c = shared().create_db(db);
    welcome(&mut c);
    in_lockstep(db, THREADS, ROUNDS, |tx, t, round| {
        tx.execute(
            "INSERT INTO engage.events (customer_id, name, properties, idempotency_key) \
             VALUES ($1, 'signed_up', $2, $3)",
            &[&format!("c{round}"), &json!({"thread": t}), &format!("key-{round}")],
        )
    });
    assert_eq!(totals(&mut c), (ROUNDS as i64, ROUNDS as i64, ROUNDS as i64));
    assert_eq!(count(&mut c, "SELECT count(DISTINCT idempotency_key) FROM engage.events"), ROUNDS as i64);
}

#[test]
fn concurrent_track_of_one_key_returns_one_id_and_nulls() {
    const THREADS: usize = 3;
    let db = "idem_concurrent_track";
    let mut c = shared().create_db(db);
    welcome(&mut c);
    let barrier = Rendezvous::new(THREADS);
    let results: Vec<Option<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let _guard = barrier.join();
                    let mut conn = shared().connect(db);
                    let mut tx = conn.transaction().unwrap();
                    barrier.wait();
                    let id: Option<i64> = tx
                        .query_one("SELECT engage.track('c1', 'signed_up', '{}'::jsonb, now(), 'same')::int8", &[])
                        .unwrap_or_else(|e| panic!("track: {}", error_text(&e)))
                        .get(0);
                    tx.commit().unwrap();
                    id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_some()).count(), 1, "{results:?}");
    assert_eq!(totals(&mut c), (1, 1, 1));
}

/// Two transactions insert the same key; the second starts while the first is still open, then
/// the first commits or rolls back. Returns whose event was stored.
fn race_on_one_key(db: &str, first_commits: bool) -> Value {
    let mut c = shared().create_db(db);
    welcome(&mut c);
    let inserted = Rendezvous::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = inserted.join();
            let mut conn = shared().connect(db);
            let mut tx = conn.transaction().unwrap();
            insert_tx(&mut tx, "first");
            inserted.wait();
            std::thread::sleep(Duration::from_millis(500));
            if first_commits {
                tx.commit().unwrap();
            } else {
                tx.rollback().unwrap();
            }
        });
        s.spawn(|| {
            let _guard = inserted.join();
            let mut conn = shared().connect(db);
            inserted.wait();
            let mut tx = conn.transaction().unwrap();
            insert_tx(&mut tx, "second");
            tx.commit().unwrap();
        });
    });
    assert_eq!(totals(&mut c), (1, 1, 1));
    c.query_one("SELECT properties::jsonb FROM engage.events", &[]).unwrap().get(0)
}

/// The second insert waits for the first; when the first rolls back, the second is stored.
#[test]
fn concurrent_insert_waits_and_is_stored_when_the_first_rolls_back() {
    assert_eq!(race_on_one_key("idem_wait_rollback", false), json!({"who": "second"}));
}

/// The second insert waits for the first; when the first commits, the second is skipped.
#[test]
fn concurrent_insert_waits_and_is_skipped_when_the_first_commits() {
    assert_eq!(race_on_one_key("idem_wait_commit", true), json!({"who": "first"}));
}

fn insert_tx(tx: &mut postgres::Transaction<'_>, who: &str) {
    tx.execute(
        "INSERT INTO engage.events (customer_id, name, properties, idempotency_key) \
         VALUES ('c1', 'signed_up', $1, 'shared-key')",
        &[&json!({"who": who})],
    )
    .unwrap_or_else(|e| panic!("{who}: {}", error_text(&e)));
}

/// REPEATABLE READ: the waiting transaction's snapshot predates the first one's commit, so a
/// check with the transaction snapshot would miss the stored key. Exactly one event may be
/// stored; a serialization failure (40001) is the only acceptable error.
#[test]
fn concurrent_inserts_of_one_key_under_repeatable_read_store_at_most_one() {
    const THREADS: usize = 3;
    const ROUNDS: usize = 10;
    let db = "idem_repeatable_read";
    let mut c = shared().create_db(db);
    welcome(&mut c);
    let barrier = Rendezvous::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let barrier = &barrier;
            s.spawn(move || {
                let _guard = barrier.join();
                let mut conn = shared().connect(db);
                for round in 0..ROUNDS {
                    let mut tx = conn
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .start()
                        .unwrap();
                    tx.query_one("SELECT count(*) FROM engage.events", &[]).unwrap();
                    barrier.wait();
                    let result = tx
                        .execute(
                            "INSERT INTO engage.events (customer_id, name, idempotency_key) \
                             VALUES ('c1', 'signed_up', $1)",
                            &[&format!("rr-key-{round}")],
                        )
                        .and_then(|_| tx.commit());
                    if let Err(e) = result {
                        let code = e.as_db_error().map(|d| d.code().code().to_string());
                        assert_eq!(
                            code.as_deref(),
                            Some("40001"),
                            "thread {t} round {round}: only serialization failures are acceptable: {}",
                            error_text(&e)
                        );
                    }
                }
            });
        }
    });
    let per_key: Vec<(String, i64)> = c
        .query(
            "SELECT idempotency_key::text, count(*) FROM engage.events GROUP BY 1 HAVING count(*) > 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(per_key.is_empty(), "keys stored more than once under REPEATABLE READ: {per_key:?}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.events"),
        ROUNDS as i64,
        "every key is stored once (one transaction per round must commit)"
    );
}

// ---------------------------------------------------------------------------------------------
// metrics counts and open transactions
// ---------------------------------------------------------------------------------------------

/// The hourly volume counts (sql/metrics.sql, "Volume counts") advance only to a minute before
/// the oldest open transaction's start: a decision written by a transaction that is still open
/// when they advance is not counted early (its decided_at is that start), and the volume views
/// count it exactly once when it commits.
#[test]
fn volume_counts_stop_before_a_transaction_open_while_they_advance() {
    let mut a = shared().create_db("tx_volume");
    welcome(&mut a);
    let mut b = shared().connect("tx_volume");
    b.batch_execute("BEGIN; INSERT INTO engage.events (customer_id, name) VALUES ('open', 'signed_up')").unwrap();
    let opened: f64 = b.query_one("SELECT extract(epoch FROM now())::float8", &[]).unwrap().get(0);
    insert_event(&mut a, "committed", "signed_up", json!({}));

    a.batch_execute("SELECT engage.refresh_metrics()").unwrap();
    let horizon: f64 = a.query_one("SELECT extract(epoch FROM before)::float8 FROM engage.volume_counted", &[]).unwrap().get(0);
    assert!(horizon <= opened - 60.0, "the counts advanced to {horizon}, past the open transaction's start {opened} less a minute");
    let matched = |c: &mut Client| {
        (
            count(c, "SELECT matched FROM engage.trigger_fire_rate"),
            count(c, "SELECT sum(evaluated)::int8 FROM engage.trigger_volume"),
            count(c, "SELECT count(*) FROM engage.decisions"),
        )
    };
    assert_eq!(matched(&mut a), (1, 1, 1), "the committed decision, once");

    b.batch_execute("COMMIT").unwrap();
    assert_eq!(matched(&mut a), (2, 2, 2), "both, once");
    a.batch_execute("SELECT engage.refresh_metrics()").unwrap();
    assert_eq!(matched(&mut a), (2, 2, 2), "both, once, after the counts advanced again");
}
