//! In-database tests of the insert path: decisions, caps, conflicts, policy, cancellation,
//! patterns, journeys and escalation, each in a rolled-back transaction.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{count, run, text};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_matching_event_is_decided_and_queued_in_its_own_statement() {
        run(r#"SELECT engage.create_trigger('big_cart', '{"event": "cart_updated",
                "where": {"property": "cart.value", "gt": 100},
                "action": {"channel": "email", "template": "cart", "payload": {"coupon": "X"}}}')"#);
        run(r#"INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
                ('c1', 'cart_updated', '{"cart": {"value": 150}}', '2026-01-01 10:00+00'),
                ('c2', 'cart_updated', '{"cart": {"value": 50}}',  '2026-01-01 10:00+00'),
                ('c3', 'page_viewed',  '{"cart": {"value": 500}}', '2026-01-01 10:00+00')"#);
        assert_eq!(count("SELECT count(*) FROM engage.decisions"), 1);
        assert_eq!(text("SELECT customer_id || ':' || outcome FROM engage.decisions").as_deref(), Some("c1:fired"));
        assert_eq!(
            text("SELECT concat_ws('|', customer_id, channel, template, payload::text, status, due_at = '2026-01-01 10:00+00') FROM engage.outbox")
                .as_deref(),
            Some(r#"c1|email|cart|{"coupon": "X"}|pending|t"#)
        );
    }

    #[pg_test]
    fn the_cap_counts_earlier_statements_and_earlier_rows_of_the_same_statement() {
        run(r#"SELECT engage.create_trigger('capped', '{"event": "ping",
                "action": {"channel": "sms", "template": "t"}, "cap": {"max": 2, "per": "1h"}}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'ping', '2026-01-01 10:00+00')");
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
                ('c1', 'ping', '2026-01-01 10:40+00'), ('c1', 'ping', '2026-01-01 10:20+00'),
                ('c1', 'ping', '2026-01-01 11:00+00')");
        // 10:00 fired; 10:20 fired (1 before); 10:40 capped (2 in window); 11:00 window (10:00, 11:00] holds 10:20 only -> fired
        assert_eq!(
            text("SELECT string_agg(to_char(occurred_at AT TIME ZONE 'UTC', 'HH24:MI') || '=' || coalesce(reason, outcome), ',' ORDER BY occurred_at) FROM engage.decisions")
                .as_deref(),
            Some("10:00=fired,10:20=fired,10:40=cap,11:00=fired")
        );
        assert_eq!(count("SELECT count(*) FROM engage.outbox"), 3);
    }

    #[pg_test]
    fn the_higher_priority_wins_and_the_other_is_a_conflict() {
        run(
            r#"SELECT engage.create_trigger('low', '{"event": "signed_up", "priority": 1, "action": {"channel": "email", "template": "a"}}')"#,
        );
        run(
            r#"SELECT engage.create_trigger('high', '{"event": "signed_up", "priority": 5, "action": {"channel": "sms", "template": "b"}}')"#,
        );
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'signed_up')");
        assert_eq!(
            text("SELECT string_agg(t.name || '=' || coalesce(d.reason, d.outcome), ',' ORDER BY t.name) FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id")
                .as_deref(),
            Some("high=fired,low=conflict")
        );
        assert_eq!(text("SELECT channel FROM engage.outbox").as_deref(), Some("sms"));
    }

    #[pg_test]
    fn triggers_compete_only_within_the_conflict_window() {
        run(
            r#"SELECT engage.create_trigger('welcome', '{"event": "signed_up", "priority": 1, "action": {"channel": "email", "template": "w"}}')"#,
        );
        run(
            r#"SELECT engage.create_trigger('cart', '{"event": "cart_updated", "priority": 9, "action": {"channel": "email", "template": "c"}}')"#,
        );
        let day = "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
                   ('CUST', 'signed_up', '2026-01-01 08:00+00'), ('CUST', 'cart_updated', '2026-01-01 09:00+00')";
        run(&day.replace("CUST", "c1"));
        run("SET LOCAL engage.conflict_window = '2h'");
        run(&day.replace("CUST", "c2"));
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || coalesce(reason, outcome), ',' ORDER BY customer_id, occurred_at) FROM engage.decisions")
                .as_deref(),
            Some("c1:fired,c1:fired,c2:conflict,c2:fired")
        );
    }

    #[pg_test]
    fn a_preferred_channel_action_queues_on_the_customers_choice_with_the_rest_as_fallback() {
        run(
            r#"SELECT engage.create_trigger('t', '{"event": "e", "action": {"channel": "preferred", "fallback": ["email", "sms"], "template": "x"}}')"#,
        );
        run(r#"SELECT engage.identify('c1', '{"preferred_channel": "sms"}')"#);
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'e'), ('c2', 'e')");
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || channel || ':' || fallback::text, ',' ORDER BY customer_id) FROM engage.outbox").as_deref(),
            Some("c1:sms:{email},c2:email:{sms}")
        );
    }

    #[pg_test]
    fn a_waiting_cart_reminder_is_cancelled_by_a_purchase_of_that_cart_before_it_is_due() {
        run(r#"SELECT engage.create_trigger('cart_abandoned', '{"event": "cart_updated", "wait": "2h",
                "cancel_on": [{"event": "order_completed", "same": ["cart.id"]}],
                "action": {"channel": "email", "template": "cart"}}')"#);
        // c1..c5 each leave cart k at 10:00 (due 12:00); then:
        run(r#"INSERT INTO engage.events (customer_id, name, properties, occurred_at)
               SELECT 'c' || i, 'cart_updated', '{"cart": {"id": "k"}}', '2026-01-01 10:00+00' FROM generate_series(1, 5) i"#);
        run(r#"INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
               ('c1', 'order_completed', '{"cart": {"id": "k"}, "amount": 5}', '2026-01-01 11:00+00'),  -- cancels
               ('c2', 'order_completed', '{"cart": {"id": "other"}}',          '2026-01-01 11:00+00'),  -- another cart
               ('c3', 'order_completed', '{"cart": {"id": "k"}}',              '2026-01-01 12:30+00'),  -- after due
               ('c4', 'order_completed', '{"cart": {"id": "k"}}',              '2026-01-01 09:00+00'),  -- before the cart (late arrival)
               ('c5', 'page_viewed',     '{"cart": {"id": "k"}}',              '2026-01-01 11:00+00')   -- not a cancelling event"#);
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || status, ',' ORDER BY customer_id) FROM engage.outbox")
                .as_deref(),
            Some("c1:cancelled,c2:pending,c3:pending,c4:pending,c5:pending")
        );
        assert_eq!(count("SELECT count(*) FROM engage.outbox WHERE due_at = '2026-01-01 12:00+00'"), 5);
        assert_eq!(
            text("SELECT last_error FROM engage.outbox o JOIN engage.events e ON e.id = o.cancelled_by WHERE o.customer_id = 'c1' AND e.name = 'order_completed'")
                .map(|t| t.starts_with("cancelled by event")),
            Some(true)
        );
    }

    #[pg_test]
    fn a_purchase_in_the_same_statement_cancels_the_reminder_it_queued() {
        run(r#"SELECT engage.create_trigger('cart_abandoned', '{"event": "cart_updated", "wait": "1h",
                "cancel_on": [{"event": "order_completed"}], "action": {"channel": "sms", "template": "cart"}}')"#);
        run(r#"INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
               ('c1', 'cart_updated', '2026-01-01 10:00+00'), ('c1', 'order_completed', '2026-01-01 10:20+00')"#);
        assert_eq!(text("SELECT status FROM engage.outbox").as_deref(), Some("cancelled"));
    }

    #[pg_test]
    fn a_holdout_keeps_the_same_customers_in_control_and_sends_them_nothing() {
        run(
            r#"SELECT engage.create_trigger('welcome', '{"event": "signed_up", "holdout": 0.5, "action": {"channel": "webhook"}}')"#,
        );
        run(
            "INSERT INTO engage.events (customer_id, name) SELECT 'c' || i, 'signed_up' FROM generate_series(1, 400) i",
        );
        let held = count("SELECT count(*) FROM engage.decisions WHERE outcome = 'held_out'");
        assert!((140..=260).contains(&held), "about half of 400 in control, got {held}");
        assert_eq!(count("SELECT count(*) FROM engage.outbox"), 400 - held, "control customers get no message");
        assert_eq!(count("SELECT count(*) FROM engage.decisions WHERE outcome = 'held_out' AND reason IS NOT NULL"), 0);
        // The same customers again: the same group each time.
        run(
            "INSERT INTO engage.events (customer_id, name) SELECT 'c' || i, 'signed_up' FROM generate_series(1, 400) i",
        );
        assert_eq!(
            count("SELECT count(*) FROM (SELECT customer_id FROM engage.decisions GROUP BY customer_id HAVING count(DISTINCT outcome) > 1) t"),
            0
        );
    }

    #[pg_test]
    fn a_definition_change_applies_to_the_next_statement_of_the_same_transaction() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "a", "action": {"channel": "push", "template": "x"}}')"#);
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'a')");
        run(r#"SELECT engage.update_trigger('t', '{"event": "b", "action": {"channel": "push", "template": "x"}}')"#);
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'a'), ('c1', 'b')");
        run("SELECT engage.disable_trigger('t')");
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'b')");
        assert_eq!(
            text("SELECT string_agg(e.name || ':v' || d.trigger_version, ',' ORDER BY e.id) FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id")
                .as_deref(),
            Some("a:v1,b:v2")
        );
    }

    #[pg_test]
    fn a_repeated_idempotency_key_is_stored_and_decided_once() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "order", "action": {"channel": "webhook"}}')"#);
        assert!(Spi::get_one::<i64>("SELECT engage.track('c1', 'order', '{}', now(), 'k1')").unwrap().is_some());
        assert_eq!(Spi::get_one::<i64>("SELECT engage.track('c1', 'order', '{}', now(), 'k1')").unwrap(), None);
        run("INSERT INTO engage.events (customer_id, name, idempotency_key) VALUES ('c1', 'order', 'k2'), ('c1', 'order', 'k2')");
        assert_eq!(count("SELECT count(*) FROM engage.events"), 2);
        assert_eq!(count("SELECT count(*) FROM engage.decisions"), 2);
    }

    #[pg_test]
    fn identify_merges_traits_used_by_profile_predicates() {
        run(r#"SELECT engage.create_trigger('vip', '{"event": "login",
                "where": {"all": [{"profile": "tier", "eq": "gold"}, {"profile": "email", "exists": true}]},
                "action": {"channel": "email", "template": "vip"}}')"#);
        run(r#"SELECT engage.identify('c1', '{"email": "a@example.com", "tier": "silver"}')"#);
        run(r#"SELECT engage.identify('c1', '{"tier": "gold"}')"#);
        run(r#"SELECT engage.identify('c2', '{"tier": "gold"}')"#);
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c1', 'login'), ('c2', 'login'), ('c3', 'login')");
        assert_eq!(text("SELECT string_agg(customer_id, ',') FROM engage.decisions").as_deref(), Some("c1"));
        assert_eq!(
            text("SELECT email FROM engage.profiles WHERE customer_id = 'c1'").as_deref(),
            Some("a@example.com")
        );
    }

    /// "customer:outcome-or-reason:channel" per decision of trigger `t`, in customer order.
    fn outcomes() -> Option<String> {
        text(
            "SELECT string_agg(d.customer_id || ':' || coalesce(d.reason, d.outcome) || ':' || coalesce(o.channel, '-'), ','
                                ORDER BY d.customer_id, d.occurred_at)
               FROM engage.decisions d
               LEFT JOIN engage.outbox o ON o.event_id = d.event_id AND o.trigger_id = d.trigger_id",
        )
    }

    #[pg_test]
    fn consent_and_the_suppression_list_pick_the_channel_or_suppress_with_a_reason() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "e",
                "action": {"channel": "email", "fallback": ["sms"], "template": "x"}}')"#);
        run(r#"SELECT engage.create_trigger('receipt', '{"event": "order", "category": "transactional",
                "action": {"channel": "email", "template": "r"}}')"#);
        run(r#"INSERT INTO engage.profiles (customer_id, consent) VALUES
               ('a_ok', '{}'), ('b_no_email', '{"email": false}'), ('c_no_all', '{"all": false}'),
               ('d_all_but_sms', '{"all": false, "sms": true}'), ('e_listed', '{}'), ('f_listed_all', '{}')"#);
        run("INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES
               ('e_listed', 'email', 'hard_bounce'), ('f_listed_all', 'all', 'legal')");
        run("INSERT INTO engage.events (customer_id, name)
             SELECT customer_id, 'e' FROM engage.profiles UNION ALL SELECT 'g_no_profile', 'e'");
        assert_eq!(
            outcomes().as_deref(),
            Some(
                "a_ok:fired:email,b_no_email:fired:sms,c_no_all:consent:-,d_all_but_sms:fired:sms,\
                  e_listed:fired:sms,f_listed_all:suppression:-,g_no_profile:fired:email"
            )
        );
        // A transactional message ignores opt-outs, not the suppression list.
        run("DELETE FROM engage.decisions; DELETE FROM engage.outbox");
        run("INSERT INTO engage.events (customer_id, name) VALUES ('c_no_all', 'order'), ('f_listed_all', 'order')");
        assert_eq!(outcomes().as_deref(), Some("c_no_all:fired:email,f_listed_all:suppression:-"));
    }

    #[pg_test]
    fn an_opt_in_channel_needs_a_subscribe_and_an_unsubscribe_event_opts_out() {
        run("INSERT INTO engage.channels (kind, requires_opt_in) VALUES ('sms', true)");
        run(r#"SELECT engage.create_trigger('t', '{"event": "e", "action": {"channel": "sms", "template": "x"}}')"#);
        run("SELECT engage.subscribe('yes', 'sms')");
        run("INSERT INTO engage.events (customer_id, name) VALUES ('yes', 'e'), ('silent', 'e')");
        assert_eq!(outcomes().as_deref(), Some("silent:consent:-,yes:fired:sms"));
        // Unsubscribing and an event in the same statement: the opt-out applies to that statement.
        run(r#"INSERT INTO engage.events (customer_id, name, properties) VALUES
               ('yes', 'unsubscribe', '{"channel": "sms"}'), ('yes', 'e', '{}')"#);
        assert_eq!(
            text("SELECT consent::text FROM engage.profiles WHERE customer_id = 'yes'").as_deref(),
            Some(r#"{"sms": false}"#)
        );
        assert_eq!(count("SELECT count(*) FROM engage.decisions WHERE customer_id = 'yes' AND reason = 'consent'"), 1);
        run("SELECT engage.unsubscribe('yes')");
        assert_eq!(
            text("SELECT consent::text FROM engage.profiles WHERE customer_id = 'yes'").as_deref(),
            Some(r#"{"all": false}"#)
        );
    }

    #[pg_test]
    fn frequency_caps_count_messages_across_triggers_per_customer_and_channel() {
        run("INSERT INTO engage.frequency_caps (channel, max_messages, per) VALUES (NULL, 2, '24 hours'), ('sms', 1, '24 hours')");
        for (name, channel, priority) in [("a", "email", 1), ("b", "sms", 2), ("c", "sms", 3), ("d", "push", 4)] {
            run(&format!(
                r#"SELECT engage.create_trigger('{name}', '{{"event": "{name}", "priority": {priority},
                    "action": {{"channel": "{channel}", "template": "x"}}}}')"#
            ));
        }
        run(r#"SELECT engage.create_trigger('receipt', '{"event": "r", "category": "transactional",
                "action": {"channel": "sms", "template": "x"}}')"#);
        // Spread over a day, each in its own statement (so no conflicts: 10 minutes apart or more).
        for (name, at) in [("a", "00:00"), ("b", "01:00"), ("r", "01:30"), ("c", "02:00"), ("d", "03:00")] {
            run(&format!("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', '{name}', '2026-01-01 {at}+00')"));
        }
        // a, b fired (2 of 2); r is transactional (not counted); c over the sms cap; d over the global one.
        assert_eq!(
            text(
                "SELECT string_agg(t.name || '=' || coalesce(d.reason, d.outcome), ',' ORDER BY d.occurred_at)
                    FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id"
            )
            .as_deref(),
            Some("a=fired,b=fired,receipt=fired,c=frequency,d=frequency")
        );
        // A day after the first message, the window has room again.
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'd', '2026-01-02 00:00+00')");
        assert_eq!(
            count(
                "SELECT count(*) FROM engage.decisions WHERE occurred_at = '2026-01-02 00:00+00' AND outcome = 'fired'"
            ),
            1
        );
    }

    #[pg_test]
    fn a_higher_priority_trigger_in_a_later_statement_replaces_a_pending_message() {
        run(
            r#"SELECT engage.create_trigger('low', '{"event": "browse", "priority": 1, "action": {"channel": "email", "template": "x"}}')"#,
        );
        run(
            r#"SELECT engage.create_trigger('high', '{"event": "cart", "priority": 9, "action": {"channel": "email", "template": "y"}}')"#,
        );
        run(
            r#"SELECT engage.create_trigger('lowest', '{"event": "view", "priority": 0, "action": {"channel": "email", "template": "z"}}')"#,
        );
        run(
            "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'browse', '2026-01-01 10:00+00')",
        );
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'cart', '2026-01-01 10:05+00')");
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'view', '2026-01-01 10:07+00')");
        assert_eq!(
            text("SELECT string_agg(t.name || '=' || coalesce(d.reason, d.outcome) || '/' || o.status || coalesce('/' || o.reason, ''), ','
                                    ORDER BY d.occurred_at)
                    FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
                    LEFT JOIN engage.outbox o ON o.event_id = d.event_id AND o.trigger_id = d.trigger_id").as_deref(),
            Some("low=conflict/suppressed/conflict,high=fired/pending")
        );
        // A message already handed to a deliverer stands: the better trigger is the conflict then.
        run("UPDATE engage.outbox SET status = 'claimed' WHERE status = 'pending'");
        run(
            r#"SELECT engage.create_trigger('top', '{"event": "vip", "priority": 99, "action": {"channel": "email", "template": "v"}}')"#,
        );
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c1', 'vip', '2026-01-01 10:08+00')");
        assert_eq!(count("SELECT count(*) FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id WHERE t.name = 'top' AND d.reason = 'conflict'"), 1);
        assert_eq!(count("SELECT count(*) FROM engage.outbox WHERE status IN ('pending', 'claimed')"), 1);
    }

    #[pg_test]
    fn variants_are_recorded_on_the_decision_and_the_message_with_their_own_wait() {
        run(r#"SELECT engage.create_trigger('cart', '{"event": "cart", "wait": "1h", "holdout": 0.2,
                "action": {"channel": "email", "template": "x"},
                "variants": [{"name": "1h"}, {"name": "6h", "wait": "6h", "template": "y"}]}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) SELECT 'c' || i, 'cart', '2026-01-01 00:00+00' FROM generate_series(1, 400) i");
        assert_eq!(
            count("SELECT count(*) FROM engage.decisions WHERE variant IS NULL"),
            0,
            "control decisions carry their variant too"
        );
        assert_eq!(
            count("SELECT count(*) FROM engage.outbox o JOIN engage.decisions d USING (event_id, trigger_id)
                    WHERE o.variant IS DISTINCT FROM d.variant
                       OR (o.variant, o.template, o.due_at) NOT IN (('1h', 'x', '2026-01-01 01:00+00'), ('6h', 'y', '2026-01-01 06:00+00'))"),
            0
        );
        let six = count("SELECT count(*) FROM engage.decisions WHERE variant = '6h'");
        assert!((150..=250).contains(&six), "about half of 400 in each variant, got {six}");
        // Stable: the same customers again get the same variants.
        run("INSERT INTO engage.events (customer_id, name, occurred_at) SELECT 'c' || i, 'cart', '2026-01-02 00:00+00' FROM generate_series(1, 400) i");
        assert_eq!(count("SELECT count(*) FROM (SELECT customer_id FROM engage.decisions GROUP BY 1 HAVING count(DISTINCT variant) > 1) t"), 0);
    }

    #[pg_test]
    fn a_marketing_message_due_in_quiet_hours_is_queued_for_their_local_end() {
        run("INSERT INTO engage.channels (kind, quiet_hours_start, quiet_hours_end) VALUES ('sms', '21:00', '08:00')");
        run(
            r#"SELECT engage.create_trigger('promo', '{"event": "e", "action": {"channel": "sms", "template": "x"}}')"#,
        );
        run(
            r#"SELECT engage.create_trigger('otp', '{"event": "login", "category": "transactional", "action": {"channel": "sms", "template": "x"}}')"#,
        );
        run(r#"SELECT engage.identify('ny', '{"timezone": "America/New_York"}')"#);
        run(r#"SELECT engage.identify('tokyo', '{"timezone": "Asia/Tokyo"}')"#);
        // 03:00 UTC: 22:00 in New York (quiet until 08:00 EST = 13:00 UTC); 12:00 in Tokyo (not quiet).
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
               ('ny', 'e', '2026-01-10 03:00+00'), ('tokyo', 'e', '2026-01-10 03:00+00'), ('ny', 'login', '2026-01-10 03:00+00')");
        assert_eq!(
            text("SELECT string_agg(customer_id || '@' || to_char(due_at AT TIME ZONE 'UTC', 'HH24:MI') || '=' || to_char(scheduled_at AT TIME ZONE 'UTC', 'HH24:MI'), ','
                                    ORDER BY customer_id, due_at) FROM engage.outbox").as_deref(),
            Some("ny@03:00=03:00,ny@13:00=13:00,tokyo@03:00=03:00")
        );
    }

    // Patterns, journeys, escalation (issue 4) ---------------------------------------------------

    /// Decisions as "event name@HH:MI=outcome", in event order.
    fn outcomes_of(trigger: &str) -> String {
        text(&format!(
            "SELECT string_agg(e.name || '@' || to_char(e.occurred_at AT TIME ZONE 'UTC', 'DD HH24:MI') || '=' || coalesce(d.reason, d.outcome),
                               ',' ORDER BY e.occurred_at, e.id)
               FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id
               JOIN engage.triggers t ON t.id = d.trigger_id WHERE t.name = '{trigger}'"
        ))
        .unwrap_or_default()
    }

    fn event(customer: &str, name: &str, properties: &str, at: &str) {
        run(&format!(
            "INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES ('{customer}', '{name}', '{properties}', '{at}')"
        ));
    }

    #[pg_test]
    fn browse_abandonment_fires_at_the_third_view_of_one_sku_in_a_week_unless_it_was_bought() {
        run(r#"SELECT engage.create_trigger('browse', '{
                "pattern": {"count": {"event": "product_view", "at_least": 3}, "within": "7d", "same": ["sku"],
                            "unless": [{"event": "purchase"}]},
                "action": {"channel": "webhook"}}')"#);
        let view = |c: &str, sku: &str, at: &str| event(c, "product_view", &format!(r#"{{"sku": "{sku}"}}"#), at);
        // ann: three views of sku a, the third exactly seven days after the first (inclusive edge).
        view("ann", "a", "2026-03-01 10:00+00");
        view("ann", "b", "2026-03-02 10:00+00");
        view("ann", "a", "2026-03-05 10:00+00");
        view("ann", "a", "2026-03-08 10:00+00");
        view("ann", "a", "2026-03-08 10:00+00"); // a fourth at the same moment: complete before it
                                                 // ben: the first view is one microsecond too old.
        view("ben", "a", "2026-03-01 10:00+00");
        view("ben", "a", "2026-03-05 10:00+00");
        view("ben", "a", "2026-03-08 10:00:00.000001+00");
        // cat: bought sku a in between.
        view("cat", "a", "2026-03-01 10:00+00");
        event("cat", "purchase", r#"{"sku": "a"}"#, "2026-03-02 10:00+00");
        view("cat", "a", "2026-03-03 10:00+00");
        view("cat", "a", "2026-03-04 10:00+00");
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || outcome, ',') FROM engage.decisions").as_deref(),
            Some("ann:fired")
        );
        assert_eq!(outcomes_of("browse"), "product_view@08 10:00=fired");
    }

    #[pg_test]
    fn at_most_fires_at_a_rare_event() {
        run(r#"SELECT engage.create_trigger('back', '{
                "pattern": {"count": {"event": "login", "at_most": 1}, "within": "30d"}, "action": {"channel": "webhook"}}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
             ('c', 'login', '2026-01-01'), ('c', 'login', '2026-01-05'), ('c', 'login', '2026-02-10')");
        assert_eq!(outcomes_of("back"), "login@01 00:00=fired,login@10 00:00=fired");
    }

    #[pg_test]
    fn all_of_and_any_of_fire_when_the_combination_completes() {
        run(r#"SELECT engage.create_trigger('both', '{
                "pattern": {"all_of": [{"event": "pricing_viewed"}, {"event": "demo_booked", "where": {"property": "size", "gte": 50}}],
                            "within": "1d"}, "action": {"channel": "webhook"}}')"#);
        run(r#"SELECT engage.create_trigger('either', '{
                "pattern": {"any_of": [{"event": "pricing_viewed"}, {"event": "demo_booked"}], "within": "1d"},
                "category": "transactional", "action": {"channel": "webhook"}}')"#);
        event("c", "demo_booked", r#"{"size": 10}"#, "2026-01-01 09:00+00");
        event("c", "pricing_viewed", "{}", "2026-01-01 10:00+00");
        event("c", "demo_booked", r#"{"size": 80}"#, "2026-01-01 11:00+00");
        event("c", "pricing_viewed", "{}", "2026-01-01 12:00+00");
        event("c", "pricing_viewed", "{}", "2026-01-03 12:00+00");
        assert_eq!(outcomes_of("both"), "demo_booked@01 11:00=fired");
        // 'either' is transactional so that the two triggers do not conflict with each other.
        assert_eq!(outcomes_of("either"), "demo_booked@01 09:00=fired,pricing_viewed@03 12:00=fired");
    }

    #[pg_test]
    fn a_sequence_not_followed_by_a_purchase_waits_and_is_cancelled_by_one() {
        run(r#"SELECT engage.create_trigger('checkout', '{
                "pattern": {"sequence": [{"event": "cart"}, {"event": "checkout_started"}], "within": "1h", "same": ["cart_id"],
                            "not_followed_by": {"event": "order", "within": "30m", "same": ["cart_id"]}},
                "action": {"channel": "webhook"}}')"#);
        // Out of order within the sequence: no fire. In order: fires, due 30 minutes later.
        // c: cart 1's steps come in the wrong order, then 65 minutes apart (out of the window);
        // cart 2 completes. d completes too.
        event("c", "checkout_started", r#"{"cart_id": 1}"#, "2026-01-01 10:00+00");
        event("c", "cart", r#"{"cart_id": 1}"#, "2026-01-01 10:05+00");
        event("c", "cart", r#"{"cart_id": 2}"#, "2026-01-01 11:00+00");
        event("c", "checkout_started", r#"{"cart_id": 1}"#, "2026-01-01 11:10+00");
        event("c", "checkout_started", r#"{"cart_id": 2}"#, "2026-01-01 11:20+00");
        event("d", "cart", r#"{"cart_id": 3}"#, "2026-01-01 11:00+00");
        event("d", "checkout_started", r#"{"cart_id": 3}"#, "2026-01-01 11:10+00");
        assert_eq!(outcomes_of("checkout"), "checkout_started@01 11:10=fired,checkout_started@01 11:20=fired");
        // Not followed by: c orders cart 2 within 30 minutes (cancelled); d orders another cart.
        event("c", "order", r#"{"cart_id": 2}"#, "2026-01-01 11:49+00");
        event("d", "order", r#"{"cart_id": 9}"#, "2026-01-01 11:20+00");
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || status || ':' || to_char(due_at AT TIME ZONE 'UTC', 'HH24:MI'), ',' ORDER BY customer_id)
                    FROM engage.outbox").as_deref(),
            Some("c:cancelled:11:50,d:pending:11:40")
        );
    }

    #[pg_test]
    fn a_late_event_completes_the_pattern_at_the_stored_event_it_now_precedes() {
        run(r#"SELECT engage.create_trigger('three', '{
                "pattern": {"count": {"event": "view", "at_least": 3}, "within": "1d"}, "action": {"channel": "webhook"}}')"#);
        event("c", "view", "{}", "2026-01-01 10:00+00");
        event("c", "view", "{}", "2026-01-01 12:00+00");
        assert_eq!(outcomes_of("three"), "");
        // 11:00 arrives last: in event order the third view is the one at 12:00.
        event("c", "view", "{}", "2026-01-01 11:00+00");
        assert_eq!(outcomes_of("three"), "view@01 12:00=fired");
        // 09:00 arrives later still: the crossing is now at 11:00, which is decided too; the
        // 12:00 decision stands (nothing is taken back), and nothing is decided twice.
        event("c", "view", "{}", "2026-01-01 09:00+00");
        assert_eq!(outcomes_of("three"), "view@01 11:00=fired,view@01 12:00=fired");
        // 09:30: in event order the third view is now the stored one at 10:00.
        event("c", "view", "{}", "2026-01-01 09:30+00");
        assert_eq!(outcomes_of("three"), "view@01 10:00=fired,view@01 11:00=fired,view@01 12:00=fired");
    }

    #[pg_test]
    fn replaying_a_history_in_one_statement_decides_as_live_arrival_in_event_order() {
        run(r#"SELECT engage.create_trigger('seq', '{
                "pattern": {"sequence": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "within": "3h",
                            "unless": [{"event": "x"}]}, "category": "transactional", "action": {"channel": "webhook"}}')"#);
        run(r#"SELECT engage.create_trigger('pair', '{
                "pattern": {"count": {"event": "b", "at_least": 2}, "within": "2h"}, "category": "transactional",
                "action": {"channel": "webhook"}}')"#);
        let history = [
            ("a", "00:00"),
            ("b", "00:30"),
            ("b", "01:00"),
            ("c", "01:30"),
            ("c", "02:00"),
            ("x", "02:10"),
            ("a", "02:20"),
            ("b", "02:40"),
            ("c", "03:00"),
            ("a", "05:30"),
            ("b", "06:00"),
            ("b", "06:00"),
            ("c", "06:30"),
            ("b", "09:00"),
        ];
        for (name, at) in history {
            event("live", name, "{}", &format!("2026-01-01 {at}+00"));
        }
        // The same history in one statement, rows in reverse order.
        let rows: Vec<String> =
            history.iter().rev().map(|(n, at)| format!("('replay', '{n}', '2026-01-01 {at}+00')")).collect();
        run(&format!("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES {}", rows.join(", ")));
        let of = |c: &str| {
            text(&format!(
                "SELECT string_agg(t.name || ':' || e.name || '@' || to_char(e.occurred_at AT TIME ZONE 'UTC', 'HH24:MI'), ','
                                   ORDER BY e.occurred_at, t.name)
                   FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id JOIN engage.triggers t ON t.id = d.trigger_id
                  WHERE d.customer_id = '{c}'"
            ))
        };
        assert_eq!(of("live"), of("replay"));
        // a 00:00, b 00:30, c 01:30 completes; the x at 02:10 blocks the window of 03:00;
        // a 05:30, b 06:00, c 06:30 completes again. Pairs of b: 01:00 and 06:00 (the second
        // 06:00 is already complete) and 02:40 (01:00 and 02:40 are 100 minutes apart).
        assert_eq!(of("live").as_deref(), Some("pair:b@01:00,seq:c@01:30,pair:b@02:40,pair:b@06:00,seq:c@06:30"));
    }

    #[pg_test]
    fn a_late_trigger_event_is_cancelled_by_the_cancelling_event_stored_before_it() {
        run(r#"SELECT engage.create_trigger('abandoned', '{"event": "cart", "wait": "2h",
                "cancel_on": [{"event": "order", "same": ["cart_id"]}], "action": {"channel": "webhook"}}')"#);
        event("c", "order", r#"{"cart_id": 1}"#, "2026-01-01 10:30+00");
        event("c", "order", r#"{"cart_id": 2}"#, "2026-01-01 09:00+00");
        event("c", "cart", r#"{"cart_id": 1}"#, "2026-01-01 10:00+00");
        event("c", "cart", r#"{"cart_id": 2}"#, "2026-01-01 10:00+00");
        assert_eq!(
            text("SELECT string_agg(o.payload::text || o.status || coalesce(':' || (e.properties ->> 'cart_id'), ''), ',' ORDER BY o.id)
                    FROM engage.outbox o LEFT JOIN engage.events e ON e.id = o.cancelled_by").as_deref(),
            // cart 1: its order (10:30) is stored already and falls in the wait; cart 2's order
            // came before the cart (09:00), so it does not cancel it.
            Some("{}cancelled:1,{}pending")
        );
    }

    #[pg_test]
    fn a_welcome_series_queues_its_steps_exits_on_purchase_and_is_entered_once_at_a_time() {
        run(r#"SELECT engage.create_trigger('welcome', '{"event": "signed_up",
                "steps": [{"action": {"channel": "email", "template": "welcome"}},
                          {"wait": "2d", "action": {"channel": "email", "template": "tips"}, "cancel_on": [{"event": "tips_read"}]},
                          {"wait": "5d", "action": {"channel": "webhook", "payload": {"offer": 10}}}],
                "exit": [{"event": "purchase"}]}')"#);
        let outbox = || {
            text("SELECT string_agg(step || ':' || channel || ':' || to_char(due_at AT TIME ZONE 'UTC', 'DD') || ':' || status, ',' ORDER BY id)
                    FROM engage.outbox")
            .unwrap_or_default()
        };
        event("c", "signed_up", "{}", "2026-01-01 10:00+00");
        assert_eq!(outbox(), "0:email:01:pending,1:email:03:pending,2:webhook:06:pending");
        // A second sign-up while the journey is open does not enter.
        event("c", "signed_up", "{}", "2026-01-02 10:00+00");
        assert_eq!(outcomes_of("welcome"), "signed_up@01 10:00=fired,signed_up@02 10:00=reentry");
        // The purchase on day 4 exits: the day-6 step is cancelled; the day-3 step was due before.
        event("c", "purchase", "{}", "2026-01-04 10:00+00");
        assert_eq!(outbox(), "0:email:01:pending,1:email:03:pending,2:webhook:06:cancelled");
        // The purchase also ended the membership, in event time, with nothing delivered: a
        // sign-up after it enters again; after the last step's due time (day 6 + 5) too.
        event("c", "signed_up", "{}", "2026-01-04 11:00+00");
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
             ('c', 'signed_up', '2026-02-01 10:00+00'), ('c', 'signed_up', '2026-02-01 11:00+00')");
        assert_eq!(
            outcomes_of("welcome"),
            "signed_up@01 10:00=fired,signed_up@02 10:00=reentry,signed_up@04 11:00=fired,\
             signed_up@01 10:00=fired,signed_up@01 11:00=reentry"
        );
        assert_eq!(count("SELECT count(*) FROM engage.outbox WHERE status = 'pending'"), 8);
    }

    #[pg_test]
    fn a_journey_match_the_policy_suppresses_does_not_enter_and_the_next_one_may() {
        run("SET engage.conflict_window = 0");
        run("INSERT INTO engage.frequency_caps (channel, max_messages, per) VALUES (NULL, 1, '30 minutes')");
        run(r#"SELECT engage.create_trigger('news', '{"event": "b", "action": {"channel": "webhook"}}')"#);
        run(r#"SELECT engage.create_trigger('drip', '{"event": "a",
                "steps": [{"action": {"channel": "webhook"}}, {"wait": "1h", "action": {"channel": "webhook"}}]}')"#);
        // Row by row, and in one statement in another order: the 00:10 match is suppressed by the
        // frequency cap (news went out at 00:00), so it never entered and the 00:40 one enters.
        for (at, name) in [("00:00", "b"), ("00:10", "a"), ("00:40", "a")] {
            event("row_by_row", name, "{}", &format!("2026-01-01 {at}+00"));
        }
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
             ('one_statement', 'a', '2026-01-01 00:40+00'), ('one_statement', 'b', '2026-01-01 00:00+00'),
             ('one_statement', 'a', '2026-01-01 00:10+00')");
        for customer in ["row_by_row", "one_statement"] {
            assert_eq!(
                text(&format!(
                    "SELECT string_agg(to_char(e.occurred_at AT TIME ZONE 'UTC', 'HH24:MI') || '=' || coalesce(d.reason, d.outcome), ','
                                       ORDER BY e.occurred_at)
                       FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id
                      WHERE d.customer_id = '{customer}' AND e.name = 'a'"
                ))
                .as_deref(),
                Some("00:10=frequency,00:40=fired"),
                "{customer}"
            );
        }
    }

    #[pg_test]
    fn a_journey_replaced_by_a_better_trigger_withdraws_every_pending_step_and_nothing_else() {
        run(r#"SELECT engage.create_trigger('series', '{"event": "browse", "priority": 1,
                "steps": [{"action": {"channel": "email", "template": "a"}},
                          {"wait": "1d", "action": {"channel": "email", "template": "b"}}],
                "escalate": {"action": {"channel": "webhook", "payload": {"team": "sales"}}}}')"#);
        run(r#"SELECT engage.create_trigger('offer', '{"event": "cart", "priority": 9,
                "action": {"channel": "email", "template": "offer"}}')"#);
        event("c", "browse", "{}", "2026-01-01 10:00+00");
        event("other", "browse", "{}", "2026-01-01 10:00+00");
        event("c", "cart", "{}", "2026-01-01 10:05+00");
        assert_eq!(outcomes_of("series"), "browse@01 10:00=conflict,browse@01 10:00=fired");
        assert_eq!(
            text("SELECT string_agg(o.customer_id || ':' || o.category || ':' || o.step || ':' || o.status
                                    || coalesce(':' || regexp_replace(o.last_error, '[0-9]+', 'N', 'g'), ''), ',' ORDER BY o.id)
                    FROM engage.outbox o").as_deref(),
            Some("c:escalation:0:pending,c:marketing:0:suppressed:conflict: replaced by trigger N (event N),\
                  c:marketing:1:suppressed:conflict: replaced by trigger N (event N),\
                  other:escalation:0:pending,other:marketing:0:pending,other:marketing:1:pending,\
                  c:marketing:0:pending")
        );
    }

    #[pg_test(error = "engage.outbox has a column the insert path does not write: note")]
    fn an_altered_outbox_is_refused_by_name_rather_than_written_wrong() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "e", "action": {"channel": "webhook"}}')"#);
        run("ALTER TABLE engage.outbox ADD COLUMN note text NOT NULL DEFAULT 'x'");
        event("c", "e", "{}", "2026-01-01 10:00+00");
    }

    #[pg_test(error = "engage.decisions has a column of another type than the insert path writes: variant")]
    fn a_decisions_column_of_another_type_is_refused_by_name() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "e", "action": {"channel": "webhook"}}')"#);
        run("ALTER TABLE engage.decisions ALTER COLUMN variant TYPE varchar(10)");
        event("c", "e", "{}", "2026-01-01 10:00+00");
    }

    #[pg_test]
    fn a_message_row_holds_every_column_an_insert_would_have_given_it() {
        run(r#"SELECT engage.create_trigger('t', '{"event": "e", "wait": "1h",
                "action": {"channel": "preferred", "fallback": ["sms", "email"], "template": "x", "payload": {"a": [1, "b"]}},
                "cancel_on": [{"event": "stop", "same": ["k"]}]}')"#);
        run("SELECT engage.identify('c', '{\"preferred_channel\": \"push\"}')");
        event("c", "e", r#"{"k": 7}"#, "2026-01-01 10:00+00");
        assert_eq!(
            text("SELECT concat_ws('|', o.id = (SELECT last_value FROM engage.outbox_id_seq), o.event_id = e.id, o.channel,
                                   o.fallback::text, o.template, o.payload::text, o.due_at = e.occurred_at + interval '1 hour',
                                   o.scheduled_at = o.due_at, o.cancel_on::text, o.cancelled_by IS NULL, o.category, o.step,
                                   o.status, o.reason IS NULL, o.attempts, o.lease, o.lease_until IS NULL, o.claimed_by IS NULL,
                                   o.sent_at IS NULL, o.last_error IS NULL, o.created_at = now(),
                                   (SELECT d.decided_at = now() AND d.outcome = 'fired' AND d.reason IS NULL FROM engage.decisions d))
                    FROM engage.outbox o JOIN engage.events e ON e.id = o.event_id").as_deref(),
            Some(r#"t|t|push|{sms,email}|x|{"a": [1, "b"]}|t|t|[{"same": {"k": 7}, "event": "stop"}]|t|marketing|0|pending|t|0|0|t|t|t|t|t|t"#)
        );
    }

    #[pg_test]
    fn reentry_once_lets_a_customer_in_a_single_time() {
        run(r#"SELECT engage.create_trigger('first_order', '{"event": "order", "reentry": "once",
                "action": {"channel": "webhook"}}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('c', 'order', '2026-01-01'), ('c', 'order', '2027-06-01')");
        event("c", "order", "{}", "2030-01-01 00:00+00");
        assert_eq!(outcomes_of("first_order"), "order@01 00:00=fired,order@01 00:00=cap,order@01 00:00=cap");
    }

    #[pg_test]
    fn an_escalation_is_its_own_decision_and_message_to_the_team() {
        run(r#"SELECT engage.create_trigger('big_cart', '{"event": "cart", "wait": "1h",
                "action": {"channel": "email", "template": "cart"},
                "escalate": {"when": {"property": "value", "gte": 1000}, "action": {"channel": "webhook", "payload": {"team": "sales"}}}}')"#);
        run("SELECT engage.unsubscribe('vip')");
        run(r#"INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
               ('vip', 'cart', '{"value": 5000}', '2026-01-01 10:00+00'),
               ('small', 'cart', '{"value": 10}', '2026-01-01 10:00+00')"#);
        // vip opted out of marketing: no email, but the sales team still hears of the cart.
        assert_eq!(
            text("SELECT string_agg(customer_id || ':' || coalesce(reason, outcome), ',' ORDER BY customer_id) FROM engage.decisions").as_deref(),
            Some("small:fired,vip:consent")
        );
        assert_eq!(
            text("SELECT string_agg(o.customer_id || ':' || o.category || ':' || o.channel || ':' || o.payload::text
                                    || ':' || (x.outbox_id IS NOT NULL) || ':' || (o.due_at = '2026-01-01 10:00+00'), ',' ORDER BY o.id)
                    FROM engage.outbox o LEFT JOIN engage.escalations x ON x.outbox_id = o.id").as_deref(),
            Some(r#"vip:escalation:webhook:{"team": "sales"}:true:true,small:marketing:email:{}:false:false"#)
        );
    }
}
