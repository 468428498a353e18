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
    let superuser: bool = probe.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile'", &[]).unwrap().get(0);
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
            "engage.json_path(text)".to_string(),
            "engage.profile_date(text,integer)".to_string()
        ]
    );
}
