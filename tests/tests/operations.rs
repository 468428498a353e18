//! The on-call engineer's views (sql/operations.sql) and their Prometheus export
//! (ops/postgres_exporter.yml), read as a role that holds only engage_analyst: a queue in a known
//! state (due, not yet due, an expired lease, a dead message), the built-in workers running, and
//! the real postgres_exporter scraping the file's queries.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The exporter process, stopped when dropped.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample of a scrape: metric name, labels (without the exporter's `server`), value.
type Sample = (String, BTreeMap<String, String>, f64);

fn scrape(port: u16) -> Result<Vec<Sample>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
    Ok(body.lines().filter(|l| l.starts_with("pg_engage_")).map(parse_sample).collect())
}

/// `name{a="x",b="y"} value` (the exporter writes label values without quotes or commas here).
fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("label {l:?} of {line:?}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .filter(|(k, _)| k != "server")
        .collect();
    (name.to_string(), labels, value)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| *v)
}

#[test]
fn the_operations_views_and_their_prometheus_export_show_the_queue_and_the_workers() {
    let db = "ops";
    // The deliverer runs but is paused, so the queue stays as the test arranges it; the scheduler
    // ticks every second.
    let (cluster, mut c) = start_deliverer(db, &[("engage.worker_enabled", "off"), ("engage.tick_interval", "1")]);
    c.batch_execute(
        "INSERT INTO engage.channels (kind, config, max_attempts) \
         VALUES ('webhook', '{\"url\": \"http://127.0.0.1:9/unused\"}', 3)",
    )
    .unwrap();
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    create_trigger(&mut c, "later", json!({"event": "f", "wait": "1h", "action": {"channel": "webhook"}}));
    create_trigger(
        &mut c,
        "lapsed",
        json!({"inactive": {"event": "purchase", "for": "30d"}, "action": {"channel": "webhook"}}),
    );
    for customer in ["c1", "c2", "c3", "c4"] {
        insert_event_at(&mut c, customer, "e", json!({}), "2020-01-01T00:00:00Z");
    }
    insert_event(&mut c, "c5", "f", json!({}));

    // An external deliverer claims the two oldest; it fails one for good and dies holding the
    // other, whose 1 s lease then expires.
    let claimed: Vec<(i64, i64, String)> = c
        .query("SELECT id, lease, customer_id FROM engage.claim(2, '1 second', 'ext') ORDER BY customer_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(claimed.iter().map(|c| c.2.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
    let failed: Option<String> = c
        .query_one("SELECT engage.fail($1, $2, 'HTTP 410: gone', false)", &[&claimed[1].0, &claimed[1].1])
        .unwrap()
        .get(0);
    assert_eq!(failed.as_deref(), Some("dead"), "the permanent failure is recorded");
    std::thread::sleep(Duration::from_millis(1100)); // the 1 s lease of c1's message

    // The scheduler has ticked (tick_progress of "lapsed").
    wait_for(
        "a scheduler tick",
        Duration::from_secs(20),
        || match count(&mut c, "SELECT count(*) FROM engage.tick_progress") {
            1 => Ok(()),
            n => Err(format!("{n} tick_progress rows")),
        },
        || cluster.log_tail(30),
    );

    let mut oncall = connect_as_member(&cluster, db, "oncall", &["engage_analyst"]);
    let row = oncall
        .query_one(
            "SELECT pending, pending_due, extract(epoch FROM oldest_due_age)::float8, claimed, expired_leases, \
                    dead_last_hour, deliverer_running, deliverer_pid IS NOT NULL, sent_since_start, \
                    scheduler_running, extract(epoch FROM tick_lag)::float8, rule_cache_loads \
               FROM engage.operations",
            &[],
        )
        .unwrap_or_else(|e| panic!("engage.operations as engage_analyst: {}", error_text(&e)));
    let (pending, pending_due, oldest, claimed_n, expired, dead): (i64, i64, f64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    assert_eq!((pending, pending_due, claimed_n, expired, dead), (3, 2, 1, 1, 1), "c3, c4 due; c5 in an hour");
    assert!(oldest > 86_400.0 * 365.0, "the oldest due message waits since 2020: {oldest} s");
    let (running, has_pid, sent): (bool, bool, i64) = (row.get(6), row.get(7), row.get(8));
    assert_eq!((running, has_pid, sent), (true, true, 0), "the deliverer runs, paused");
    let (scheduler, lag, loads): (bool, f64, Option<i64>) = (row.get(9), row.get(10), row.get(11));
    assert!(scheduler, "the scheduler runs");
    assert!((0.0..10.0).contains(&lag), "the last tick was a moment ago: lag {lag} s");
    let loads = loads.expect("rule_cache_loads with the preload");
    assert!(loads >= 1, "the inserts loaded the rule set: {loads}");

    let mut health: Vec<(String, String, i64, i64, i64)> = oncall
        .query("SELECT channel, status, messages, due, expired_leases FROM engage.queue_health", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    health.sort();
    assert_eq!(health, [("webhook".into(), "claimed".into(), 1, 0, 1), ("webhook".into(), "pending".into(), 3, 2, 0)]);

    // A change of definitions makes backends load the rule set again: the counter moves.
    update_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}, "priority": 3}));
    insert_event(&mut c, "c6", "e", json!({}));
    let after: i64 = oncall.query_one("SELECT rule_cache_loads FROM engage.operations", &[]).unwrap().get(0);
    assert!(after > loads, "rule_cache_loads {loads} -> {after} after update_trigger");

    // The real postgres_exporter, connected as the on-call role, runs every query of the file.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/postgres_exporter.yml");
    let log = cluster.dir().join("exporter.log");
    let _exporter = Exporter(
        Command::new(EXPORTER)
            .args([
                &format!("--web.listen-address=127.0.0.1:{port}"),
                &format!("--extend.query-path={queries}"),
                "--disable-default-metrics",
                "--disable-settings-metrics",
            ])
            .env(
                "DATA_SOURCE_NAME",
                format!("postgresql://{db}_oncall@127.0.0.1:{}/{db}?sslmode=disable", cluster.port()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{EXPORTER} (scripts/setup.sh installs it): {e}")),
    );
    let samples = wait_for(
        "postgres_exporter to export pg_engage's metrics",
        Duration::from_secs(30),
        || {
            let samples = scrape(port)?;
            if samples.iter().any(|s| s.0 == "pg_engage_operations_pending") {
                Ok(samples)
            } else {
                Err(format!("samples: {samples:?}"))
            }
        },
        || format!("exporter log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
    );
    let exporter_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!exporter_log.contains("level=error"), "the exporter reports errors:\n{exporter_log}");
    for (name, want) in [
        ("pg_engage_operations_pending", 4.0), // c6's message is queued too
        ("pg_engage_operations_pending_due", 3.0),
        ("pg_engage_operations_claimed", 1.0),
        ("pg_engage_operations_expired_leases", 1.0),
        ("pg_engage_operations_dead_last_hour", 1.0),
        ("pg_engage_operations_deliverer_running", 1.0),
        ("pg_engage_operations_scheduler_running", 1.0),
        ("pg_engage_operations_sent_since_start", 0.0),
    ] {
        assert_eq!(value(&samples, name, &[]), Some(want), "{name} in {samples:#?}");
    }
    let lag = value(&samples, "pg_engage_operations_tick_lag_seconds", &[]).expect("tick lag");
    assert!((0.0..10.0).contains(&lag), "tick lag {lag}");
    let loads_now = value(&samples, "pg_engage_operations_rule_cache_loads", &[]).expect("rule_cache_loads");
    assert!(loads_now >= after as f64, "rule_cache_loads {loads_now}, {after} a moment before");
    let pending = [("channel", "webhook"), ("status", "pending")];
    assert_eq!(value(&samples, "pg_engage_queue_messages", &pending), Some(4.0), "{samples:#?}");
    assert_eq!(value(&samples, "pg_engage_queue_due", &pending), Some(3.0));
    let claimed = [("channel", "webhook"), ("status", "claimed")];
    assert_eq!(value(&samples, "pg_engage_queue_expired_leases", &claimed), Some(1.0));
    let oldest = value(&samples, "pg_engage_queue_oldest_due_seconds", &pending).expect("oldest due");
    assert!(oldest > 86_400.0 * 365.0, "oldest due {oldest} s");
}
