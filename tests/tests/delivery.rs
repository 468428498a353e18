//! Delivery, end to end: the built-in deliverer (a background worker, so every test but the
//! SQL-only ones starts its own cluster with `shared_preload_libraries = 'pg_engage'`) sends
//! queued messages to real receivers on 127.0.0.1 started by the test:
//!
//! * an HTTP receiver (`tiny_http`, see `pg_engage_it::delivery::HttpReceiver`) that records each
//!   request and answers with a scripted status, optionally after a delay;
//! * an SMTP receiver: the `mailin-embedded` crate, a real SMTP server (no STARTTLS).
//!
//! Covered: a signed, rendered webhook and its sent log; email over SMTP with Message-ID and
//! List-Unsubscribe; retries with exponential backoff for 5xx and timeouts; a 4xx going dead,
//! visible in engage.dead_letters, and redriven; no address / no consent falling through to the
//! fallback channel or going dead; SIGKILL of the worker mid-batch (at-least-once, same
//! webhook-id on duplicates); a server restart with pending rows; a rolled-back event sending
//! nothing; the external-deliverer SQL API (claim / complete / fail / redrive); and the commit
//! waking the worker well before its poll interval. Also: a retrying message keeps the
//! customer's later messages waiting, rate_limit_per_second within and across batches, and
//! engage.worker_status() after the worker exits on an error.

use pg_engage_it::delivery::*;
use pg_engage_it::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// The lease of the tests that check that nothing is sent twice (`past_every_lease`): long
/// enough for any batch of theirs, short enough to wait out.
const LEASE: Duration = Duration::from_secs(3);
const LEASE_SETTING: &str = "'3s'";

/// Configures the webhook channel: its URL, a signing secret, and the retry policy columns.
fn webhook_channel(c: &mut Client, url: &str, secret: &str, max_attempts: i32, backoff_base: &str) {
    c.execute(
        "INSERT INTO engage.channels (kind, config, max_attempts, backoff_base, cost_per_message) \
         VALUES ('webhook', jsonb_build_object('url', $1::text), $2, $3::text::interval, 0.25)",
        &[&url, &max_attempts, &backoff_base],
    )
    .unwrap_or_else(|e| panic!("configure webhook: {}", error_text(&e)));
    c.execute(
        "INSERT INTO engage.channel_secrets (kind, secrets) \
         VALUES ('webhook', jsonb_build_object('signing_secret', $1::text))",
        &[&secret],
    )
    .unwrap_or_else(|e| panic!("webhook secret: {}", error_text(&e)));
}

fn template(c: &mut Client, name: &str, channel: &str, subject: Option<&str>, body: &str, html: Option<&str>) {
    c.execute(
        "INSERT INTO engage.templates (name, channel, subject, body, html) VALUES ($1, $2, $3, $4, $5)",
        &[&name, &channel, &subject, &body, &html],
    )
    .unwrap_or_else(|e| panic!("template {name}/{channel}: {}", error_text(&e)));
}

/// The outbox id of the (single) message queued for event `event_id`.
fn outbox_id_of(c: &mut Client, event_id: i64) -> i64 {
    c.query_one("SELECT id FROM engage.outbox WHERE event_id = $1", &[&event_id])
        .unwrap_or_else(|e| panic!("outbox row of event {event_id}: {}", error_text(&e)))
        .get(0)
}

/// (running, pid, sent, failed, last_batch_at is set) from engage.worker_status().
fn worker_status(c: &mut Client) -> (bool, Option<i32>, i64, i64, bool) {
    let r = c
        .query_one("SELECT running, pid, sent, failed, last_batch_at IS NOT NULL FROM engage.worker_status()", &[])
        .unwrap_or_else(|e| panic!("worker_status(): {}", error_text(&e)));
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// 1. webhook
// ---------------------------------------------------------------------------------------------

#[test]
fn webhook_is_signed_rendered_and_logged() {
    let (cluster, mut c) = start_deliverer("dlv_webhook", &[("engage.lease", LEASE_SETTING)]);
    let receiver = HttpReceiver::new();
    let secret = signing_secret(b"pg_engage integration test key!!");
    webhook_channel(&mut c, &receiver.url("/hooks/engage"), &secret, 8, "10 seconds");
    template(
        &mut c,
        "purchase_note",
        "webhook",
        Some("Thanks {{ profile.first_name }}"),
        "{{ profile.first_name }} ({{ profile.customer_id }}) bought {{ event.properties.item }} via {{ event.name }}, code {{ payload.coupon }}, ref {{ message.id }}",
        None,
    );
    create_trigger(
        &mut c,
        "purchase_hook",
        json!({"event": "purchase", "action": {"channel": "webhook", "template": "purchase_note", "payload": {"coupon": "SAVE10"}}}),
    );
    identify(&mut c, "c1", json!({"first_name": "Ada", "plan": "pro"}));
    let event = insert_event(&mut c, "c1", "purchase", json!({"item": "lamp", "price": 30}));
    let id = outbox_id_of(&mut c, event);
    let msg = format!("msg_{id}");

    let requests = receiver.wait_for_requests(1, WAIT, &cluster);
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/engage");
    assert!(
        r.header("content-type").unwrap_or("").starts_with("application/json"),
        "content-type: {:?}",
        r.header("content-type")
    );
    assert_eq!(r.header("webhook-id"), Some(msg.as_str()), "webhook-id is msg_<outbox id>");
    let ts: i64 = r
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .expect("webhook-timestamp is integer seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - ts).abs() < 120, "webhook-timestamp {ts} is not now ({now})");
    verify_standard_webhook(&secret, r).unwrap_or_else(|e| panic!("signature does not verify: {e}\nrequest: {r:#?}"));
    // The verifier is not a rubber stamp: a changed body or another secret fails.
    let mut tampered = r.clone();
    tampered.body = tampered.body.replace("lamp", "lamb");
    assert!(verify_standard_webhook(&secret, &tampered).is_err(), "a tampered body must not verify");
    assert!(verify_standard_webhook(&signing_secret(b"another key"), r).is_err(), "another secret must not verify");

    let doc = r.json();
    assert_eq!(doc["id"], json!(msg));
    assert_eq!(doc["type"], json!("purchase_hook"), "type is the trigger name");
    assert_eq!(doc["customer_id"], json!("c1"));
    assert_eq!(doc["event"]["name"], json!("purchase"));
    assert_eq!(doc["event"]["properties"], json!({"item": "lamp", "price": 30}));
    assert!(doc["event"]["occurred_at"].as_str().is_some_and(|s| !s.is_empty()), "event.occurred_at: {doc}");
    assert_eq!(doc["payload"], json!({"coupon": "SAVE10"}));
    assert_eq!(
        doc["rendered"],
        json!({
            "subject": "Thanks Ada",
            "body": format!("Ada (c1) bought lamp via purchase, code SAVE10, ref {msg}")
        })
    );

    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.sent, row.last_error.as_deref()),
        ("sent", 1, true, None),
        "{row:?}"
    );
    assert_eq!(row.provider_message_id.as_deref(), Some(msg.as_str()));
    let logged = c
        .query(
            "SELECT event_id, customer_id, channel, template, attempts, provider_message_id, cost::float8, \
                    sent_at >= queued_at AND claimed_at >= queued_at \
               FROM engage.messages WHERE outbox_id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(logged.len(), 1, "one row in engage.messages");
    let l = &logged[0];
    assert_eq!(l.get::<_, i64>(0), event);
    assert_eq!(l.get::<_, String>(1), "c1");
    assert_eq!(l.get::<_, String>(2), "webhook");
    assert_eq!(l.get::<_, Option<String>>(3).as_deref(), Some("purchase_note"));
    assert_eq!(l.get::<_, i32>(4), 1);
    assert_eq!(l.get::<_, Option<String>>(5).as_deref(), Some(msg.as_str()));
    assert_eq!(l.get::<_, f64>(6), 0.25, "cost_per_message of the channel");
    assert!(l.get::<_, bool>(7), "timings are ordered");

    let (running, pid, sent, failed, last_batch) = worker_status(&mut c);
    assert!(running, "worker_status().running");
    let backend: String = c
        .query_one("SELECT backend_type FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .expect("worker_status().pid is a live backend")
        .get(0);
    assert_eq!(backend, "pg_engage deliverer");
    assert_eq!((sent, failed, last_batch), (1, 0, true), "worker_status counts the send");
    // Exactly one request: nothing is sent twice.
    past_every_lease(&cluster, &mut c, LEASE);
    assert_eq!(receiver.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. email over SMTP
// ---------------------------------------------------------------------------------------------

/// Hostile templates, saved by the admin role (they parse): each message fails dead with the
/// limit it went over, quickly, and the deliverer neither crashes nor stalls: an ordinary message
/// queued behind them goes out at once, from the same worker process.
#[test]
fn a_template_over_its_rendering_budget_fails_its_message_and_nothing_else() {
    let db = "dlv_template_budget";
    let (cluster, mut c) = start_deliverer(db, &[]);
    let receiver = HttpReceiver::new();
    let secret = signing_secret(b"template budget key");
    webhook_channel(&mut c, &receiver.url("/hook"), &secret, 8, "1 second");
    let pid = wait_for_worker(&cluster, &mut c, None);
    let mut admin = connect_as_member(&cluster, db, "admin", &["engage_admin"]);
    let hostile = [
        ("doubling", r#"{% assign s = "xx" %}{% for i in (1..60) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}"#, "exceeds"),
        ("loops", "{% for a in (1..1000) %}{% for b in (1..1000) %}{% for c in (1..1000) %}{% endfor %}{% endfor %}{% endfor %}", "loop iterations"),
        ("capture", "{% capture s %}ab{% endcapture %}{% for i in (1..60) %}{% capture s %}{{ s }}{{ s }}{% endcapture %}{% endfor %}", "exceeds"),
    ];
    for (name, body, _) in hostile {
        admin
            .execute("INSERT INTO engage.templates (name, channel, body) VALUES ($1, 'webhook', $2)", &[&name, &body])
            .unwrap_or_else(|e| panic!("{name}: {}", error_text(&e)));
        create_trigger(
            &mut c,
            name,
            json!({"event": name, "category": "transactional", "action": {"channel": "webhook", "template": name}}),
        );
    }
    create_trigger(
        &mut c,
        "plain",
        json!({"event": "plain", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    let started = std::time::Instant::now();
    for (name, _, _) in hostile {
        insert_event(&mut c, &format!("c_{name}"), name, json!({}));
    }
    insert_event(&mut c, "c_plain", "plain", json!({}));
    let rows = wait_settled(&cluster, &mut c, hostile.len() + 1, WAIT);
    println!("all settled in {:?}", started.elapsed());
    for (name, _, limit) in hostile {
        let row = rows.iter().find(|o| o.customer_id == format!("c_{name}")).unwrap();
        assert_eq!(row.status, "dead", "{name}: {row:?}");
        assert!(row.last_error.as_deref().is_some_and(|e| e.contains(limit)), "{name}: {:?}", row.last_error);
    }
    assert_eq!(rows.iter().find(|o| o.customer_id == "c_plain").unwrap().status, "sent");
    assert!(started.elapsed() < Duration::from_secs(10), "rendering stalled delivery: {:?}", started.elapsed());
    assert_eq!(wait_for_worker(&cluster, &mut c, None), pid, "the deliverer restarted");
}

/// Email goes over STARTTLS by default: the relay password is sent only once the connection is
/// encrypted and the server's certificate verified; a server that cannot upgrade, or whose
/// certificate is not trusted, gets nothing, not even the password (the message ends dead with
/// the reason).
#[test]
fn email_goes_over_starttls_and_the_password_never_in_clear_text() {
    let (cluster, mut c) = start_deliverer("dlv_starttls", &[]);
    let tls = SmtpReceiver::with_starttls();
    let plain = SmtpReceiver::new();
    let certificate = tls.certificate.clone().unwrap();
    c.execute(
        "INSERT INTO engage.channels (kind, config, max_attempts) VALUES ('email', $1, 1)",
        &[&json!({"host": "127.0.0.1", "port": tls.port(), "from": "news@shop.example", "ca_certificate": certificate})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO engage.channel_secrets (kind, secrets) VALUES ('email', '{\"username\": \"relay\", \"password\": \"s3cret\"}')")
        .unwrap();
    template(&mut c, "hello", "email", Some("Hi"), "Hello {{ profile.name }}", None);
    create_trigger(
        &mut c,
        "hello",
        json!({"event": "signup", "category": "transactional", "action": {"channel": "email", "template": "hello"}}),
    );
    let send = |c: &mut Client, customer: &str| -> Outbox {
        identify(c, customer, json!({"name": customer, "email": format!("{customer}@example.com")}));
        insert_event(c, customer, "signup", json!({}));
        let queued = outbox(c).len();
        let rows = wait_settled(&cluster, c, queued, WAIT);
        rows.into_iter().find(|o| o.customer_id == customer).expect("its message")
    };

    let sent = send(&mut c, "tls");
    assert_eq!((sent.status.as_str(), sent.last_error.as_deref()), ("sent", None));
    assert_eq!(tls.mails().len(), 1);
    assert!(tls.mails()[0].data.contains("Hello tls"));
    assert_eq!(tls.logins(), [("relay".to_string(), "s3cret".to_string())], "AUTH after STARTTLS");

    // The same server, its certificate not trusted: nothing sent.
    c.execute("UPDATE engage.channels SET config = config - 'ca_certificate' WHERE kind = 'email'", &[]).unwrap();
    let untrusted = send(&mut c, "untrusted");
    assert_eq!(untrusted.status, "dead");
    assert!(untrusted.last_error.as_deref().is_some_and(|e| e.contains("certificate")), "{:?}", untrusted.last_error);

    // A server without STARTTLS: nothing sent, the password neither.
    c.execute("UPDATE engage.channels SET config = jsonb_build_object('host', '127.0.0.1', 'port', $1::int, 'from', 'news@shop.example') WHERE kind = 'email'", &[&i32::from(plain.port())])
        .unwrap();
    // (secrets go only where the channel sent when they were written: written again for this one)
    c.batch_execute(
        "UPDATE engage.channel_secrets SET secrets = '{\"username\": \"relay\", \"password\": \"s3cret\"}'",
    )
    .unwrap();
    let refused = send(&mut c, "plain");
    assert_eq!(refused.status, "dead");
    assert!(
        refused.last_error.as_deref().is_some_and(|e| e.to_lowercase().contains("tls")),
        "{:?}",
        refused.last_error
    );
    assert!(plain.mails().is_empty() && plain.logins().is_empty());

    // A bad setting says which.
    c.execute("UPDATE engage.channels SET config = config || '{\"tls\": \"ssl3\"}' WHERE kind = 'email'", &[]).unwrap();
    let bad = send(&mut c, "bad");
    assert!(bad.last_error.as_deref().is_some_and(|e| e.contains("config.tls")), "{:?}", bad.last_error);
    assert_eq!(tls.mails().len() + plain.mails().len(), 1);
}

#[test]
fn email_over_smtp_is_rendered_with_message_id_and_list_unsubscribe() {
    let (cluster, mut c) = start_deliverer("dlv_email", &[("engage.lease", LEASE_SETTING)]);
    let smtp = SmtpReceiver::new();
    c.execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('email', $1)",
        &[&json!({
            "host": "127.0.0.1",
            "port": smtp.port(),
            "tls": "none",
            "from": "Shop <news@shop.example>",
            "unsubscribe_url": "https://shop.example/unsubscribe/{message_id}"
        })],
    )
    .unwrap();
    template(
        &mut c,
        "receipt",
        "email",
        Some("Order {{ event.properties.order }} for {{ profile.first_name }}"),
        "Hello {{ profile.first_name }}, your {{ event.properties.item }} ships.\nCode {{ payload.coupon }}.",
        Some("<p>Hi {{ profile.first_name }}, code <b>{{ payload.coupon }}</b></p>"),
    );
    create_trigger(
        &mut c,
        "receipt",
        json!({"event": "order", "action": {"channel": "email", "template": "receipt", "payload": {"coupon": "WELCOME5"}}}),
    );
    identify(&mut c, "c1", json!({"email": "ada@example.com", "first_name": "Ada"}));
    let event = insert_event(&mut c, "c1", "order", json!({"order": "A-17", "item": "lamp"}));
    let id = outbox_id_of(&mut c, event);

    let mails = smtp.wait_for_mails(1, WAIT, &cluster);
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let m = &mails[0];
    assert_eq!(m.from, "news@shop.example", "envelope sender");
    assert_eq!(m.to, vec!["ada@example.com".to_string()], "envelope recipient");
    assert_eq!(m.header("Subject").as_deref(), Some("Order A-17 for Ada"), "{}", m.data);
    assert_eq!(
        m.header("Message-ID").as_deref(),
        Some(format!("<msg_{id}@shop.example>").as_str()),
        "Message-ID derives from the outbox id and the sender's domain\n{}",
        m.data
    );
    assert_eq!(
        m.header("List-Unsubscribe").as_deref(),
        Some(format!("<https://shop.example/unsubscribe/msg_{id}>").as_str()),
        "{}",
        m.data
    );
    assert_eq!(
        m.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click"),
        "RFC 8058\n{}",
        m.data
    );
    assert!(m.header("To").is_some_and(|t| t.contains("ada@example.com")), "{}", m.data);
    assert!(m.header("From").is_some_and(|t| t.contains("news@shop.example")), "{}", m.data);
    // Both parts, rendered from profile, event and payload.
    assert!(m.data.contains("Hello Ada, your lamp ships."), "text part:\n{}", m.data);
    assert!(m.data.contains("Code WELCOME5."), "text part:\n{}", m.data);
    assert!(m.data.contains("<p>Hi Ada, code <b>WELCOME5</b></p>"), "html part:\n{}", m.data);
    assert!(!m.data.contains("{{"), "no unrendered Liquid:\n{}", m.data);

    let row = &rows[0];
    assert_eq!((row.status.as_str(), row.attempts, row.channel.as_str()), ("sent", 1, "email"), "{row:?}");
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM engage.messages WHERE outbox_id = {id} AND channel = 'email'")),
        1
    );
    past_every_lease(&cluster, &mut c, LEASE);
    assert_eq!(smtp.mails().len(), 1, "sent once");
}

// ---------------------------------------------------------------------------------------------
// 3. retries with backoff
// ---------------------------------------------------------------------------------------------

#[test]
fn server_errors_and_timeouts_are_retried_with_growing_backoff_until_success() {
    // http_timeout 1 s; the fourth answer comes after 3 s, so that attempt times out.
    let (cluster, mut c) =
        start_deliverer("dlv_retry", &[("engage.http_timeout", "'1000ms'"), ("engage.lease", LEASE_SETTING)]);
    let answer_delay = Duration::from_millis(300);
    let receiver = HttpReceiver::scripted(
        vec![
            Reply::status(500).with_body("boom").after(answer_delay),
            Reply::status(503).with_body("busy").after(answer_delay),
            Reply::status(500).with_body("boom").after(answer_delay),
            Reply::status(200).after(Duration::from_secs(3)),
            Reply::status(200).after(answer_delay),
        ],
        Reply::status(200),
    );
    let secret = signing_secret(b"retry key");
    // Backoff after attempt n: 400 ms * 2^(n-1), times a random factor in [0.5, 1].
    webhook_channel(&mut c, &receiver.url("/retry"), &secret, 8, "400 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    let event = insert_event(&mut c, "c1", "e", json!({}));
    let id = outbox_id_of(&mut c, event);

    // While the second attempt is in flight, the first failure is recorded.
    receiver.wait_for_requests(2, WAIT, &cluster);
    let during: (String, i32, Option<String>) = {
        let r = c.query_one("SELECT status, attempts, last_error FROM engage.outbox WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((during.0.as_str(), during.1), ("claimed", 2), "{during:?}");
    assert!(
        during.2.as_deref().is_some_and(|e| e.contains("500") && e.contains("boom")),
        "last_error of the first attempt: {:?}",
        during.2
    );
    // While the fifth attempt is in flight, the timeout of the fourth is recorded.
    receiver.wait_for_requests(5, Duration::from_secs(40), &cluster);
    let timeout_error: Option<String> =
        c.query_one("SELECT last_error FROM engage.outbox WHERE id = $1", &[&id]).unwrap().get(0);
    assert!(
        timeout_error.as_deref().is_some_and(|e| {
            let e = e.to_ascii_lowercase();
            e.contains("timeout") || e.contains("timed out")
        }),
        "last_error after the timed-out attempt: {timeout_error:?}"
    );

    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let row = &rows[0];
    assert_eq!((row.status.as_str(), row.attempts, row.last_error.as_deref()), ("sent", 5, None), "{row:?}");
    let logged_attempts: i32 =
        c.query_one("SELECT attempts FROM engage.messages WHERE outbox_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(logged_attempts, 5, "engage.messages counts the attempts");

    past_every_lease(&cluster, &mut c, LEASE);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 5, "four failures then one success, nothing after: {requests:#?}");
    for r in &requests {
        assert_eq!(r.header("webhook-id"), Some(format!("msg_{id}").as_str()), "same id on every attempt");
        verify_standard_webhook(&secret, r).unwrap();
    }
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].arrived - w[0].arrived).collect();
    let g: Vec<u128> = gaps.iter().map(|d| ms(*d)).collect();
    // The gap after attempt n is at least the answer time plus the minimal backoff
    // 400 ms * 2^(n-1) * 0.5; the timed-out attempt takes the 1 s timeout instead.
    let tolerance = 30;
    let minimum = [300 + 200, 300 + 400, 300 + 800, 1000 + 1600];
    // … and at most the answer time plus the full backoff plus a poll interval and slack.
    let maximum = [300 + 400, 300 + 800, 300 + 1600, 1000 + 3200].map(|m| m + 200 + 1500);
    for n in 0..4 {
        assert!(
            g[n] + tolerance >= minimum[n] && g[n] <= maximum[n],
            "gap after attempt {} is {} ms, expected {}..{} ms (all gaps: {g:?})",
            n + 1,
            g[n],
            minimum[n],
            maximum[n]
        );
    }
    assert!(g[2] > g[0] && g[3] > g[1] && g[3] > g[2], "gaps must grow: {g:?}");

    let (_, _, sent, failed, _) = worker_status(&mut c);
    // Four failures of the message, and the barrier message of past_every_lease, dead at once.
    assert_eq!((sent, failed), (1, 5), "worker_status counts one send and four failures, and the barrier");
}

// ---------------------------------------------------------------------------------------------
// 4. permanent failure → dead letter → redrive
// ---------------------------------------------------------------------------------------------

#[test]
fn client_error_goes_dead_at_once_and_redrive_delivers_it() {
    let (cluster, mut c) = start_deliverer("dlv_dead", &[("engage.lease", LEASE_SETTING)]);
    let receiver =
        HttpReceiver::scripted(vec![Reply::status(400).with_body("{\"error\":\"bad payload\"}")], Reply::status(200));
    let secret = signing_secret(b"dead key");
    webhook_channel(&mut c, &receiver.url("/dead"), &secret, 8, "200 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook", "payload": {"k": 1}}}));
    let event = insert_event(&mut c, "c1", "e", json!({}));
    let id = outbox_id_of(&mut c, event);

    receiver.wait_for_requests(1, WAIT, &cluster);
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let row = &rows[0];
    assert_eq!((row.status.as_str(), row.attempts, row.sent), ("dead", 1, false), "a 400 is not retried: {row:?}");
    let error = row.last_error.clone().unwrap_or_default();
    assert!(error.contains("400") && error.contains("bad payload"), "last_error: {error:?}");
    let dead = c.query("SELECT id, customer_id, channel, attempts, last_error FROM engage.dead_letters", &[]).unwrap();
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(dead[0].get::<_, i64>(0), id);
    assert_eq!(dead[0].get::<_, String>(1), "c1");
    assert_eq!(dead[0].get::<_, String>(2), "webhook");
    assert_eq!(dead[0].get::<_, i32>(3), 1);
    assert_eq!(dead[0].get::<_, Option<String>>(4), Some(error.clone()));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 0, "nothing logged as sent");
    // Not retried: still one request once the deliverer has claimed again after the lease.
    past_every_lease(&cluster, &mut c, LEASE);
    assert_eq!(receiver.requests().len(), 1, "a permanent failure is not retried");

    let redriven: Option<bool> = c.query_one("SELECT engage.redrive($1)", &[&id]).unwrap().get(0);
    assert_eq!(redriven, Some(true), "redrive of a dead message");
    let requests = receiver.wait_for_requests(2, WAIT, &cluster);
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let row = &rows[0];
    assert_eq!((row.status.as_str(), row.attempts, row.last_error.as_deref()), ("sent", 1, None), "{row:?}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.dead_letters"), 0);
    assert_eq!(count(&mut c, &format!("SELECT count(*) FROM engage.messages WHERE outbox_id = {id}")), 1);
    assert_eq!(requests[0].header("webhook-id"), requests[1].header("webhook-id"), "same message id after redrive");
    assert_eq!(requests[0].json(), requests[1].json(), "same document after redrive");
    verify_standard_webhook(&secret, &requests[1]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. no address / no consent: fallback or dead
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_address_or_consent_falls_back_or_goes_dead() {
    let (cluster, mut c) = start_deliverer("dlv_fallback", &[("engage.lease", LEASE_SETTING)]);
    let smtp = SmtpReceiver::new();
    let receiver = HttpReceiver::new();
    let secret = signing_secret(b"fallback key");
    webhook_channel(&mut c, &receiver.url("/fallback"), &secret, 8, "200 milliseconds");
    c.execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('email', $1)",
        &[&json!({"host": "127.0.0.1", "port": smtp.port(), "tls": "none", "from": "news@shop.example"})],
    )
    .unwrap();
    template(&mut c, "hello", "email", Some("Hi {{ profile.name }}"), "Hello {{ profile.name }}", None);
    template(&mut c, "hello", "webhook", Some("hook for {{ profile.name }}"), "Hook {{ profile.name }}", None);
    create_trigger(&mut c, "hello", json!({"event": "signup", "action": {"channel": "email", "template": "hello"}}));

    identify(&mut c, "ok", json!({"name": "Ok", "email": "ok@example.com"}));
    identify(&mut c, "noaddr", json!({"name": "NoAddr"}));
    identify(&mut c, "optout", json!({"name": "OptOut", "email": "optout@example.com"}));
    identify(&mut c, "chain", json!({"name": "Chain"}));
    identify(&mut c, "dead_noaddr", json!({"name": "DeadNoAddr"}));
    identify(&mut c, "dead_optout", json!({"name": "DeadOptOut", "email": "deadoptout@example.com"}));

    // Each event and its fallback list commit together, before the worker can claim the row.
    // "chain" first tries sms, which has no engage.channels row, then webhook. The two opt-outs
    // happen after their message was queued (in the same transaction, before the worker sees it):
    // the send-time re-check catches them.
    let cases: [(&str, &[&str]); 6] = [
        ("ok", &[]),
        ("noaddr", &["webhook"]),
        ("optout", &["webhook"]),
        ("chain", &["sms", "webhook"]),
        ("dead_noaddr", &[]),
        ("dead_optout", &[]),
    ];
    for (customer, fallback) in cases {
        let mut tx = c.transaction().unwrap();
        let event: i64 = tx
            .query_one("INSERT INTO engage.events (customer_id, name) VALUES ($1, 'signup') RETURNING id", &[&customer])
            .unwrap()
            .get(0);
        let fallback: Vec<String> = fallback.iter().map(|s| s.to_string()).collect();
        let n = tx.execute("UPDATE engage.outbox SET fallback = $2 WHERE event_id = $1", &[&event, &fallback]).unwrap();
        assert_eq!(n, 1);
        tx.execute(
            "UPDATE engage.profiles SET consent = '{\"email\": false}' WHERE customer_id = $1 AND customer_id LIKE '%optout'",
            &[&customer],
        )
        .unwrap();
        tx.commit().unwrap();
    }

    let rows = wait_settled(&cluster, &mut c, 6, WAIT);
    let by_customer: BTreeMap<String, Outbox> = rows.into_iter().map(|o| (o.customer_id.clone(), o)).collect();
    let summary = |o: &Outbox| (o.status.clone(), o.channel.clone(), o.fallback.clone());
    assert_eq!(summary(&by_customer["ok"]), ("sent".into(), "email".into(), vec![]));
    for customer in ["noaddr", "optout", "chain"] {
        let o = &by_customer[customer];
        assert_eq!(
            summary(o),
            ("sent".into(), "webhook".into(), vec![]),
            "{customer} falls through to the webhook: {o:?}"
        );
    }
    let dead_noaddr = &by_customer["dead_noaddr"];
    assert_eq!((dead_noaddr.status.as_str(), dead_noaddr.channel.as_str()), ("dead", "email"), "{dead_noaddr:?}");
    let e = dead_noaddr.last_error.clone().unwrap_or_default();
    assert!(e.contains("no email address") && e.contains("dead_noaddr"), "last_error: {e:?}");
    // Opted out with no fallback: suppressed at send time with its reason, not dead.
    let dead_optout = &by_customer["dead_optout"];
    assert_eq!((dead_optout.status.as_str(), dead_optout.channel.as_str()), ("suppressed", "email"), "{dead_optout:?}");
    let e = dead_optout.last_error.clone().unwrap_or_default();
    assert!(e.contains("consented") && e.contains("email"), "last_error: {e:?}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE reason = 'consent'"), 1);
    let dead: BTreeSet<String> = c
        .query("SELECT customer_id FROM engage.dead_letters WHERE last_error IS NOT NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, BTreeSet::from(["dead_noaddr".to_string()]));

    // Let any stray send arrive, then count what each receiver got.
    past_every_lease(&cluster, &mut c, LEASE);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "only the customer with an address and consent gets an email: {mails:#?}");
    assert_eq!(mails[0].to, vec!["ok@example.com".to_string()]);
    let requests = receiver.requests();
    let hooked: BTreeMap<String, Value> = requests
        .iter()
        .map(|r| {
            verify_standard_webhook(&secret, r).unwrap();
            let doc = r.json();
            (doc["customer_id"].as_str().unwrap_or("").to_string(), doc["rendered"].clone())
        })
        .collect();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(
        hooked,
        BTreeMap::from([
            ("chain".to_string(), json!({"subject": "hook for Chain", "body": "Hook Chain"})),
            ("noaddr".to_string(), json!({"subject": "hook for NoAddr", "body": "Hook NoAddr"})),
            ("optout".to_string(), json!({"subject": "hook for OptOut", "body": "Hook OptOut"})),
        ]),
        "the fallback renders the webhook template of the same name"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. SIGKILL mid-batch
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_worker_mid_batch_delivers_everything_at_least_once_with_stable_ids() {
    let db = "dlv_kill";
    let (cluster, mut c) =
        start_deliverer(db, &[("engage.lease", "'2s'"), ("engage.concurrency", "4"), ("synchronous_commit", "on")]);
    // Slow receiver: a batch of 12 takes three rounds of 1.5 s at concurrency 4.
    let receiver = HttpReceiver::scripted(vec![], Reply::status(200).after(Duration::from_millis(1500)));
    let secret = signing_secret(b"kill key");
    webhook_channel(&mut c, &receiver.url("/kill"), &secret, 8, "200 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    let customers: Vec<String> = (1..=12).map(|i| format!("k{i:02}")).collect();
    // One statement, one transaction: all twelve are queued (and claimable) at once.
    let values: Vec<String> = customers.iter().map(|cu| format!("('{cu}', 'e')")).collect();
    c.batch_execute(&format!("INSERT INTO engage.events (customer_id, name) VALUES {}", values.join(", "))).unwrap();
    let ids: BTreeSet<i64> = c.query("SELECT id FROM engage.outbox", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.len(), 12);

    receiver.wait_for_requests(2, WAIT, &cluster);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'sent'"),
        0,
        "the batch is still in flight"
    );
    let (running, pid, ..) = worker_status(&mut c);
    let pid = pid.filter(|_| running).expect("the worker runs");
    // SAFETY: sending a signal to a process id has no memory-safety preconditions.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
    let killed_at = Instant::now();
    let in_flight = receiver.requests().len();
    drop(c);

    // The postmaster restarts every backend after a crash: reconnect, wait for a new worker. (A
    // connection made before the postmaster has noticed the crash is closed with the others.)
    std::thread::sleep(Duration::from_millis(300));
    let mut c = reconnect(&cluster, db, Duration::from_secs(30));
    let new_pid = wait_for_worker(&cluster, &mut c, Some(pid));
    assert_ne!(new_pid, pid);

    let rows = wait_settled(&cluster, &mut c, 12, Duration::from_secs(45));
    assert!(rows.iter().all(|o| o.status == "sent"), "every message is sent: {rows:#?}");
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT outbox_id) FROM engage.messages"),
        12,
        "one engage.messages row per message"
    );
    past_every_lease(&cluster, &mut c, Duration::from_secs(2));
    let requests = receiver.requests();
    let mut by_id: BTreeMap<String, Vec<&Request>> = BTreeMap::new();
    for r in &requests {
        verify_standard_webhook(&secret, r).unwrap_or_else(|e| panic!("{e}: {r:#?}"));
        let header = r.header("webhook-id").expect("webhook-id").to_string();
        assert_eq!(r.json()["id"], json!(header), "webhook-id header equals the document id");
        by_id.entry(header).or_default().push(r);
    }
    let expected: BTreeSet<String> = ids.iter().map(|i| format!("msg_{i}")).collect();
    assert_eq!(by_id.keys().cloned().collect::<BTreeSet<_>>(), expected, "every queued message arrived at least once");
    let duplicated: Vec<&String> = by_id.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k).collect();
    assert!(
        !duplicated.is_empty() && requests.len() > 12,
        "the {in_flight} requests in flight at the kill are sent again after the lease: {} requests in all",
        requests.len()
    );
    for (id, copies) in &by_id {
        let first = copies[0].json();
        for other in &copies[1..] {
            assert_eq!(other.json(), first, "a duplicate of {id} carries the same document");
        }
    }
    // A message is sent again only once its 2 s lease (taken just before the first send) has
    // expired, and the copies after the kill come from the new worker.
    for (id, copies) in by_id.iter().filter(|(_, v)| v.len() > 1) {
        let again = copies[1].arrived - copies[0].arrived;
        assert!(
            again >= Duration::from_millis(1800),
            "{id} was sent again {} ms after the first send, before its 2 s lease expired",
            ms(again)
        );
        assert!(copies[1].arrived > killed_at, "{id}: the copy comes after the kill");
    }
    let (running, _, _, _, _) = worker_status(&mut c);
    assert!(running);
}

// ---------------------------------------------------------------------------------------------
// 7. restart with pending rows
// ---------------------------------------------------------------------------------------------

#[test]
fn pending_rows_are_delivered_after_a_server_restart() {
    let db = "dlv_restart";
    // The deliverer starts paused (engage.worker_enabled = off), so the rows stay pending.
    let (cluster, mut c) = start_deliverer(db, &[("engage.lease", LEASE_SETTING), ("engage.worker_enabled", "off")]);
    let receiver = HttpReceiver::new();
    let secret = signing_secret(b"restart key");
    webhook_channel(&mut c, &receiver.url("/restart"), &secret, 8, "200 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    for (customer, n) in [("a", 1), ("b", 1), ("a", 2), ("c", 1)] {
        insert_event(&mut c, customer, "e", json!({"n": n}));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.requests().len(), 0, "engage.worker_enabled = off sends nothing");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE status = 'pending'"), 4);

    // Undo the pause in the configuration only; the restart applies it.
    c.batch_execute("ALTER SYSTEM SET engage.worker_enabled = on").unwrap();
    drop(c);
    cluster.restart();
    let mut c = reconnect(&cluster, db, Duration::from_secs(30));
    wait_for_worker(&cluster, &mut c, None);

    let rows = wait_settled(&cluster, &mut c, 4, WAIT);
    assert!(rows.iter().all(|o| o.status == "sent" && o.attempts == 1), "{rows:#?}");
    past_every_lease(&cluster, &mut c, LEASE);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4, "each pending message once: {requests:#?}");
    let ids: BTreeSet<String> = requests.iter().map(|r| r.header("webhook-id").unwrap_or("").to_string()).collect();
    let expected: BTreeSet<String> = rows.iter().map(|o| format!("msg_{}", o.id)).collect();
    assert_eq!(ids, expected);
    // Customer a's two messages went out in order.
    let a: Vec<i64> = requests
        .iter()
        .map(|r| r.json())
        .filter(|d| d["customer_id"] == json!("a"))
        .map(|d| d["event"]["properties"]["n"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(a, vec![1, 2], "a customer's messages are delivered in order");
}

// ---------------------------------------------------------------------------------------------
// 8. rollback
// ---------------------------------------------------------------------------------------------

#[test]
fn rolled_back_event_sends_nothing() {
    let (cluster, mut c) = start_deliverer("dlv_rollback", &[("engage.lease", LEASE_SETTING)]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/rollback"), &signing_secret(b"rb"), 8, "200 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));

    let mut tx = c.transaction().unwrap();
    tx.execute("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'e')", &[]).unwrap();
    assert_eq!(count_in(&mut tx, "SELECT count(*) FROM engage.outbox"), 1, "queued inside the transaction");
    tx.rollback().unwrap();
    // A rolled-back savepoint inside a committed transaction sends nothing either.
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(
        "SAVEPOINT s; INSERT INTO engage.events (customer_id, name, properties) VALUES ('c2', 'e', '{\"which\": \"rolled back\"}'); ROLLBACK TO SAVEPOINT s;",
    )
    .unwrap();
    tx.execute(
        "INSERT INTO engage.events (customer_id, name, properties) VALUES ('c3', 'e', '{\"which\": \"kept\"}')",
        &[],
    )
    .unwrap();
    tx.commit().unwrap();

    let requests = receiver.wait_for_requests(1, WAIT, &cluster);
    // Once the deliverer has claimed again after the lease, still only the kept one.
    past_every_lease(&cluster, &mut c, LEASE);
    let requests_later = receiver.requests();
    assert_eq!(requests_later.len(), 1, "only the committed event is sent: {requests_later:#?}");
    let doc = requests[0].json();
    assert_eq!(doc["customer_id"], json!("c3"));
    assert_eq!(doc["event"]["properties"], json!({"which": "kept"}));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 1);
}

fn count_in(tx: &mut postgres::Transaction<'_>, sql: &str) -> i64 {
    tx.query_one(&format!("SELECT ({sql})::int8"), &[]).unwrap().get(0)
}

// ---------------------------------------------------------------------------------------------
// 9. the external-deliverer API, from SQL alone (no worker: the shared cluster has no preload)
// ---------------------------------------------------------------------------------------------

/// engage.claim(...) → the claimed ids, with (attempts, claimed_by) read back from the outbox.
fn claim(c: &mut Client, batch: i32, lease: &str, worker: &str) -> BTreeMap<i64, (i32, String)> {
    let rows = c
        .query("SELECT id, attempts FROM engage.claim($1, $2::text::interval, $3)", &[&batch, &lease, &worker])
        .unwrap_or_else(|e| panic!("claim: {}", error_text(&e)));
    let mut out = BTreeMap::new();
    for r in rows {
        let id: i64 = r.get(0);
        let attempts: i32 = r.get(1);
        let by: String = c
            .query_one("SELECT claimed_by FROM engage.outbox WHERE id = $1 AND status = 'claimed'", &[&id])
            .unwrap_or_else(|e| panic!("claimed row {id}: {}", error_text(&e)))
            .get(0);
        out.insert(id, (attempts, by));
    }
    out
}

fn complete(c: &mut Client, id: i64, provider: Option<&str>) -> Option<bool> {
    c.query_one("SELECT engage.complete($1, (SELECT lease FROM engage.outbox WHERE id = $1), $2)", &[&id, &provider])
        .unwrap()
        .get(0)
}

#[test]
fn external_deliverer_api_claim_complete_fail_and_lease_expiry() {
    let mut c = shared().create_db("dlv_api");
    create_trigger(&mut c, "api", json!({"event": "e", "action": {"channel": "email", "template": "t"}}));
    c.batch_execute(
        "INSERT INTO engage.channels (kind, max_attempts, backoff_base, backoff_max) \
         VALUES ('email', 3, '1 minute', '1 hour')",
    )
    .unwrap();
    let a1 = insert_event_at(&mut c, "c1", "e", json!({}), "2000-01-01T00:00:00Z");
    let a2 = insert_event_at(&mut c, "c1", "e", json!({}), "2000-01-01T00:01:00Z");
    let b1 = insert_event_at(&mut c, "c2", "e", json!({}), "2000-01-01T00:00:30Z");
    let (a1, a2, b1) = (outbox_id_of(&mut c, a1), outbox_id_of(&mut c, a2), outbox_id_of(&mut c, b1));

    // batch_size limits the claim: the earliest due head only.
    let one = claim(&mut c, 1, "30 seconds", "ext-0");
    assert_eq!(one.keys().copied().collect::<Vec<_>>(), vec![a1], "batch of one: the earliest due");
    // Put it back to pending (an external deliverer would wait for the lease; here we reset it).
    c.execute("UPDATE engage.outbox SET status = 'pending', attempts = 0, lease_until = NULL WHERE id = $1", &[&a1])
        .unwrap();

    // The head of each customer's queue only: c1's second message waits for its first.
    let claimed = claim(&mut c, 10, "30 seconds", "ext-1");
    assert_eq!(
        claimed,
        BTreeMap::from([(a1, (1, "ext-1".to_string())), (b1, (1, "ext-1".to_string()))]),
        "claim returns the head per customer (a2 = {a2} must wait)"
    );
    let lease: f64 = c
        .query_one("SELECT extract(epoch FROM lease_until - now())::float8 FROM engage.outbox WHERE id = $1", &[&a1])
        .unwrap()
        .get(0);
    assert!((25.0..=30.5).contains(&lease), "lease_until is now() + 30 s: {lease}");
    assert!(claim(&mut c, 10, "30 seconds", "ext-2").is_empty(), "leased heads are not claimed twice");

    // complete: true once, false the second time; the sent log gets one row.
    assert_eq!(complete(&mut c, a1, Some("prov-1")), Some(true));
    assert_eq!(complete(&mut c, a1, Some("prov-again")), Some(false), "completing twice is a no-op");
    let (provider, attempts, status): (Option<String>, i32, String) = {
        let r = c
            .query_one(
                "SELECT m.provider_message_id, m.attempts, o.status FROM engage.messages m \
                 JOIN engage.outbox o ON o.id = m.outbox_id WHERE m.outbox_id = $1",
                &[&a1],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((provider.as_deref(), attempts, status.as_str()), (Some("prov-1"), 1, "sent"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 1);
    // complete of a row that was never claimed: false.
    assert_eq!(complete(&mut c, a2, None), Some(false), "a pending row does not complete");

    // Now c1's next message is the head.
    let claimed = claim(&mut c, 10, "30 seconds", "ext-1");
    assert_eq!(claimed.keys().copied().collect::<Vec<_>>(), vec![a2]);

    // fail(retryable): back to pending, due after 1 min * 2^0 * [0.5, 1], error kept.
    let (new_status, delay): (Option<String>, f64) = {
        let mut tx = c.transaction().unwrap();
        let s: Option<String> = tx
            .query_one(
                "SELECT engage.fail($1, (SELECT lease FROM engage.outbox WHERE id = $1), 'HTTP 503: busy', true)",
                &[&b1],
            )
            .unwrap()
            .get(0);
        let d: f64 = tx
            .query_one("SELECT extract(epoch FROM due_at - now())::float8 FROM engage.outbox WHERE id = $1", &[&b1])
            .unwrap()
            .get(0);
        tx.commit().unwrap();
        (s, d)
    };
    assert_eq!(new_status.as_deref(), Some("pending"));
    assert!((30.0..=60.0).contains(&delay), "first retry after 30..60 s (equal jitter on 1 min): {delay}");
    let (attempts, last_error, lease_until): (i32, Option<String>, Option<String>) = {
        let r = c
            .query_one("SELECT attempts, last_error, lease_until::text FROM engage.outbox WHERE id = $1", &[&b1])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((attempts, last_error.as_deref(), lease_until), (1, Some("HTTP 503: busy"), None));
    assert!(claim(&mut c, 10, "30 seconds", "ext-1").is_empty(), "not due yet");

    // Due again: claimed with attempts 2 on a short lease …
    c.execute("UPDATE engage.outbox SET due_at = now() - interval '1 second' WHERE id = $1", &[&b1]).unwrap();
    let claimed = claim(&mut c, 10, "1 second", "ext-2");
    assert_eq!(claimed, BTreeMap::from([(b1, (2, "ext-2".to_string()))]));
    assert!(claim(&mut c, 10, "30 seconds", "ext-3").is_empty(), "the lease holds");
    // … which expires: the row is claimable again (the deliverer is presumed dead).
    std::thread::sleep(Duration::from_millis(1300));
    let claimed = claim(&mut c, 10, "30 seconds", "ext-3");
    assert_eq!(claimed, BTreeMap::from([(b1, (3, "ext-3".to_string()))]), "an expired lease is claimable again");

    // Third failure with max_attempts = 3 and no fallback: dead, in dead_letters.
    let s: Option<String> = c
        .query_one(
            "SELECT engage.fail($1, (SELECT lease FROM engage.outbox WHERE id = $1), 'HTTP 503: still busy', true)",
            &[&b1],
        )
        .unwrap()
        .get(0);
    assert_eq!(s.as_deref(), Some("dead"), "retries exhausted");
    let dead: Vec<(i64, Option<String>, i32)> = c
        .query("SELECT id, last_error, attempts FROM engage.dead_letters", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(dead, vec![(b1, Some("HTTP 503: still busy".to_string()), 3)]);

    // Redrive: pending, due now, attempts reset; claimable at once.
    let r: Option<bool> = c.query_one("SELECT engage.redrive($1)", &[&b1]).unwrap().get(0);
    assert_eq!(r, Some(true));
    let claimed = claim(&mut c, 10, "30 seconds", "ext-4");
    assert_eq!(claimed, BTreeMap::from([(b1, (1, "ext-4".to_string()))]));

    // A permanent failure with a fallback list moves to the next channel, attempts reset.
    c.execute("UPDATE engage.outbox SET fallback = '{sms,webhook}' WHERE id = $1", &[&b1]).unwrap();
    let s: Option<String> = c
        .query_one(
            "SELECT engage.fail($1, (SELECT lease FROM engage.outbox WHERE id = $1), 'HTTP 400: bad address', false)",
            &[&b1],
        )
        .unwrap()
        .get(0);
    assert_eq!(s.as_deref(), Some("pending"));
    let (channel, fallback, attempts, due_now): (String, Vec<String>, i32, bool) = {
        let r = c
            .query_one("SELECT channel, fallback, attempts, due_at <= now() FROM engage.outbox WHERE id = $1", &[&b1])
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((channel.as_str(), fallback, attempts, due_now), ("sms", vec!["webhook".to_string()], 0, true));
    let claimed = c.query("SELECT id, channel, fallback FROM engage.claim(10, '30 seconds', 'ext-5')", &[]).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].get::<_, i64>(0), claimed[0].get::<_, String>(1), claimed[0].get::<_, Vec<String>>(2)),
        (b1, "sms".to_string(), vec!["webhook".to_string()])
    );

    // The a2 holder finishes; nothing is left to claim.
    assert_eq!(complete(&mut c, a2, Some("prov-2")), Some(true));
    assert_eq!(complete(&mut c, b1, None), Some(true));
    assert!(claim(&mut c, 10, "30 seconds", "ext-6").is_empty());
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 3);
    let sms_attempts: i32 = c
        .query_one("SELECT attempts FROM engage.messages WHERE outbox_id = $1 AND channel = 'sms'", &[&b1])
        .unwrap()
        .get(0);
    assert_eq!(sms_attempts, 1, "the sent log records the channel and attempts that delivered");
}

#[test]
fn redrive_only_applies_to_dead_messages() {
    let mut c = shared().create_db("dlv_redrive");
    create_trigger(&mut c, "r", json!({"event": "e", "action": {"channel": "webhook"}}));
    let e = insert_event(&mut c, "c1", "e", json!({}));
    let id = outbox_id_of(&mut c, e);
    let pending: Option<bool> = c.query_one("SELECT engage.redrive($1)", &[&id]).unwrap().get(0);
    assert_eq!(pending, Some(false), "redrive of a pending message returns false");
    let unknown: Option<bool> = c.query_one("SELECT engage.redrive(-1)", &[]).unwrap().get(0);
    assert_eq!(unknown, Some(false), "redrive of an unknown id returns false");
    let status: String = c.query_one("SELECT status FROM engage.outbox WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(status, "pending");
}

// ---------------------------------------------------------------------------------------------
// 10. the commit wakes the worker
// ---------------------------------------------------------------------------------------------

#[test]
fn commit_wakes_the_worker_long_before_the_poll_interval() {
    let (cluster, mut c) = start_deliverer("dlv_wake", &[("engage.poll_interval", "'10s'")]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/wake"), &signing_secret(b"wake"), 8, "200 milliseconds");
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    let poll: String = c.query_one("SHOW engage.poll_interval", &[]).unwrap().get(0);
    assert_eq!(poll, "10s");
    // Let the worker finish its first look and go to sleep for the poll interval.
    std::thread::sleep(Duration::from_millis(1000));

    for i in 1..=3usize {
        let start = Instant::now();
        insert_event(&mut c, &format!("w{i}"), "e", json!({}));
        let requests = receiver.wait_for_requests(i, Duration::from_secs(15), &cluster);
        let latency = requests[i - 1].arrived - start;
        assert!(
            latency < Duration::from_secs(2),
            "delivery {i} took {} ms with a 10 s poll interval: the commit must wake the worker",
            ms(latency)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Control: a message due 1 s after its commit is not woken for, so it waits for the next
    // poll, about 10 s after the commit: the fast deliveries above were the wake-up's doing.
    let start = Instant::now();
    c.execute(
        "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('later', 'e', now() + interval '1 second')",
        &[],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(receiver.requests().len(), 3, "a message due later waits for the poll");
    let requests = receiver.wait_for_requests(4, Duration::from_secs(15), &cluster);
    let waited = requests[3].arrived - start;
    assert!(
        waited >= Duration::from_secs(5),
        "the future message arrived after {} ms; with a 10 s poll interval it should wait for the poll",
        ms(waited)
    );
}

// ---------------------------------------------------------------------------------------------
// Beyond the list: ordering behind a retry, rate limits, worker_status after an error exit
// ---------------------------------------------------------------------------------------------

#[test]
fn a_retrying_head_keeps_the_customers_later_messages_waiting() {
    // claim's contract: a customer's messages go out one at a time, in order; the second is
    // claimable only once the first has completed (or left the queue for good).
    let mut c = shared().create_db("dlv_head_retry");
    create_trigger(&mut c, "h", json!({"event": "e", "action": {"channel": "webhook"}}));
    c.batch_execute("INSERT INTO engage.channels (kind, backoff_base) VALUES ('webhook', '1 minute')").unwrap();
    let first = insert_event_at(&mut c, "c1", "e", json!({"n": 1}), "2000-01-01T00:00:00Z");
    let second = insert_event_at(&mut c, "c1", "e", json!({"n": 2}), "2000-01-01T00:01:00Z");
    let (first, second) = (outbox_id_of(&mut c, first), outbox_id_of(&mut c, second));

    assert_eq!(claim(&mut c, 10, "30 seconds", "x").keys().copied().collect::<Vec<_>>(), vec![first]);
    let s: Option<String> = c
        .query_one(
            "SELECT engage.fail($1, (SELECT lease FROM engage.outbox WHERE id = $1), 'HTTP 503', true)",
            &[&first],
        )
        .unwrap()
        .get(0);
    assert_eq!(s.as_deref(), Some("pending"));
    let claimed = claim(&mut c, 10, "30 seconds", "x");
    assert!(
        claimed.is_empty(),
        "while the first message ({first}) waits for its retry, the customer's second message \
         ({second}) must not overtake it; claim returned {claimed:?}"
    );
    // The retry comes due: the first goes out, then the second.
    c.execute("UPDATE engage.outbox SET due_at = now() - interval '1 second' WHERE id = $1", &[&first]).unwrap();
    assert_eq!(claim(&mut c, 10, "30 seconds", "x").keys().copied().collect::<Vec<_>>(), vec![first]);
    assert_eq!(complete(&mut c, first, None), Some(true));
    assert_eq!(claim(&mut c, 10, "30 seconds", "x").keys().copied().collect::<Vec<_>>(), vec![second]);
}

#[test]
fn a_dead_head_releases_the_customers_next_message() {
    let mut c = shared().create_db("dlv_head_dead");
    create_trigger(&mut c, "h", json!({"event": "e", "action": {"channel": "webhook"}}));
    let first = insert_event_at(&mut c, "c1", "e", json!({}), "2000-01-01T00:00:00Z");
    let second = insert_event_at(&mut c, "c1", "e", json!({}), "2000-01-01T00:01:00Z");
    let (first, second) = (outbox_id_of(&mut c, first), outbox_id_of(&mut c, second));
    assert_eq!(claim(&mut c, 10, "30 seconds", "x").keys().copied().collect::<Vec<_>>(), vec![first]);
    let s: Option<String> = c
        .query_one(
            "SELECT engage.fail($1, (SELECT lease FROM engage.outbox WHERE id = $1), 'HTTP 410', false)",
            &[&first],
        )
        .unwrap()
        .get(0);
    assert_eq!(s.as_deref(), Some("dead"));
    assert_eq!(claim(&mut c, 10, "30 seconds", "x").keys().copied().collect::<Vec<_>>(), vec![second]);
}

/// Arrival gaps in ms between consecutive requests.
fn gaps_ms(requests: &[Request]) -> Vec<u128> {
    requests.windows(2).map(|w| ms(w[1].arrived - w[0].arrived)).collect()
}

#[test]
fn rate_limit_paces_the_sends_of_one_batch() {
    let (cluster, mut c) = start_deliverer("dlv_rate_batch", &[]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/rate"), &signing_secret(b"rate"), 8, "200 milliseconds");
    c.batch_execute("UPDATE engage.channels SET rate_limit_per_second = 2 WHERE kind = 'webhook'").unwrap();
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    // Six customers in one statement: one batch of six.
    c.batch_execute("INSERT INTO engage.events (customer_id, name) SELECT 'r' || i, 'e' FROM generate_series(1, 6) i")
        .unwrap();
    let requests = receiver.wait_for_requests(6, WAIT, &cluster);
    let g = gaps_ms(&requests);
    assert!(g.iter().all(|&gap| gap >= 450), "2 per second means 500 ms apart: gaps {g:?} ms");
}

#[test]
fn rate_limit_paces_sends_across_batches() {
    let (cluster, mut c) = start_deliverer("dlv_rate_across", &[]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/rate"), &signing_secret(b"rate"), 8, "200 milliseconds");
    c.batch_execute("UPDATE engage.channels SET rate_limit_per_second = 2 WHERE kind = 'webhook'").unwrap();
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    // Events arriving one at a time: each commit wakes the worker, so each is its own batch.
    for i in 1..=5 {
        insert_event(&mut c, &format!("r{i}"), "e", json!({}));
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = receiver.wait_for_requests(5, WAIT, &cluster);
    let g = gaps_ms(&requests);
    assert!(
        g.iter().all(|&gap| gap >= 450),
        "rate_limit_per_second = 2 must hold across batches (500 ms apart): gaps {g:?} ms"
    );
}

#[test]
fn worker_status_does_not_report_a_dead_worker_as_running() {
    // The deliverer serves a database without the extension: it starts, fails to claim (no
    // engage schema), exits with an error and is restarted 5 s later. In between,
    // engage.worker_status() (read from another database) must not call it running.
    let target = "dlv_status_target";
    let cluster = Cluster::start_with(
        "dlv_status",
        &[
            ("shared_preload_libraries", "'pg_engage'"),
            ("engage.database", "'dlv_status_target'"),
            ("engage.poll_interval", "'200ms'"),
        ],
    );
    cluster.connect("postgres").batch_execute(&format!("CREATE DATABASE {target}")).unwrap();
    drop(cluster.create_db("dlv_status"));
    // Start afresh with the target database present.
    cluster.restart();
    let mut c = reconnect(&cluster, "dlv_status", Duration::from_secs(30));
    wait_for(
        "the deliverer to fail on the database without the extension",
        WAIT,
        || {
            if cluster.log_tail(200).contains("exited with exit code 1") {
                Ok(())
            } else {
                Err("no exit yet".to_string())
            }
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    );
    let mut wrong = Vec::new();
    for _ in 0..20 {
        let r = c
            .query_one(
                "SELECT s.running, s.pid, EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.pid) \
                   FROM engage.worker_status() s",
                &[],
            )
            .unwrap();
        let (running, pid, live): (bool, Option<i32>, bool) = (r.get(0), r.get(1), r.get(2));
        if running && !live {
            wrong.push(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        wrong.is_empty(),
        "worker_status() said running with pid {}, which is not a live process ({} of 20 samples)\nserver.log:\n{}",
        wrong[0].map_or("NULL".to_string(), |p| p.to_string()),
        wrong.len(),
        cluster.log_tail(10)
    );
}

/// SMS, WhatsApp and push go out in their providers' request shapes (Twilio Messages, WhatsApp
/// Cloud API, FCM HTTP v1) to the configured base URL, with their credentials, rendered text and
/// the customer's address; the provider's message id is kept in the sent log.
#[test]
fn sms_whatsapp_and_push_use_their_provider_request_shapes() {
    let (cluster, mut c) = start_deliverer("dlv_shapes", &[]);
    let answer = r#"{"sid": "SM123", "messages": [{"id": "wamid.456"}], "name": "projects/p1/messages/789"}"#;
    let receiver = HttpReceiver::scripted(Vec::new(), Reply::status(200).with_body(answer));
    c.batch_execute(&format!(
        "INSERT INTO engage.channels (kind, config) VALUES
           ('sms', '{{\"base_url\": \"{base}\", \"account_sid\": \"ACabc\", \"from\": \"+15550001111\"}}'),
           ('whatsapp', '{{\"base_url\": \"{base}/v19.0\", \"phone_number_id\": \"4242\"}}'),
           ('push', '{{\"base_url\": \"{base}\", \"project_id\": \"shop-app\"}}');
         INSERT INTO engage.channel_secrets (kind, secrets) VALUES
           ('sms', '{{\"auth_token\": \"tok\"}}'), ('whatsapp', '{{\"access_token\": \"wa-token\"}}'),
           ('push', '{{\"access_token\": \"fcm-token\"}}');",
        base = receiver.url("")
    ))
    .unwrap();
    template(&mut c, "note", "sms", None, "Hi {{ profile.first_name }}, order {{ event.properties.order }}", None);
    template(&mut c, "note", "whatsapp", None, "WA {{ profile.first_name }} {{ event.properties.order }}", None);
    template(
        &mut c,
        "note",
        "push",
        Some("Order {{ event.properties.order }}"),
        "Shipped, {{ profile.first_name }}",
        None,
    );
    for channel in ["sms", "whatsapp", "push"] {
        create_trigger(
            &mut c,
            &format!("to_{channel}"),
            // Shipping notices are transactional: three at once for one customer do not conflict.
            json!({"event": format!("shipped_{channel}"), "category": "transactional",
                   "action": {"channel": channel, "template": "note", "payload": {"n": 1}}}),
        );
    }
    identify(&mut c, "c1", json!({"first_name": "Ada", "phone": "+15557654321", "push_token": "tok-abc"}));
    for channel in ["sms", "whatsapp", "push"] {
        insert_event(&mut c, "c1", &format!("shipped_{channel}"), json!({"order": "o-9"}));
    }
    let requests = receiver.wait_for_requests(3, WAIT, &cluster);
    wait_settled(&cluster, &mut c, 3, WAIT);
    let find = |prefix: &str| {
        requests
            .iter()
            .find(|r| r.path.starts_with(prefix))
            .unwrap_or_else(|| panic!("no request to {prefix}: {requests:#?}"))
    };

    let sms = find("/2010-04-01/Accounts/ACabc/Messages.json");
    assert_eq!(sms.header("authorization"), Some("Basic QUNhYmM6dG9r"), "basic auth sid:token");
    assert!(sms.header("content-type").unwrap_or("").starts_with("application/x-www-form-urlencoded"));
    let form: BTreeMap<String, String> = sms
        .body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace('+', " ").replace("%2B", "+").replace("%2C", ",")))
        .collect();
    assert_eq!(form.get("To").map(String::as_str), Some("+15557654321"));
    assert_eq!(form.get("From").map(String::as_str), Some("+15550001111"));
    assert_eq!(form.get("Body").map(String::as_str), Some("Hi Ada, order o-9"));

    let wa = find("/v19.0/4242/messages");
    assert_eq!(wa.header("authorization"), Some("Bearer wa-token"));
    let body = wa.json();
    assert_eq!(body["messaging_product"], json!("whatsapp"));
    assert_eq!(body["to"], json!("+15557654321"));
    assert_eq!(body["text"]["body"], json!("WA Ada o-9"));

    let push = find("/v1/projects/shop-app/messages:send");
    assert_eq!(push.header("authorization"), Some("Bearer fcm-token"));
    let body = push.json();
    assert_eq!(body["message"]["token"], json!("tok-abc"));
    assert_eq!(body["message"]["notification"], json!({"title": "Order o-9", "body": "Shipped, Ada"}));
    assert_eq!(body["message"]["data"]["n"], json!("1"), "FCM data values are strings");

    let ids: BTreeMap<String, String> = c
        .query("SELECT channel, provider_message_id FROM engage.messages", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ids.get("sms").map(String::as_str), Some("SM123"));
    assert_eq!(ids.get("whatsapp").map(String::as_str), Some("wamid.456"));
    assert_eq!(ids.get("push").map(String::as_str), Some("projects/p1/messages/789"));
}

/// HTTP 429 (rate limited by the provider) is retried, not dead; the customer's locale picks the
/// template (with `en` as the fallback locale); and the deliverer stops cleanly on SIGTERM (a fast
/// shutdown), saying so in the server log.
#[test]
fn too_many_requests_is_retried_locale_picks_the_template_and_sigterm_stops_cleanly() {
    let (cluster, mut c) = start_deliverer("dlv_429_locale", &[]);
    let receiver = HttpReceiver::scripted(vec![Reply::status(429).with_body("slow down")], Reply::status(200));
    webhook_channel(&mut c, &receiver.url("/hook"), &signing_secret(b"k"), 5, "100 milliseconds");
    template(&mut c, "hello", "webhook", None, "Hello {{ profile.first_name }}", None);
    c.execute(
        "INSERT INTO engage.templates (name, channel, locale, body) VALUES ('hello', 'webhook', 'de', 'Hallo {{ profile.first_name }}')",
        &[],
    )
    .unwrap();
    create_trigger(&mut c, "greet", json!({"event": "visit", "action": {"channel": "webhook", "template": "hello"}}));
    identify(&mut c, "de1", json!({"first_name": "Grete", "locale": "de"}));
    identify(&mut c, "fr1", json!({"first_name": "Aimée", "locale": "fr"}));
    insert_event(&mut c, "de1", "visit", json!({}));
    insert_event(&mut c, "fr1", "visit", json!({}));

    let requests = receiver.wait_for_requests(3, WAIT, &cluster);
    let rows = wait_settled(&cluster, &mut c, 2, WAIT);
    assert!(rows.iter().all(|r| r.status == "sent"), "both delivered after the 429: {rows:?}");
    assert_eq!(rows.iter().map(|r| r.attempts).sum::<i32>(), 3, "one of them needed a second attempt: {rows:?}");
    let bodies: BTreeSet<String> = requests
        .iter()
        .skip(1)
        .map(|r| r.json()["rendered"]["body"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(bodies.contains("Hallo Grete"), "German template for locale de: {bodies:?}");
    assert!(bodies.contains("Hello Aimée"), "no French template: falls back to en: {bodies:?}");

    cluster.restart(); // pg_ctl restart -m fast: SIGTERM to the deliverer
    let log = cluster.log_tail(400);
    assert!(log.contains("pg_engage deliverer stopped"), "clean stop on SIGTERM not logged:\n{log}");
}

/// Quiet hours are the customer's own local time (profiles.timezone, else engage.default_timezone):
/// a message due inside them is deferred to their end without spending an attempt, never dropped,
/// and goes out once they are over; a customer whose local time is outside them gets it at once.
#[test]
fn quiet_hours_defer_by_the_customers_own_time_zone() {
    let (cluster, mut c) = start_deliverer("dlv_quiet", &[]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/hook"), &signing_secret(b"k"), 5, "1 second");
    // Quiet from an hour ago to an hour from now, UTC wall clock.
    c.batch_execute(
        "UPDATE engage.channels SET quiet_hours_start = (now() AT TIME ZONE 'UTC')::time - interval '1 hour',
                                    quiet_hours_end = (now() AT TIME ZONE 'UTC')::time + interval '1 hour'",
    )
    .unwrap();
    create_trigger(&mut c, "note", json!({"event": "e", "action": {"channel": "webhook"}}));
    identify(&mut c, "utc", json!({"timezone": "UTC"}));
    identify(&mut c, "tokyo", json!({"timezone": "Asia/Tokyo"})); // local time is 9 hours later: not quiet
    identify(&mut c, "nozone", json!({})); // engage.default_timezone, UTC by default
    for customer in ["utc", "tokyo", "nozone"] {
        insert_event(&mut c, customer, "e", json!({}));
    }
    let requests = receiver.wait_for_requests(1, WAIT, &cluster);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].json()["customer_id"], json!("tokyo"));
    // Decided inside quiet hours: queued for their end, without a claim or an attempt.
    let queued_for_the_end = count(
        &mut c,
        "SELECT count(*) FROM engage.outbox WHERE status = 'pending' AND attempts = 0 AND due_at = scheduled_at
           AND due_at BETWEEN now() + interval '55 minutes' AND now() + interval '65 minutes'",
    );
    assert_eq!(queued_for_the_end, 2, "{:?}", outbox(&mut c));

    // Made due now while still quiet (a late retry, or quiet hours set after queueing): the
    // send-time re-check defers them again, to the end, without spending an attempt.
    c.batch_execute("UPDATE engage.outbox SET due_at = now() WHERE status = 'pending'").unwrap();
    let deferred = |c: &mut Client| -> i64 {
        count(
            c,
            "SELECT count(*) FROM engage.outbox WHERE status = 'pending' AND attempts = 0
               AND last_error LIKE 'deferred: quiet hours%'
               AND due_at BETWEEN now() + interval '55 minutes' AND now() + interval '65 minutes'",
        )
    };
    wait_for(
        "two messages deferred to the end of quiet hours at send time",
        WAIT,
        || if deferred(&mut c) == 2 { Ok(()) } else { Err(format!("{:?}", outbox(&mut c))) },
        || cluster.log_tail(20),
    );
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE customer_id = 'tokyo' AND status = 'sent'"), 1);

    // When the hour has passed (simulated: quiet hours over, the deferred messages due now), they go out.
    c.batch_execute(
        "UPDATE engage.channels SET quiet_hours_start = NULL, quiet_hours_end = NULL;
         UPDATE engage.outbox SET due_at = now() WHERE status = 'pending';",
    )
    .unwrap();
    receiver.wait_for_requests(3, WAIT, &cluster);
    wait_settled(&cluster, &mut c, 3, WAIT);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 3);
}

/// A receiver that is down (connection refused) is a retryable failure: the message stays in the
/// queue with growing attempts and the error, and is not dead while attempts remain.
#[test]
fn a_refused_connection_is_retried_not_dead() {
    let (cluster, mut c) = start_deliverer("dlv_refused", &[]);
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    webhook_channel(&mut c, &format!("http://127.0.0.1:{port}/hook"), &signing_secret(b"k"), 50, "100 milliseconds");
    create_trigger(&mut c, "note", json!({"event": "e", "action": {"channel": "webhook"}}));
    insert_event(&mut c, "c1", "e", json!({}));
    wait_for(
        "at least three failed attempts, still pending",
        WAIT,
        || {
            let row = c
                .query_one("SELECT status, attempts, coalesce(last_error, '') FROM engage.outbox", &[])
                .map_err(|e| e.to_string())?;
            let (status, attempts, error): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
            if attempts >= 3 && status != "dead" && error.contains("HTTP") {
                Ok(())
            } else {
                Err(format!("status {status}, attempts {attempts}, last_error {error:?}"))
            }
        },
        || cluster.log_tail(20),
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.dead_letters"), 0);
}

/// Both workers come back after `pg_terminate_backend` (not a server shutdown), and
/// `worker_status()` says when one is down.
#[test]
fn terminated_workers_are_restarted_and_reported_down_meanwhile() {
    let (cluster, mut c) = start_deliverer("worker_restart", &[("engage.tick_interval", "1")]);
    let deliverer = wait_for_worker(&cluster, &mut c, None);
    let scheduler = wait_for(
        "the scheduler to run",
        WAIT,
        || match c.query_one("SELECT scheduler_pid FROM engage.worker_status()", &[]).unwrap().get::<_, Option<i32>>(0)
        {
            Some(pid) => Ok(pid),
            None => Err("no scheduler".to_string()),
        },
        || cluster.log_tail(20),
    );
    // Terminate both and wait (up to 4 s) for them to exit: down before the restart interval (5 s) ...
    for pid in [deliverer, scheduler] {
        let gone: bool = c.query_one("SELECT pg_terminate_backend($1, 4000)", &[&pid]).unwrap().get(0);
        assert!(gone, "worker {pid} did not exit within 4 s");
    }
    let down: (bool, bool) = {
        let row = c.query_one("SELECT running, scheduler_running FROM engage.worker_status()", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(down, (false, false), "worker_status right after the terminations");
    // ... and back with new processes.
    let again = wait_for_worker(&cluster, &mut c, Some(deliverer));
    assert_ne!(again, deliverer);
    wait_for(
        "the scheduler to run again",
        WAIT,
        || match c.query_one("SELECT scheduler_pid FROM engage.worker_status()", &[]).unwrap().get::<_, Option<i32>>(0)
        {
            Some(pid) if pid != scheduler => Ok(pid),
            other => Err(format!("scheduler pid {other:?}")),
        },
        || cluster.log_tail(20),
    );
}

/// A time zone that is not one is refused when set, not read as UTC by one side and an error
/// by the other.
#[test]
fn an_unknown_default_timezone_is_refused_when_set() {
    let (cluster, mut c) = start_deliverer("bad_timezone", &[]);
    for zone in ["Mars/Olympus", "", "Europe/Berln"] {
        let db = assert_sql_error(
            &mut c,
            &format!("ALTER SYSTEM SET engage.default_timezone = '{zone}'"),
            &[],
            "22023",
            "engage.default_timezone",
        );
        assert!(db.hint().is_some_and(|h| h.contains("IANA")), "{zone}: {:?}", db.hint());
    }
    c.batch_execute("ALTER SYSTEM SET engage.default_timezone = 'Pacific/Auckland'").unwrap();
    drop(cluster);
}

// ---------------------------------------------------------------------------------------------
// Delivery II: fenced leases, poison messages, backoff without overflow, per-category order,
// per-message bookkeeping
// ---------------------------------------------------------------------------------------------

/// A database with a webhook trigger `hook` on event `e` (and `urgent`, transactional, on `code`)
/// and a webhook channel with `max_attempts`; returns the outbox id of one message for `c1`.
fn one_message(db: &str, max_attempts: i32) -> (Client, i64) {
    let mut c = shared().create_db(db);
    create_trigger(&mut c, "hook", json!({"event": "e", "action": {"channel": "webhook"}}));
    c.execute(
        "INSERT INTO engage.channels (kind, max_attempts, backoff_base, backoff_max) VALUES ('webhook', $1, '10 seconds', '1 hour')",
        &[&max_attempts],
    )
    .unwrap();
    let event = insert_event_at(&mut c, "c1", "e", json!({}), "2020-01-01T00:00:00Z");
    let id = outbox_id_of(&mut c, event);
    (c, id)
}

/// engage.claim → (id, lease token) of each claimed message.
fn claim_leases(c: &mut Client, lease: &str) -> Vec<(i64, i64)> {
    c.query("SELECT id, lease FROM engage.claim(10, $1::text::interval, 'test')", &[&lease])
        .unwrap_or_else(|e| panic!("claim: {}", error_text(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn a_stale_lease_holder_changes_nothing() {
    let (mut c, id) = one_message("dlv_fenced", 8);
    let [(_, a)] = claim_leases(&mut c, "1 second")[..] else { panic!("A claims the message") };
    std::thread::sleep(Duration::from_millis(1200));
    let [(_, b)] = claim_leases(&mut c, "1 minute")[..] else { panic!("B takes it over after A's lease expired") };
    assert_ne!(a, b, "each claim has its own token");

    // A's late outcomes: no-ops that say so; B's lease and claim stand.
    let failed: Option<String> =
        c.query_one("SELECT engage.fail($1, $2, 'late timeout', true)", &[&id, &a]).unwrap().get(0);
    assert_eq!(failed, None, "a stale fail records nothing");
    let completed: bool = c.query_one("SELECT engage.complete($1, $2, 'from-A')", &[&id, &a]).unwrap().get(0);
    assert!(!completed, "a stale complete records nothing");
    for sql in [
        "SELECT engage.defer($1, $2, now() + interval '1 hour')",
        "SELECT engage.suppress($1, $2, 'consent')",
        "SELECT engage.extend_lease($1, $2, '1 hour')",
    ] {
        let done: bool = c.query_one(sql, &[&id, &a]).unwrap().get(0);
        assert!(!done, "{sql} with a stale token");
    }
    let (status, lease_left): (String, f64) = {
        let r = c
            .query_one(
                "SELECT status, extract(epoch FROM lease_until - now())::float8 FROM engage.outbox WHERE id = $1",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "claimed");
    assert!(lease_left > 50.0, "B's lease is intact: {lease_left} s left");
    assert!(claim_leases(&mut c, "1 minute").is_empty(), "nobody else can claim it while B holds it");

    // B extends its lease, then completes: its provider id is the one recorded.
    let extended: bool = c.query_one("SELECT engage.extend_lease($1, $2, '10 minutes')", &[&id, &b]).unwrap().get(0);
    assert!(extended);
    let completed: bool = c.query_one("SELECT engage.complete($1, $2, 'from-B')", &[&id, &b]).unwrap().get(0);
    assert!(completed, "the current holder completes");
    let provider: String =
        c.query_one("SELECT provider_message_id FROM engage.messages WHERE outbox_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(provider, "from-B");
}

#[test]
fn a_message_whose_lease_keeps_expiring_ends_dead_or_on_its_fallback() {
    let (mut c, id) = one_message("dlv_poison", 2);
    // Two claims whose leases expire (the deliverer died on the message each time) ...
    for round in 1..=2 {
        assert_eq!(claim_leases(&mut c, "1 second").len(), 1, "claim {round}");
        std::thread::sleep(Duration::from_millis(1100));
    }
    // ... and it is not claimed a third time: dead, with the reason.
    assert!(claim_leases(&mut c, "1 minute").is_empty(), "a poison message is not claimed again");
    let (status, error): (String, String) = {
        let r = c.query_one("SELECT status, last_error FROM engage.outbox WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "dead");
    assert!(error.contains("lease expired 2 times"), "{error}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.dead_letters"), 1);

    // With a fallback channel, it moves there instead, with a fresh count of attempts.
    c.execute(
        "UPDATE engage.outbox SET status = 'claimed', lease_until = now() - interval '1 second', attempts = 2, \
                fallback = '{email}' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    c.batch_execute("INSERT INTO engage.channels (kind) VALUES ('email')").unwrap();
    let claimed = claim_leases(&mut c, "1 minute");
    assert_eq!(claimed.len(), 1, "claimed again on the fallback channel");
    let (channel, attempts): (String, i32) = {
        let r = c.query_one("SELECT channel, attempts FROM engage.outbox WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((channel.as_str(), attempts), ("email", 1));
}

#[test]
fn backoff_never_overflows_whatever_the_attempt_count() {
    let (mut c, id) = one_message("dlv_backoff", 1000);
    for attempts in [40, 41, 64, 999] {
        c.execute(
            "UPDATE engage.outbox SET status = 'pending', due_at = now() - interval '1 second', attempts = $2 WHERE id = $1",
            &[&id, &(attempts - 1)],
        )
        .unwrap();
        let [(_, lease)] = claim_leases(&mut c, "1 minute")[..] else { panic!("claim at attempt {attempts}") };
        let status: Option<String> = c
            .query_one("SELECT engage.fail($1, $2, 'HTTP 503', true)", &[&id, &lease])
            .unwrap_or_else(|e| panic!("fail at attempt {attempts}: {}", error_text(&e)))
            .get(0);
        assert_eq!(status.as_deref(), Some("pending"), "attempt {attempts}");
        let delay: f64 = c
            .query_one("SELECT extract(epoch FROM due_at - now())::float8 FROM engage.outbox WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        assert!(
            (1700.0..=3601.0).contains(&delay),
            "attempt {attempts}: capped at backoff_max (1 h, jittered): {delay}"
        );
    }
    // Settings that would overflow are refused when set.
    assert_sql_error(&mut c, "UPDATE engage.channels SET backoff_max = '1000 years'", &[], "23514", "check");
    assert_sql_error(&mut c, "UPDATE engage.channels SET rate_limit_per_second = 1e-300", &[], "23514", "check");
}

#[test]
fn a_marketing_message_waiting_for_quiet_hours_does_not_hold_up_a_transactional_one() {
    let (mut c, promo) = one_message("dlv_categories", 8);
    create_trigger(
        &mut c,
        "code",
        json!({"event": "login", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    // The marketing message is claimed and deferred 10 hours (quiet hours).
    let [(_, lease)] = claim_leases(&mut c, "1 minute")[..] else { panic!("claim the marketing message") };
    let deferred: bool =
        c.query_one("SELECT engage.defer($1, $2, now() + interval '10 hours')", &[&promo, &lease]).unwrap().get(0);
    assert!(deferred);
    // A one-time code for the same customer, due now, goes out at once.
    let login = insert_event(&mut c, "c1", "login", json!({}));
    let code = outbox_id_of(&mut c, login);
    let claimed: Vec<i64> = claim_leases(&mut c, "1 minute").into_iter().map(|(id, _)| id).collect();
    assert_eq!(claimed, vec![code], "the transactional message is not behind the deferred marketing one");
    // A later marketing message due now is not behind the deferred one either: the deferred
    // message's place in the queue moved to its new due time.
    let later = insert_event_at(&mut c, "c1", "e", json!({}), "2020-01-01T01:00:00Z");
    let later = outbox_id_of(&mut c, later);
    let claimed: Vec<i64> = claim_leases(&mut c, "1 minute").into_iter().map(|(id, _)| id).collect();
    assert_eq!(claimed, vec![later]);
}

/// One message whose bookkeeping raises an ERROR (here a faulty trigger an operator added on
/// engage.messages) does not undo the others of its batch: they are recorded once and sent once;
/// it stays claimed, is retried, and ends dead after max_attempts claims.
#[test]
fn one_message_whose_bookkeeping_fails_does_not_undo_its_batch() {
    let (cluster, mut c) = start_deliverer("dlv_isolated", &[("engage.lease", "'2s'")]);
    let receiver = HttpReceiver::new();
    webhook_channel(
        &mut c,
        &receiver.url("/hooks"),
        &signing_secret(b"isolation test key, 32 bytes!!!"),
        3,
        "1 second",
    );
    create_trigger(
        &mut c,
        "hook",
        json!({"event": "e", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    c.batch_execute(
        "CREATE FUNCTION public.reject_c7() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.customer_id = 'c7' THEN RAISE EXCEPTION 'faulty audit trigger'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER reject_c7 BEFORE INSERT ON engage.messages FOR EACH ROW EXECUTE FUNCTION public.reject_c7();
         INSERT INTO engage.events (customer_id, name) SELECT 'c' || i, 'e' FROM generate_series(1, 20) AS i;",
    )
    .unwrap();
    let rows = wait_for(
        "19 messages sent and c7's dead",
        Duration::from_secs(60),
        || {
            let rows = outbox(&mut c);
            let sent = rows.iter().filter(|o| o.status == "sent").count();
            let dead = rows.iter().filter(|o| o.status == "dead").count();
            if sent == 19 && dead == 1 {
                Ok(rows)
            } else {
                Err(format!("sent {sent}, dead {dead}"))
            }
        },
        || cluster.log_tail(30),
    );
    let c7 = rows.iter().find(|o| o.customer_id == "c7").unwrap();
    assert!(c7.last_error.as_deref().is_some_and(|e| e.contains("lease expired")), "{:?}", c7.last_error);
    let requests = receiver.requests();
    let mut per_message: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        *per_message.entry(r.header("webhook-id").unwrap_or("").to_string()).or_default() += 1;
    }
    for o in rows.iter().filter(|o| o.status == "sent") {
        assert_eq!(per_message.get(&format!("msg_{}", o.id)), Some(&1), "message {} sent once", o.id);
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.messages"), 19);
    println!("{} requests for 20 messages (c7's message was sent on each of its claims)", requests.len());
}

/// The egress policy: plain http and non-public addresses only for hosts the operator listed in
/// engage.allowed_hosts, plain SMTP only to a listed relay, and no redirect is followed.
#[test]
fn the_deliverer_reaches_only_allowed_hosts_and_follows_no_redirect() {
    let (cluster, mut c) = start_deliverer("dlv_egress", &[("engage.allowed_hosts", "''")]);
    let receiver = HttpReceiver::new();
    webhook_channel(&mut c, &receiver.url("/hook"), &signing_secret(b"egress test key"), 8, "1 second");
    create_trigger(
        &mut c,
        "hook",
        json!({"event": "e", "category": "transactional", "action": {"channel": "webhook"}}),
    );
    let first = insert_event(&mut c, "c1", "e", json!({}));
    let id = outbox_id_of(&mut c, first);
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    assert_eq!(rows[0].status, "dead");
    let error = rows[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("egress: plain http to 127.0.0.1 is not allowed"), "{error}");
    assert!(receiver.requests().is_empty(), "nothing reached the receiver");

    // An https URL to a link-local address (a cloud metadata service) is refused too.
    c.execute(
        "UPDATE engage.channels SET config = '{\"url\": \"https://169.254.169.254/latest/meta-data/\"}' WHERE kind = 'webhook'",
        &[],
    )
    .unwrap();
    c.execute("SELECT engage.redrive($1)", &[&id]).unwrap();
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    let error = rows[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("non-public address (169.254.169.254)"), "{error}");

    // Allowed by the operator: delivered. A redirect is not followed: the attempt fails.
    let redirecting = HttpReceiver::scripted(
        vec![Reply::status(302).with_header("Location", &receiver.url("/stolen"))],
        Reply::status(200),
    );
    c.execute(
        "UPDATE engage.channels SET config = jsonb_build_object('url', $1::text) WHERE kind = 'webhook'",
        &[&redirecting.url("/hook")],
    )
    .unwrap();
    c.batch_execute("ALTER SYSTEM SET engage.allowed_hosts = '127.0.0.1'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The deliverer applies the reload at its next look: until then an attempt is still refused
    // by egress (and reaches no receiver), so retry until one is not.
    let mut rows = Vec::new();
    wait_for(
        "the deliverer to apply engage.allowed_hosts",
        WAIT,
        || {
            c.execute("SELECT engage.redrive($1)", &[&id]).map_err(|e| error_text(&e))?;
            rows = wait_settled(&cluster, &mut c, 1, WAIT);
            match rows[0].last_error.as_deref() {
                Some(e) if e.contains("egress:") || e.contains("non-public address") => Err(e.to_string()),
                _ => Ok(()),
            }
        },
        String::new,
    );
    assert_eq!(rows[0].status, "dead", "a 3xx answer is a failed attempt");
    assert!(rows[0].last_error.as_deref().is_some_and(|e| e.contains("HTTP 302")), "{:?}", rows[0].last_error);
    assert_eq!(redirecting.requests().len(), 1);
    assert!(receiver.requests().is_empty(), "the redirect's target was never requested");
    c.execute(
        "UPDATE engage.channels SET config = jsonb_build_object('url', $1::text) WHERE kind = 'webhook'",
        &[&receiver.url("/hook")],
    )
    .unwrap();
    c.execute("SELECT engage.redrive($1)", &[&id]).unwrap();
    let rows = wait_settled(&cluster, &mut c, 1, WAIT);
    assert_eq!(rows[0].status, "sent");
    assert_eq!(receiver.requests().len(), 1);

    // Plain SMTP only to a listed relay.
    c.batch_execute(
        "INSERT INTO engage.channels (kind, config) VALUES ('email', '{\"host\": \"smtp.example.com\", \"port\": 25, \"tls\": \"none\", \"from\": \"a@example.com\"}');
         INSERT INTO engage.templates (name, channel, subject, body) VALUES ('note', 'email', 'Hi', 'Hello');
         SELECT engage.identify('c2', '{\"email\": \"c2@example.com\"}');",
    )
    .unwrap();
    create_trigger(
        &mut c,
        "mail",
        json!({"event": "m", "category": "transactional", "action": {"channel": "email", "template": "note"}}),
    );
    insert_event(&mut c, "c2", "m", json!({}));
    let rows = wait_settled(&cluster, &mut c, 2, WAIT);
    let mail = rows.iter().find(|o| o.channel == "email").expect("the email");
    assert_eq!(mail.status, "dead");
    assert!(
        mail.last_error.as_deref().is_some_and(|e| e.contains("plain connection to smtp.example.com:25")),
        "{:?}",
        mail.last_error
    );
}
