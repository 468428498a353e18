//! In-database tests of scheduled and threshold triggers (sql/scheduler.sql, `engage.tick`).

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{count, run, text};
    use pgrx::prelude::*;

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

    /// The idempotency keys of occasions keep the form 0.1.0 stored them in, so an occasion
    /// fired before an update does not fire again after it.
    #[pg_test]
    fn occasion_keys_keep_their_stored_form() {
        assert_eq!(
            text("SELECT engage.occasion_key(7, 'c1', date '2026-03-01'::text) || ' ' || engage.occasion_key(7, 'c:2', 42::text)")
                .as_deref(),
            Some("trigger:7:c1:2026-03-01 trigger:7:c:2:42")
        );
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
}
