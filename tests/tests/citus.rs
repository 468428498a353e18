//! A schema ready for Citus (README, "Scaling out"; the calls are ops/citus.sql). Citus cannot be
//! installed on these machines, so its rules are checked against the catalog of a fresh install,
//! and the insert path's locality is measured on plain PostgreSQL:
//!
//! * every table of the extension is placed once, as a reference table or distributed;
//! * every primary key and unique index of a distributed table holds its distribution column,
//!   and the distribution columns can be co-located (one type, one collation);
//! * foreign keys only point from a table to a reference table placed before it;
//! * identity columns of distributed tables are bigint (Citus can generate them on any node);
//! * an INSERT reads and writes the rows of its own customers only: its per-table read and write
//!   counts are the same in a database where thousands of other customers have rows.

use pg_engage_it::*;
use std::collections::{BTreeMap, BTreeSet};

const PLAN: &str = include_str!("../../ops/citus.sql");
const README: &str = include_str!("../../README.md");

/// How ops/citus.sql places a table.
#[derive(Debug, Clone, PartialEq)]
enum Placement {
    Reference,
    Distributed { column: String, colocate_with: Option<String> },
}

/// The placement calls of ops/citus.sql, in order: table name (`engage.x`) and placement.
fn plan() -> Vec<(String, Placement)> {
    let quoted = |s: &str| -> Vec<String> { s.split('\'').skip(1).step_by(2).map(str::to_string).collect() };
    PLAN.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("SELECT "))
        .map(|l| {
            let args = quoted(l);
            if l.starts_with("SELECT create_reference_table(") {
                assert_eq!(args.len(), 1, "{l}");
                (args[0].clone(), Placement::Reference)
            } else if l.starts_with("SELECT create_distributed_table(") {
                assert!(args.len() == 2 || (args.len() == 3 && l.contains("colocate_with => ")), "{l}");
                (
                    args[0].clone(),
                    Placement::Distributed { column: args[1].clone(), colocate_with: args.get(2).cloned() },
                )
            } else {
                panic!("ops/citus.sql: unexpected statement {l}");
            }
        })
        .collect()
}

fn distributed(plan: &[(String, Placement)]) -> BTreeMap<String, String> {
    plan.iter()
        .filter_map(|(t, p)| match p {
            Placement::Distributed { column, .. } => Some((t.clone(), column.clone())),
            Placement::Reference => None,
        })
        .collect()
}

#[test]
fn every_table_is_placed_once_and_every_key_of_a_distributed_table_holds_its_column() {
    let mut c = shared().create_db("citus_catalog");
    let plan = plan();
    let placed: Vec<&String> = plan.iter().map(|(t, _)| t).collect();
    let unique: BTreeSet<&String> = placed.iter().copied().collect();
    assert_eq!(unique.len(), placed.len(), "a table placed twice in ops/citus.sql: {placed:?}");

    let tables: BTreeSet<String> = c
        .query(
            "SELECT c.oid::regclass::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_engage')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 20, "the extension's tables: {tables:?}");
    let unique: BTreeSet<String> = unique.into_iter().cloned().collect();
    assert_eq!(tables, unique, "ops/citus.sql must place exactly the extension's tables");

    let distributed = distributed(&plan);
    // Co-location: the first distributed table is the group's anchor; the others name it.
    let anchor = plan.iter().find_map(|(t, p)| matches!(p, Placement::Distributed { .. }).then(|| t.clone()));
    let anchor = anchor.expect("ops/citus.sql distributes no table");
    for (table, placement) in &plan {
        if let Placement::Distributed { colocate_with, .. } = placement {
            let expected = if *table == anchor { None } else { Some(anchor.clone()) };
            assert_eq!(colocate_with, &expected, "{table}: co-located with the first distributed table");
        }
    }

    // Every distribution column: NOT NULL text with the collation "C", like the anchor's.
    for (table, column) in &distributed {
        let row = c
            .query_one(
                "SELECT format_type(a.atttypid, a.atttypmod), a.attcollation::regcollation::text, a.attnotnull
                   FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                &[table, column],
            )
            .unwrap_or_else(|e| panic!("{table}.{column}: {}", error_text(&e)));
        let (ty, collation, not_null): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((ty.as_str(), collation.as_str(), not_null), ("text", "\"C\"", true), "{table}.{column}");
    }

    // Every primary key and unique index (constraint or not, partial or not) of a distributed
    // table holds the distribution column as a plain column.
    let mut checked = 0;
    for row in c
        .query(
            "SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey) k JOIN pg_attribute a
                           ON a.attrelid = i.indrelid AND a.attnum = k)
               FROM pg_index i WHERE i.indisunique AND i.indrelid = ANY ($1::text[]::regclass[])",
            &[&distributed.keys().cloned().collect::<Vec<_>>()],
        )
        .unwrap()
    {
        let (table, index, columns): (String, String, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        assert!(
            columns.contains(&distributed[&table]),
            "{index} on {table} ({columns:?}) lacks {}",
            distributed[&table]
        );
        checked += 1;
    }
    assert!(checked >= distributed.len(), "only {checked} unique indexes checked");

    // Foreign keys point to reference tables placed before the referencing table; none from a
    // reference table to a distributed one, none between distributed tables.
    let position = |t: &str| plan.iter().position(|(p, _)| p == t);
    for row in c
        .query(
            "SELECT conname::text, conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint
              WHERE contype = 'f' AND connamespace = 'engage'::regnamespace",
            &[],
        )
        .unwrap()
    {
        let (name, from, to): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(!distributed.contains_key(&to), "foreign key {name} of {from} points to the distributed {to}");
        assert!(position(&to) < position(&from), "{name}: {to} must be placed before {from} in ops/citus.sql");
    }

    // Identity columns of distributed tables are bigint: Citus generates other types only on
    // the coordinator.
    for row in c
        .query(
            "SELECT a.attrelid::regclass::text, a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
              WHERE a.attidentity <> '' AND a.attrelid = ANY ($1::text[]::regclass[])",
            &[&distributed.keys().cloned().collect::<Vec<_>>()],
        )
        .unwrap()
    {
        let (table, column, ty): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(ty, "bigint", "identity {table}.{column}");
    }
}

#[test]
fn readme_shows_the_placement_calls_of_ops_citus_sql() {
    let calls: Vec<&str> = PLAN.lines().map(str::trim).filter(|l| l.starts_with("SELECT ")).collect();
    assert!(calls.len() >= 20);
    for call in calls {
        assert!(README.lines().any(|l| l.trim() == call), "README \"Scaling out\" lacks: {call}");
    }
}

/// Idempotency keys are per customer (a Segment messageId is per source and user): one key for
/// two customers stores both events; a repeat for one customer is skipped.
#[test]
fn idempotency_keys_are_per_customer() {
    let cluster = shared();
    cluster.create_db("citus_keys");
    let mut app = connect_as_member(cluster, "citus_keys", "app", &["engage_writer"]);
    let n = app
        .execute(
            "INSERT INTO engage.events (customer_id, name, idempotency_key)
             VALUES ('c1', 'order', 'k'), ('c2', 'order', 'k'), ('c1', 'order', 'k')",
            &[],
        )
        .unwrap();
    assert_eq!(n, 2);
    let ingested: Vec<String> = app
        .query(
            "SELECT outcome FROM engage.ingest($1) ORDER BY item",
            &[&json!([
                {"type": "track", "userId": "c3", "event": "order", "messageId": "k"},
                {"type": "track", "userId": "c3", "event": "order", "messageId": "k"},
                {"type": "track", "userId": "c1", "event": "order", "messageId": "k"}
            ])],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ingested, ["ingested", "duplicate", "duplicate"]);
    let mut admin = cluster.connect("citus_keys");
    let stored: Vec<(String, String)> = admin
        .query("SELECT customer_id, idempotency_key FROM engage.events ORDER BY customer_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(stored, pairs(&[("c1", "k"), ("c2", "k"), ("c3", "k")]));
}

/// The triggers of bench/setup.sql and bench/patterns.sql (50 simple, 20 patterns), plus a
/// journey with an exit, a cancel_on, a profile predicate, a holdout and a frequency cap.
fn load_triggers(c: &mut Client) {
    for file in [include_str!("../../bench/setup.sql"), include_str!("../../bench/patterns.sql")] {
        let sql: String = file
            .lines()
            .filter(|l| !l.starts_with('\\') && !l.starts_with("CREATE EXTENSION") && !l.contains("bench."))
            .filter(|l| !l.starts_with("CREATE SCHEMA bench"))
            .map(|l| format!("{l}\n"))
            .collect();
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("bench triggers: {}", error_text(&e)));
    }
    let webhook = json!({"channel": "webhook"});
    create_trigger(
        c,
        "journey",
        json!({"event": "signed_up", "steps": [{"action": webhook}, {"wait": "2d", "action": webhook}],
               "exit": [{"event": "order_completed"}]}),
    );
    create_trigger(
        c,
        "cancellable",
        json!({"event": "cart_updated", "wait": "1h", "cancel_on": [{"event": "order_completed", "same": ["sku"]}],
               "action": webhook}),
    );
    create_trigger(
        c,
        "pro_visit",
        json!({"event": "search_performed", "where": {"profile": "plan", "eq": "pro"}, "action": webhook}),
    );
    create_trigger(c, "held_out", json!({"event": "checkout_started", "holdout": 0.5, "action": webhook}));
    c.batch_execute("INSERT INTO engage.frequency_caps (max_messages, per) VALUES (5, '1 day')").unwrap();
}

const NAMES: &str =
    "ARRAY['product_viewed', 'cart_updated', 'checkout_started', 'order_completed', 'search_performed', 'signed_up']";

/// `events` events, spread over `customers` customers named `<prefix><n>`, over ten minutes of
/// 2026-03-01, each with a profile; every seventh customer is on the sms suppression list; half
/// of the messages the events queued are in the sent log.
fn history(c: &mut Client, prefix: &str, customers: i32, events: i32) {
    c.batch_execute(&format!(
        "INSERT INTO engage.profiles (customer_id, attributes, email, phone)
         SELECT '{prefix}' || g, jsonb_build_object('plan', CASE WHEN g % 2 = 0 THEN 'pro' ELSE 'free' END),
                'x' || g || '@example.com', '+1555' || g
           FROM generate_series(0, {customers} - 1) g;
         INSERT INTO engage.suppressions (customer_id, channel, reason)
         SELECT '{prefix}' || g, 'sms', 'manual' FROM generate_series(0, {customers} - 1, 7) g;
         INSERT INTO engage.events (customer_id, name, properties, occurred_at)
         SELECT '{prefix}' || (g % {customers}), ({NAMES})[1 + g % 6],
                jsonb_build_object('value', g % 200, 'sku', 'sku-' || (g % 3)),
                '2026-03-01 10:00:00+00'::timestamptz + (g % 600) * interval '1 second'
           FROM generate_series(0, {events} - 1) g;
         INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, category,
                                      variant, queued_at, sent_at, attempts)
         SELECT o.id, o.event_id, o.trigger_id, o.customer_id, o.channel, o.template, o.category, o.variant,
                o.created_at, '2026-03-01 10:00:00+00'::timestamptz + (o.id % 600) * interval '1 second', 1
           FROM engage.outbox o WHERE o.customer_id LIKE '{prefix}%' AND o.id % 2 = 0;"
    ))
    .unwrap_or_else(|e| panic!("history of {prefix}: {}", error_text(&e)));
}

/// Per table of the customers' data and per index of them: scans, rows or entries returned,
/// rows fetched, inserted, updated and deleted, so far in this transaction.
fn counts(c: &mut Client, tables: &[String]) -> BTreeMap<String, [i64; 6]> {
    c.query(
        "SELECT r.relname::text, pg_stat_get_xact_numscans(r.oid), pg_stat_get_xact_tuples_returned(r.oid),
                pg_stat_get_xact_tuples_fetched(r.oid), pg_stat_get_xact_tuples_inserted(r.oid),
                pg_stat_get_xact_tuples_updated(r.oid), pg_stat_get_xact_tuples_deleted(r.oid)
           FROM pg_class r
          WHERE r.oid = ANY ($1::text[]::regclass[])
             OR r.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = ANY ($1::text[]::regclass[]))",
        &[&tables],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)]))
    .collect()
}

/// One INSERT by the app for two customers with a history, in a database `db` where `others`
/// other customers have rows too; returns what it read and wrote per table and index.
fn insert_counts(db: &str, others: i32) -> BTreeMap<String, [i64; 6]> {
    let cluster = shared();
    let mut admin = cluster.create_db(db);
    load_triggers(&mut admin);
    history(&mut admin, "c", 2, 40);
    if others > 0 {
        history(&mut admin, "other", others, others * 4);
    }
    admin.batch_execute("ANALYZE").unwrap();
    let tables: Vec<String> = distributed(&plan()).into_keys().collect();
    let mut app = connect_as_member(cluster, db, "app", &["engage_writer"]);
    // Index scans only, as a distributed table's shard would be read: a scan of a whole table
    // then shows in the counts as every other customer's rows.
    app.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off; BEGIN").unwrap();
    let before = counts(&mut app, &tables);
    app.batch_execute(&format!(
        "INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
         SELECT 'c' || (g % 2), ({NAMES})[1 + g % 6], jsonb_build_object('value', 150 + g, 'sku', 'sku-' || (g % 3)),
                '2026-03-01 10:05:00+00'::timestamptz + g * interval '7 seconds', 'k' || g
           FROM generate_series(0, 17) g"
    ))
    .unwrap_or_else(|e| panic!("insert: {}", error_text(&e)));
    let after = counts(&mut app, &tables);
    app.batch_execute("COMMIT").unwrap();
    after
        .into_iter()
        .map(|(rel, a)| {
            let b = before.get(&rel).copied().unwrap_or_default();
            (rel, std::array::from_fn(|i| a[i] - b[i]))
        })
        .collect()
}

#[test]
fn an_insert_reads_and_writes_only_its_own_customers_rows() {
    let alone = insert_counts("citus_alone", 0);
    let among_others = insert_counts("citus_among_others", 2000);
    let touched = |m: &BTreeMap<String, [i64; 6]>| m.values().map(|v| v.iter().sum::<i64>()).sum::<i64>();
    // The comparison means something: the insert path probed and wrote these tables, the sent
    // log (for the frequency cap) included.
    assert!(touched(&alone) > 100, "{alone:#?}");
    assert!(alone.get("messages_by_customer").is_some_and(|c| c[1] > 0), "the sent log was read: {alone:#?}");
    for (rel, counts) in &among_others {
        assert_eq!(
            Some(counts),
            alone.get(rel),
            "{rel}: [scans, returned, fetched, inserted, updated, deleted] differ when other customers have rows"
        );
    }
    assert_eq!(alone.len(), among_others.len());
}
