//! A kill -9 soak of delivery: an app inserts 5,000 events (each firing one signed webhook) while
//! the deliverer is killed with SIGKILL 20 times and the postmaster twice. Afterwards: nothing
//! lost (every message sent and logged once), nothing decided twice (one event and one decision
//! per customer: the app retries each insert with its idempotency key after a lost connection),
//! and every duplicate delivery carries the same `webhook-id` and body as the first. It prints
//! how many deliveries were duplicates.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const EVENTS: usize = 5_000;
const PER_STATEMENT: usize = 25;
const WORKER_KILLS: usize = 20;
const POSTMASTER_KILLS: usize = 2;

/// Runs `sql` until it succeeds, reconnecting after the lost connections of a crash.
fn until_done(cluster: &Cluster, db: &str, client: &mut Client, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = client.batch_execute(sql) {
        assert!(Instant::now() < deadline, "{sql}: still failing: {}", error_text(&e));
        std::thread::sleep(Duration::from_millis(200));
        *client = reconnect(cluster, db, Duration::from_secs(60));
    }
}

#[test]
fn kill_9_soak_loses_nothing_and_decides_nothing_twice() {
    let db = "soak";
    let (cluster, mut c) = start_deliverer(db, &[("engage.lease", "'3s'"), ("synchronous_commit", "on")]);
    let receiver = HttpReceiver::new();
    let secret = signing_secret(b"soak test signing key, 32 bytes");
    c.execute(
        "INSERT INTO engage.channels (kind, config, max_attempts, backoff_base) VALUES ('webhook', jsonb_build_object('url', $1::text), 100, '1 second')",
        &[&receiver.url("/soak")],
    )
    .unwrap();
    c.execute("INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('webhook', jsonb_build_object('signing_secret', $1::text))", &[&secret])
        .unwrap();
    create_trigger(
        &mut c,
        "hook",
        json!({"event": "e", "category": "transactional", "action": {"channel": "webhook"}}),
    );

    let inserting = AtomicBool::new(true);
    std::thread::scope(|s| {
        // The app: 200 statements of 25 events, each retried with its idempotency keys.
        s.spawn(|| {
            let mut app = cluster.connect(db);
            for chunk in 0..EVENTS / PER_STATEMENT {
                let values: Vec<String> = (0..PER_STATEMENT)
                    .map(|i| {
                        let n = chunk * PER_STATEMENT + i;
                        format!("('s{n:05}', 'e', 'soak-{n:05}')")
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO engage.events (customer_id, name, idempotency_key) VALUES {}",
                    values.join(", ")
                );
                until_done(&cluster, db, &mut app, &sql);
                std::thread::sleep(Duration::from_millis(150));
            }
            inserting.store(false, Ordering::Release);
        });
        // The killer: SIGKILL the deliverer 20 times, the postmaster twice (at kills 7 and 14).
        s.spawn(|| {
            let mut watcher = cluster.connect(db);
            let mut last_pid = None;
            for kill in 1..=WORKER_KILLS + POSTMASTER_KILLS {
                let pid = {
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            wait_for_worker(&cluster, &mut watcher, last_pid)
                        })) {
                            Ok(pid) => break pid,
                            Err(_) if attempts < 5 => watcher = reconnect(&cluster, db, Duration::from_secs(60)),
                            Err(e) => std::panic::resume_unwind(e),
                        }
                    }
                };
                // Let it deliver a little, then kill it mid-work.
                std::thread::sleep(Duration::from_millis(300 + (kill as u64 * 137) % 400));
                if kill % 8 == 7 {
                    cluster.kill_postmaster_and_start();
                } else {
                    // SAFETY: sending a signal to a process id has no memory-safety preconditions.
                    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 deliverer {pid}");
                }
                last_pid = Some(pid);
                std::thread::sleep(Duration::from_millis(200));
                watcher = reconnect(&cluster, db, Duration::from_secs(60));
            }
        });
    });
    assert!(!inserting.load(Ordering::Acquire));

    let mut c = reconnect(&cluster, db, Duration::from_secs(60));
    wait_for_worker(&cluster, &mut c, None);
    let rows = wait_settled(&cluster, &mut c, EVENTS, Duration::from_secs(180));
    assert!(rows.iter().all(|o| o.status == "sent"), "not everything was sent");
    // Nothing decided twice, nothing lost.
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.events"), EVENTS as i64, "one event per customer");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.decisions"), EVENTS as i64, "one decision per event");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), EVENTS as i64, "one message per decision");
    assert_eq!(count(&mut c, "SELECT count(DISTINCT outbox_id) FROM engage.messages"), EVENTS as i64);
    std::thread::sleep(Duration::from_millis(500));
    let requests = receiver.requests();
    let mut by_id: BTreeMap<String, Vec<&Request>> = BTreeMap::new();
    for r in &requests {
        let id = r.header("webhook-id").expect("webhook-id").to_string();
        by_id.entry(id).or_default().push(r);
    }
    assert_eq!(by_id.len(), EVENTS, "every message arrived at least once");
    for (id, copies) in &by_id {
        verify_standard_webhook(&secret, copies[0]).unwrap_or_else(|e| panic!("{id}: {e}"));
        for copy in &copies[1..] {
            assert_eq!(copy.body, copies[0].body, "a duplicate of {id} carries the same body");
        }
    }
    let duplicates = requests.len() - EVENTS;
    println!(
        "soak: {EVENTS} messages, {WORKER_KILLS} deliverer kills and {POSTMASTER_KILLS} postmaster kills: \
         {} deliveries, {duplicates} duplicates ({:.1}%), 0 lost, 0 decided twice",
        requests.len(),
        100.0 * duplicates as f64 / EVENTS as f64
    );
}
