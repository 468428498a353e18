//! pg_dump keeps every engage table but the channel secrets (they are marked as extension
//! configuration; engage.channel_secrets is not, so no dump carries credentials), and restoring
//! a dump re-decides nothing: the restored database has exactly the original events, decisions
//! and outbox rows, with or without session_replication_role = replica (the README's advice).

use pg_engage_it::*;
use serde_json::json;

const SNAPSHOT: &str =
    "SELECT (SELECT count(*) FROM engage.events) || '/' || (SELECT count(*) FROM engage.decisions) || '/' \
    || (SELECT count(*) FROM engage.outbox) || '/' || (SELECT count(*) FROM engage.triggers) || '/' \
    || (SELECT string_agg(outcome || coalesce(reason, ''), ',' ORDER BY event_id, trigger_id) FROM engage.decisions)";

#[test]
fn a_dump_restores_data_without_deciding_anything_again() {
    let cluster = shared();
    let mut src = cluster.create_db("backup_src");
    create_trigger(&mut src, "hi", json!({"event": "e", "priority": 1, "action": {"channel": "webhook"}}));
    create_trigger(
        &mut src,
        "hi2",
        json!({"event": "e", "priority": 2, "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1h"}}),
    );
    for _ in 0..3 {
        insert_event(&mut src, "c1", "e", json!({}));
    }
    src.batch_execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('webhook', '{\"url\": \"https://hooks.example/x\"}');
         INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('webhook', '{\"signing_secret\": \"whsec_never_in_a_dump\"}');",
    )
    .unwrap();
    let before: String = src.query_one(SNAPSHOT, &[]).unwrap().get(0);
    let dump = std::env::temp_dir().join(format!("pg_engage_backup_{}.sql", std::process::id()));
    let out = cluster
        .pg_command("pg_dump")
        .args([
            "-h",
            &cluster.dir().display().to_string(),
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "backup_src",
        ])
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&dump, &out.stdout).unwrap();
    // Channel settings are in the dump; their credentials are not.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hooks.example"), "the channel row is dumped");
    assert!(!text.contains("whsec_never_in_a_dump"), "a dump must not carry channel secrets");

    for (target, options) in [("backup_plain", ""), ("backup_replica", "-c session_replication_role=replica")] {
        let mut admin = cluster.connect("postgres");
        admin.batch_execute(&format!("CREATE DATABASE {target}")).unwrap();
        let out = cluster
            .pg_command("psql")
            .env("PGOPTIONS", options)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &cluster.dir().display().to_string(),
                "-p",
                &cluster.port().to_string(),
            ])
            .args(["-U", "postgres", "-d", target, "-f", &dump.display().to_string()])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "restore into {target}: {}", String::from_utf8_lossy(&out.stderr));
        let mut restored = cluster.connect(target);
        let after: String = restored.query_one(SNAPSHOT, &[]).unwrap().get(0);
        assert_eq!(after, before, "restored into {target}");
        assert_eq!(count(&mut restored, "SELECT count(*) FROM engage.channel_secrets"), 0, "no secret restored");
        // The restored database keeps deciding new events, and the restored decisions still count:
        // c1's next event is capped (hi2) and in conflict with hi2's restored decision (hi); a new
        // customer's fires.
        let e = insert_event(&mut restored, "c1", "e", json!({}));
        let reasons: String = restored
            .query_one(
                "SELECT string_agg(coalesce(reason, outcome), ',' ORDER BY trigger_id) FROM engage.decisions WHERE event_id = $1",
                &[&e],
            )
            .unwrap()
            .get(0);
        assert_eq!(reasons, "conflict,cap", "restored caps and decisions apply in {target}");
        let e = insert_event(&mut restored, "c2", "e", json!({}));
        let fired: i64 = restored
            .query_one("SELECT count(*) FROM engage.decisions WHERE event_id = $1 AND outcome = 'fired'", &[&e])
            .unwrap()
            .get(0);
        assert_eq!(fired, 1, "a new customer's event fires in {target}");
    }
    let _ = std::fs::remove_file(dump);
}
