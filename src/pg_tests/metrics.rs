//! In-database tests of the analyst metrics (sql/metrics.sql): views, rollups, provider webhooks.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{count, run, text};
    use pgrx::prelude::*;

    // ---- analyst metrics (sql/metrics.sql) -------------------------------------------------

    /// A fabricated history, decided and sent by hand so that every figure can be worked out on
    /// paper. Goal for both triggers: a purchase within one day, worth properties.amount.
    ///   alice: cart 10:00 (fired, email sent 10:00:00), browse 12:00 (fired, sms sent 12:00:01),
    ///          purchase 100 the next day at 10:00 exactly (the edge of the cart message's window)
    ///   bob:   cart 10:00 (fired, email sent 10:00:00), purchase 40 one second past the window
    ///   carol: cart 10:00 (held out), purchase 30 at 15:00: a control customer who converts
    ///   dave:  cart 10:00 (held out), no purchase
    ///   erin:  cart 10:00 (suppressed: frequency)
    fn metrics_fixture() {
        run(r#"SELECT engage.create_trigger('cart', '{"event": "cart", "priority": 5, "holdout": 0.5,
                "action": {"channel": "email", "template": "c"}, "goal": {"event": "purchase", "within": "1d", "value": "amount"}}')"#);
        run(r#"SELECT engage.create_trigger('browse', '{"event": "browse", "priority": 1,
                "action": {"channel": "sms", "template": "b"}, "goal": {"event": "purchase", "within": "1d", "value": "$.amount"}}')"#);
        run("SET LOCAL session_replication_role = replica"); // history, not live: no insert path
        run(r#"INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
               ('alice', 'cart', '{}', '2026-01-01 10:00+00'), ('alice', 'browse', '{}', '2026-01-01 12:00+00'),
               ('alice', 'purchase', '{"amount": 100}', '2026-01-02 10:00+00'),
               ('bob', 'cart', '{}', '2026-01-01 10:00+00'), ('bob', 'purchase', '{"amount": 40}', '2026-01-02 10:00:01+00'),
               ('carol', 'cart', '{}', '2026-01-01 10:00+00'), ('carol', 'purchase', '{"amount": 30}', '2026-01-01 15:00+00'),
               ('dave', 'cart', '{}', '2026-01-01 10:00+00'), ('erin', 'cart', '{}', '2026-01-01 10:00+00')"#);
        run("INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, decided_at, outcome, reason)
             SELECT e.id, t.id, 1, e.customer_id, e.occurred_at, e.occurred_at + interval '5 ms',
                    CASE WHEN e.customer_id IN ('carol', 'dave') THEN 'held_out'
                         WHEN e.customer_id = 'erin' THEN 'suppressed' ELSE 'fired' END,
                    CASE WHEN e.customer_id = 'erin' THEN 'frequency' END
               FROM engage.events e JOIN engage.triggers t ON t.name = e.name");
        run("INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, template, due_at, scheduled_at,
                                        status, sent_at, created_at, provider_message_id)
             SELECT d.event_id, d.trigger_id, d.customer_id, CASE t.name WHEN 'cart' THEN 'email' ELSE 'sms' END, t.name,
                    d.occurred_at, d.occurred_at, 'sent',
                    d.occurred_at + CASE t.name WHEN 'cart' THEN interval '0' ELSE interval '1 s' END,
                    d.decided_at, 'P-' || d.customer_id || '-' || t.name
               FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
              WHERE d.outcome = 'fired' ORDER BY d.customer_id, t.name");
        run("INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, queued_at,
                                          sent_at, attempts, provider_message_id, cost)
             SELECT o.id, o.event_id, o.trigger_id, o.customer_id, o.channel, o.template, o.created_at, o.sent_at, 1,
                    o.provider_message_id, CASE o.channel WHEN 'email' THEN 0.5 ELSE 1.0 END
               FROM engage.outbox o");
        run("SET LOCAL session_replication_role = origin");
        // Written behind the insert path's back, so the rollups are rebuilt (and no one is marked).
        assert_eq!(count("SELECT engage.rebuild_metrics()"), 5);
        assert_eq!(count("SELECT count(*) FROM engage.metrics_dirty"), 0);
    }

    fn message_of(customer: &str, channel: &str) -> i64 {
        count(&format!("SELECT id FROM engage.outbox WHERE customer_id = '{customer}' AND channel = '{channel}'"))
    }

    #[pg_test]
    fn fire_rate_counts_matches_and_the_suppression_mix() {
        metrics_fixture();
        assert_eq!(
            text(
                "SELECT string_agg(concat_ws('/', trigger, matched, fired, held_out, suppressed, fire_rate,
                                              suppression_mix ->> 'frequency'), ' ' ORDER BY trigger)
                    FROM engage.trigger_fire_rate"
            )
            .as_deref(),
            Some("browse/1/1/0/0/1.0000/0.0000 cart/5/2/2/1/0.4000/0.2000")
        );
    }

    #[pg_test]
    fn attribution_is_last_touch_first_touch_or_linear_with_an_inclusive_window_end() {
        metrics_fixture();
        // alice's purchase had two messages before it; bob's came one second too late.
        assert_eq!(
            text(
                "SELECT string_agg(concat_ws('/', model, trigger, customer_id, touches, credit, revenue), ' '
                                    ORDER BY model, trigger) FROM engage.attributed_conversions"
            )
            .as_deref(),
            Some(
                "first_touch/cart/alice/2/1.0/100.000000 last_touch/browse/alice/2/1.0/100.000000 \
                  linear/browse/alice/2/0.500000/50.000000 linear/cart/alice/2/0.500000/50.000000"
            )
        );
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', model, trigger, conversions, revenue), ' ' ORDER BY model, trigger)
                    FROM engage.trigger_revenue").as_deref(),
            Some("first_touch/cart/1/100.000000 last_touch/browse/1/100.000000 linear/browse/1/50.000000 linear/cart/1/50.000000")
        );
    }

    #[pg_test]
    fn uplift_compares_treated_with_control_and_roi_uses_it() {
        metrics_fixture();
        // cart: treated alice (converted at the window edge, 100) and bob (too late): 1/2, 50 per
        // customer; control carol (converted, 30) and dave: 1/2, 15 per customer.
        assert_eq!(
            text("SELECT concat_ws('/', treated, treated_conversions, treated_rate, control, control_conversions, control_rate,
                                   uplift, round(ci_high::numeric, 4), significant, treated_revenue_per_customer,
                                   control_revenue_per_customer, revenue_uplift_per_customer)
                    FROM engage.holdout_uplift WHERE trigger = 'cart'").as_deref(),
            // se = sqrt(0.25/2 + 0.25/2) = 0.5, so the interval is 0 +- 1.96 * 0.5
            Some("2/1/0.5/2/1/0.5/0/0.9800/f/50/15/35")
        );
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', trigger, messages, recipients, cost, attributed_revenue, net, roi,
                                              revenue_per_recipient, incremental_revenue, incremental_net), ' ' ORDER BY trigger)
                    FROM engage.trigger_roi").as_deref(),
            Some("browse/1/1/1.000000/100.000000/99.000000/99.0000/100.0000 \
                  cart/2/2/1.000000/0/-1.000000/-1.0000/0.0000/70/69")
        );
    }

    #[pg_test]
    fn provider_webhooks_become_response_events_once_and_bounces_suppress() {
        metrics_fixture();
        let alice_email = message_of("alice", "email");
        let bob_email = message_of("bob", "email");
        let recorded = |sql: String| count(&sql);
        assert_eq!(
            recorded(format!(
                r#"SELECT engage.ingest_provider_event('sendgrid', '[
                     {{"event": "delivered", "timestamp": 1767261600, "smtp-id": "<msg_{alice_email}@shop.example>"}},
                     {{"event": "open", "timestamp": 1767261700, "smtp-id": "<msg_{alice_email}@shop.example>"}},
                     {{"event": "click", "timestamp": 1767261800, "message_id": "msg_{alice_email}"}},
                     {{"event": "bounce", "timestamp": 1767261900, "smtp-id": "<msg_{bob_email}@shop.example>"}},
                     {{"event": "processed", "timestamp": 1767261900, "smtp-id": "<msg_{bob_email}@shop.example>"}},
                     {{"event": "open", "timestamp": 1767261900, "smtp-id": "<msg_999999@shop.example>"}}]')::int8"#
            )),
            4,
            "unknown kinds and unknown messages are skipped"
        );
        let twilio = r#"SELECT engage.ingest_provider_event('twilio', '{"MessageSid": "P-alice-browse", "MessageStatus": "delivered"}')::int8"#;
        assert_eq!(count(twilio), 1);
        assert_eq!(count(twilio), 0, "a retried callback is recorded once");
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', trigger, channel, sent, delivered, opened, clicked, open_rate, click_rate), ' '
                                    ORDER BY trigger) FROM engage.trigger_response_rates").as_deref(),
            Some("browse/sms/1/1/0/0/0.0000/0.0000 cart/email/2/1/1/1/0.5000/0.5000")
        );
        assert_eq!(
            text("SELECT customer_id || ':' || channel || ':' || reason FROM engage.suppressions").as_deref(),
            Some("bob:email:hard_bounce")
        );
    }

    #[pg_test]
    fn a_provider_batch_skips_its_unreadable_items_and_records_the_rest() {
        metrics_fixture();
        let alice_email = message_of("alice", "email");
        let bob_email = message_of("bob", "email");
        assert_eq!(
            count(&format!(
                r#"SELECT engage.ingest_provider_event('sendgrid', '[
                     {{"event": "delivered", "timestamp": "NaN", "message_id": "msg_{alice_email}"}},
                     {{"event": "open", "timestamp": "garbage", "message_id": "msg_{alice_email}"}},
                     {{"event": "click", "timestamp": "Infinity", "message_id": "msg_{alice_email}"}},
                     {{"event": "delivered", "timestamp": 1767261600, "message_id": "msg_{bob_email}"}}]')::int8"#
            )),
            1,
            "three bad items skipped, the good one recorded"
        );
        assert_eq!(
            count(&format!(
                r#"SELECT engage.ingest_provider_event('generic',
                     '[{{"message_id": "msg_{alice_email}", "event": "open", "occurred_at": "yesterday-ish"}},
                       {{"message_id": "msg_{alice_email}", "event": "open", "occurred_at": "2026-01-01T10:00:00Z"}}]')::int8"#
            )),
            1
        );
    }

    #[pg_test]
    fn latency_percentiles_per_trigger_and_channel() {
        metrics_fixture();
        // Read from histograms: each percentile within 4.3% of the true value (browse's sms was
        // sent 1 s after it was due, cart's emails at once), zero exactly.
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', trigger, channel, messages,
                                              abs(occurred_to_decided_s[1] / 0.005 - 1) <= 0.043,
                                              abs(due_to_sent_s[1] - e.lag) <= 0.043 * e.lag,
                                              abs(occurred_to_sent_s[3] - e.lag) <= 0.043 * e.lag), ' ' ORDER BY trigger)
                    FROM engage.trigger_latency_in('2025-12-01'),
                         LATERAL (SELECT CASE trigger WHEN 'browse' THEN 1 ELSE 0 END AS lag) e").as_deref(),
            Some("browse/sms/1/t/t/t cart/email/2/t/t/t")
        );
    }

    #[pg_test]
    fn volume_flags_a_runaway_hour_and_a_silent_one_against_the_same_hour_of_previous_days() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "e", "action": {"channel": "webhook"}}')"#);
        run("UPDATE engage.triggers SET created_at = now() - interval '10 days'");
        run("SET LOCAL session_replication_role = replica");
        // Ten events every hour for ten days, but the hour two hours ago had 60, and the last
        // full hour none (a tracker that stopped).
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT 'c' || n, 'e', h + interval '1 minute'
               FROM generate_series(date_bin('1 hour', now() - interval '10 days', '2000-01-01'),
                                    date_bin('1 hour', now(), '2000-01-01') - interval '3 hours', '1 hour') h,
                    generate_series(1, 10) n
             UNION ALL
             SELECT 'x' || n, 'e', date_bin('1 hour', now(), '2000-01-01') - interval '2 hours' + interval '1 minute'
               FROM generate_series(1, 60) n");
        run("INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, outcome)
             SELECT e.id, t.id, 1, e.customer_id, e.occurred_at, 'fired' FROM engage.events e, engage.triggers t");
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', extract(hour FROM date_bin('1 hour', now(), '2000-01-01') - bucket_start),
                                              evaluated, baseline_median, round(robust_z::numeric, 1)), ' ' ORDER BY bucket_start)
                    FROM engage.trigger_volume WHERE anomaly").as_deref(),
            // baseline: 10 on every earlier day, MAD 0, so z = (x - 10) / 1
            Some("2/60/10/50.0 1/0/10/-10.0")
        );
        assert_eq!(count("SELECT count(*) FROM engage.trigger_volume WHERE bucket_start < now() - interval '3 hours' AND anomaly"), 0);
        // Whole days of 10 x 24 look like the others. The runaway and the silent hour fall on
        // today or, shortly after midnight UTC, on yesterday: those days are left out.
        let clean_days = "FROM engage.trigger_volume_daily
             WHERE bucket_start < date_bin('1 day', date_bin('1 hour', now(), '2000-01-01') - interval '2 hours', '2000-01-01')";
        assert!(count(&format!("SELECT count(*) {clean_days} AND baseline_median = 240")) >= 3);
        assert_eq!(
            count(&format!("SELECT count(*) {clean_days} AND anomaly")),
            0,
            "a day of 10 x 24 looks like the others"
        );
    }

    /// Volume is counted per hour, so a bucket is a whole number of hours: anything else is
    /// refused by name (SQLSTATE 22023) rather than read from counts that cannot answer it.
    #[pg_test(error = "bucket must be a whole number of hours, got 00:15:00")]
    fn volume_buckets_are_whole_hours() {
        Spi::run("SELECT * FROM engage.trigger_volume_in('15 minutes', now())").ok();
    }

    /// Buckets start at local midnight and the counts are per UTC hour, so a session in a zone
    /// half an hour off UTC is refused rather than given misplaced counts.
    #[pg_test(error = "volume buckets start at local midnight, and the time zone Asia/Kolkata is not a whole number of hours from UTC")]
    fn volume_buckets_need_a_whole_hour_zone() {
        run("SET LOCAL TimeZone = 'Asia/Kolkata'");
        Spi::run("SELECT * FROM engage.trigger_volume_in('1 day', now())").ok();
    }

    #[pg_test]
    fn variant_results_compare_each_arm_with_the_first() {
        run(
            r#"SELECT engage.create_trigger('timing', '{"event": "cart", "wait": "1h", "action": {"channel": "webhook"},
                "variants": [{"name": "1h"}, {"name": "6h", "wait": "6h"}],
                "goal": {"event": "purchase", "within": "2d"}}')"#,
        );
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT 'c' || i, 'cart', '2026-01-01 10:00+00' FROM generate_series(1, 200) i");
        // Everyone in arm 6h buys, nobody in arm 1h.
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT customer_id, 'purchase', '2026-01-02 10:00+00' FROM engage.decisions WHERE variant = '6h'");
        let six = count("SELECT count(*) FROM engage.decisions WHERE variant = '6h'");
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', variant, position, customers, conversion_rate, compared_with, uplift), ' '
                                    ORDER BY position) FROM engage.variant_results").as_deref(),
            Some(format!("1h/1/{}/0/1h/0 6h/2/{six}/1/1h/1", 200 - six).as_str())
        );
    }

    /// A generated stream whose true uplift is known by construction: treated customers buy with
    /// probability 0.30, control customers with 0.20 (true uplift 0.10). The view's 95% interval
    /// must contain it. The draw is seeded, so the test is deterministic.
    #[pg_test]
    fn a_known_uplift_is_recovered_within_its_confidence_interval() {
        run(
            r#"SELECT engage.create_trigger('winback', '{"event": "lapsed", "holdout": 0.2, "action": {"channel": "webhook"},
                "goal": {"event": "purchase", "within": "7d", "value": "amount"}}')"#,
        );
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT 'c' || i, 'lapsed', '2026-01-01 00:00+00' FROM generate_series(1, 20000) i");
        run("SELECT setseed(0.4242)");
        run("INSERT INTO engage.events (customer_id, name, properties, occurred_at)
             SELECT customer_id, 'purchase', '{\"amount\": 20}', occurred_at + interval '2 days'
               FROM engage.decisions
              WHERE random() < CASE outcome WHEN 'fired' THEN 0.30 ELSE 0.20 END
              ORDER BY customer_id");
        let row = text(
            "SELECT concat_ws('/', control, ci_low < 0.10 AND 0.10 < ci_high, ci_low > 0, abs(uplift - 0.10) < 0.03,
                              revenue_ci_low < 2.0 AND 2.0 < revenue_ci_high)
               FROM engage.holdout_uplift WHERE trigger = 'winback'",
        )
        .unwrap_or_default();
        let control: i64 = row.split('/').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!((3_600..=4_400).contains(&control), "about 20% of 20,000 in control: {row}");
        assert!(
            row.ends_with("/t/t/t/t"),
            "interval contains 0.10, excludes 0, estimate near 0.10, revenue 2.0 inside: {row}"
        );
    }

    /// Every rollup-backed view, as text, in a fixed order.
    fn rollup_views() -> String {
        [
            "SELECT string_agg(concat_ws('/', model, trigger, customer_id, message_id, touches, credit, revenue), ' '
                               ORDER BY model, trigger, customer_id, message_id) FROM engage.attributed_conversions",
            "SELECT string_agg(concat_ws('/', trigger, customer_id, control, converted, revenue), ' '
                               ORDER BY trigger, customer_id) FROM engage.trigger_exposures",
            "SELECT string_agg(concat_ws('/', message_id, customer_id, opened_at IS NOT NULL), ' ' ORDER BY message_id)
               FROM engage.message_responses",
            "SELECT string_agg(concat_ws('/', trigger, messages, occurred_to_sent_s[1] >= 0), ' ' ORDER BY trigger)
               FROM engage.trigger_latency_in('-infinity')",
        ]
        .map(|sql| text(sql).unwrap_or_default())
        .join("\n")
    }

    /// The same figures computed from the base tables alone, for every customer.
    fn reference_views() -> String {
        let everyone = "(SELECT array_agg(DISTINCT customer_id) FROM engage.events)";
        [
            format!("SELECT string_agg(concat_ws('/', model, tg.trigger, t.customer_id, t.message_id, t.touches, credit,
                                               round(t.value * credit, 6)), ' '
                                     ORDER BY model, tg.trigger, t.customer_id, t.message_id)
                       FROM engage.touches_of({everyone}) t JOIN engage.trigger_goals tg USING (trigger_id),
                            LATERAL (VALUES ('last_touch', CASE WHEN from_last = 1 THEN 1.0 END),
                                            ('first_touch', CASE WHEN from_first = 1 THEN 1.0 END),
                                            ('linear', round(1.0 / touches, 6))) AS m(model, credit)
                      WHERE credit IS NOT NULL"),
            format!("SELECT string_agg(concat_ws('/', tg.trigger, x.customer_id, x.control, x.conversions > 0, x.revenue), ' '
                                     ORDER BY tg.trigger, x.customer_id)
                       FROM engage.exposures_of({everyone}) x JOIN engage.trigger_goals tg USING (trigger_id)"),
            format!("SELECT string_agg(concat_ws('/', message_id, customer_id, opened_at IS NOT NULL), ' ' ORDER BY message_id)
                       FROM engage.message_facts_of({everyone})"),
            format!("SELECT string_agg(concat_ws('/', t.name, n, ok), ' ' ORDER BY t.name)
                       FROM (SELECT trigger_id, count(*) AS n, bool_and(sent_at - occurred_at >= interval '0') AS ok
                               FROM engage.message_facts_of({everyone}) GROUP BY trigger_id) f
                       JOIN engage.triggers t ON t.id = f.trigger_id"),
        ]
        .map(|sql| text(&sql).unwrap_or_default())
        .join("\n")
    }

    /// Sends every pending message the way the deliverer does (claim, then engage.complete).
    fn send_pending() {
        run("UPDATE engage.outbox SET status = 'claimed', claimed_at = now(), attempts = 1 WHERE status = 'pending'");
        run("SELECT engage.complete(id, lease) FROM engage.outbox WHERE status = 'claimed'");
    }

    #[pg_test]
    fn the_rollups_follow_live_changes_and_the_views_are_exact_before_and_after_a_refresh() {
        run(r#"SELECT engage.create_trigger('cart', '{"event": "cart", "priority": 5,
                "action": {"channel": "webhook"}, "goal": {"event": "purchase", "within": "1d", "value": "amount"}}')"#);
        run(r#"SELECT engage.create_trigger('browse', '{"event": "browse", "priority": 1,
                "action": {"channel": "webhook"}, "goal": {"event": "purchase", "within": "2d", "value": "amount"}}')"#);
        // Carts an hour ago, browsing a minute ago (further apart than the conflict window, so both
        // fire); every message is sent at now(); purchases come after.
        run("SET LOCAL engage.conflict_window = 60");
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT c, n, now() - CASE n WHEN 'cart' THEN interval '1 hour' ELSE interval '1 minute' END
               FROM unnest(ARRAY['ann', 'ben', 'cat']) c, unnest(ARRAY['cart', 'browse']) n");
        assert_eq!(count("SELECT count(*) FROM engage.outbox"), 6);
        assert_eq!(count("SELECT count(DISTINCT customer_id) FROM engage.metrics_dirty"), 3, "decisions mark");
        assert_eq!(count("SELECT engage.refresh_metrics()"), 3);
        send_pending();
        assert_eq!(count("SELECT count(DISTINCT customer_id) FROM engage.metrics_dirty"), 3, "sent messages mark");
        let stages = [
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
             VALUES ('ann', 'purchase', '{\"amount\": 70}', now() + interval '1 hour')",
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
             SELECT 'ben', 'message_opened', jsonb_build_object('message_id', 'msg_' || id), now() + interval '1 minute'
               FROM engage.outbox WHERE customer_id = 'ben'",
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
             VALUES ('ben', 'purchase', '{\"amount\": 20}', now() + interval '30 hours'),
                    ('cat', 'purchase', '{\"amount\": 5}', now() + interval '3 days')",
            r#"SELECT engage.update_trigger('browse', '{"event": "browse", "priority": 1,
                "action": {"channel": "webhook"}, "goal": {"event": "purchase", "within": "3d", "value": "amount"}}')"#,
        ];
        for (i, stage) in stages.iter().enumerate() {
            run(stage);
            let live = rollup_views();
            assert_eq!(live, reference_views(), "stage {i}, before the refresh");
            run("SELECT engage.refresh_metrics()");
            assert_eq!(count("SELECT count(*) FROM engage.metrics_dirty"), 0);
            assert_eq!(rollup_views(), live, "stage {i}, after the refresh");
        }
        // The end state, worked out by hand: ann bought 70 an hour after both messages (linear:
        // half each); ben's 20 came 30 h later, inside browse's 2-day window only; cat's 5 counts
        // only once browse's goal grew to 3 days.
        assert_eq!(
            text(
                "SELECT string_agg(concat_ws('/', trigger, customer_id, revenue), ' ' ORDER BY customer_id, trigger)
                    FROM engage.attributed_conversions WHERE model = 'linear'"
            )
            .as_deref(),
            Some("browse/ann/35.000000 cart/ann/35.000000 browse/ben/20.000000 browse/cat/5.000000")
        );
        assert_eq!(count("SELECT count(*) FROM engage.message_responses WHERE opened_at IS NOT NULL"), 2);
    }

    // ---- running totals and histograms against a recomputation -----------------------------

    /// Every customer, for the base-table functions.
    const EVERYONE: &str = "(SELECT array_agg(DISTINCT customer_id) FROM engage.events)";

    /// Each totals-backed view, and the same figures computed from the base tables alone (the
    /// views' definitions before the running totals, over every customer).
    fn views_and_recomputations() -> [(String, String); 8] {
        let revenue = format!(
            "WITH per_trigger AS (
                 SELECT c.trigger_id,
                        count(*) FILTER (WHERE c.from_last = 1) AS last_n,
                        coalesce(sum(c.value) FILTER (WHERE c.from_last = 1), 0) AS last_revenue,
                        count(*) FILTER (WHERE c.from_first = 1) AS first_n,
                        coalesce(sum(c.value) FILTER (WHERE c.from_first = 1), 0) AS first_revenue,
                        count(*) FILTER (WHERE c.trigger_touch = 1) AS linear_n,
                        sum(round(1.0 / c.touches, 6)) AS linear_credit,
                        sum(round(c.value * round(1.0 / c.touches, 6), 6)) AS linear_revenue
                   FROM engage.touches_of({EVERYONE}) c GROUP BY c.trigger_id)
             SELECT m.model, tg.trigger, p.trigger_id, m.conversions, m.credited, m.revenue
               FROM per_trigger p JOIN engage.trigger_goals tg ON tg.trigger_id = p.trigger_id,
                    LATERAL (VALUES ('last_touch', p.last_n, p.last_n::numeric, round(p.last_revenue, 6)),
                                    ('first_touch', p.first_n, p.first_n::numeric, round(p.first_revenue, 6)),
                                    ('linear', p.linear_n, p.linear_credit, p.linear_revenue))
                        AS m(model, conversions, credited, revenue)
              WHERE m.conversions > 0"
        );
        let exposures = format!(
            "SELECT x.*, tg.trigger, x.conversions > 0 AS converted
               FROM engage.exposures_of({EVERYONE}) x JOIN engage.trigger_goals tg ON tg.trigger_id = x.trigger_id"
        );
        let uplift = format!(
            "WITH groups AS (
                 SELECT trigger_id, trigger,
                        count(*) FILTER (WHERE NOT control) AS n_t,
                        count(*) FILTER (WHERE NOT control AND converted) AS conv_t,
                        coalesce(sum(revenue) FILTER (WHERE NOT control), 0) AS rev_t,
                        coalesce(sum(revenue * revenue) FILTER (WHERE NOT control), 0) AS rev_sq_t,
                        count(*) FILTER (WHERE control) AS n_c,
                        count(*) FILTER (WHERE control AND converted) AS conv_c,
                        coalesce(sum(revenue) FILTER (WHERE control), 0) AS rev_c,
                        coalesce(sum(revenue * revenue) FILTER (WHERE control), 0) AS rev_sq_c
                   FROM ({exposures}) e GROUP BY trigger_id, trigger)
             SELECT g.trigger, g.trigger_id, g.n_t, g.conv_t, c.rate_a, g.n_c, g.conv_c, c.rate_b,
                    c.uplift, c.relative_uplift, c.ci_low, c.ci_high, c.z, c.ci_low > 0 OR c.ci_high < 0,
                    c.revenue_per_customer_a, c.revenue_per_customer_b, c.revenue_uplift, c.revenue_ci_low, c.revenue_ci_high
               FROM groups g,
                    LATERAL engage.compare_groups(g.n_t, g.conv_t, g.rev_t, g.rev_sq_t, g.n_c, g.conv_c, g.rev_c, g.rev_sq_c) c"
        );
        let spend = format!(
            "SELECT f.trigger_id, count(*) AS messages, count(*) FILTER (WHERE f.first_to_customer) AS recipients,
                    sum(f.cost) AS cost
               FROM engage.message_facts_of({EVERYONE}) f GROUP BY f.trigger_id"
        );
        // Volume in buckets that have decisions or sends (the rest of the grid is zeros).
        let volume = |bucket: &str| {
            format!(
                "WITH origin AS (SELECT date_bin('{bucket}', timestamptz '2026-01-03' - interval '7 days',
                                                 timestamptz '2000-01-01') AS first_bucket),
                      decided AS (
                          SELECT d.trigger_id, date_bin('{bucket}', d.occurred_at, timestamptz '2000-01-01') AS b,
                                 count(*) AS evaluated, count(*) FILTER (WHERE d.outcome = 'fired') AS fired,
                                 count(*) FILTER (WHERE d.outcome = 'held_out') AS held_out,
                                 count(*) FILTER (WHERE d.outcome = 'suppressed') AS suppressed,
                                 count(*) FILTER (WHERE d.reason = 'cap') AS cap,
                                 count(*) FILTER (WHERE d.reason = 'conflict') AS conflict,
                                 count(*) FILTER (WHERE d.reason = 'frequency') AS frequency,
                                 count(*) FILTER (WHERE d.reason = 'consent') AS consent,
                                 count(*) FILTER (WHERE d.reason = 'suppression') AS suppression
                            FROM engage.decisions d, origin WHERE d.occurred_at >= origin.first_bucket GROUP BY 1, 2),
                      sent AS (
                          SELECT m.trigger_id, date_bin('{bucket}', m.sent_at, timestamptz '2000-01-01') AS b, count(*) AS sent
                            FROM engage.messages m, origin WHERE m.sent_at >= origin.first_bucket GROUP BY 1, 2)
                 SELECT t.name, x.trigger_id, x.b, coalesce(evaluated, 0), coalesce(fired, 0), coalesce(held_out, 0),
                        coalesce(suppressed, 0), coalesce(cap, 0), coalesce(conflict, 0), coalesce(frequency, 0),
                        coalesce(consent, 0), coalesce(suppression, 0), coalesce(sent, 0)
                   FROM decided FULL JOIN sent USING (trigger_id, b)
                   CROSS JOIN LATERAL (SELECT trigger_id, b) x
                   JOIN engage.triggers t ON t.id = x.trigger_id
                  WHERE x.b >= date_bin('{bucket}', timestamptz '2026-01-03', timestamptz '2000-01-01')"
            )
        };
        let volume_view = |bucket: &str| {
            format!(
                "SELECT trigger, trigger_id, bucket_start, evaluated, fired, held_out, suppressed, suppressed_cap,
                        suppressed_conflict, suppressed_frequency, suppressed_consent, suppressed_suppression, sent
                   FROM engage.trigger_volume_in('{bucket}', '2026-01-03') WHERE evaluated > 0 OR sent > 0"
            )
        };
        [
            (
                "SELECT * FROM engage.trigger_fire_rate".to_string(),
                "SELECT t.name, d.trigger_id, count(*), count(*) FILTER (WHERE d.outcome = 'fired'),
                        count(*) FILTER (WHERE d.outcome = 'held_out'), count(*) FILTER (WHERE d.outcome = 'suppressed'),
                        round(count(*) FILTER (WHERE d.outcome = 'fired') / count(*)::numeric, 4),
                        jsonb_strip_nulls(jsonb_build_object(
                            'cap', round(count(*) FILTER (WHERE d.reason = 'cap') / count(*)::numeric, 4),
                            'conflict', round(count(*) FILTER (WHERE d.reason = 'conflict') / count(*)::numeric, 4),
                            'frequency', round(count(*) FILTER (WHERE d.reason = 'frequency') / count(*)::numeric, 4),
                            'consent', round(count(*) FILTER (WHERE d.reason = 'consent') / count(*)::numeric, 4),
                            'suppression', round(count(*) FILTER (WHERE d.reason = 'suppression') / count(*)::numeric, 4)))
                   FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
                  GROUP BY t.name, d.trigger_id"
                    .to_string(),
            ),
            (volume_view("6 hours"), volume("6 hours")),
            (volume_view("1 day"), volume("1 day")),
            (
                "SELECT * FROM engage.trigger_response_rates".to_string(),
                format!(
                    "SELECT t.name, f.trigger_id, f.channel, count(*), count(f.delivered_at), count(f.opened_at),
                            count(f.clicked_at), count(f.replied_at), count(f.unsubscribed_at),
                            round(count(f.delivered_at) / count(*)::numeric, 4), round(count(f.opened_at) / count(*)::numeric, 4),
                            round(count(f.clicked_at) / count(*)::numeric, 4), round(count(f.replied_at) / count(*)::numeric, 4),
                            round(count(f.unsubscribed_at) / count(*)::numeric, 4)
                       FROM engage.message_facts_of({EVERYONE}) f JOIN engage.triggers t ON t.id = f.trigger_id
                      GROUP BY t.name, f.trigger_id, f.channel"
                ),
            ),
            ("SELECT * FROM engage.trigger_revenue".to_string(), revenue.clone()),
            ("SELECT * FROM engage.holdout_uplift".to_string(), uplift.clone()),
            (
                "SELECT * FROM engage.variant_results".to_string(),
                format!(
                    "WITH arms AS (
                         SELECT t.id AS trigger_id, v.name AS variant, v.position
                           FROM engage.triggers t,
                                jsonb_array_elements_text(t.compiled -> 'variants') WITH ORDINALITY AS v(name, position)
                     ), groups AS (
                         SELECT x.trigger_id, x.trigger, x.variant, count(*) AS n, count(*) FILTER (WHERE x.converted) AS conv,
                                sum(x.revenue) AS rev, sum(x.revenue * x.revenue) AS rev_sq
                           FROM ({exposures}) x WHERE NOT x.control AND x.variant IS NOT NULL
                          GROUP BY x.trigger_id, x.trigger, x.variant)
                     SELECT g.trigger, g.trigger_id, g.variant, a.position, g.n, g.conv, c.rate_a, c.revenue_per_customer_a,
                            ref.variant, c.uplift, c.ci_low, c.ci_high, c.z, c.ci_low > 0 OR c.ci_high < 0
                       FROM groups g
                       JOIN arms a ON a.trigger_id = g.trigger_id AND a.variant = g.variant
                       JOIN arms r1 ON r1.trigger_id = g.trigger_id AND r1.position = 1
                       LEFT JOIN groups ref ON ref.trigger_id = g.trigger_id AND ref.variant = r1.variant,
                            LATERAL engage.compare_groups(g.n, g.conv, g.rev, g.rev_sq, ref.n, ref.conv, ref.rev, ref.rev_sq) c"
                ),
            ),
            (
                "SELECT * FROM engage.trigger_roi".to_string(),
                format!(
                    "WITH spend AS ({spend}),
                          earned AS (SELECT trigger_id, sum(revenue) AS revenue FROM ({revenue}) r
                                      WHERE model = 'last_touch' GROUP BY trigger_id),
                          uplift AS ({uplift})
                     SELECT t.name, t.id, s.messages, s.recipients, s.cost, coalesce(e.revenue, 0),
                            coalesce(e.revenue, 0) - s.cost, round((coalesce(e.revenue, 0) - s.cost) / nullif(s.cost, 0), 4),
                            round(coalesce(e.revenue, 0) / nullif(s.recipients, 0), 4),
                            u.revenue_uplift * u.n_t, u.revenue_uplift * u.n_t - s.cost
                       FROM spend s JOIN engage.triggers t ON t.id = s.trigger_id
                       LEFT JOIN earned e ON e.trigger_id = s.trigger_id
                       LEFT JOIN uplift u ON u.trigger_id = s.trigger_id"
                ),
            ),
        ]
    }

    /// Latency percentiles that are not within 4.3% of the order statistic of rank
    /// floor(q (n - 1)) of the messages sent since `since`, and message counts that differ.
    fn latency_misses(since: &str) -> Option<String> {
        text(&format!(
            "WITH facts AS (
                 SELECT f.trigger_id, f.channel, m.measure, m.seconds
                   FROM engage.message_facts_of({EVERYONE}) f,
                        LATERAL (VALUES (1, extract(epoch FROM f.decided_at - f.occurred_at)::float8),
                                        (2, extract(epoch FROM f.queued_at - f.decided_at)::float8),
                                        (3, extract(epoch FROM f.sent_at - f.scheduled_at)::float8),
                                        (4, extract(epoch FROM f.sent_at - f.occurred_at)::float8)) m(measure, seconds)
                  WHERE f.sent_at >= '{since}' AND m.seconds IS NOT NULL
             ), exact AS (
                 SELECT trigger_id, channel, measure, q.i,
                        (array_agg(seconds ORDER BY seconds))[floor(q.q * (count(*) - 1))::int + 1] AS x
                   FROM facts, (VALUES (1, 0.50), (2, 0.95), (3, 0.99)) q(i, q)
                  GROUP BY trigger_id, channel, measure, q.i, q.q
             ), sketched AS (
                 SELECT l.trigger_id, l.channel, m.measure, q.i, m.p[q.i] AS v
                   FROM engage.trigger_latency_in('{since}') l,
                        LATERAL (VALUES (1, l.occurred_to_decided_s), (2, l.decided_to_queued_s),
                                        (3, l.due_to_sent_s), (4, l.occurred_to_sent_s)) m(measure, p),
                        generate_series(1, 3) q(i)
                  WHERE m.p IS NOT NULL
             ), counted AS (
                 SELECT f.trigger_id, f.channel, count(*) AS n FROM engage.message_facts_of({EVERYONE}) f
                  WHERE f.sent_at >= '{since}' GROUP BY 1, 2
             )
             SELECT nullif(concat_ws('; ',
                        (SELECT string_agg(concat_ws(' ', 'percentile', trigger_id, channel, measure, i, x, v), '; ')
                           FROM exact e FULL JOIN sketched s USING (trigger_id, channel, measure, i)
                          WHERE NOT coalesce(abs(s.v - e.x) <= 0.0433 * abs(e.x) + 1e-9, false)),
                        (SELECT string_agg(concat_ws(' ', 'messages', trigger_id, channel, c.n, l.messages), '; ')
                           FROM counted c FULL JOIN engage.trigger_latency_in('{since}') l USING (trigger_id, channel)
                          WHERE c.n IS DISTINCT FROM l.messages)), '')"
        ))
    }

    /// Asserts that every totals-backed view equals its recomputation, and that the latency
    /// percentiles are within their bound, over the whole history and since a time inside a day.
    #[track_caller]
    fn assert_views_match_recomputation(stage: &str) {
        for (view, reference) in views_and_recomputations() {
            let differences = text(&format!(
                "SELECT string_agg(d::text, E'\n') FROM (
                     (SELECT 'view', * FROM ({view}) v EXCEPT ALL SELECT 'view', * FROM ({reference}) r)
                     UNION ALL
                     (SELECT 'recomputed', * FROM ({reference}) r EXCEPT ALL SELECT 'recomputed', * FROM ({view}) v)) d"
            ));
            assert_eq!(differences, None, "{stage}: {view} differs from its recomputation");
        }
        for since in ["-infinity", "2026-01-04 13:17:05.25+00"] {
            assert_eq!(latency_misses(since), None, "{stage}: trigger_latency_in('{since}')");
        }
    }

    /// Writes `events` random events of `customers` customers, with their decisions, sent
    /// messages, responses and purchases, behind the insert path's back, and marks the customers
    /// they touch. A restore (`restored`) writes decisions and sends at times of its own, which
    /// engage.rebuild_metrics must then count; otherwise they are written as the insert path and
    /// the deliverer write them, stamped with the transaction's start (now()) or later.
    fn random_history(customers: i32, events: i32, restored: bool) {
        let stamped = if restored { "e.occurred_at" } else { "now()" };
        run("SET LOCAL session_replication_role = replica");
        run("CREATE TEMP TABLE IF NOT EXISTS fresh (id bigint) ON COMMIT DROP");
        run("TRUNCATE fresh");
        run(&format!(
            "WITH e AS (
                 INSERT INTO engage.events (customer_id, name, properties, occurred_at)
                 SELECT 'r' || (random() * {customers})::int,
                        (ARRAY['cart', 'browse', 'signup', 'purchase', 'purchase'])[1 + floor(random() * 5)::int],
                        CASE WHEN random() < 0.9 THEN jsonb_build_object('amount', round((random() * 100)::numeric, 2))
                             ELSE '{{}}' END,
                        timestamptz '2026-01-01 00:00+00' + random() * interval '10 days'
                   FROM generate_series(1, {events})
                 RETURNING id)
             INSERT INTO fresh SELECT id FROM e"
        ));
        run(&format!("INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, decided_at,
                                           outcome, reason, variant)
             SELECT e.id, t.id, 1, e.customer_id, e.occurred_at,
                    {stamped} + CASE WHEN r.late < 0.1 THEN interval '0' ELSE power(10, r.late * 4) * interval '100 us' END,
                    r.outcome, CASE WHEN r.outcome = 'suppressed' THEN 'cap' END,
                    CASE WHEN t.compiled -> 'variants' <> '[]' AND r.outcome <> 'suppressed'
                         THEN (ARRAY['a', 'b'])[1 + (r.arm > 0.5)::int] END
               FROM engage.events e JOIN fresh USING (id)
               JOIN engage.triggers t ON t.definition ->> 'event' = e.name,
                    LATERAL (SELECT CASE WHEN random() < 0.6 THEN 'fired' WHEN random() < 0.5 THEN 'held_out'
                                         ELSE 'suppressed' END::engage.decision_outcome AS outcome,
                                    random() AS late, random() + e.id * 0 AS arm) r"));
        run("INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, template, due_at, scheduled_at,
                                        status, sent_at, created_at)
             SELECT d.event_id, d.trigger_id, d.customer_id, (ARRAY['email', 'sms'])[1 + (random() > 0.5)::int], 't',
                    d.occurred_at, d.decided_at + random() * interval '1 minute', 'sent', d.decided_at, d.decided_at
               FROM engage.decisions d JOIN fresh f ON f.id = d.event_id
              WHERE d.outcome = 'fired'");
        run("INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, queued_at,
                                          sent_at, attempts, cost, variant)
             SELECT o.id, o.event_id, o.trigger_id, o.customer_id, o.channel, o.template,
                    o.created_at + CASE WHEN random() < 0.5 THEN interval '0' ELSE random() * interval '50 ms' END,
                    o.scheduled_at + CASE WHEN random() < 0.1 THEN interval '0' ELSE power(10, random() * 6) * interval '1 ms' END,
                    1, CASE WHEN random() < 0.2 THEN 0 ELSE round(random()::numeric, 4) END, d.variant
               FROM engage.outbox o JOIN fresh f ON f.id = o.event_id
               JOIN engage.decisions d ON d.event_id = o.event_id AND d.trigger_id = o.trigger_id");
        // Responses to about half of the new messages, some of them twice.
        run("INSERT INTO engage.events (customer_id, name, properties, occurred_at)
             SELECT m.customer_id, k.name, jsonb_build_object('message_id', 'msg_' || m.outbox_id),
                    m.sent_at + random() * interval '3 hours'
               FROM engage.messages m JOIN fresh f ON f.id = m.event_id,
                    LATERAL (SELECT n AS name FROM unnest(ARRAY['message_delivered', 'message_opened', 'message_clicked',
                                                                 'message_replied', 'unsubscribe', 'message_opened']) n
                              WHERE random() < 0.3) k");
        run("SET LOCAL session_replication_role = origin");
        run("INSERT INTO engage.metrics_dirty (customer_id)
             SELECT DISTINCT e.customer_id FROM engage.events e JOIN fresh USING (id)");
    }

    #[pg_test]
    fn running_totals_and_histograms_equal_a_recomputation_on_random_histories() {
        run(r#"SELECT engage.create_trigger('held', '{"event": "cart", "holdout": 0.3, "action": {"channel": "webhook"},
                "goal": {"event": "purchase", "within": "1d", "value": "amount"}}')"#);
        run(r#"SELECT engage.create_trigger('arms', '{"event": "cart", "action": {"channel": "webhook"},
                "variants": [{"name": "a"}, {"name": "b"}], "goal": {"event": "purchase", "within": "2d", "value": "amount"}}')"#);
        run(r#"SELECT engage.create_trigger('browse', '{"event": "browse", "action": {"channel": "webhook"},
                "goal": {"event": "purchase", "within": "12h", "value": "amount"}}')"#);
        run(r#"SELECT engage.create_trigger('welcome', '{"event": "signup", "action": {"channel": "webhook"}}')"#);
        for seed in [0.11, -0.5, 0.93] {
            run(&format!("SELECT setseed({seed})"));
            run("TRUNCATE engage.events, engage.decisions, engage.outbox, engage.messages, engage.metrics_dirty,
                          engage.rollup_messages, engage.rollup_touches, engage.rollup_exposures, engage.totals_messages,
                          engage.totals_touches, engage.totals_exposures, engage.latency_histograms, engage.volume_counts");
            run("TRUNCATE engage.volume_changes");
            run("UPDATE engage.volume_counted SET before = '-infinity'");
            random_history(40, 600, true);
            assert_views_match_recomputation(&format!("seed {seed}: marked, never refreshed"));
            run("SELECT engage.rebuild_metrics()");
            assert_views_match_recomputation(&format!("seed {seed}: rebuilt"));
            // A history with every kind of figure in it.
            assert_eq!(
                text("SELECT concat_ws('/', (SELECT count(DISTINCT channel) FROM engage.rollup_messages),
                                            (SELECT count(DISTINCT trigger_id) FROM engage.rollup_touches),
                                            (SELECT count(DISTINCT (control, variant)) FROM engage.rollup_exposures),
                                            (SELECT bool_or(cost = 0) AND bool_or(opened_at IS NOT NULL)
                                               FROM engage.rollup_messages))")
                .as_deref(),
                Some("2/3/6/t"),
                "seed {seed}"
            );
            for round in 0..4 {
                let stage = format!("seed {seed}, round {round}");
                random_history(40, 60, false);
                assert_views_match_recomputation(&format!("{stage}: new history marked"));
                run("SELECT engage.refresh_metrics(1 + (random() * 8)::int)");
                assert_views_match_recomputation(&format!("{stage}: partly refreshed"));
                // Events forgotten (purchases, responses, triggering events), as retention or an
                // erasure does: the customers are marked.
                run("WITH gone AS (
                         DELETE FROM engage.events WHERE customer_id IN (
                             SELECT customer_id FROM engage.messages ORDER BY random() LIMIT 2) AND random() < 0.7
                         RETURNING customer_id)
                     INSERT INTO engage.metrics_dirty (customer_id) SELECT DISTINCT customer_id FROM gone");
                assert_views_match_recomputation(&format!("{stage}: events forgotten"));
                // Decisions turned into conflicts after they were counted, as the insert path
                // does when a better rival arrives later; it marks their customers.
                run("WITH replaced AS (
                         UPDATE engage.decisions SET outcome = 'suppressed', reason = 'conflict'
                          WHERE outcome = 'fired' AND random() < 0.1
                         RETURNING customer_id)
                     INSERT INTO engage.metrics_dirty (customer_id) SELECT DISTINCT customer_id FROM replaced");
                assert_views_match_recomputation(&format!("{stage}: decisions replaced"));
                // A goal that changes who converted: the trigger marks everyone it decided for.
                run(&format!(
                    r#"SELECT engage.update_trigger('browse', '{{"event": "browse", "action": {{"channel": "webhook"}},
                        "goal": {{"event": "purchase", "within": "{}h", "value": "amount"}}}}')"#,
                    6 + 6 * round
                ));
                assert_views_match_recomputation(&format!("{stage}: goal changed"));
                while count("SELECT engage.refresh_metrics(1 + (random() * 25)::int)") > 0 {}
                assert_views_match_recomputation(&format!("{stage}: refreshed"));
            }
            assert!(count("SELECT count(*) FROM engage.latency_histograms") > 0);
            assert!(count("SELECT count(*) FROM engage.totals_exposures WHERE variant IS NOT NULL") > 0);
        }
    }
}
