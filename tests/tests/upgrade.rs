//! Upgrades: a database created at the previous release (0.1.0, its install script kept in
//! sql/versions/ and installed by scripts/test.sh) and filled with data, then `ALTER EXTENSION
//! pg_engage UPDATE`d, has the catalog of a fresh install of this version, keeps its data, and
//! its deliverer sends the messages queued before the update.
//!
//! `pg_dump --schema-only` prints an extension's objects as one `CREATE EXTENSION` line, so the
//! catalogs are compared object by object instead: every member of the extension, every object
//! in the `engage` schema with its definition, owner-independent attributes, comment and
//! privileges.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::time::Duration;

/// The catalog of the extension, one line per object or attribute, sorted.
const CATALOG: &str = r#"
WITH ext AS (SELECT oid, extversion, extconfig, extcondition FROM pg_extension WHERE extname = 'pg_engage'),
engage AS (SELECT 'engage'::regnamespace AS oid),
lines AS (
  SELECT 'version ' || extversion FROM ext
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL
  SELECT 'config ' || c::regclass::text || ' ' || coalesce(w, '')
    FROM ext, unnest(extconfig, extcondition) AS x(c, w)
  UNION ALL
  SELECT 'schema acl ' || coalesce(nspacl::text, '') FROM pg_namespace WHERE oid = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure::text || E'\n' ||
         CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) ELSE p.prokind::text END ||
         E'\nconfig ' || coalesce(p.proconfig::text, '') || E'\nacl ' || coalesce(p.proacl::text, '') ||
         E'\nsecdef ' || p.prosecdef || E'\ncomment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
    FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '') ||
         ' options ' || coalesce(c.reloptions::text, '') || ' persistence ' || c.relpersistence::text ||
         ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '') ||
         CASE WHEN c.relkind = 'v' THEN E'\n' || pg_get_viewdef(c.oid) ELSE '' END ||
         CASE WHEN c.relkind = 'i' THEN E'\n' || pg_get_indexdef(c.oid) ELSE '' END
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
         ' notnull ' || a.attnotnull || ' identity ' || a.attidentity::text || ' generated ' || a.attgenerated::text ||
         ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '') ||
         ' collation ' || coalesce(a.attcollation::regcollation::text, '') || ' acl ' || coalesce(a.attacl::text, '') ||
         ' comment ' || coalesce(col_description(c.oid, a.attnum), '')
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
   WHERE c.relnamespace = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'constraint ' || coalesce(c.conrelid::regclass::text, c.contypid::regtype::text) || ' ' || c.conname || ' ' ||
         pg_get_constraintdef(c.oid)
    FROM pg_constraint c WHERE c.connamespace = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = (SELECT oid FROM engage) AND NOT t.tgisinternal
  UNION ALL
  SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' ' || coalesce(format_type(t.typbasetype, t.typtypmod), '') ||
         ' notnull ' || t.typnotnull || ' comment ' || coalesce(obj_description(t.oid, 'pg_type'), '')
    FROM pg_type t WHERE t.typnamespace = (SELECT oid FROM engage) AND t.typtype IN ('d', 'e', 'c')
     AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
  UNION ALL
  SELECT 'policy ' || p.polrelid::regclass::text || ' ' || p.polname || ' ' || p.polcmd::text || ' ' ||
         coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
    FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = (SELECT oid FROM engage)
  UNION ALL
  SELECT 'rls ' || c.relname || ' ' || c.relrowsecurity || ' ' || c.relforcerowsecurity
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM engage) AND c.relkind = 'r'
)
SELECT * FROM lines AS l(line) ORDER BY 1
"#;

fn catalog(client: &mut Client) -> Vec<String> {
    client
        .query(CATALOG, &[])
        .unwrap_or_else(|e| panic!("catalog: {}", error_text(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_0_1_0_database_updates_to_the_catalog_of_a_fresh_install_and_keeps_its_data_and_queue() {
    let receiver = HttpReceiver::new();
    let cluster = Cluster::start_with(
        "upgrade",
        &[
            ("engage.database", "'updated'"),
            ("engage.poll_interval", "'200ms'"),
            ("engage.allowed_hosts", "'127.0.0.1'"),
        ],
    );
    let mut admin = cluster.connect("postgres");
    for db in ["updated", "fresh"] {
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }

    // The previous release, with a configured channel, triggers, profiles, and messages queued.
    let mut old = cluster.connect("updated");
    old.batch_execute("CREATE EXTENSION pg_engage VERSION '0.1.0'").unwrap_or_else(|e| {
        panic!("0.1.0 must be installed (scripts/test.sh copies sql/versions/): {}", error_text(&e))
    });
    old.execute(
        "INSERT INTO engage.channels (kind, config, max_attempts) VALUES ('webhook', jsonb_build_object('url', $1::text), 3)",
        &[&receiver.url("/upgrade")],
    )
    .unwrap();
    create_trigger(
        &mut old,
        "hook",
        json!({"event": "order", "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}),
    );
    create_trigger(
        &mut old,
        "drip",
        json!({"event": "signed_up", "steps": [{"action": {"channel": "webhook"}}, {"wait": "30d", "action": {"channel": "webhook"}}]}),
    );
    identify(&mut old, "a", json!({"timezone": "Asia/Tokyo", "birthday": "1990-03-10"}));
    for (customer, name) in [("a", "order"), ("b", "order"), ("a", "order"), ("c", "signed_up")] {
        insert_event(&mut old, customer, name, json!({}));
    }
    // A sent message with a response and a purchase, as a restore would write them, rolled up.
    create_trigger(
        &mut old,
        "measured",
        json!({"event": "browsed", "action": {"channel": "webhook"}, "goal": {"event": "purchase", "within": "1d"}}),
    );
    old.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
             ('m', 'browsed', '{}', '2026-01-01 10:00+00'), ('m', 'purchase', '{}', '2026-01-01 11:00+00');
         INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, decided_at, outcome)
         SELECT e.id, t.id, 1, 'm', e.occurred_at, e.occurred_at, 'fired'
           FROM engage.events e, engage.triggers t WHERE e.name = 'browsed' AND t.name = 'measured';
         INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, due_at, scheduled_at, status, sent_at, created_at)
         SELECT event_id, trigger_id, 'm', 'webhook', occurred_at, occurred_at, 'sent', occurred_at + interval '2 s', decided_at
           FROM engage.decisions WHERE customer_id = 'm';
         INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, queued_at, sent_at, attempts, cost)
         SELECT id, event_id, trigger_id, 'm', 'webhook', created_at, sent_at, 1, 0.25 FROM engage.outbox WHERE customer_id = 'm';
         INSERT INTO engage.events (customer_id, name, properties, occurred_at)
         SELECT 'm', 'message_opened', jsonb_build_object('message_id', 'msg_' || id), sent_at + interval '1 minute'
           FROM engage.outbox WHERE customer_id = 'm';
         SET session_replication_role = origin;
         SELECT engage.rebuild_metrics();",
    )
    .unwrap();
    let figures = |c: &mut Client| {
        [
            "SELECT string_agg(concat_ws('/', trigger, channel, sent, opened, open_rate), ' ') FROM engage.trigger_response_rates",
            "SELECT string_agg(concat_ws('/', trigger, messages, recipients, cost, attributed_revenue), ' ') FROM engage.trigger_roi",
            "SELECT string_agg(concat_ws('/', model, trigger, conversions), ' ' ORDER BY model) FROM engage.trigger_revenue",
            "SELECT string_agg(concat_ws('/', trigger, channel, messages), ' ') FROM engage.trigger_latency_in('-infinity')",
        ]
        .map(|sql| c.query_one(sql, &[]).unwrap().get::<_, Option<String>>(0).unwrap_or_default())
    };
    let measured = figures(&mut old);
    assert_eq!(
        measured,
        [
            "measured/webhook/1/1/1.0000",
            "measured/1/1/0.250000/0.000000",
            "first_touch/measured/1 last_touch/measured/1 linear/measured/1",
            "measured/webhook/1"
        ],
        "the metrics at 0.1.0"
    );
    let facts = |c: &mut Client| {
        [
            "SELECT count(*) FROM engage.events",
            "SELECT count(*) FROM engage.decisions WHERE outcome = 'fired'",
            "SELECT count(*) FROM engage.decisions WHERE reason = 'cap'",
            "SELECT count(*) FROM engage.outbox WHERE status = 'pending'",
            "SELECT count(*) FROM engage.profiles",
            "SELECT count(*) FROM engage.triggers",
        ]
        .map(|sql| count(c, sql))
    };
    let before = facts(&mut old);
    assert_eq!(before, [7, 4, 1, 4, 1, 3], "events, fired, capped, pending, profiles, triggers at 0.1.0");

    old.batch_execute("ALTER EXTENSION pg_engage UPDATE").unwrap_or_else(|e| panic!("UPDATE: {}", error_text(&e)));
    let mut fresh = cluster.connect("fresh");
    fresh.batch_execute("CREATE EXTENSION pg_engage").unwrap();
    let (updated, installed) = (catalog(&mut old), catalog(&mut fresh));
    assert!(
        updated.iter().any(|l| l.starts_with("function engage.known_time_zones")),
        "the check sees this release's objects"
    );
    let only_updated: Vec<&String> = updated.iter().filter(|l| !installed.contains(l)).collect();
    let only_installed: Vec<&String> = installed.iter().filter(|l| !updated.contains(l)).collect();
    assert!(
        only_updated.is_empty() && only_installed.is_empty(),
        "the updated catalog differs from a fresh install:\nonly after the update: {only_updated:#?}\nonly in a fresh install: {only_installed:#?}"
    );
    assert_eq!(updated, installed);

    // The data is all there, the metrics read the same from the running totals the update built
    // out of the rollups, the insert path decides with the data (the cap still counts a's
    // order), and this release's calendar pass runs on the updated tables.
    assert_eq!(facts(&mut old), before);
    assert_eq!(figures(&mut old), measured, "the metrics after the update");
    insert_event(&mut old, "a", "order", json!({}));
    assert_eq!(count(&mut old, "SELECT count(*) FROM engage.decisions WHERE reason = 'cap'"), 2);
    create_trigger(
        &mut old,
        "birthday",
        json!({"anniversary": {"date": "birthday"}, "action": {"channel": "webhook"}}),
    );
    old.batch_execute("UPDATE engage.triggers SET created_at = '2026-03-01' WHERE name = 'birthday'").unwrap();
    assert_eq!(
        count(&mut old, "SELECT sum(fired)::int8 FROM engage.tick('2026-03-10 00:00+00', ahead_of_now => true)"),
        1
    );

    // The deliverer of this release sends what 0.1.0 queued (the journey's second step is due in
    // 30 days and stays pending), each once.
    old.batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_engage'").unwrap();
    drop(old);
    drop(fresh);
    drop(admin);
    cluster.restart();
    let mut c = reconnect(&cluster, "updated", Duration::from_secs(30));
    wait_for_worker(&cluster, &mut c, None);
    let requests = receiver.wait_for_requests(4, Duration::from_secs(20), &cluster);
    let mut sent: Vec<String> =
        requests.iter().map(|r| r.json()["customer_id"].as_str().unwrap_or("").to_string()).collect();
    sent.sort();
    assert_eq!(sent, ["a", "a", "b", "c"], "a's order, b's order, c's first step, a's birthday");
    // (m's outbox row, sent in January, is past engage.keep_closed_messages: purged.)
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'sent'"), 4);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'pending'"), 1);
}
