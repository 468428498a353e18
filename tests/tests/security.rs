//! Hostile roles against the extension's trust boundaries.
//!
//! search_path: a non-superuser who may create objects in `public` defines overloads of the
//! functions the insert path, the workers and the metrics use (`unnest(text[])`,
//! `cardinality(text[])`, `now()`, `hashtext(text)`, `format(text, text)`, `lower(text)`), each
//! recording that it ran, as whom. The database's own search_path puts `public` first. Then
//! events are inserted and decided, the scheduler ticks, the deliverer claims, sends, fails and
//! completes, and an analyst reads the views: none of the overloads ever runs, and the role is
//! still not a superuser.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::time::Duration;

#[test]
fn overloads_in_public_never_run_inside_the_extension() {
    let db = "sec_search_path";
    let (cluster, mut c) = start_deliverer(db, &[("engage.tick_interval", "1")]);
    let receiver = HttpReceiver::scripted(vec![Reply::status(503)], Reply::status(200));
    c.batch_execute(&format!(
        "CREATE ROLE hostile LOGIN NOSUPERUSER;
         GRANT CREATE, USAGE ON SCHEMA public TO hostile;
         CREATE TABLE public.hijacked (who text, what text);
         GRANT INSERT ON public.hijacked TO PUBLIC;
         ALTER DATABASE {db} SET search_path = public, pg_catalog;"
    ))
    .unwrap();
    let mut hostile = cluster.connect(db);
    hostile
        .batch_execute(
            r#"SET ROLE hostile;
            CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'unnest'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
            CREATE FUNCTION public.cardinality(a text[]) RETURNS integer LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'cardinality'); RETURN pg_catalog.cardinality(a); END $$;
            CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'now'); RETURN pg_catalog.now(); END $$;
            CREATE FUNCTION public.hashtext(a text) RETURNS integer LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'hashtext'); RETURN pg_catalog.hashtext(a); END $$;
            CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'format'); RETURN pg_catalog.format(f, a); END $$;
            CREATE FUNCTION public.lower(a text) RETURNS text LANGUAGE plpgsql AS $$
              BEGIN INSERT INTO public.hijacked VALUES (current_user, 'lower'); RETURN pg_catalog.lower(a); END $$;"#,
        )
        .unwrap();
    drop(hostile);
    // The workers start again, in sessions whose search_path puts public first too.
    drop(c);
    cluster.restart();
    let mut probe = cluster.connect(db);
    wait_for_worker(&cluster, &mut probe, None);
    // The hostile functions do run where a name resolves in public: the trap is armed.
    probe.batch_execute("SELECT now()").unwrap();
    assert_eq!(count(&mut probe, "SELECT count(*) FROM public.hijacked WHERE what = 'now'"), 1);
    probe.batch_execute("DELETE FROM public.hijacked").unwrap();

    // Sessions opened from now on have public first in their search_path.
    let mut app = cluster.connect(db);
    let path: String = app.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert_eq!(path, "public, pg_catalog");
    app.execute(
        "INSERT INTO engage.channels (kind, config, max_attempts, backoff_base) VALUES ('webhook', jsonb_build_object('url', $1::text), 5, '1 second')",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    create_trigger(
        &mut app,
        "cart",
        json!({"event": "cart_updated", "wait": "1s", "cancel_on": [{"event": "purchase", "same": ["cart"]}],
               "action": {"channel": "webhook"}, "cap": {"max": 5, "per": "1h"}}),
    );
    create_trigger(
        &mut app,
        "winback",
        json!({"inactive": {"event": "purchase", "for": "1d"}, "backfill": true, "action": {"channel": "webhook"}}),
    );
    // (The app's own statements are the app's business: this one says pg_catalog.now().)
    app.batch_execute(
        "SELECT engage.identify('c1', '{\"email\": \"a@example.com\", \"timezone\": \"Europe/Berlin\"}');
         SELECT engage.unsubscribe('c2', 'SMS');
         INSERT INTO engage.events (customer_id, name, properties) VALUES ('c1', 'cart_updated', '{\"cart\": \"k1\"}');
         INSERT INTO engage.events (customer_id, name, properties, idempotency_key)
              VALUES ('c2', 'cart_updated', '{\"cart\": \"k2\"}', 'key-1'), ('c2', 'purchase', '{\"cart\": \"k2\"}', 'key-2');
         INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c3', 'purchase', pg_catalog.now() - interval '2 days');
         SELECT engage.ingest_provider_event('generic', '{\"message_id\": \"msg_1\", \"event\": \"open\"}');",
    )
    .unwrap();
    // The deliverer sends c1's message (after one 503 and a retry) and the scheduler's winback.
    let requests = receiver.wait_for_requests(3, Duration::from_secs(30), &cluster);
    assert!(requests.len() >= 3);
    app.batch_execute(
        "SELECT * FROM engage.trigger_volume; SELECT * FROM engage.trigger_response_rates;
         SELECT * FROM engage.tick(); SELECT engage.refresh_metrics();",
    )
    .unwrap();

    let ran: Vec<(String, String)> = probe
        .query("SELECT who, what FROM public.hijacked", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ran, vec![], "an overload in public ran inside the extension");
    let superuser: bool =
        probe.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile'", &[]).unwrap().get(0);
    assert!(!superuser);
    // Every function of the extension pins its search_path, but the three inlined ones.
    let unpinned: Vec<String> = probe
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'engage'::regnamespace
                AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        unpinned,
        vec![
            "engage.json_number(jsonb,text[])".to_string(),
            "engage.latency_bucket(double precision)".to_string(),
            "engage.latency_bucket_value(integer)".to_string(),
            "engage.latency_measures(timestamp with time zone,timestamp with time zone,timestamp with time zone,timestamp with time zone,timestamp with time zone)".to_string(),
            "engage.profile_date(text,integer)".to_string()
        ]
    );
}

/// The views an analyst reads.
const VIEWS: [&str; 22] = [
    "trigger_goals",
    "trigger_volume",
    "trigger_volume_daily",
    "trigger_fire_rate",
    "current_messages",
    "current_touches",
    "current_exposures",
    "marked_rollups",
    "current_message_totals",
    "current_touch_totals",
    "current_exposure_totals",
    "current_volume_counts",
    "message_responses",
    "trigger_response_rates",
    "attributed_conversions",
    "trigger_revenue",
    "trigger_exposures",
    "holdout_uplift",
    "variant_results",
    "trigger_latency",
    "trigger_roi",
    "customer_predictions",
];

#[track_caller]
fn denied(c: &mut Client, who: &str, sql: &str) {
    let result = c.batch_execute(sql);
    let err = result.err().unwrap_or_else(|| panic!("{who} may not: {sql}"));
    let code = err.as_db_error().map(|d| d.code().code().to_string());
    assert_eq!(code.as_deref(), Some("42501"), "{who}: {sql}: {}", error_text(&err));
}

#[track_caller]
fn allowed(c: &mut Client, who: &str, sql: &str) {
    if let Err(e) = c.batch_execute(sql) {
        panic!("{who} may: {sql}: {}", error_text(&e));
    }
}

/// A database with a trigger, a webhook channel with a secret, and one event decided; returns
/// the owner's session.
fn roles_db(db: &str) -> Client {
    let mut owner = shared().create_db(db);
    create_trigger(&mut owner, "welcome", json!({"event": "signed_up", "action": {"channel": "webhook"}}));
    owner
        .batch_execute(
            "INSERT INTO engage.channels (kind, config) VALUES ('webhook', '{\"url\": \"https://hooks.example/x\"}');
             INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('webhook', '{\"signing_secret\": \"s3cr3t\"}');
             SELECT engage.identify('c0', '{\"email\": \"c0@example.com\"}');
             INSERT INTO engage.events (customer_id, name) VALUES ('c0', 'signed_up');",
        )
        .unwrap();
    owner
}

#[test]
fn the_writer_inserts_events_and_reads_nothing() {
    let db = "sec_writer";
    let mut owner = roles_db(db);
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    let id = insert_event(&mut app, "c1", "signed_up", json!({"plan": "pro"}));
    assert_eq!(decisions_for(&mut owner, id), vec![fired("welcome")], "decided with the owner's rights");
    allowed(
        &mut app,
        "writer",
        "SELECT engage.track('c2', 'signed_up');
         SELECT engage.identify('c2', '{\"email\": \"c2@example.com\"}');
         SELECT engage.unsubscribe('c2', 'sms'); SELECT engage.subscribe('c2', 'sms');
         INSERT INTO engage.events (customer_id, name) SELECT 'b' || i, 'signed_up' FROM generate_series(1, 50) i;",
    );
    let mut copy = app.copy_in("COPY engage.events (customer_id, name) FROM STDIN").unwrap();
    std::io::Write::write_all(&mut copy, b"k1\tsigned_up\nk2\tsigned_up\n").unwrap();
    copy.finish().unwrap();
    assert_eq!(count(&mut owner, "SELECT count(*) FROM engage.decisions WHERE outcome = 'fired'"), 55);
    for sql in [
        "SELECT customer_id FROM engage.events",
        "SELECT * FROM engage.profiles",
        "SELECT * FROM engage.decisions",
        "SELECT * FROM engage.outbox",
        "SELECT * FROM engage.channels",
        "SELECT * FROM engage.channel_secrets",
        "SELECT * FROM engage.trigger_volume",
        "INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, due_at, scheduled_at, category)
              VALUES (1, 1, 'c9', 'webhook', now(), now(), 'escalation')",
        "INSERT INTO engage.decisions (event_id, trigger_id, customer_id, occurred_at, outcome) VALUES (1, 1, 'c9', now(), 'fired')",
        "SELECT * FROM engage.claim(10, '1 minute', 'x')",
        "SELECT engage.create_trigger('mine', '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT * FROM engage.tick()",
        "SET engage.conflict_window = 0",
    ] {
        denied(&mut app, "writer", sql);
    }
}

#[test]
fn an_app_cannot_switch_conflicts_off_for_its_own_inserts() {
    let db = "sec_conflict_window";
    let mut owner = roles_db(db);
    create_trigger(&mut owner, "low", json!({"event": "visit", "priority": 1, "action": {"channel": "webhook"}}));
    create_trigger(&mut owner, "high", json!({"event": "visit", "priority": 9, "action": {"channel": "webhook"}}));
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    // Before the library is loaded in this session the setting is a placeholder; the library
    // refuses the app's value when it defines the setting.
    let _ = app.batch_execute("SET engage.conflict_window = 0");
    let id = insert_event(&mut app, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut owner, id), vec![suppressed("low", "conflict"), fired("high")]);
    denied(&mut app, "writer", "SET engage.conflict_window = 0");
    denied(&mut app, "writer", &format!("ALTER ROLE {db}_app SET engage.conflict_window = 0"));
    // engage_admin may set it.
    let mut admin = connect_as_member(shared(), db, "admin", &["engage_admin"]);
    allowed(&mut admin, "admin", "SET engage.conflict_window = '1min'");
}

#[test]
fn the_analyst_reads_every_view_and_no_base_table() {
    let db = "sec_analyst";
    let _owner = roles_db(db);
    let mut analyst = connect_as_member(shared(), db, "analyst", &["engage_analyst"]);
    for view in VIEWS {
        allowed(&mut analyst, "analyst", &format!("SELECT * FROM engage.{view}"));
    }
    allowed(&mut analyst, "analyst", "SELECT * FROM engage.decisions; SELECT name FROM engage.triggers");
    for sql in [
        "SELECT * FROM engage.events",
        "SELECT * FROM engage.profiles",
        "SELECT * FROM engage.outbox",
        "SELECT * FROM engage.channel_secrets",
        "SELECT * FROM engage.channels",
        "INSERT INTO engage.events (customer_id, name) VALUES ('x', 'signed_up')",
        "SELECT engage.create_trigger('mine', '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT * FROM engage.claim(10, '1 minute', 'x')",
    ] {
        denied(&mut analyst, "analyst", sql);
    }
}

#[test]
fn the_admin_manages_definitions_and_writes_secrets_it_cannot_read() {
    let db = "sec_admin";
    let mut owner = roles_db(db);
    let mut admin = connect_as_member(shared(), db, "admin", &["engage_admin"]);
    allowed(
        &mut admin,
        "admin",
        "SELECT engage.create_trigger('promo', '{\"event\": \"visit\", \"action\": {\"channel\": \"email\", \"template\": \"promo\"}}');
         SELECT engage.update_trigger('promo', '{\"event\": \"visit\", \"action\": {\"channel\": \"email\", \"template\": \"promo2\"}}');
         SELECT engage.disable_trigger('promo'); SELECT engage.enable_trigger('promo');
         INSERT INTO engage.channels (kind, config) VALUES ('email', '{\"host\": \"127.0.0.1\", \"port\": 25, \"from\": \"a@b.c\"}');
         INSERT INTO engage.templates (name, channel, body) VALUES ('promo2', 'email', 'Hi {{ profile.first_name }}');
         INSERT INTO engage.frequency_caps (channel, max_messages, per) VALUES (NULL, 3, '1 day');
         INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('c0', 'all', 'manual');
         INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('email', '{\"password\": \"pw\"}');
         UPDATE engage.channel_secrets SET secrets = '{\"signing_secret\": \"rotated\"}' WHERE kind = 'webhook';
         SELECT * FROM engage.tick(); SELECT engage.refresh_metrics();
         SELECT * FROM engage.dead_letters; SELECT * FROM engage.trigger_volume; SELECT count(*) FROM engage.outbox;
         SET engage.conflict_window = '5min';",
    );
    let rotated: Value =
        owner.query_one("SELECT secrets FROM engage.channel_secrets WHERE kind = 'webhook'", &[]).unwrap().get(0);
    assert_eq!(rotated, json!({"signing_secret": "rotated"}));
    for sql in [
        "SELECT secrets FROM engage.channel_secrets",
        "UPDATE engage.channel_secrets SET secrets = secrets WHERE kind = 'webhook' RETURNING secrets",
        "SELECT * FROM engage.claim(10, '1 minute', 'x')",
        "INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, due_at, scheduled_at) VALUES (1, 1, 'c', 'webhook', now(), now())",
    ] {
        denied(&mut admin, "admin", sql);
    }
}

#[test]
fn the_worker_runs_the_delivery_contract_and_nothing_else() {
    let db = "sec_worker";
    let mut owner = roles_db(db);
    let mut worker = connect_as_member(shared(), db, "worker", &["engage_worker"]);
    let claimed = worker.query("SELECT id, lease FROM engage.claim(10, '1 minute', 'external')", &[]).unwrap();
    assert_eq!(claimed.len(), 1);
    let (id, lease): (i64, i64) = (claimed[0].get(0), claimed[0].get(1));
    let done: bool = worker.query_one("SELECT engage.complete($1, $2, 'p-1')", &[&id, &lease]).unwrap().get(0);
    assert!(done);
    assert_eq!(count(&mut owner, "SELECT count(*) FROM engage.messages"), 1);
    for sql in [
        "SELECT * FROM engage.events",
        "SELECT * FROM engage.profiles",
        "SELECT * FROM engage.channel_secrets",
        "SELECT * FROM engage.outbox",
        "INSERT INTO engage.events (customer_id, name) VALUES ('x', 'signed_up')",
        "SELECT engage.redrive(1)",
        "SELECT engage.create_trigger('mine', '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
    ] {
        denied(&mut worker, "worker", sql);
    }
}

/// Event names and idempotency keys beginning with "trigger:" belong to the scheduler: an app can
/// neither fire a scheduled trigger with a forged event nor pre-empt or probe an occasion's key.
#[test]
fn apps_cannot_forge_the_schedulers_events_or_keys() {
    let db = "sec_reserved";
    let mut owner = roles_db(db);
    create_trigger(
        &mut owner,
        "winback",
        json!({"inactive": {"event": "purchase", "for": "1d"}, "backfill": true, "action": {"channel": "webhook"}}),
    );
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    for sql in [
        "INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'trigger:winback')",
        "INSERT INTO engage.events (customer_id, name, idempotency_key) VALUES ('c1', 'purchase', 'trigger:1:c1:1')",
        "SELECT engage.track('c1', 'trigger:winback')",
        "SELECT engage.track('c1', 'purchase', '{}', now(), 'trigger:7:c1:9')",
    ] {
        let err = app.batch_execute(sql).unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db_err.code().code(), "42501", "{sql}: {}", error_text(&err));
        assert!(
            db_err.message().contains("reserved") && db_err.message().contains("\"trigger:\""),
            "{}",
            db_err.message()
        );
    }
    let mut copy = app.copy_in("COPY engage.events (customer_id, name) FROM STDIN").unwrap();
    std::io::Write::write_all(&mut copy, b"c1\tpurchase\nc1\ttrigger:winback\n").unwrap();
    let err = copy.finish().unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"), "{}", error_text(&err));
    assert_eq!(count(&mut owner, "SELECT count(*) FROM engage.decisions WHERE trigger_id = (SELECT id FROM engage.triggers WHERE name = 'winback')"), 0);
    // The scheduler itself still fires it, through its own events and keys.
    owner.batch_execute("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'purchase', now() - interval '2 days')").unwrap();
    assert_eq!(count(&mut owner, "SELECT sum(fired)::int8 FROM engage.tick()"), 1);
}

/// No role can stall the scheduler or push its progress past now by accident.
#[test]
fn the_scheduler_cannot_be_stalled_or_pushed_into_the_future() {
    let db = "sec_tick";
    let mut owner = roles_db(db);
    create_trigger(
        &mut owner,
        "winback",
        json!({"inactive": {"event": "purchase", "for": "1d"}, "backfill": true, "action": {"channel": "webhook"}}),
    );
    // A role holding the advisory lock the scheduler used to take stalls nothing any more, and it
    // cannot lock the scheduler's own row.
    let mut hostile = connect_as_member(shared(), db, "hostile", &[]);
    hostile.batch_execute("SELECT pg_advisory_lock(hashtext('engage.tick'))").unwrap();
    denied(&mut hostile, "a role without grants", "BEGIN; SELECT FROM engage.locks FOR UPDATE");
    hostile.batch_execute("ROLLBACK").unwrap();
    let mut app = connect_as_member(shared(), db, "app", &["engage_writer", "engage_analyst", "engage_worker"]);
    denied(&mut app, "writer, analyst and worker", "BEGIN; SELECT FROM engage.locks FOR UPDATE");
    app.batch_execute("ROLLBACK").unwrap();
    owner.batch_execute("SET statement_timeout = '10s'").unwrap();
    assert_eq!(
        count(&mut owner, "SELECT count(*) FROM engage.tick()"),
        1,
        "the tick ran while the advisory lock was held"
    );

    // A moment far ahead is refused unless meant; the progress can be moved back.
    let mut admin = connect_as_member(shared(), db, "admin", &["engage_admin"]);
    let err = admin.query("SELECT * FROM engage.tick('2100-01-01')", &[]).unwrap_err();
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "22023", "{}", error_text(&err));
    assert!(db_err.message().contains("ahead of now"), "{}", db_err.message());
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM engage.tick_progress WHERE ticked_until > now() + interval '1 day'"),
        0
    );
    admin.batch_execute("SELECT * FROM engage.tick('2100-01-01', ahead_of_now => true)").unwrap();
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.tick_progress WHERE ticked_until = '2100-01-01'"), 1);
    let moved: bool = admin.query_one("SELECT engage.set_tick_progress('winback', now())", &[]).unwrap().get(0);
    assert!(moved);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM engage.tick_progress WHERE ticked_until <= now()"), 1);
}

/// Secrets are bound to where the channel sent when they were written: an admin (who may change
/// channels and write secrets, not read them) who points a provider's base_url at a server of
/// their own gets nothing sent there, not even by re-saving the row; only secrets they write
/// themselves go to the new place.
#[test]
fn pointing_a_provider_elsewhere_does_not_send_its_credentials_there() {
    let db = "sec_redirect";
    let (cluster, mut owner) = start_deliverer(db, &[]);
    let provider = HttpReceiver::new();
    let attacker = HttpReceiver::new();
    owner
        .execute(
            "INSERT INTO engage.channels (kind, config, max_attempts) \
             VALUES ('whatsapp', jsonb_build_object('base_url', $1::text, 'phone_number_id', '1000'), 1)",
            &[&provider.url("")],
        )
        .unwrap();
    owner
        .batch_execute(
            "INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('whatsapp', '{\"access_token\": \"owners-token\"}');
             INSERT INTO engage.templates (name, channel, body) VALUES ('hi', 'whatsapp', 'Hi');",
        )
        .unwrap();
    create_trigger(
        &mut owner,
        "hi",
        json!({"event": "ping", "category": "transactional", "action": {"channel": "whatsapp", "template": "hi"}}),
    );
    let send = |c: &mut Client, customer: &str| -> Outbox {
        identify(c, customer, json!({"phone": "+15550000001"}));
        insert_event(c, customer, "ping", json!({}));
        let queued = outbox(c).len();
        wait_settled(&cluster, c, queued, Duration::from_secs(20))
            .into_iter()
            .find(|o| o.customer_id == customer)
            .unwrap()
    };
    assert_eq!(send(&mut owner, "c1").status, "sent");
    assert_eq!(provider.requests()[0].header("authorization"), Some("Bearer owners-token"));

    let mut admin = connect_as_member(&cluster, db, "admin", &["engage_admin"]);
    allowed(
        &mut admin,
        "admin",
        &format!(
            "UPDATE engage.channels SET config = jsonb_set(config, '{{base_url}}', to_jsonb('{}'::text)) WHERE kind = 'whatsapp'",
            attacker.url("")
        ),
    );
    // The binding moves only with secrets written anew.
    denied(&mut admin, "admin", "UPDATE engage.channel_secrets SET kind = kind WHERE kind = 'whatsapp'");
    denied(&mut admin, "admin", "UPDATE engage.channel_secrets SET destination = NULL WHERE kind = 'whatsapp'");
    let stopped = send(&mut owner, "c2");
    assert_eq!(stopped.status, "dead");
    assert!(stopped.last_error.as_deref().is_some_and(|e| e.contains("points elsewhere")), "{:?}", stopped.last_error);
    assert!(attacker.requests().is_empty(), "the token went to the new base_url");

    // Secrets the admin writes (and so knows) do go there.
    allowed(
        &mut admin,
        "admin",
        "UPDATE engage.channel_secrets SET secrets = '{\"access_token\": \"admins-token\"}' WHERE kind = 'whatsapp'",
    );
    assert_eq!(send(&mut owner, "c3").status, "sent");
    let requests = attacker.requests();
    let seen: Vec<Option<&str>> = requests.iter().map(|r| r.header("authorization")).collect();
    assert_eq!(seen, [Some("Bearer admins-token")], "only the admin's own token went there");
}
