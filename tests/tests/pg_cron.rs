//! pg_cron instead of the built-in scheduler (README "Operating"): with `engage.tick_interval = 0`
//! the scheduler worker runs but never ticks, and pg_cron jobs owned by an operator role (a
//! member of engage_admin, not a superuser) run `engage.tick()` and `engage.refresh_metrics()`.
//! pg_cron (Debian's postgresql-15-cron, 1.4) schedules by the minute, so this test waits for
//! the next minute.

use pg_engage_it::delivery::wait_for;
use pg_engage_it::*;
use std::time::Duration;

#[test]
fn pg_cron_runs_the_ticks_when_the_built_in_scheduler_is_off() {
    let db = "cron";
    let cluster = Cluster::start("pg_cron");
    let c = cluster.create_db(db);
    // In postgresql.conf: ALTER SYSTEM refuses cron.* before pg_cron is loaded.
    let settings = format!(
        "shared_preload_libraries = 'pg_engage,pg_cron'\n\
         cron.database_name = '{db}'\n\
         cron.use_background_workers = on\n\
         max_worker_processes = 20\n\
         engage.database = '{db}'\n\
         engage.worker_enabled = off\n\
         engage.tick_interval = 0\n"
    );
    let conf = cluster.dir().join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new().append(true).open(&conf).expect("open postgresql.conf");
    std::io::Write::write_all(&mut file, settings.as_bytes()).expect("append to postgresql.conf");
    drop(c);
    cluster.restart();
    let mut c = cluster.connect(db);
    c.batch_execute("CREATE EXTENSION pg_cron")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_cron: {}", error_text(&e)));

    c.batch_execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', '{\"url\": \"http://127.0.0.1:9/unused\"}')",
    )
    .unwrap();
    create_trigger(
        &mut c,
        "lapsed",
        json!({"inactive": {"event": "purchase", "for": "1d"}, "backfill": true, "action": {"channel": "webhook"}}),
    );
    insert_event_at(&mut c, "c1", "purchase", json!({}), "2024-01-01T00:00:00Z");

    // The built-in scheduler runs, and would tick at once if it were on.
    wait_for(
        "the built-in scheduler to run",
        Duration::from_secs(20),
        || match c.query_one("SELECT scheduler_running FROM engage.worker_status()", &[]) {
            Ok(r) if r.get::<_, bool>(0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
        || cluster.log_tail(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.tick_progress"), 0, "engage.tick_interval = 0: no tick");

    // An operator role schedules the calls.
    c.batch_execute(
        "CREATE ROLE ops LOGIN IN ROLE engage_admin;
         GRANT USAGE ON SCHEMA cron TO ops;",
    )
    .unwrap();
    let mut ops = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port())
        .user("ops")
        .dbname(db)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as ops: {e}"));
    for (name, command) in
        [("engage-tick", "SELECT engage.tick()"), ("engage-metrics", "SELECT engage.refresh_metrics()")]
    {
        ops.query_one("SELECT cron.schedule($1, '* * * * *', $2)", &[&name, &command])
            .unwrap_or_else(|e| panic!("cron.schedule({name}) as ops: {}", error_text(&e)));
    }

    // Within the next minute both jobs run, as ops, and the tick fires c1's lapse.
    let runs = wait_for(
        "both pg_cron jobs to run",
        Duration::from_secs(90),
        || {
            let rows = c
                .query(
                    "SELECT j.jobname, d.status, coalesce(d.return_message, ''), d.username::text \
                       FROM cron.job_run_details d JOIN cron.job j USING (jobid) \
                      WHERE d.status NOT IN ('starting', 'running') ORDER BY j.jobname",
                    &[],
                )
                .map_err(|e| error_text(&e))?;
            let runs: Vec<(String, String, String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
            let jobs: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.0.as_str()).collect();
            if jobs.len() == 2 {
                Ok(runs)
            } else {
                Err(format!("runs so far: {runs:?}"))
            }
        },
        || cluster.log_tail(30),
    );
    for (job, status, message, user) in &runs {
        assert_eq!((status.as_str(), user.as_str()), ("succeeded", "ops"), "{job}: {message}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.tick_progress"), 1, "pg_cron's tick moved the progress");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM engage.outbox o JOIN engage.triggers t ON t.id = o.trigger_id \
              WHERE t.name = 'lapsed' AND o.customer_id = 'c1'"
        ),
        1,
        "the tick fired c1's lapse"
    );
    let lag: f64 =
        c.query_one("SELECT extract(epoch FROM tick_lag)::float8 FROM engage.operations", &[]).unwrap().get(0);
    assert!((0.0..120.0).contains(&lag), "engage.operations sees pg_cron's tick: lag {lag} s");
}
