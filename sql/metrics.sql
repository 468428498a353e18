-- Analyst metrics: plain views over events, decisions, outbox and messages.
--
-- Conventions (README, "Metrics"):
--   * A trigger's goal ({"goal": {"event", "within", "value"}} in its definition) defines a
--     conversion: a goal event by the same customer after the message (attribution) or after the
--     triggering event (uplift), within `within` (the end inclusive), worth the number at `value`.
--   * Responses are events carrying the message id in properties.message_id ("msg_<outbox id>",
--     the id every channel sends): message_delivered, message_opened, message_clicked,
--     message_replied, message_bounced, message_complained, and unsubscribe.
--     engage.ingest_provider_event turns provider webhooks into such events.
--
-- Speed: the volume and fire-rate views read hourly counts, with what was decided or sent since
-- they were last advanced read through BRIN indexes on the time it was written (see "Volume
-- counts" below). Responses, attribution, exposures (uplift, experiments), latency and ROI read
-- per-customer rollups kept incrementally, and running totals over them (see "Rollups" and
-- "Running totals" below).

CREATE INDEX decisions_occurred_brin ON engage.decisions USING brin (occurred_at);
CREATE INDEX decisions_decided_brin ON engage.decisions USING brin (decided_at);
CREATE INDEX messages_sent_brin ON engage.messages USING brin (sent_at);
CREATE INDEX events_message_id ON engage.events ((properties ->> 'message_id'))
    WHERE properties ? 'message_id';

-- The number at a path (a compiled trigger's key array) of a JSON document (goals, crossings).
-- Inlined into the views' queries, so it pins nothing (a SET clause would stop the inlining):
-- every name in it is qualified instead.
CREATE FUNCTION engage.json_number(document jsonb, path text[]) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(document OPERATOR(pg_catalog.#>) path) OPERATOR(pg_catalog.=) 'number'
                THEN (document OPERATOR(pg_catalog.#>>) path)::pg_catalog.numeric END
$$;
COMMENT ON FUNCTION engage.json_number(jsonb, text[]) IS
    'The number at a path of a JSON document; NULL when absent or not a number.';

-- Goals, from the compiled definitions.
CREATE VIEW engage.trigger_goals AS
SELECT t.id AS trigger_id,
       t.name AS trigger,
       t.compiled -> 'goal' ->> 'event' AS goal_event,
       (t.compiled -> 'goal' ->> 'within_micros')::bigint * interval '1 microsecond' AS within,
       CASE WHEN t.compiled -> 'goal' -> 'value' <> 'null'
            THEN ARRAY(SELECT pg_catalog.jsonb_array_elements_text(t.compiled -> 'goal' -> 'value')) END AS value_path
  FROM engage.triggers t
 WHERE t.compiled -> 'goal' <> 'null';
COMMENT ON VIEW engage.trigger_goals IS
    'Each trigger''s conversion goal: goal event name, attribution window, and the property path of its value.';

-- 1. Volume over time -------------------------------------------------------------------------

-- Volume counts. Per trigger and hour: decisions by event time (evaluated, each outcome, the
-- suppression reasons shown) and messages by send time. They hold exactly the decisions decided
-- (decided_at) and the messages sent (sent_at) before engage.volume_counted.before, as they stood
-- then; the views add what was written since, read through BRIN indexes on decided_at and
-- sent_at, and the changes since to decisions counted before (engage.volume_changes: the insert
-- path turns a fired decision into a conflict when a better rival arrives later).
--
-- Both columns are the writing transaction's start time (now()), so a row written with a time
-- before a horizon comes from a transaction that started before it. engage.count_volume takes as
-- its horizon the start of the oldest transaction still open in this database, less a minute (a
-- backend stamps its statement a moment before its transaction shows in pg_stat_activity): every
-- row before it is committed, or never will be, when the counting statement takes its snapshot.
-- It does not advance in a transaction that is not READ COMMITTED (its snapshot would be older
-- than the horizon), while a prepared transaction waits (its start is unknown), or while a
-- backend of this database does not report its transactions (track_activities off). A long
-- transaction holds the counts back: the views stay exact and read more. So would a system clock
-- stepped back by more than a minute; rows written meanwhile would be missed until
-- engage.rebuild_metrics(). Writes that set these columns themselves (a restore, a bulk load)
-- need engage.rebuild_metrics() too; decisions that retention later deletes stay counted.
CREATE TABLE engage.volume_counts (
    hour timestamptz NOT NULL, trigger_id integer NOT NULL,
    evaluated bigint NOT NULL, fired bigint NOT NULL, held_out bigint NOT NULL, suppressed bigint NOT NULL,
    cap bigint NOT NULL, conflict bigint NOT NULL, frequency bigint NOT NULL, consent bigint NOT NULL,
    suppression bigint NOT NULL, sent bigint NOT NULL,
    PRIMARY KEY (hour, trigger_id)
);
COMMENT ON TABLE engage.volume_counts IS
    'Per hour and trigger: decisions by event time (evaluated, fired, held out, suppressed, and suppressed for cap, conflict, frequency, consent, suppression) and messages by send time, for everything decided or sent before engage.volume_counted.before.';

CREATE TABLE engage.volume_counted (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    before timestamptz NOT NULL
);
INSERT INTO engage.volume_counted (before) VALUES ('-infinity');
COMMENT ON TABLE engage.volume_counted IS
    'One row: engage.volume_counts holds the decisions with decided_at and the messages with sent_at before this time, and nothing else.';

CREATE TABLE engage.volume_changes (
    changed_at timestamptz NOT NULL DEFAULT now(), sign smallint NOT NULL CHECK (sign IN (-1, 1)),
    decided_at timestamptz NOT NULL, occurred_at timestamptz NOT NULL, trigger_id integer NOT NULL,
    outcome engage.decision_outcome NOT NULL, reason engage.suppression_reason
);
COMMENT ON TABLE engage.volume_changes IS
    'Updated decisions, each as its old row (sign -1) and its new row (sign 1), stamped with the updating transaction''s start; folded into engage.volume_counts by engage.count_volume, and removed then.';

CREATE FUNCTION engage.log_decision_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO engage.volume_changes (sign, decided_at, occurred_at, trigger_id, outcome, reason)
    SELECT -1, o.decided_at, o.occurred_at, o.trigger_id, o.outcome, o.reason FROM old_decisions o
    UNION ALL
    SELECT 1, n.decided_at, n.occurred_at, n.trigger_id, n.outcome, n.reason FROM new_decisions n;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION engage.log_decision_changes() IS
    'Statement trigger on engage.decisions: logs each updated decision''s old and new row in engage.volume_changes, so the volume counts follow a decision turned into a conflict after they counted it.';
CREATE TRIGGER log_decision_changes AFTER UPDATE ON engage.decisions
    REFERENCING OLD TABLE AS old_decisions NEW TABLE AS new_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION engage.log_decision_changes();

-- What a set of decisions and a set of messages add to the hourly counts: decisions decided in
-- [decided_since, decided_before) as they are, and changes logged in that range to decisions
-- decided before it (those counted as they were), with event times from `since`.
CREATE FUNCTION engage.volume_of(decided_since timestamptz, decided_before timestamptz, since timestamptz)
RETURNS TABLE (
    hour timestamptz, trigger_id integer,
    evaluated bigint, fired bigint, held_out bigint, suppressed bigint,
    cap bigint, conflict bigint, frequency bigint, consent bigint, suppression bigint, sent bigint
)
LANGUAGE sql STABLE AS $$
    SELECT x.hour, x.trigger_id, sum(x.evaluated)::bigint, sum(x.fired)::bigint, sum(x.held_out)::bigint,
           sum(x.suppressed)::bigint, sum(x.cap)::bigint, sum(x.conflict)::bigint, sum(x.frequency)::bigint,
           sum(x.consent)::bigint, sum(x.suppression)::bigint, sum(x.sent)::bigint
      FROM (SELECT date_bin('1 hour', d.occurred_at, timestamptz '2000-01-01 00:00+00') AS hour, d.trigger_id,
                   sum(d.sign) AS evaluated,
                   coalesce(sum(d.sign) FILTER (WHERE d.outcome = 'fired'), 0) AS fired,
                   coalesce(sum(d.sign) FILTER (WHERE d.outcome = 'held_out'), 0) AS held_out,
                   coalesce(sum(d.sign) FILTER (WHERE d.outcome = 'suppressed'), 0) AS suppressed,
                   coalesce(sum(d.sign) FILTER (WHERE d.reason = 'cap'), 0) AS cap,
                   coalesce(sum(d.sign) FILTER (WHERE d.reason = 'conflict'), 0) AS conflict,
                   coalesce(sum(d.sign) FILTER (WHERE d.reason = 'frequency'), 0) AS frequency,
                   coalesce(sum(d.sign) FILTER (WHERE d.reason = 'consent'), 0) AS consent,
                   coalesce(sum(d.sign) FILTER (WHERE d.reason = 'suppression'), 0) AS suppression,
                   0 AS sent
              FROM (SELECT 1 AS sign, d.occurred_at, d.trigger_id, d.outcome, d.reason
                      FROM engage.decisions d
                     WHERE d.decided_at >= decided_since AND d.decided_at < decided_before AND d.occurred_at >= since
                    UNION ALL
                    SELECT c.sign, c.occurred_at, c.trigger_id, c.outcome, c.reason
                      FROM engage.volume_changes c
                     WHERE c.changed_at >= decided_since AND c.changed_at < decided_before
                       AND c.decided_at < decided_since AND c.occurred_at >= since) d
             GROUP BY 1, 2
            UNION ALL
            SELECT date_bin('1 hour', m.sent_at, timestamptz '2000-01-01 00:00+00'), m.trigger_id,
                   0, 0, 0, 0, 0, 0, 0, 0, 0, count(*)
              FROM engage.messages m
             WHERE m.sent_at >= greatest(decided_since, since) AND m.sent_at < decided_before
             GROUP BY 1, 2) x
     GROUP BY x.hour, x.trigger_id
$$;
COMMENT ON FUNCTION engage.volume_of(timestamptz, timestamptz, timestamptz) IS
    'Per hour and trigger, the counts of engage.volume_counts over the decisions with decided_at in [decided_since, decided_before) and event time from since, the changes logged in that range to decisions decided before it, and the messages sent in [greatest(decided_since, since), decided_before).';

CREATE FUNCTION engage.count_volume() RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz;
    untracked boolean;
    counted timestamptz;
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT least(pg_catalog.now(), pg_catalog.min(a.xact_start)) - interval '1 minute',
           coalesce(pg_catalog.bool_or(a.state = 'disabled'), false)
      INTO horizon, untracked
      FROM pg_catalog.pg_stat_activity a
     WHERE a.datname = pg_catalog.current_database()
       AND a.backend_type IN ('client backend', 'background worker');
    -- After the read: a transaction that prepared before it is listed here, not there.
    IF untracked OR pg_catalog.current_setting('track_activities')::boolean IS NOT TRUE
       OR EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts p WHERE p.database = pg_catalog.current_database()) THEN
        RETURN NULL;
    END IF;
    SELECT c.before INTO counted FROM engage.volume_counted c FOR UPDATE;
    IF horizon <= counted THEN
        RETURN NULL;
    END IF;
    -- A new snapshot, taken after the horizon was read.
    INSERT INTO engage.volume_counts AS t SELECT * FROM engage.volume_of(counted, horizon, '-infinity')
    ON CONFLICT (hour, trigger_id) DO UPDATE
       SET evaluated = t.evaluated + excluded.evaluated, fired = t.fired + excluded.fired,
           held_out = t.held_out + excluded.held_out, suppressed = t.suppressed + excluded.suppressed,
           cap = t.cap + excluded.cap, conflict = t.conflict + excluded.conflict,
           frequency = t.frequency + excluded.frequency, consent = t.consent + excluded.consent,
           suppression = t.suppression + excluded.suppression, sent = t.sent + excluded.sent;
    DELETE FROM engage.volume_changes c WHERE c.changed_at < horizon;
    UPDATE engage.volume_counted SET before = horizon;
    RETURN horizon;
END
$$;
COMMENT ON FUNCTION engage.count_volume() IS
    'Adds to engage.volume_counts what was decided, changed and sent since engage.volume_counted.before, up to a minute before the start of the oldest open transaction of this database, and returns that new horizon; NULL when it does not advance (nothing new, not READ COMMITTED, a prepared transaction waits, a backend does not report its transactions). engage.refresh_metrics calls it.';

-- The hourly counts since a time, exact: the counts, and what was decided or sent after them.
CREATE VIEW engage.current_volume_counts AS
SELECT c.* FROM engage.volume_counts c
UNION ALL
SELECT v.* FROM engage.volume_of((SELECT u.before FROM engage.volume_counted u), 'infinity', '-infinity') v;
COMMENT ON VIEW engage.current_volume_counts IS
    'Per hour and trigger, decisions by event time and messages by send time, exact: engage.volume_counts (several rows per hour and trigger may appear; sum them).';

CREATE FUNCTION engage.trigger_volume_in(bucket interval, since timestamptz)
RETURNS TABLE (
    trigger text, trigger_id integer, bucket_start timestamptz,
    evaluated bigint, fired bigint, held_out bigint, suppressed bigint,
    suppressed_cap bigint, suppressed_conflict bigint, suppressed_frequency bigint,
    suppressed_consent bigint, suppressed_suppression bigint,
    sent bigint, failed bigint,
    baseline_median double precision, robust_z double precision, anomaly boolean
)
LANGUAGE plpgsql STABLE
-- A few thousand rows: compiling them (JIT, about a second) would cost more than reading them.
SET jit = off AS $$
BEGIN
    IF bucket IS NULL OR bucket < interval '1 hour' OR pg_catalog.date_part('epoch', bucket)::numeric % 3600 <> 0 THEN
        RAISE EXCEPTION 'bucket must be a whole number of hours, got %', bucket
            USING ERRCODE = 'invalid_parameter_value', HINT = 'volume is counted per hour: use 1 hour, 6 hours, 1 day';
    END IF;
    -- Buckets start at midnight, 2000-01-01, in the session's time zone; the counts are per UTC hour.
    IF pg_catalog.date_part('epoch', timestamptz '2000-01-01')::numeric % 3600 <> 0 THEN
        RAISE EXCEPTION 'volume buckets start at local midnight, and the time zone % is not a whole number of hours from UTC',
                        pg_catalog.current_setting('TimeZone')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'SET TimeZone to UTC or to a zone with a whole-hour offset';
    END IF;
    RETURN QUERY
    WITH origin AS (
        -- Seven earlier periods (days) of baseline are read before `since`.
        SELECT date_bin(bucket, since - interval '7 days', timestamptz '2000-01-01') AS first_bucket,
               date_bin(bucket, now(), timestamptz '2000-01-01') AS last_bucket,
               (extract(epoch FROM interval '1 day') / extract(epoch FROM bucket))::integer AS per_day
    ), counted AS (
        SELECT c.* FROM engage.volume_counts c, origin WHERE c.hour >= origin.first_bucket
        UNION ALL
        SELECT v.* FROM origin, engage.volume_of((SELECT u.before FROM engage.volume_counted u), 'infinity', origin.first_bucket) v
    ), decided AS (
        SELECT c.trigger_id, date_bin(bucket, c.hour, timestamptz '2000-01-01') AS b,
               sum(c.evaluated) AS evaluated, sum(c.fired) AS fired, sum(c.held_out) AS held_out,
               sum(c.suppressed) AS suppressed, sum(c.cap) AS cap, sum(c.conflict) AS conflict,
               sum(c.frequency) AS frequency, sum(c.consent) AS consent, sum(c.suppression) AS suppression,
               sum(c.sent) AS sent
          FROM counted c
         GROUP BY 1, 2
    ), failed AS (
        SELECT o.trigger_id, date_bin(bucket, o.due_at, timestamptz '2000-01-01') AS b, count(*) AS failed
          FROM engage.outbox o, origin
         WHERE o.status = 'dead' AND o.due_at >= origin.first_bucket
         GROUP BY 1, 2
    ), grid AS (
        -- Every bucket of every trigger since it was created (or first decided, for a replayed
        -- history), zeros included: a tracker that stops is a drop to zero.
        SELECT t.id AS trigger_id, t.name, g.b
          FROM engage.triggers t, origin,
               LATERAL (SELECT min(d.b) AS b FROM decided d WHERE d.trigger_id = t.id AND d.evaluated > 0) first_decided,
               generate_series(greatest(origin.first_bucket,
                                        least(date_bin(bucket, t.created_at, timestamptz '2000-01-01'), first_decided.b)),
                               origin.last_bucket, bucket) AS g(b)
    ), filled AS (
        SELECT g.name, g.trigger_id, g.b,
               coalesce(d.evaluated, 0)::bigint AS evaluated, coalesce(d.fired, 0)::bigint AS fired,
               coalesce(d.held_out, 0)::bigint AS held_out, coalesce(d.suppressed, 0)::bigint AS suppressed,
               coalesce(d.cap, 0)::bigint AS cap, coalesce(d.conflict, 0)::bigint AS conflict,
               coalesce(d.frequency, 0)::bigint AS frequency, coalesce(d.consent, 0)::bigint AS consent,
               coalesce(d.suppression, 0)::bigint AS suppression,
               coalesce(d.sent, 0)::bigint AS sent, coalesce(f.failed, 0) AS failed
          FROM grid g
          LEFT JOIN decided d ON d.trigger_id = g.trigger_id AND d.b = g.b
          LEFT JOIN failed f ON f.trigger_id = g.trigger_id AND f.b = g.b
    ), with_baseline AS (
        -- The same bucket on each of the seven previous days (the grid is dense, so a lag).
        SELECT x.*,
               array_remove(ARRAY[
                   lag(x.evaluated, 1 * o.per_day) OVER w, lag(x.evaluated, 2 * o.per_day) OVER w,
                   lag(x.evaluated, 3 * o.per_day) OVER w, lag(x.evaluated, 4 * o.per_day) OVER w,
                   lag(x.evaluated, 5 * o.per_day) OVER w, lag(x.evaluated, 6 * o.per_day) OVER w,
                   lag(x.evaluated, 7 * o.per_day) OVER w], NULL) AS baseline
          FROM filled x, origin o
        WINDOW w AS (PARTITION BY x.trigger_id ORDER BY x.b)
    )
    SELECT b.name, b.trigger_id, b.b,
           b.evaluated, b.fired, b.held_out, b.suppressed,
           b.cap, b.conflict, b.frequency, b.consent, b.suppression,
           b.sent, b.failed,
           stats.median,
           stats.z,
           -- A complete bucket, at least three days of baseline, and more than 3.5 robust
           -- standard deviations away (the bucket in progress is shown but never flagged).
           coalesce(b.b + bucket <= now() AND cardinality(b.baseline) >= 3 AND abs(stats.z) > 3.5, false)
      FROM with_baseline b
      LEFT JOIN LATERAL (
          SELECT m.median,
                 (b.evaluated - m.median)
                   / greatest(1.4826 * (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(v - m.median))
                                          FROM unnest(b.baseline) AS v), 1.0) AS z
            FROM (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS median FROM unnest(b.baseline) AS v) m
      ) stats ON cardinality(b.baseline) > 0
     WHERE b.b >= date_bin(bucket, since, timestamptz '2000-01-01');
END
$$;
COMMENT ON FUNCTION engage.trigger_volume_in(interval, timestamptz) IS
    'Per trigger and time bucket (a whole number of hours) since a time: events evaluated (by event time), fired, held out, suppressed by reason, sent (by send time), failed; and an anomaly flag: a robust z-score of evaluated against the same bucket on the seven previous days (complete buckets only). Reads the hourly volume counts.';

CREATE VIEW engage.trigger_volume AS
SELECT * FROM engage.trigger_volume_in(interval '1 hour', now() - interval '14 days');
COMMENT ON VIEW engage.trigger_volume IS
    'Hourly volume per trigger over the last 14 days with an anomaly flag (robust z-score vs the same hour of the previous 7 days, |z| > 3.5). Other ranges: engage.trigger_volume_in(bucket, since).';

CREATE VIEW engage.trigger_volume_daily AS
SELECT * FROM engage.trigger_volume_in(interval '1 day', now() - interval '90 days');
COMMENT ON VIEW engage.trigger_volume_daily IS
    'Daily volume per trigger over the last 90 days with an anomaly flag (robust z-score vs the previous 7 days).';

-- 2. Fire rate --------------------------------------------------------------------------------

CREATE VIEW engage.trigger_fire_rate AS
WITH counts AS (
    SELECT c.trigger_id, sum(c.evaluated)::bigint AS matched, sum(c.fired)::bigint AS fired,
           sum(c.held_out)::bigint AS held_out, sum(c.suppressed)::bigint AS suppressed,
           sum(c.cap) AS cap, sum(c.conflict) AS conflict, sum(c.frequency) AS frequency,
           sum(c.consent) AS consent, sum(c.suppression) AS suppression
      FROM engage.current_volume_counts c
     GROUP BY c.trigger_id
)
SELECT t.name AS trigger,
       c.trigger_id,
       c.matched,
       c.fired,
       c.held_out,
       c.suppressed,
       round(c.fired / c.matched::numeric, 4) AS fire_rate,
       jsonb_strip_nulls(jsonb_build_object(
           'cap', round(c.cap / c.matched::numeric, 4),
           'conflict', round(c.conflict / c.matched::numeric, 4),
           'frequency', round(c.frequency / c.matched::numeric, 4),
           'consent', round(c.consent / c.matched::numeric, 4),
           'suppression', round(c.suppression / c.matched::numeric, 4)
       )) AS suppression_mix
  FROM counts c
  JOIN engage.triggers t ON t.id = c.trigger_id
 WHERE c.matched > 0;
COMMENT ON VIEW engage.trigger_fire_rate IS
    'Per trigger: matching events (decisions), fired, held out, suppressed; fire_rate = fired / matched; suppression_mix = share of matches suppressed for each reason. Reads the hourly volume counts.';

-- Rollups ---------------------------------------------------------------------------------------
--
-- Responses, attribution, exposures and latency join each customer's messages and decisions with
-- that customer's later events. Recomputing that for every query is slow on a large history, so
-- the results are kept per customer in three rollup tables, maintained incrementally:
--
--   * Whatever can change a customer's figures marks the customer in engage.metrics_dirty, in the
--     same transaction: the insert path (goal and response events, fired or held-out decisions of
--     triggers with a goal, replaced messages), engage.complete (a message sent), and a change
--     to a trigger's goal (every customer that trigger decided for).
--   * engage.refresh_metrics() takes a batch of marked customers, recomputes their rows and
--     removes their marks, in one transaction. The scheduler worker calls it on every tick.
--   * The views read the rollup for unmarked customers and compute marked customers live, with
--     the same functions the refresh uses. Each view is therefore exact at every moment, with or
--     without a refresh; refreshing keeps it fast.
--
-- Writes that bypass the insert path (a bulk load with session_replication_role = replica, a
-- restore, manual deletes) are not marked: run engage.rebuild_metrics() afterwards.

-- engage.metrics_dirty is in schema.sql (engage.complete in outbox.sql writes to it).

-- Per sent message: its timings (latency) and its first response of each kind.
CREATE FUNCTION engage.message_facts_of(customers text[])
RETURNS TABLE (
    message_id bigint, trigger_id integer, customer_id text, channel text, variant text, cost numeric,
    occurred_at timestamptz, decided_at timestamptz, queued_at timestamptz, scheduled_at timestamptz,
    sent_at timestamptz,
    delivered_at timestamptz, opened_at timestamptz, clicked_at timestamptz, replied_at timestamptz,
    bounced_at timestamptz, complained_at timestamptz, unsubscribed_at timestamptz,
    first_to_customer boolean
)
LANGUAGE sql STABLE AS $$
    SELECT m.outbox_id, m.trigger_id, m.customer_id, m.channel, m.variant, m.cost,
           e.occurred_at, d.decided_at, m.queued_at, o.scheduled_at, m.sent_at,
           r.delivered_at, r.opened_at, r.clicked_at, r.replied_at, r.bounced_at, r.complained_at, r.unsubscribed_at,
           row_number() OVER (PARTITION BY m.customer_id, m.trigger_id ORDER BY m.outbox_id) = 1
      FROM engage.messages m
      LEFT JOIN engage.outbox o ON o.id = m.outbox_id
      LEFT JOIN engage.events e ON e.id = m.event_id
      LEFT JOIN engage.decisions d ON d.customer_id = m.customer_id AND d.occurred_at = e.occurred_at
                                  AND d.trigger_id = m.trigger_id AND d.event_id = m.event_id
      CROSS JOIN LATERAL (
          SELECT min(x.occurred_at) FILTER (WHERE x.name = 'message_delivered') AS delivered_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'message_opened') AS opened_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'message_clicked') AS clicked_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'message_replied') AS replied_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'message_bounced') AS bounced_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'message_complained') AS complained_at,
                 min(x.occurred_at) FILTER (WHERE x.name = 'unsubscribe') AS unsubscribed_at
            FROM engage.events x
           WHERE x.properties ? 'message_id' AND x.properties ->> 'message_id' = 'msg_' || m.outbox_id
      ) r
     WHERE m.customer_id = ANY (customers)
       AND m.category <> 'escalation' -- a message to a team about the customer, not to the customer
$$;
COMMENT ON FUNCTION engage.message_facts_of(text[]) IS
    'Computes, for the given customers, one row per sent message: trigger, channel, variant, cost, the times of event, decision, queue, schedule and send, the first delivered/opened/clicked/replied/bounced/complained/unsubscribed response, and whether it is the trigger''s first message to the customer (recipients are then a plain count). Backs engage.message_responses and engage.trigger_latency_in.';

-- Per goal event and message before it within the message's trigger goal window: a touch.
CREATE FUNCTION engage.touches_of(customers text[])
RETURNS TABLE (
    conversion_event_id bigint, customer_id text, converted_at timestamptz, value numeric,
    message_id bigint, trigger_id integer, channel text, variant text, sent_at timestamptz,
    from_last bigint, from_first bigint, touches bigint, trigger_touch bigint
)
LANGUAGE sql STABLE AS $$
    -- (The goals are read once, materialized: a value path that is a plain column lets the
    -- planner inline json_number, instead of calling it for every row.)
    WITH goals AS MATERIALIZED (SELECT * FROM engage.trigger_goals)
    SELECT g.id, g.customer_id, g.occurred_at,
           coalesce(engage.json_number(g.properties, tg.value_path), 0),
           m.outbox_id, m.trigger_id, m.channel, m.variant, m.sent_at,
           row_number() OVER (PARTITION BY g.id ORDER BY m.sent_at DESC, m.outbox_id DESC),
           row_number() OVER (PARTITION BY g.id ORDER BY m.sent_at, m.outbox_id),
           count(*) OVER (PARTITION BY g.id),
           row_number() OVER (PARTITION BY g.id, m.trigger_id ORDER BY m.sent_at, m.outbox_id)
      FROM goals tg
      JOIN engage.messages m ON m.trigger_id = tg.trigger_id
      JOIN engage.events g ON g.customer_id = m.customer_id AND g.name = tg.goal_event
                          AND g.occurred_at > m.sent_at AND g.occurred_at <= m.sent_at + tg.within
     WHERE m.customer_id = ANY (customers) AND m.category <> 'escalation'
$$;
COMMENT ON FUNCTION engage.touches_of(text[]) IS
    'Computes, for the given customers, every (goal event, message) touch: a goal event within the window of its trigger''s goal after a message (sent_at < converted_at <= sent_at + within), with the message''s rank from the last and the first touch, the number of touches, and its rank among the touches of its own trigger. Backs engage.attributed_conversions.';

-- Per trigger with a goal and customer: the first exposure (fired or held out) and what followed.
CREATE FUNCTION engage.exposures_of(customers text[])
RETURNS TABLE (
    trigger_id integer, customer_id text, exposed_at timestamptz, control boolean, variant text,
    conversions bigint, revenue numeric
)
LANGUAGE sql STABLE AS $$
    WITH goals AS MATERIALIZED (SELECT * FROM engage.trigger_goals) -- (see touches_of)
    SELECT x.trigger_id, x.customer_id, x.exposed_at, x.control, x.variant, c.conversions, c.revenue
      FROM (SELECT DISTINCT ON (d.trigger_id, d.customer_id)
                   d.trigger_id, d.customer_id, d.occurred_at AS exposed_at, d.outcome = 'held_out' AS control,
                   d.variant
              FROM engage.decisions d
             WHERE d.customer_id = ANY (customers) AND d.outcome IN ('fired', 'held_out')
             ORDER BY d.trigger_id, d.customer_id, d.occurred_at, d.event_id) x
      JOIN goals tg ON tg.trigger_id = x.trigger_id
      CROSS JOIN LATERAL (
          SELECT count(*) AS conversions,
                 coalesce(sum(engage.json_number(g.properties, tg.value_path)), 0) AS revenue
            FROM engage.events g
           WHERE g.customer_id = x.customer_id AND g.name = tg.goal_event
             AND g.occurred_at > x.exposed_at AND g.occurred_at <= x.exposed_at + tg.within
      ) c
$$;
COMMENT ON FUNCTION engage.exposures_of(text[]) IS
    'Computes, for the given customers, each trigger-with-a-goal''s first fired or held-out decision, its group, variant, and the goal events within the window after it (count and value). Backs engage.trigger_exposures.';

CREATE TABLE engage.rollup_messages (
    message_id bigint NOT NULL, trigger_id integer NOT NULL, customer_id text COLLATE "C" NOT NULL,
    channel text NOT NULL, variant text, cost numeric,
    occurred_at timestamptz, decided_at timestamptz, queued_at timestamptz, scheduled_at timestamptz,
    sent_at timestamptz NOT NULL,
    delivered_at timestamptz, opened_at timestamptz, clicked_at timestamptz, replied_at timestamptz,
    bounced_at timestamptz, complained_at timestamptz, unsubscribed_at timestamptz,
    first_to_customer boolean NOT NULL,
    PRIMARY KEY (message_id, customer_id)
);
CREATE INDEX rollup_messages_customer ON engage.rollup_messages (customer_id);
CREATE INDEX rollup_messages_sent ON engage.rollup_messages (sent_at);
COMMENT ON TABLE engage.rollup_messages IS 'Rollup of engage.message_facts_of for customers not in engage.metrics_dirty.';

CREATE TABLE engage.rollup_touches (
    conversion_event_id bigint NOT NULL, customer_id text COLLATE "C" NOT NULL, converted_at timestamptz NOT NULL,
    value numeric NOT NULL, message_id bigint NOT NULL, trigger_id integer NOT NULL, channel text NOT NULL,
    variant text, sent_at timestamptz NOT NULL, from_last bigint NOT NULL, from_first bigint NOT NULL,
    touches bigint NOT NULL, trigger_touch bigint NOT NULL,
    PRIMARY KEY (conversion_event_id, message_id, customer_id)
);
CREATE INDEX rollup_touches_customer ON engage.rollup_touches (customer_id);
CREATE INDEX rollup_touches_trigger ON engage.rollup_touches (trigger_id);
COMMENT ON TABLE engage.rollup_touches IS 'Rollup of engage.touches_of for customers not in engage.metrics_dirty.';

CREATE TABLE engage.rollup_exposures (
    trigger_id integer NOT NULL, customer_id text COLLATE "C" NOT NULL, exposed_at timestamptz NOT NULL,
    control boolean NOT NULL, variant text, conversions bigint NOT NULL, revenue numeric NOT NULL,
    PRIMARY KEY (trigger_id, customer_id)
);
CREATE INDEX rollup_exposures_customer ON engage.rollup_exposures (customer_id);
COMMENT ON TABLE engage.rollup_exposures IS 'Rollup of engage.exposures_of for customers not in engage.metrics_dirty.';

-- Running totals ------------------------------------------------------------------------------
--
-- The per-trigger figures (responses, spend, attributed revenue, uplift, variants) are sums over
-- the rollup rows, kept as running totals: a refresh subtracts what the customers' old rows added
-- and adds what their new rows add. Invariant: each totals table is the aggregate of its rollup
-- table, since only engage.refresh_metrics and engage.rebuild_metrics write either, in one
-- transaction. A view reads the totals, minus what marked customers' rollup rows add, plus what
-- their rows computed now add (the same delta functions the refresh applies), so it is exact at
-- every moment, as the rollups are.
--
-- Latency percentiles are not sums: they come from histograms, which are. A duration falls in a
-- logarithmic bucket of growth 2^(1/8), the buckets of Prometheus's native histograms (schema 3):
-- bucket k > 0 holds durations in (2^((k-2)/8), 2^((k-1)/8)] microseconds, -k the same negated,
-- 0 holds zero (timestamps are whole microseconds). A bucket reads as the value whose relative
-- error to every duration in it is at most (2^(1/8) - 1) / (2^(1/8) + 1) = 4.33%. Counts per
-- trigger, channel, UTC day of sending and measure are added and subtracted like the totals; a
-- percentile is the bucket holding the element of rank floor(q (n - 1)) (0-based), so it lies
-- within 4.33% of that order statistic: the lower neighbour of the interpolated percentile_cont.

CREATE FUNCTION engage.latency_bucket(seconds double precision) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN pg_catalog.abs(seconds) OPERATOR(pg_catalog.<) 0.000001 THEN 0
                ELSE (pg_catalog.sign(seconds)
                      OPERATOR(pg_catalog.*) (1 OPERATOR(pg_catalog.+) pg_catalog.ceil(
                          8 OPERATOR(pg_catalog.*) pg_catalog.ln(pg_catalog.abs(seconds) OPERATOR(pg_catalog.*) 1000000)
                            OPERATOR(pg_catalog./) pg_catalog.ln(2::double precision))))::integer END
$$;
COMMENT ON FUNCTION engage.latency_bucket(double precision) IS
    'The latency histogram bucket of a duration in seconds: 0 for zero, else sign x (1 + ceil(8 log2(|microseconds|))), buckets of growth 2^(1/8) (sql/metrics.sql, "Running totals").';

CREATE FUNCTION engage.latency_bucket_value(bucket integer) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.sign(bucket)
           OPERATOR(pg_catalog.*) 2 OPERATOR(pg_catalog.*) pg_catalog.power(2::double precision,
               (pg_catalog.abs(bucket) OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) 8.0::double precision)
           OPERATOR(pg_catalog./) (pg_catalog.power(2::double precision, 0.125::double precision) OPERATOR(pg_catalog.+) 1)
           OPERATOR(pg_catalog./) 1000000
$$;
COMMENT ON FUNCTION engage.latency_bucket_value(integer) IS
    'The seconds a latency histogram bucket reads as: within 4.33% of every duration in it (0 for bucket 0).';

-- The durations a sent message is measured by: 0 counts the message, 1 is event to decision,
-- 2 decision to queue, 3 due time to sent, 4 event to sent (absent when a time is unknown).
-- Inlined into the queries that read it: every name in it is qualified.
CREATE FUNCTION engage.latency_measures(occurred_at timestamptz, decided_at timestamptz, queued_at timestamptz,
                                        scheduled_at timestamptz, sent_at timestamptz)
RETURNS TABLE (measure smallint, seconds double precision)
LANGUAGE sql IMMUTABLE AS $$
    SELECT m.measure, m.seconds
      FROM (VALUES (0::smallint, 0::double precision),
                   (1, extract(epoch FROM decided_at OPERATOR(pg_catalog.-) occurred_at)::double precision),
                   (2, extract(epoch FROM queued_at OPERATOR(pg_catalog.-) decided_at)::double precision),
                   (3, extract(epoch FROM sent_at OPERATOR(pg_catalog.-) scheduled_at)::double precision),
                   (4, extract(epoch FROM sent_at OPERATOR(pg_catalog.-) occurred_at)::double precision))
           AS m(measure, seconds)
     WHERE m.seconds IS NOT NULL
$$;
COMMENT ON FUNCTION engage.latency_measures(timestamptz, timestamptz, timestamptz, timestamptz, timestamptz) IS
    'The latency measures of a sent message, in seconds: 0 (the message itself), 1 event to decision, 2 decision to queue, 3 due time to sent, 4 event to sent; a measure with an unknown time is absent.';

CREATE TABLE engage.totals_messages (
    trigger_id integer NOT NULL, channel text NOT NULL,
    messages bigint NOT NULL, recipients bigint NOT NULL, cost numeric NOT NULL,
    delivered bigint NOT NULL, opened bigint NOT NULL, clicked bigint NOT NULL, replied bigint NOT NULL,
    unsubscribed bigint NOT NULL,
    PRIMARY KEY (trigger_id, channel)
);
COMMENT ON TABLE engage.totals_messages IS
    'Running totals of engage.rollup_messages per trigger and channel: messages, first messages to a customer (recipients), their cost, and messages with each response.';

CREATE TABLE engage.totals_touches (
    trigger_id integer PRIMARY KEY,
    last_touches bigint NOT NULL, last_revenue numeric NOT NULL,
    first_touches bigint NOT NULL, first_revenue numeric NOT NULL,
    trigger_touches bigint NOT NULL, linear_credit numeric NOT NULL, linear_revenue numeric NOT NULL
);
COMMENT ON TABLE engage.totals_touches IS
    'Running totals of engage.rollup_touches per trigger: conversions credited by the last and the first touch and their revenue, conversions the trigger touched, and its linear credit and revenue.';

CREATE TABLE engage.totals_exposures (
    trigger_id integer NOT NULL, control boolean NOT NULL, variant text,
    customers bigint NOT NULL, converted bigint NOT NULL, revenue numeric NOT NULL, revenue_squared numeric NOT NULL,
    UNIQUE NULLS NOT DISTINCT (trigger_id, control, variant)
);
COMMENT ON TABLE engage.totals_exposures IS
    'Running totals of engage.rollup_exposures per trigger, group (control) and variant: customers exposed, converted, their revenue and its sum of squares.';

CREATE TABLE engage.latency_histograms (
    trigger_id integer NOT NULL, channel text NOT NULL, sent_day timestamptz NOT NULL,
    measure smallint NOT NULL, bucket integer NOT NULL, messages bigint NOT NULL,
    PRIMARY KEY (sent_day, trigger_id, channel, measure, bucket)
);
COMMENT ON TABLE engage.latency_histograms IS
    'Histograms of engage.rollup_messages per trigger, channel and UTC day of sending: measure 0 counts messages (bucket 0), 1 event to decision, 2 decision to queue, 3 due time to sent, 4 event to sent, in the buckets of engage.latency_bucket.';

-- What one set of rollup rows adds to the totals, minus what another set adds.
CREATE FUNCTION engage.message_totals_delta(removed engage.rollup_messages[], added engage.rollup_messages[])
RETURNS TABLE (
    trigger_id integer, channel text, messages bigint, recipients bigint, cost numeric,
    delivered bigint, opened bigint, clicked bigint, replied bigint, unsubscribed bigint
)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.trigger_id, r.channel, sum(r.sign),
           coalesce(sum(r.sign) FILTER (WHERE r.first_to_customer), 0),
           coalesce(sum(r.sign * r.cost), 0),
           coalesce(sum(r.sign) FILTER (WHERE r.delivered_at IS NOT NULL), 0), coalesce(sum(r.sign) FILTER (WHERE r.opened_at IS NOT NULL), 0),
           coalesce(sum(r.sign) FILTER (WHERE r.clicked_at IS NOT NULL), 0), coalesce(sum(r.sign) FILTER (WHERE r.replied_at IS NOT NULL), 0),
           coalesce(sum(r.sign) FILTER (WHERE r.unsubscribed_at IS NOT NULL), 0)
      FROM (SELECT -1 AS sign, * FROM unnest(removed) UNION ALL SELECT 1, * FROM unnest(added)) r
     GROUP BY r.trigger_id, r.channel
$$;
COMMENT ON FUNCTION engage.message_totals_delta(engage.rollup_messages[], engage.rollup_messages[]) IS
    'Per trigger and channel, what the added rollup rows contribute to engage.totals_messages minus what the removed ones contribute.';

CREATE FUNCTION engage.touch_totals_delta(removed engage.rollup_touches[], added engage.rollup_touches[])
RETURNS TABLE (
    trigger_id integer, last_touches bigint, last_revenue numeric, first_touches bigint, first_revenue numeric,
    trigger_touches bigint, linear_credit numeric, linear_revenue numeric
)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.trigger_id,
           coalesce(sum(r.sign) FILTER (WHERE r.from_last = 1), 0), coalesce(sum(r.sign * r.value) FILTER (WHERE r.from_last = 1), 0),
           coalesce(sum(r.sign) FILTER (WHERE r.from_first = 1), 0), coalesce(sum(r.sign * r.value) FILTER (WHERE r.from_first = 1), 0),
           coalesce(sum(r.sign) FILTER (WHERE r.trigger_touch = 1), 0),
           sum(r.sign * round(1.0 / r.touches, 6)), sum(r.sign * round(r.value * round(1.0 / r.touches, 6), 6))
      FROM (SELECT -1 AS sign, * FROM unnest(removed) UNION ALL SELECT 1, * FROM unnest(added)) r
     GROUP BY r.trigger_id
$$;
COMMENT ON FUNCTION engage.touch_totals_delta(engage.rollup_touches[], engage.rollup_touches[]) IS
    'Per trigger, what the added rollup rows contribute to engage.totals_touches minus what the removed ones contribute.';

CREATE FUNCTION engage.exposure_totals_delta(removed engage.rollup_exposures[], added engage.rollup_exposures[])
RETURNS TABLE (
    trigger_id integer, control boolean, variant text,
    customers bigint, converted bigint, revenue numeric, revenue_squared numeric
)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.trigger_id, r.control, r.variant, sum(r.sign), coalesce(sum(r.sign) FILTER (WHERE r.conversions > 0), 0),
           sum(r.sign * r.revenue), sum(r.sign * r.revenue * r.revenue)
      FROM (SELECT -1 AS sign, * FROM unnest(removed) UNION ALL SELECT 1, * FROM unnest(added)) r
     GROUP BY r.trigger_id, r.control, r.variant
$$;
COMMENT ON FUNCTION engage.exposure_totals_delta(engage.rollup_exposures[], engage.rollup_exposures[]) IS
    'Per trigger, group and variant, what the added rollup rows contribute to engage.totals_exposures minus what the removed ones contribute.';

CREATE FUNCTION engage.latency_histogram_delta(removed engage.rollup_messages[], added engage.rollup_messages[])
RETURNS TABLE (
    trigger_id integer, channel text, sent_day timestamptz, measure smallint, bucket integer, messages bigint
)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.trigger_id, r.channel, date_bin('1 day', r.sent_at, timestamptz '2000-01-01 00:00+00'),
           m.measure, engage.latency_bucket(m.seconds), sum(r.sign)
      FROM (SELECT -1 AS sign, * FROM unnest(removed) UNION ALL SELECT 1, * FROM unnest(added)) r,
           LATERAL engage.latency_measures(r.occurred_at, r.decided_at, r.queued_at, r.scheduled_at, r.sent_at) m
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(r.sign) <> 0
$$;
COMMENT ON FUNCTION engage.latency_histogram_delta(engage.rollup_messages[], engage.rollup_messages[]) IS
    'Per trigger, channel, UTC day of sending, measure and bucket, what the added rollup rows count in engage.latency_histograms minus what the removed ones count.';

-- The rollup rows of marked customers as they stand, and as they are now: what the views swap.
CREATE VIEW engage.marked_rollups AS
WITH marked AS (SELECT ARRAY(SELECT DISTINCT d.customer_id FROM engage.metrics_dirty d) AS customers)
SELECT ARRAY(SELECT r FROM engage.rollup_messages r WHERE r.customer_id = ANY (marked.customers)) AS stale_messages,
       ARRAY(SELECT ROW(f.*)::engage.rollup_messages FROM engage.message_facts_of(marked.customers) f) AS messages,
       ARRAY(SELECT r FROM engage.rollup_touches r WHERE r.customer_id = ANY (marked.customers)) AS stale_touches,
       ARRAY(SELECT ROW(f.*)::engage.rollup_touches FROM engage.touches_of(marked.customers) f) AS touches,
       ARRAY(SELECT r FROM engage.rollup_exposures r WHERE r.customer_id = ANY (marked.customers)) AS stale_exposures,
       ARRAY(SELECT ROW(f.*)::engage.rollup_exposures FROM engage.exposures_of(marked.customers) f) AS exposures
  FROM marked;
COMMENT ON VIEW engage.marked_rollups IS
    'For the customers marked in engage.metrics_dirty: their rollup rows as stored (stale_*) and as computed now, one row of arrays.';

CREATE VIEW engage.current_message_totals AS
SELECT x.trigger_id, x.channel, sum(x.messages)::bigint AS messages, sum(x.recipients)::bigint AS recipients,
       sum(x.cost) AS cost,
       sum(x.delivered)::bigint AS delivered, sum(x.opened)::bigint AS opened, sum(x.clicked)::bigint AS clicked,
       sum(x.replied)::bigint AS replied, sum(x.unsubscribed)::bigint AS unsubscribed
  FROM (SELECT t.* FROM engage.totals_messages t
        UNION ALL
        SELECT d.* FROM engage.marked_rollups m, engage.message_totals_delta(m.stale_messages, m.messages) d) x
 GROUP BY x.trigger_id, x.channel
HAVING sum(x.messages) > 0;
COMMENT ON VIEW engage.current_message_totals IS
    'engage.totals_messages, exact: with marked customers'' rows computed now.';

CREATE VIEW engage.current_touch_totals AS
SELECT x.trigger_id, sum(x.last_touches)::bigint AS last_touches, sum(x.last_revenue) AS last_revenue,
       sum(x.first_touches)::bigint AS first_touches, sum(x.first_revenue) AS first_revenue,
       sum(x.trigger_touches)::bigint AS trigger_touches, sum(x.linear_credit) AS linear_credit,
       sum(x.linear_revenue) AS linear_revenue
  FROM (SELECT t.* FROM engage.totals_touches t
        UNION ALL
        SELECT d.* FROM engage.marked_rollups m, engage.touch_totals_delta(m.stale_touches, m.touches) d) x
 GROUP BY x.trigger_id
HAVING sum(x.trigger_touches) > 0;
COMMENT ON VIEW engage.current_touch_totals IS
    'engage.totals_touches, exact: with marked customers'' rows computed now.';

CREATE VIEW engage.current_exposure_totals AS
SELECT x.trigger_id, x.control, x.variant, sum(x.customers)::bigint AS customers,
       sum(x.converted)::bigint AS converted, sum(x.revenue) AS revenue, sum(x.revenue_squared) AS revenue_squared
  FROM (SELECT t.* FROM engage.totals_exposures t
        UNION ALL
        SELECT d.* FROM engage.marked_rollups m, engage.exposure_totals_delta(m.stale_exposures, m.exposures) d) x
 GROUP BY x.trigger_id, x.control, x.variant
HAVING sum(x.customers) > 0;
COMMENT ON VIEW engage.current_exposure_totals IS
    'engage.totals_exposures, exact: with marked customers'' rows computed now.';

-- Rollup rows of unmarked customers, plus marked customers computed now.
CREATE VIEW engage.current_messages AS
SELECT r.* FROM engage.rollup_messages r
 WHERE NOT EXISTS (SELECT FROM engage.metrics_dirty d WHERE d.customer_id = r.customer_id)
UNION ALL
SELECT * FROM engage.message_facts_of(ARRAY(SELECT DISTINCT customer_id FROM engage.metrics_dirty));
COMMENT ON VIEW engage.current_messages IS 'Every sent message''s timings and responses, exact: the rollup, with marked customers computed live.';

CREATE VIEW engage.current_touches AS
SELECT r.* FROM engage.rollup_touches r
 WHERE NOT EXISTS (SELECT FROM engage.metrics_dirty d WHERE d.customer_id = r.customer_id)
UNION ALL
SELECT * FROM engage.touches_of(ARRAY(SELECT DISTINCT customer_id FROM engage.metrics_dirty));
COMMENT ON VIEW engage.current_touches IS 'Every (goal event, message) touch, exact: the rollup, with marked customers computed live.';

CREATE VIEW engage.current_exposures AS
SELECT r.* FROM engage.rollup_exposures r
 WHERE NOT EXISTS (SELECT FROM engage.metrics_dirty d WHERE d.customer_id = r.customer_id)
UNION ALL
SELECT * FROM engage.exposures_of(ARRAY(SELECT DISTINCT customer_id FROM engage.metrics_dirty));
COMMENT ON VIEW engage.current_exposures IS 'Every first exposure to a trigger with a goal and its outcome, exact: the rollup, with marked customers computed live.';

CREATE FUNCTION engage.refresh_metrics(batch integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    picked text[];
    stale_messages engage.rollup_messages[];
    fresh_messages engage.rollup_messages[];
    stale_touches engage.rollup_touches[];
    fresh_touches engage.rollup_touches[];
    stale_exposures engage.rollup_exposures[];
    fresh_exposures engage.rollup_exposures[];
BEGIN
    -- One refresh at a time; a second caller finds the work taken and returns at once.
    PERFORM FROM engage.locks WHERE name = 'refresh_metrics' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM engage.count_volume();
    -- Marks committed after this statement's snapshot are not removed: their customers stay
    -- marked, and the next refresh takes them (the statements below see at least this much).
    WITH chosen AS (
        SELECT DISTINCT customer_id FROM engage.metrics_dirty ORDER BY customer_id LIMIT batch
    ), removed AS (
        DELETE FROM engage.metrics_dirty d USING chosen c WHERE d.customer_id = c.customer_id
        RETURNING d.customer_id
    )
    SELECT array_agg(DISTINCT customer_id) INTO picked FROM removed;
    IF picked IS NULL THEN
        RETURN 0;
    END IF;
    -- The customers' rollup rows, recomputed; the rows that changed are replaced (most do not:
    -- a response changes one message's row), and the totals and histograms move by the
    -- difference between the rows taken out and the rows put in. (*= compares whole rows, NULLs
    -- included.)
    fresh_messages := ARRAY(SELECT ROW(f.*)::engage.rollup_messages FROM engage.message_facts_of(picked) f);
    WITH gone AS (
        DELETE FROM engage.rollup_messages r
         WHERE r.customer_id = ANY (picked)
           AND NOT EXISTS (SELECT FROM unnest(fresh_messages) n
                            WHERE n.message_id = r.message_id AND n.customer_id = r.customer_id AND n *= r)
        RETURNING r.*)
    SELECT coalesce(array_agg(ROW(gone.*)::engage.rollup_messages), '{}') INTO stale_messages FROM gone;
    WITH came AS (
        INSERT INTO engage.rollup_messages
        SELECT n.* FROM unnest(fresh_messages) n
         WHERE NOT EXISTS (SELECT FROM engage.rollup_messages r
                            WHERE r.message_id = n.message_id AND r.customer_id = n.customer_id)
        RETURNING *)
    SELECT coalesce(array_agg(ROW(came.*)::engage.rollup_messages), '{}') INTO fresh_messages FROM came;

    fresh_touches := ARRAY(SELECT ROW(f.*)::engage.rollup_touches FROM engage.touches_of(picked) f);
    WITH gone AS (
        DELETE FROM engage.rollup_touches r
         WHERE r.customer_id = ANY (picked)
           AND NOT EXISTS (SELECT FROM unnest(fresh_touches) n
                            WHERE n.conversion_event_id = r.conversion_event_id AND n.message_id = r.message_id
                              AND n.customer_id = r.customer_id AND n *= r)
        RETURNING r.*)
    SELECT coalesce(array_agg(ROW(gone.*)::engage.rollup_touches), '{}') INTO stale_touches FROM gone;
    WITH came AS (
        INSERT INTO engage.rollup_touches
        SELECT n.* FROM unnest(fresh_touches) n
         WHERE NOT EXISTS (SELECT FROM engage.rollup_touches r
                            WHERE r.conversion_event_id = n.conversion_event_id AND r.message_id = n.message_id
                              AND r.customer_id = n.customer_id)
        RETURNING *)
    SELECT coalesce(array_agg(ROW(came.*)::engage.rollup_touches), '{}') INTO fresh_touches FROM came;

    fresh_exposures := ARRAY(SELECT ROW(f.*)::engage.rollup_exposures FROM engage.exposures_of(picked) f);
    WITH gone AS (
        DELETE FROM engage.rollup_exposures r
         WHERE r.customer_id = ANY (picked)
           AND NOT EXISTS (SELECT FROM unnest(fresh_exposures) n
                            WHERE n.trigger_id = r.trigger_id AND n.customer_id = r.customer_id AND n *= r)
        RETURNING r.*)
    SELECT coalesce(array_agg(ROW(gone.*)::engage.rollup_exposures), '{}') INTO stale_exposures FROM gone;
    WITH came AS (
        INSERT INTO engage.rollup_exposures
        SELECT n.* FROM unnest(fresh_exposures) n
         WHERE NOT EXISTS (SELECT FROM engage.rollup_exposures r
                            WHERE r.trigger_id = n.trigger_id AND r.customer_id = n.customer_id)
        RETURNING *)
    SELECT coalesce(array_agg(ROW(came.*)::engage.rollup_exposures), '{}') INTO fresh_exposures FROM came;

    INSERT INTO engage.totals_messages AS t SELECT * FROM engage.message_totals_delta(stale_messages, fresh_messages)
    ON CONFLICT (trigger_id, channel) DO UPDATE
       SET messages = t.messages + excluded.messages, recipients = t.recipients + excluded.recipients,
           cost = t.cost + excluded.cost,
           delivered = t.delivered + excluded.delivered, opened = t.opened + excluded.opened,
           clicked = t.clicked + excluded.clicked, replied = t.replied + excluded.replied,
           unsubscribed = t.unsubscribed + excluded.unsubscribed;
    INSERT INTO engage.totals_touches AS t SELECT * FROM engage.touch_totals_delta(stale_touches, fresh_touches)
    ON CONFLICT (trigger_id) DO UPDATE
       SET last_touches = t.last_touches + excluded.last_touches, last_revenue = t.last_revenue + excluded.last_revenue,
           first_touches = t.first_touches + excluded.first_touches, first_revenue = t.first_revenue + excluded.first_revenue,
           trigger_touches = t.trigger_touches + excluded.trigger_touches,
           linear_credit = t.linear_credit + excluded.linear_credit, linear_revenue = t.linear_revenue + excluded.linear_revenue;
    INSERT INTO engage.totals_exposures AS t SELECT * FROM engage.exposure_totals_delta(stale_exposures, fresh_exposures)
    ON CONFLICT (trigger_id, control, variant) DO UPDATE
       SET customers = t.customers + excluded.customers, converted = t.converted + excluded.converted,
           revenue = t.revenue + excluded.revenue, revenue_squared = t.revenue_squared + excluded.revenue_squared;
    INSERT INTO engage.latency_histograms AS t SELECT * FROM engage.latency_histogram_delta(stale_messages, fresh_messages)
    ON CONFLICT (sent_day, trigger_id, channel, measure, bucket) DO UPDATE SET messages = t.messages + excluded.messages;
    RETURN cardinality(picked);
END
$$;
COMMENT ON FUNCTION engage.refresh_metrics(integer) IS
    'Advances the volume counts (engage.count_volume), recomputes the metrics rollups of up to `batch` marked customers, moves the running totals and latency histograms by the difference, and clears their marks; returns how many customers. The scheduler worker calls it every tick; the views are exact without it, only slower.';

CREATE FUNCTION engage.rebuild_metrics() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    done bigint := 0;
    step integer;
BEGIN
    PERFORM FROM engage.locks WHERE name = 'refresh_metrics' FOR UPDATE;
    -- Mark every customer with a message or a decision, then refresh them in batches.
    INSERT INTO engage.metrics_dirty (customer_id)
    SELECT customer_id FROM engage.messages UNION SELECT customer_id FROM engage.decisions;
    TRUNCATE engage.rollup_messages, engage.rollup_touches, engage.rollup_exposures,
             engage.totals_messages, engage.totals_touches, engage.totals_exposures, engage.latency_histograms,
             engage.volume_counts, engage.volume_changes;
    UPDATE engage.volume_counted SET before = '-infinity';
    ANALYZE engage.metrics_dirty;
    LOOP
        step := engage.refresh_metrics(50000); -- the lock is ours already: it is re-entrant
        EXIT WHEN step = 0;
        done := done + step;
    END LOOP;
    RETURN done;
END
$$;
COMMENT ON FUNCTION engage.rebuild_metrics() IS
    'Recomputes every metrics rollup, running total, latency histogram and volume count from the base tables; returns how many customers. Run it after writes that bypassed the insert path (a bulk load with session_replication_role = replica, a restore, deletes).';

-- A trigger's goal changes who converted for it: mark everyone it decided for.
CREATE FUNCTION engage.mark_goal_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO engage.metrics_dirty (customer_id)
    SELECT DISTINCT d.customer_id FROM engage.decisions d WHERE d.trigger_id = OLD.id;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION engage.mark_goal_change() IS
    'Row trigger on engage.triggers: when a goal changes or a trigger with one is dropped, marks the customers it decided for in engage.metrics_dirty.';
CREATE TRIGGER mark_goal_change AFTER UPDATE ON engage.triggers
    FOR EACH ROW WHEN (OLD.compiled -> 'goal' IS DISTINCT FROM NEW.compiled -> 'goal')
    EXECUTE FUNCTION engage.mark_goal_change();
CREATE TRIGGER mark_goal_drop AFTER DELETE ON engage.triggers
    FOR EACH ROW WHEN (OLD.compiled -> 'goal' <> 'null')
    EXECUTE FUNCTION engage.mark_goal_change();

-- 3. Responses --------------------------------------------------------------------------------

CREATE VIEW engage.message_responses AS
SELECT message_id, trigger_id, customer_id, channel, variant, sent_at,
       delivered_at, opened_at, clicked_at, replied_at, bounced_at, complained_at, unsubscribed_at
  FROM engage.current_messages;
COMMENT ON VIEW engage.message_responses IS
    'Per sent message: when it was first delivered, opened, clicked, replied to, bounced, complained about and unsubscribed from (response events carry properties.message_id = ''msg_<id>'').';

CREATE VIEW engage.trigger_response_rates AS
SELECT t.name AS trigger,
       r.trigger_id,
       r.channel,
       r.messages AS sent,
       r.delivered,
       r.opened,
       r.clicked,
       r.replied,
       r.unsubscribed,
       round(r.delivered / r.messages::numeric, 4) AS delivery_rate,
       round(r.opened / r.messages::numeric, 4) AS open_rate,
       round(r.clicked / r.messages::numeric, 4) AS click_rate,
       round(r.replied / r.messages::numeric, 4) AS reply_rate,
       round(r.unsubscribed / r.messages::numeric, 4) AS unsubscribe_rate
  FROM engage.current_message_totals r
  JOIN engage.triggers t ON t.id = r.trigger_id;
COMMENT ON VIEW engage.trigger_response_rates IS
    'Per trigger and channel: messages sent and the share delivered, opened, clicked, replied to and unsubscribed from (from the running totals).';

-- Provider webhooks -> response events.
CREATE FUNCTION engage.ingest_provider_event(provider text, payload jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    kind text;
    message text;
    at timestamptz;
    stamp text;
    msg record;
    inserted integer;
    recorded integer := 0;
    position integer := -1;
BEGIN
    IF provider IS DISTINCT FROM 'sendgrid' AND provider IS DISTINCT FROM 'twilio'
       AND provider IS DISTINCT FROM 'generic' THEN
        RAISE EXCEPTION 'unknown provider "%"', provider
            USING ERRCODE = 'invalid_parameter_value', HINT = 'providers are sendgrid, twilio, generic';
    END IF;
    FOR item IN
        SELECT value FROM jsonb_array_elements(CASE WHEN jsonb_typeof(payload) = 'array' THEN payload
                                                    ELSE jsonb_build_array(payload) END)
    LOOP
      position := position + 1;
      -- One unreadable item (a timestamp "NaN" or "garbage", a time out of range) is skipped with
      -- a WARNING naming it; the batch's other items are recorded.
      BEGIN
        CASE provider
        WHEN 'sendgrid' THEN
            -- Event webhook: our message id as a custom arg, else in the smtp-id "<msg_N@host>".
            message := coalesce(item ->> 'message_id', substring(item ->> 'smtp-id' FROM '<(msg_[0-9]+)@'));
            kind := item ->> 'event';
            stamp := coalesce(item ->> 'sg_event_id', item ->> 'timestamp');
            at := to_timestamp((item ->> 'timestamp')::double precision);
        WHEN 'twilio' THEN
            -- Status callback (SMS, WhatsApp): matched by the provider's message id.
            SELECT 'msg_' || m.outbox_id INTO message
              FROM engage.messages m WHERE m.provider_message_id = item ->> 'MessageSid';
            kind := lower(item ->> 'MessageStatus');
            stamp := NULL; -- one callback per status: a retried callback is the same event
            at := now();
        WHEN 'generic' THEN
            message := item ->> 'message_id';
            kind := item ->> 'event';
            stamp := item ->> 'occurred_at';
            at := coalesce(stamp::timestamptz, now());
        END CASE;
        kind := CASE kind
                  WHEN 'delivered' THEN 'message_delivered'
                  WHEN 'open' THEN 'message_opened' WHEN 'opened' THEN 'message_opened'
                  WHEN 'read' THEN 'message_opened'
                  WHEN 'click' THEN 'message_clicked' WHEN 'clicked' THEN 'message_clicked'
                  WHEN 'reply' THEN 'message_replied' WHEN 'replied' THEN 'message_replied'
                  WHEN 'bounce' THEN 'message_bounced' WHEN 'bounced' THEN 'message_bounced'
                  WHEN 'undelivered' THEN 'message_bounced'
                  WHEN 'spamreport' THEN 'message_complained' WHEN 'complaint' THEN 'message_complained'
                  WHEN 'unsubscribe' THEN 'unsubscribe' WHEN 'group_unsubscribe' THEN 'unsubscribe'
                  WHEN 'unsubscribed' THEN 'unsubscribe'
                END;
        CONTINUE WHEN kind IS NULL OR message IS NULL;
        SELECT o.id, o.customer_id, o.channel, o.trigger_id INTO msg
          FROM engage.outbox o WHERE o.id = substring(message FROM 5)::bigint AND message ~ '^msg_[0-9]+$';
        CONTINUE WHEN msg.id IS NULL;
        INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
        VALUES (msg.customer_id, kind,
                jsonb_build_object('message_id', message, 'channel', msg.channel, 'trigger_id', msg.trigger_id,
                                   'provider', provider),
                at, provider || ':' || message || ':' || kind || coalesce(':' || stamp, ''));
        GET DIAGNOSTICS inserted = ROW_COUNT;
        CONTINUE WHEN inserted = 0; -- a retried webhook: already recorded
        -- A hard bounce or a complaint stops further sends on that channel.
        IF kind IN ('message_bounced', 'message_complained') THEN
            INSERT INTO engage.suppressions (customer_id, channel, reason, note)
            VALUES (msg.customer_id, msg.channel,
                    CASE kind WHEN 'message_bounced' THEN 'hard_bounce' ELSE 'complaint' END,
                    provider || ' ' || message)
            ON CONFLICT DO NOTHING;
        END IF;
        recorded := recorded + 1;
      EXCEPTION WHEN data_exception OR check_violation THEN
        RAISE WARNING 'pg_engage: % provider event [%] skipped: %', provider, position, SQLERRM
            USING DETAIL = left(item::text, 200);
      END;
    END LOOP;
    RETURN recorded;
END
$$;
COMMENT ON FUNCTION engage.ingest_provider_event(text, jsonb) IS
    'Turns a provider webhook (sendgrid event batch, twilio status callback, or generic {"message_id", "event", "occurred_at"}) into response events; bounces and complaints also add the channel to engage.suppressions. Returns how many events were recorded (retries are de-duplicated). An item that cannot be read (a bad timestamp) is skipped with a WARNING naming its position; the others are recorded.';

-- 4. Conversion attribution -------------------------------------------------------------------

CREATE VIEW engage.attributed_conversions AS
WITH touches AS (
    SELECT c.*, tg.trigger FROM engage.current_touches c JOIN engage.trigger_goals tg ON tg.trigger_id = c.trigger_id
)
SELECT model, conversion_event_id, customer_id, converted_at, message_id, trigger_id, trigger, channel, variant,
       sent_at, touches, credit, round(value * credit, 6) AS revenue
  FROM touches,
       LATERAL (VALUES ('last_touch', CASE WHEN from_last = 1 THEN 1.0 END),
                       ('first_touch', CASE WHEN from_first = 1 THEN 1.0 END),
                       ('linear', round(1.0 / touches, 6))) AS m(model, credit)
 WHERE credit IS NOT NULL;
COMMENT ON VIEW engage.attributed_conversions IS
    'Goal events attributed to the messages sent before them within their trigger''s goal window (sent_at < converted_at <= sent_at + within), under three models: last_touch (the default to report), first_touch, linear (equal credit). revenue = goal value x credit.';

CREATE VIEW engage.trigger_revenue AS
-- The running totals of the touches (the same figures as grouping engage.attributed_conversions).
WITH per_trigger AS (
    SELECT c.trigger_id, c.last_touches AS last_n, c.last_revenue, c.first_touches AS first_n, c.first_revenue,
           c.trigger_touches AS linear_n, c.linear_credit, c.linear_revenue
      FROM engage.current_touch_totals c
)
SELECT m.model, tg.trigger, p.trigger_id, m.conversions, m.credited AS credited_conversions, m.revenue
  FROM per_trigger p
  JOIN engage.trigger_goals tg ON tg.trigger_id = p.trigger_id,
       LATERAL (VALUES ('last_touch', p.last_n, p.last_n::numeric, round(p.last_revenue, 6)),
                       ('first_touch', p.first_n, p.first_n::numeric, round(p.first_revenue, 6)),
                       ('linear', p.linear_n, p.linear_credit, p.linear_revenue))
           AS m(model, conversions, credited, revenue)
 WHERE m.conversions > 0;
COMMENT ON VIEW engage.trigger_revenue IS
    'Attributed conversions and revenue per trigger, for each attribution model (filter model = ''last_touch'' for the default).';

-- 5. and 6. Holdout uplift and variant experiments --------------------------------------------

-- Each customer's first exposure to a trigger (fired or held out), and whether they converted
-- within the goal window after it: intention to treat, the same anchor for both groups.
CREATE VIEW engage.trigger_exposures AS
SELECT x.trigger_id, tg.trigger, x.customer_id, x.exposed_at, x.control, x.variant,
       x.conversions > 0 AS converted, x.revenue
  FROM engage.current_exposures x
  JOIN engage.trigger_goals tg ON tg.trigger_id = x.trigger_id;
COMMENT ON VIEW engage.trigger_exposures IS
    'Per trigger with a goal and customer: the first fired or held-out decision, its group (control = held out), variant, and whether the customer converted within the goal window after it, with the revenue.';

-- Two groups compared: conversion rates with a 95% interval for their difference (normal
-- approximation, unpooled), and revenue per customer likewise.
CREATE FUNCTION engage.compare_groups(
    n_a bigint, conv_a bigint, rev_a numeric, rev_sq_a numeric,
    n_b bigint, conv_b bigint, rev_b numeric, rev_sq_b numeric,
    OUT rate_a double precision, OUT rate_b double precision,
    OUT uplift double precision, OUT relative_uplift double precision,
    OUT ci_low double precision, OUT ci_high double precision, OUT z double precision,
    OUT revenue_per_customer_a double precision, OUT revenue_per_customer_b double precision,
    OUT revenue_uplift double precision, OUT revenue_ci_low double precision, OUT revenue_ci_high double precision)
LANGUAGE sql IMMUTABLE AS $$
    WITH r AS (
        SELECT conv_a::float8 / nullif(n_a, 0) AS pa, conv_b::float8 / nullif(n_b, 0) AS pb,
               rev_a::float8 / nullif(n_a, 0) AS ma, rev_b::float8 / nullif(n_b, 0) AS mb
    ), s AS (
        SELECT r.*,
               sqrt(pa * (1 - pa) / nullif(n_a, 0) + pb * (1 - pb) / nullif(n_b, 0)) AS se,
               sqrt(greatest(rev_sq_a::float8 / nullif(n_a, 0) - ma * ma, 0) / nullif(n_a - 1, 0)
                    + greatest(rev_sq_b::float8 / nullif(n_b, 0) - mb * mb, 0) / nullif(n_b - 1, 0)) AS rev_se
          FROM r
    )
    SELECT pa, pb, pa - pb, (pa - pb) / nullif(pb, 0),
           pa - pb - 1.959964 * se, pa - pb + 1.959964 * se, (pa - pb) / nullif(se, 0),
           ma, mb, ma - mb, ma - mb - 1.959964 * rev_se, ma - mb + 1.959964 * rev_se
      FROM s
$$;
COMMENT ON FUNCTION engage.compare_groups(bigint, bigint, numeric, numeric, bigint, bigint, numeric, numeric) IS
    'Compares group A with group B: conversion rates, absolute and relative uplift with a 95% confidence interval and z (normal approximation), and revenue per customer with its 95% interval.';

CREATE VIEW engage.holdout_uplift AS
WITH groups AS (
    SELECT x.trigger_id, tg.trigger,
           coalesce(sum(x.customers) FILTER (WHERE NOT x.control), 0)::bigint AS n_t,
           coalesce(sum(x.converted) FILTER (WHERE NOT x.control), 0)::bigint AS conv_t,
           coalesce(sum(x.revenue) FILTER (WHERE NOT x.control), 0) AS rev_t,
           coalesce(sum(x.revenue_squared) FILTER (WHERE NOT x.control), 0) AS rev_sq_t,
           coalesce(sum(x.customers) FILTER (WHERE x.control), 0)::bigint AS n_c,
           coalesce(sum(x.converted) FILTER (WHERE x.control), 0)::bigint AS conv_c,
           coalesce(sum(x.revenue) FILTER (WHERE x.control), 0) AS rev_c,
           coalesce(sum(x.revenue_squared) FILTER (WHERE x.control), 0) AS rev_sq_c
      FROM engage.current_exposure_totals x
      JOIN engage.trigger_goals tg ON tg.trigger_id = x.trigger_id
     GROUP BY x.trigger_id, tg.trigger
)
SELECT g.trigger, g.trigger_id,
       g.n_t AS treated, g.conv_t AS treated_conversions, c.rate_a AS treated_rate,
       g.n_c AS control, g.conv_c AS control_conversions, c.rate_b AS control_rate,
       c.uplift, c.relative_uplift, c.ci_low, c.ci_high, c.z,
       c.ci_low > 0 OR c.ci_high < 0 AS significant,
       c.revenue_per_customer_a AS treated_revenue_per_customer,
       c.revenue_per_customer_b AS control_revenue_per_customer,
       c.revenue_uplift AS revenue_uplift_per_customer, c.revenue_ci_low, c.revenue_ci_high
  FROM groups g,
       LATERAL engage.compare_groups(g.n_t, g.conv_t, g.rev_t, g.rev_sq_t, g.n_c, g.conv_c, g.rev_c, g.rev_sq_c) c;
COMMENT ON VIEW engage.holdout_uplift IS
    'Per trigger with a goal (control columns are empty without a holdout): conversion rate and revenue per customer, treated vs control (anchored on the triggering event), the absolute and relative uplift with a 95% confidence interval and z, and whether it is significant.';

CREATE VIEW engage.variant_results AS
WITH arms AS (
    SELECT t.id AS trigger_id, v.name AS variant, v.position
      FROM engage.triggers t, jsonb_array_elements_text(t.compiled -> 'variants') WITH ORDINALITY AS v(name, position)
), groups AS (
    SELECT x.trigger_id, tg.trigger, x.variant,
           sum(x.customers)::bigint AS n, sum(x.converted)::bigint AS conv,
           sum(x.revenue) AS rev, sum(x.revenue_squared) AS rev_sq
      FROM engage.current_exposure_totals x
      JOIN engage.trigger_goals tg ON tg.trigger_id = x.trigger_id
     WHERE NOT x.control AND x.variant IS NOT NULL
     GROUP BY x.trigger_id, tg.trigger, x.variant
)
SELECT g.trigger, g.trigger_id, g.variant, a.position, g.n AS customers, g.conv AS conversions,
       c.rate_a AS conversion_rate, c.revenue_per_customer_a AS revenue_per_customer,
       ref.variant AS compared_with, c.uplift, c.ci_low, c.ci_high, c.z,
       c.ci_low > 0 OR c.ci_high < 0 AS significant
  FROM groups g
  JOIN arms a ON a.trigger_id = g.trigger_id AND a.variant = g.variant
  JOIN arms r1 ON r1.trigger_id = g.trigger_id AND r1.position = 1
  LEFT JOIN groups ref ON ref.trigger_id = g.trigger_id AND ref.variant = r1.variant,
       LATERAL engage.compare_groups(g.n, g.conv, g.rev, g.rev_sq, ref.n, ref.conv, ref.rev, ref.rev_sq) c;
COMMENT ON VIEW engage.variant_results IS
    'Per trigger experiment arm (treated customers): conversion rate and revenue per customer, and the difference from the first arm with a 95% confidence interval.';

-- 7. Latency ----------------------------------------------------------------------------------

CREATE FUNCTION engage.trigger_latency_in(since timestamptz)
RETURNS TABLE (
    trigger text, trigger_id integer, channel text, messages bigint,
    occurred_to_decided_s double precision[], decided_to_queued_s double precision[],
    due_to_sent_s double precision[], occurred_to_sent_s double precision[]
)
LANGUAGE sql STABLE
-- A few thousand histogram rows: compiling them (JIT) would cost more than reading them.
SET jit = off AS $$
    WITH whole_days AS (
        -- The histograms hold whole UTC days; the part of a day before the first whole one is
        -- counted from the rollup rows.
        SELECT CASE WHEN isfinite(since)
                    THEN date_bin('1 day', since + interval '24 hours' - interval '1 microsecond', timestamptz '2000-01-01 00:00+00')
                    ELSE since END AS first_day
    ), counts AS (
        SELECT h.trigger_id, h.channel, h.measure, h.bucket, h.messages
          FROM engage.latency_histograms h, whole_days w
         WHERE h.sent_day >= w.first_day
        UNION ALL
        -- The part of a day before the first whole one, from the rollup rows.
        SELECT r.trigger_id, r.channel, m.measure, engage.latency_bucket(m.seconds), 1
          FROM whole_days w, engage.rollup_messages r,
               LATERAL engage.latency_measures(r.occurred_at, r.decided_at, r.queued_at, r.scheduled_at, r.sent_at) m
         WHERE r.sent_at >= since AND r.sent_at < w.first_day
        UNION ALL
        -- Marked customers' rows as they are now instead of as rolled up.
        SELECT d.trigger_id, d.channel, d.measure, d.bucket, d.messages
          FROM engage.marked_rollups m,
               engage.latency_histogram_delta(ARRAY(SELECT r FROM unnest(m.stale_messages) r WHERE r.sent_at >= since),
                                              ARRAY(SELECT r FROM unnest(m.messages) r WHERE r.sent_at >= since)) d
    ), merged AS (
        SELECT c.trigger_id, c.channel, c.measure, c.bucket, sum(c.messages) AS n
          FROM counts c
         GROUP BY c.trigger_id, c.channel, c.measure, c.bucket
        HAVING sum(c.messages) <> 0
    ), ranked AS (
        SELECT x.*, sum(x.n) OVER (PARTITION BY x.trigger_id, x.channel, x.measure ORDER BY x.bucket) AS upto,
               sum(x.n) OVER (PARTITION BY x.trigger_id, x.channel, x.measure) AS total
          FROM merged x
    ), percentiles AS (
        -- The bucket holding the element of rank floor(q (n - 1)), counting from 0.
        SELECT r.trigger_id, r.channel, r.measure, max(r.total)::bigint AS total,
               ARRAY[engage.latency_bucket_value(min(r.bucket) FILTER (WHERE r.upto > floor(0.50 * (r.total - 1)))),
                     engage.latency_bucket_value(min(r.bucket) FILTER (WHERE r.upto > floor(0.95 * (r.total - 1)))),
                     engage.latency_bucket_value(min(r.bucket) FILTER (WHERE r.upto > floor(0.99 * (r.total - 1))))] AS p
          FROM ranked r
         GROUP BY r.trigger_id, r.channel, r.measure
    )
    SELECT t.name, p.trigger_id, p.channel,
           max(p.total) FILTER (WHERE p.measure = 0),
           max(p.p) FILTER (WHERE p.measure = 1), max(p.p) FILTER (WHERE p.measure = 2),
           max(p.p) FILTER (WHERE p.measure = 3), max(p.p) FILTER (WHERE p.measure = 4)
      FROM percentiles p
      JOIN engage.triggers t ON t.id = p.trigger_id
     GROUP BY t.name, p.trigger_id, p.channel
    HAVING max(p.total) FILTER (WHERE p.measure = 0) > 0
$$;
COMMENT ON FUNCTION engage.trigger_latency_in(timestamptz) IS
    'Per trigger and channel, messages sent since a time: p50/p95/p99 seconds from event to decision, decision to queue, due time to sent (delivery lag, excluding any wait), and event to sent; each within 4.33% of the order statistic of rank floor(q (n - 1)) (not interpolated), read from the latency histograms (sql/metrics.sql, "Running totals").';

CREATE VIEW engage.trigger_latency AS SELECT * FROM engage.trigger_latency_in(now() - interval '30 days');
COMMENT ON VIEW engage.trigger_latency IS
    'engage.trigger_latency_in over the messages sent in the last 30 days: p50/p95/p99 latencies per trigger and channel, in seconds (arrays of three, each within 4.33% of an order statistic).';

-- 8. ROI --------------------------------------------------------------------------------------

CREATE VIEW engage.trigger_roi AS
WITH spend AS (
    SELECT m.trigger_id, sum(m.messages)::bigint AS messages, sum(m.recipients)::bigint AS recipients,
           sum(m.cost) AS cost
      FROM engage.current_message_totals m
     GROUP BY m.trigger_id
), earned AS (
    SELECT trigger_id, sum(revenue) AS revenue FROM engage.trigger_revenue WHERE model = 'last_touch' GROUP BY trigger_id
)
SELECT t.name AS trigger, t.id AS trigger_id,
       s.messages, s.recipients, s.cost,
       coalesce(e.revenue, 0) AS attributed_revenue,
       coalesce(e.revenue, 0) - s.cost AS net,
       round((coalesce(e.revenue, 0) - s.cost) / nullif(s.cost, 0), 4) AS roi,
       round(coalesce(e.revenue, 0) / nullif(s.recipients, 0), 4) AS revenue_per_recipient,
       u.revenue_uplift_per_customer * u.treated AS incremental_revenue,
       u.revenue_uplift_per_customer * u.treated - s.cost AS incremental_net
  FROM spend s
  JOIN engage.triggers t ON t.id = s.trigger_id
  LEFT JOIN earned e ON e.trigger_id = s.trigger_id
  LEFT JOIN engage.holdout_uplift u ON u.trigger_id = s.trigger_id;
COMMENT ON VIEW engage.trigger_roi IS
    'Per trigger: messages, recipients, channel cost, last-touch attributed revenue, net and ROI, revenue per recipient; and, with a holdout, the incremental revenue (revenue uplift per customer x treated customers) and incremental net: the figure that survives "would they have bought anyway?".';
