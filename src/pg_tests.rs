//! In-database tests (`cargo pgrx test`): each runs inside one transaction that is rolled back,
//! so they cover what happens within a transaction; tests/ covers commits and other sessions.

/// `cargo pgrx test` calls these in a schema named `tests`.
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or(0)
    }

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

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
    fn a_template_is_checked_when_saved() {
        run("INSERT INTO engage.templates (name, channel, subject, body) VALUES ('ok', 'email', 'Hi {{ profile.first_name | default: \"there\" }}', 'Body')");
        assert_eq!(count("SELECT count(*) FROM engage.templates"), 1);
    }

    #[pg_test(error = "invalid template: range (1..100000000) is longer than 1000")]
    fn an_unbounded_template_is_rejected_when_saved() {
        run("INSERT INTO engage.templates (name, channel, body) VALUES ('big', 'sms', '{% for i in (1..100000000) %}x{% endfor %}')");
    }

    #[pg_test(error = "permission denied for table channel_secrets")]
    fn channel_secrets_are_not_readable_by_other_roles() {
        run("CREATE ROLE engage_test_reader");
        run("GRANT USAGE ON SCHEMA engage TO engage_test_reader");
        run("GRANT SELECT ON engage.channels TO engage_test_reader");
        run("SET LOCAL ROLE engage_test_reader");
        assert_eq!(count("SELECT count(*) FROM engage.channels"), 0);
        run("SELECT * FROM engage.channel_secrets");
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

    #[pg_test(
        error = "trigger \"bad\": at $.cap.per: expected a duration like \"30m\", \"2h\" or \"7d\", got \"soon\""
    )]
    fn a_bad_duration_is_an_error_naming_its_path() {
        run(
            r#"SELECT engage.create_trigger('bad', '{"event": "x", "action": {"channel": "email", "template": "t"}, "cap": {"max": 1, "per": "soon"}}')"#,
        );
    }

    #[pg_test(error = "invalid trigger definition: at $.where: unknown operator \"greater\"")]
    fn a_direct_insert_of_a_bad_definition_is_rejected_by_the_domain() {
        run(
            r#"INSERT INTO engage.triggers (name, definition) VALUES ('bad', '{"event": "x", "where": {"property": "a", "greater": 1}, "action": {"channel": "webhook"}}')"#,
        );
    }

    #[pg_test(error = "trigger \"nope\" does not exist")]
    fn dropping_an_unknown_trigger_is_an_error() {
        run("SELECT engage.drop_trigger('nope')");
    }

    #[pg_test]
    fn every_public_function_has_a_comment() {
        let missing = text(
            "SELECT string_agg(p.proname, ', ') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'engage' AND obj_description(p.oid, 'pg_proc') IS NULL",
        );
        assert_eq!(missing, None);
    }

    /// The value sets Rust and SQL share have one SQL definition each, a domain listing exactly
    /// the values of the Rust enum, and every column holding a channel is checked against it.
    #[pg_test]
    fn each_shared_value_set_is_one_domain_listing_the_rust_enum() {
        fn domain_values(domain: &str) -> Vec<String> {
            let check = text(&format!(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.contypid = 'engage.{domain}'::regtype"
            ))
            .unwrap_or_default();
            let mut values: Vec<String> = check.split('\'').skip(1).step_by(2).map(str::to_string).collect();
            values.sort();
            values
        }
        fn sorted(values: impl Iterator<Item = &'static str>) -> Vec<String> {
            let mut v: Vec<String> = values.map(str::to_string).collect();
            v.sort();
            v
        }
        assert_eq!(domain_values("channel"), sorted(crate::rule::Channel::ALL.iter().map(|c| c.as_str())));
        assert_eq!(domain_values("suppression_reason"), sorted(crate::policy::Reason::ALL.iter().map(|r| r.as_str())));
        let checked = text(
            "SELECT string_agg(c.conrelid::regclass::text, ', ' ORDER BY c.conrelid::regclass::text) FROM pg_constraint c
              WHERE c.contype = 'c' AND c.connamespace = 'engage'::regnamespace
                AND pg_get_constraintdef(c.oid) LIKE '%::engage.channel%'",
        );
        assert_eq!(
            checked.as_deref(),
            Some(
                "engage.channels, engage.frequency_caps, engage.messages, engage.outbox, engage.suppressions, \
                 engage.templates"
            )
        );
        // The suppression list takes a channel or "all", checked by the domain.
        run("INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('c1', 'all', 'manual'), ('c1', 'sms', 'manual')");
        let refused = PgTryBuilder::new(|| {
            run("INSERT INTO engage.suppressions (customer_id, channel, reason) VALUES ('c2', 'fax', 'manual')");
            false
        })
        .catch_others(|_| true)
        .execute();
        assert!(refused, "a suppression on an unknown channel is refused");
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
        assert_eq!(
            text("SELECT string_agg(concat_ws('/', trigger, channel, messages, occurred_to_decided_s[1], due_to_sent_s[1],
                                              occurred_to_sent_s[3]), ' ' ORDER BY trigger)
                    FROM engage.trigger_latency_in('2025-12-01')").as_deref(),
            Some("browse/sms/1/0.005/1/1 cart/email/2/0.005/0/0")
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

    // ---- scheduled and threshold triggers (sql/scheduler.sql) -------------------------------

    /// Ticks at `moment` and returns how many occasions fired, over all triggers.
    fn tick(moment: &str) -> i64 {
        count(&format!("SELECT coalesce(sum(fired), 0)::int8 FROM engage.tick('{moment}', ahead_of_now => true)"))
    }

    /// The decisions of a trigger: customer@event time (UTC, minutes)=outcome, in time order.
    fn decided(trigger: &str) -> String {
        text(&format!(
            "SELECT string_agg(d.customer_id || '@' || to_char(d.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || '=' || d.outcome,
                               ' ' ORDER BY d.occurred_at, d.customer_id)
               FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id WHERE t.name = '{trigger}'"
        ))
        .unwrap_or_default()
    }

    #[pg_test]
    fn inactivity_fires_once_per_episode_at_exactly_the_duration() {
        run(r#"SELECT engage.create_trigger('winback', '{"inactive": {"event": "purchase", "for": "30d"},
                "backfill": true, "action": {"channel": "webhook"}}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
               ('alice', 'purchase', '2026-01-01 10:00+00'),
               ('bob', 'purchase', '2026-01-01 10:00+00'), ('bob', 'purchase', '2026-01-20 10:00+00'),
               ('carol', 'purchase', '2026-01-01 10:00+00'), ('carol', 'purchase', '2026-01-31 10:00+00'),
               ('dave', 'page_viewed', '2026-01-01 10:00+00')");
        assert_eq!(tick("2026-01-31 09:59:59+00"), 0, "29 days 23:59:59 is not 30 days");
        // alice: exactly 30 days; carol bought again at that very moment, which ends the episode.
        assert_eq!(tick("2026-01-31 10:00+00"), 1);
        assert_eq!(decided("winback"), "alice@2026-01-31 10:00=fired");
        assert_eq!(tick("2026-01-31 10:00+00"), 0, "the same instant again fires nothing");
        run("DELETE FROM engage.tick_progress");
        assert_eq!(tick("2026-01-31 10:00+00"), 0, "nor does a tick that forgot its progress: the key holds");
        assert_eq!(tick("2026-03-01 00:00+00"), 1, "bob, 30 days after his second purchase");
        // alice buys again: a new episode, which fires 30 days later, after carol's.
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('alice', 'purchase', '2026-03-05 12:00+00')");
        assert_eq!(tick("2026-04-04 11:59+00"), 1);
        assert_eq!(tick("2026-04-04 11:00+00"), 0, "ticks only move forward");
        assert_eq!(tick("2026-04-04 12:00+00"), 1);
        assert_eq!(
            decided("winback"),
            "alice@2026-01-31 10:00=fired bob@2026-02-19 10:00=fired carol@2026-03-02 10:00=fired alice@2026-04-04 12:00=fired"
        );
        assert_eq!(
            text("SELECT properties ->> 'last_event_at' FROM engage.events WHERE name = 'trigger:winback' AND customer_id = 'bob'")
                .as_deref(),
            Some("2026-01-20T10:00:00+00:00")
        );
        assert_eq!(count("SELECT count(*) FROM engage.outbox o JOIN engage.triggers t ON t.id = o.trigger_id WHERE t.name = 'winback'"), 4);
    }

    #[pg_test]
    fn without_backfill_inactivity_starts_at_the_triggers_creation() {
        run(r#"SELECT engage.create_trigger('lapsed', '{"inactive": {"event": "login", "for": "7d"},
                "action": {"channel": "webhook"}}')"#);
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
               ('old', 'login', now() - interval '30 days'), ('recent', 'login', now() - interval '6 days')");
        assert_eq!(tick("now"), 0, "old was already lapsed when the trigger was created");
        assert_eq!(
            count("SELECT sum(fired)::int8 FROM engage.tick(now() + interval '1 day', ahead_of_now => true)"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM engage.decisions WHERE customer_id = 'recent'"), 1);
        assert_eq!(count("SELECT count(*) FROM engage.decisions WHERE customer_id = 'old'"), 0);
    }

    #[pg_test]
    fn anniversaries_and_dates_fire_at_local_time_with_feb_29_and_dst() {
        run(r#"SELECT engage.create_trigger('birthday', '{"anniversary": {"date": "birthday", "at": "09:00"},
                "action": {"channel": "webhook"}}')"#);
        run(r#"SELECT engage.create_trigger('renewal', '{"date": {"date": "renews_on", "before": "7d", "at": "09:00"},
                "action": {"channel": "webhook"}}')"#);
        run("UPDATE engage.triggers SET created_at = '2025-01-01'");
        run(
            r#"SELECT engage.identify('ny', '{"timezone": "America/New_York", "birthday": "1990-03-10", "renews_on": "2026-03-12"}')"#,
        );
        run(r#"SELECT engage.identify('tokyo', '{"timezone": "Asia/Tokyo", "birthday": "1990-03-10"}')"#);
        run(r#"SELECT engage.identify('leap', '{"birthday": "2000-02-29"}')"#);
        run(r#"SELECT engage.identify('mars', '{"timezone": "Mars/Olympus", "birthday": "1999-12-31T23:00:00"}')"#);
        run(r#"SELECT engage.identify('junk', '{"birthday": "soon", "renews_on": "2026-02-30x"}')"#);
        // The renewal is on 12 March (New York daylight time); 7 days before, 09:00 local, is
        // 5 March in standard time: 14:00 UTC, not 13:00.
        assert_eq!(tick("2026-03-05 13:59+00"), 0);
        assert_eq!(tick("2026-03-05 14:00+00"), 1);
        assert_eq!(decided("renewal"), "ny@2026-03-05 14:00=fired");
        // Tokyo's 09:00 on 10 March 2026 is 00:00 UTC; New York's (daylight time since 8 March) 13:00 UTC.
        assert_eq!(tick("2026-03-10 00:00+00"), 1);
        assert_eq!(tick("2026-03-10 12:59+00"), 0);
        assert_eq!(tick("2026-03-10 13:00+00"), 1);
        // 2027 has no 29 February: the 28th. 2028 has one.
        assert_eq!(tick("2027-02-28 08:59+00"), 0, "more than a day late: last year's are not sent now");
        assert_eq!(tick("2027-02-28 09:00+00"), 1);
        assert_eq!(tick("2028-02-28 09:00+00"), 0);
        assert_eq!(tick("2028-02-29 09:00+00"), 1);
        // An unknown zone falls back to engage.default_timezone (UTC): 31 December 09:00 UTC.
        assert_eq!(tick("2028-12-31 09:00+00"), 1);
        assert_eq!(
            decided("birthday"),
            "tokyo@2026-03-10 00:00=fired ny@2026-03-10 13:00=fired leap@2027-02-28 09:00=fired \
             leap@2028-02-29 09:00=fired mars@2028-12-31 09:00=fired"
        );
    }

    #[pg_test]
    fn a_minute_tick_reads_only_the_profiles_of_zones_whose_local_time_it_is() {
        run(r#"SELECT engage.create_trigger('birthday', '{"anniversary": {"date": "birthday", "at": "09:00"},
                "action": {"channel": "webhook"}}')"#);
        run("UPDATE engage.triggers SET created_at = '2025-01-01'");
        // 3,000 customers with a birthday on 10 March: in Tokyo, in Kolkata (UTC+05:30), under an
        // unknown zone name and under none (both the default zone, UTC).
        run(r#"INSERT INTO engage.profiles (customer_id, timezone, attributes)
               SELECT 'c' || n, (ARRAY['Asia/Tokyo', 'Asia/Kolkata', 'Mars/Olympus', NULL])[1 + n % 4],
                      '{"birthday": "1990-03-10"}' FROM generate_series(1, 3000) n"#);
        run("ANALYZE engage.profiles");
        run("SELECT count(*) FROM engage.tick('2026-03-09 20:00+00', ahead_of_now => true)");
        // A tick of the minute up to `moment`.
        let minute_tick = |moment: &str| {
            run(&format!("SELECT engage.set_tick_progress('birthday', timestamptz '{moment}' - interval '1 minute')"));
            tick(moment)
        };
        let profiles_read = || {
            count(
                "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables
                  WHERE relid = 'engage.profiles'::regclass",
            )
        };
        // Minutes in which it is 09:00 nowhere: at most a row per zone is read (the zones' list).
        for minute in ["2026-03-09 23:59+00", "2026-03-10 00:01+00", "2026-03-10 03:29+00", "2026-03-10 08:59+00"] {
            let before = profiles_read();
            assert_eq!(minute_tick(minute), 0, "{minute}");
            assert!(profiles_read() - before <= 4, "{minute}: {} profiles read", profiles_read() - before);
        }
        // 09:00 in Tokyo (00:00 UTC), Kolkata (03:30 UTC), and the default zone (09:00 UTC) for
        // the unknown zone and for no zone.
        assert_eq!(minute_tick("2026-03-10 00:00+00"), 750);
        assert_eq!(minute_tick("2026-03-10 03:30+00"), 750);
        assert_eq!(minute_tick("2026-03-10 09:00+00"), 1500);
        assert_eq!(count("SELECT count(DISTINCT customer_id) FROM engage.decisions WHERE outcome = 'fired'"), 3000);
    }

    #[pg_test]
    fn a_local_midnight_occasion_falls_on_the_customers_date_not_the_utc_one() {
        run(r#"SELECT engage.create_trigger('midnight', '{"anniversary": {"date": "birthday", "at": "00:30"},
                "action": {"channel": "webhook"}}')"#);
        run("UPDATE engage.triggers SET created_at = '2025-01-01'");
        run(r#"SELECT engage.identify('auckland', '{"timezone": "Pacific/Auckland", "birthday": "1990-03-10"}')"#);
        run(r#"SELECT engage.identify('honolulu', '{"timezone": "Pacific/Honolulu", "birthday": "1990-03-10"}')"#);
        // 10 March 00:30 in Auckland (UTC+13) is still 9 March in UTC; in Honolulu (UTC-10) it is 10:30 UTC.
        assert_eq!(tick("2026-03-09 11:29+00"), 0);
        assert_eq!(tick("2026-03-09 11:30+00"), 1);
        assert_eq!(tick("2026-03-10 10:29+00"), 0);
        assert_eq!(tick("2026-03-10 10:30+00"), 1);
        assert_eq!(decided("midnight"), "auckland@2026-03-09 11:30=fired honolulu@2026-03-10 10:30=fired");
        assert_eq!(
            text("SELECT string_agg(properties ->> 'occasion', ' ' ORDER BY occurred_at) FROM engage.events WHERE name = 'trigger:midnight'")
                .as_deref(),
            Some("2026-03-10 2026-03-10")
        );
    }

    #[pg_test]
    fn a_profile_attribute_fires_on_the_crossing_not_while_above() {
        run(r#"SELECT engage.create_trigger('hot_lead', '{"crosses": {"profile": "lead_score", "at_least": 80},
                "action": {"channel": "webhook"}}')"#);
        run(r#"SELECT engage.create_trigger('at_risk', '{"crosses": {"profile": "health.score", "below": 30},
                "action": {"channel": "webhook"}}')"#);
        // Each step: the new score, and how many times the trigger has fired so far.
        for (score, fired) in [(50, 0), (85, 1), (90, 1), (70, 1), (80, 2), (79, 2)] {
            run(&format!(r#"SELECT engage.identify('lead', '{{"lead_score": {score}}}')"#));
            assert_eq!(
                count("SELECT count(*) FROM engage.events WHERE name = 'trigger:hot_lead' AND customer_id = 'lead'"),
                fired,
                "after a score of {score}"
            );
        }
        assert_eq!(count("SELECT count(*) FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id WHERE t.name = 'hot_lead'"), 2);
        run(r#"SELECT engage.identify('born_hot', '{"lead_score": 95}')"#);
        run(r#"SELECT engage.identify('born_cold', '{"health": {"score": 10}}')"#);
        assert_eq!(
            count("SELECT count(*) FROM engage.events WHERE name = 'trigger:hot_lead' AND customer_id = 'born_hot'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM engage.events WHERE name = 'trigger:at_risk'"),
            0,
            "created low is not a fall"
        );
        run(r#"SELECT engage.identify('born_cold', '{"health": {"score": 40}}')"#);
        run(r#"SELECT engage.identify('born_cold', '{"health": {"score": 29.5}}')"#);
        assert_eq!(
            text("SELECT properties ->> 'before' || '>' || (properties ->> 'after') FROM engage.events WHERE name = 'trigger:at_risk'")
                .as_deref(),
            Some("40>29.5")
        );
    }

    #[pg_test]
    fn a_windowed_sum_fires_when_it_crosses_and_again_after_falling_back() {
        run(
            r#"SELECT engage.create_trigger('gold', '{"crosses": {"event": "purchase", "sum": "amount", "within": "365d", "at_least": 1000},
                "action": {"channel": "webhook"}}')"#,
        );
        let buy = |amount: i32, at: &str| {
            run(&format!(
                "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
                 VALUES ('c', 'purchase', '{{\"amount\": {amount}}}', '{at}')"
            ))
        };
        buy(400, "2026-01-01 00:00+00");
        buy(500, "2026-03-01 00:00+00");
        assert_eq!(decided("gold"), "", "900");
        buy(200, "2026-06-01 00:00+00");
        assert_eq!(decided("gold"), "c@2026-06-01 00:00=fired", "1,100: crossed");
        buy(300, "2026-07-01 00:00+00");
        // 2027-01-01 00:00 is exactly 365 days after the first purchase, which leaves the window.
        buy(100, "2027-01-01 00:00+00");
        buy(50, "2027-05-01 00:00+00");
        assert_eq!(decided("gold"), "c@2026-06-01 00:00=fired", "1,400, 1,100, 650: above or below, no new crossing");
        // Two purchases in one statement, the later one first: on 10 June the year holds
        // 300 + 100 + 50 + 200 = 650; on 20 June, 650 + 400 = 1,050: a new crossing.
        run("INSERT INTO engage.events (customer_id, name, properties, occurred_at) VALUES
               ('c', 'purchase', '{\"amount\": 400}', '2027-06-20 00:00+00'),
               ('c', 'purchase', '{\"amount\": 200}', '2027-06-10 00:00+00')");
        assert_eq!(decided("gold"), "c@2026-06-01 00:00=fired c@2027-06-20 00:00=fired");
        assert_eq!(
            text(
                "SELECT (properties ->> 'before') || '>' || (properties ->> 'after') FROM engage.events
                   WHERE name = 'trigger:gold' ORDER BY occurred_at DESC LIMIT 1"
            )
            .as_deref(),
            Some("650>1050")
        );
    }

    #[pg_test]
    fn a_prediction_fires_below_its_threshold_once_per_purchase_count() {
        run(r#"SELECT engage.create_trigger('slipping', '{"predicted": {"p_alive_below": 0.5, "min_purchases": 2},
                "backfill": true, "action": {"channel": "webhook"}}')"#);
        // The paper's CDNOW parameters (weeks).
        run("INSERT INTO engage.purchase_models (event, calibration_end, unit, customers, repeat_buyers, r, alpha, a, b,
                                                 log_likelihood, iterations, converged)
             VALUES ('purchase', '2026-01-01', '7 days', 2357, 1411, 0.243, 4.414, 0.793, 2.426, -9582.4, 1, true)");
        // steady: bought every 2 weeks until recently; gone: 5 purchases in early 2025, then nothing;
        // once: one purchase, below min_purchases whatever its p(alive).
        run("INSERT INTO engage.events (customer_id, name, occurred_at)
             SELECT 'steady', 'purchase', '2025-06-01'::timestamptz + n * interval '14 days' FROM generate_series(0, 14) n
             UNION ALL SELECT 'gone', 'purchase', '2025-01-01'::timestamptz + n * interval '7 days' FROM generate_series(0, 4) n
             UNION ALL SELECT 'once', 'purchase', '2025-01-01'");
        assert_eq!(tick("2026-01-05 06:00+00"), 1);
        assert_eq!(decided("slipping"), "gone@2026-01-05 06:00=fired");
        let p = text("SELECT properties ->> 'p_alive' FROM engage.events WHERE name = 'trigger:slipping'")
            .unwrap_or_default();
        let expected = text(
            "SELECT round(engage.bgnbd_p_alive(0.243, 4.414, 0.793, 2.426, frequency, recency, age)::numeric, 4)::text
               FROM engage.purchase_summaries('purchase', '2026-01-05', '7 days') WHERE customer_id = 'gone'",
        )
        .unwrap_or_default();
        assert_eq!(p, expected);
        assert!(p.parse::<f64>().is_ok_and(|p| p < 0.5), "{p}");
        assert_eq!(tick("2026-01-05 23:00+00"), 0, "once per day");
        assert_eq!(count("SELECT count(*) FROM engage.tick('2026-01-05 23:30+00') WHERE trigger = 'slipping'"), 0);
        assert_eq!(tick("2026-01-06 06:00+00"), 0, "the same episode does not fire again");
        // A new purchase re-arms it: the next time p(alive) is low, it fires again.
        run("INSERT INTO engage.events (customer_id, name, occurred_at) VALUES ('gone', 'purchase', '2026-01-07')");
        assert_eq!(tick("2026-01-08 06:00+00"), 0, "just bought: alive");
        assert_eq!(tick("2027-06-01 06:00+00"), 2, "a year and a half later, steady has slipped too");
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
