-- Scheduled and threshold triggers: inactivity, anniversaries, dates, predictions (fired by
-- engage.tick), and crossings (fired by the statement that crosses). The language is in
-- src/rule/occasion.rs; the scheduler worker (src/scheduler) calls engage.tick every interval.
--
-- Every kind fires the same way: it inserts one generated event per customer and occasion,
-- named 'trigger:<trigger name>', with an idempotency key naming the trigger, the customer and
-- the episode. The insert path then decides that event like any other (where, cap, consent,
-- frequency caps, quiet hours, conflicts, holdout, wait, variants), into the same decision log
-- and outbox, so the metrics views cover these triggers too. The key makes every tick
-- idempotent: an occasion already fired is skipped, whoever inserts it again.

-- Inactivity looks for events by time (whose anniversary of inactivity falls in the tick's
-- window). A BRIN index is a few pages per million rows and nearly free on the insert path.
CREATE INDEX events_occurred_brin ON engage.events USING brin (occurred_at);

CREATE TABLE engage.tick_progress (
    trigger_id   integer     PRIMARY KEY REFERENCES engage.triggers ON DELETE CASCADE,
    ticked_until timestamptz NOT NULL
);
COMMENT ON TABLE engage.tick_progress IS
    'Per scheduled trigger: the instant up to which engage.tick has fired it. The next tick covers (ticked_until, moment]. engage.set_tick_progress moves it.';



-- The local calendar date of a profile attribute ("YYYY-MM-DD", optionally followed by a time),
-- moved into `year` when given: the 29th of February becomes the 28th in other years, and a day
-- past the end of its month is clamped. NULL when the attribute is not such a date.
CREATE FUNCTION engage.profile_date(raw text, year integer DEFAULT NULL) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
    -- One expression, so that the planner inlines it into the tick's query; inlined, it pins no
    -- search_path, so every name is qualified.
    SELECT CASE WHEN raw OPERATOR(pg_catalog.~) '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])' THEN
               pg_catalog.make_date(coalesce(year, pg_catalog.substr(raw, 1, 4)::pg_catalog.int4),
                                    pg_catalog.substr(raw, 6, 2)::pg_catalog.int4, 1)
               OPERATOR(pg_catalog.+)
               (least(pg_catalog.substr(raw, 9, 2)::pg_catalog.int4,
                      pg_catalog.date_part('day',
                          pg_catalog.make_date(coalesce(year, pg_catalog.substr(raw, 1, 4)::pg_catalog.int4),
                                               pg_catalog.substr(raw, 6, 2)::pg_catalog.int4, 1)
                          OPERATOR(pg_catalog.+) interval '1 month' OPERATOR(pg_catalog.-) interval '1 day')::pg_catalog.int4)
                OPERATOR(pg_catalog.-) 1)
           END
$$;
COMMENT ON FUNCTION engage.profile_date(text, integer) IS
    'The date in a profile attribute (YYYY-MM-DD...), optionally moved into another year (29 February becomes 28 February in non-leap years); NULL if not a date.';

-- The idempotency key of an occasion, in the scheduler's reserved namespace ("trigger:", see
-- engage.refuse_reserved_names): the trigger, the customer and the episode, so each occasion of a
-- customer fires once.
CREATE FUNCTION engage.occasion_key(trigger_id integer, customer_id text, episode text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'trigger:' || occasion_key.trigger_id || ':' || occasion_key.customer_id || ':' || occasion_key.episode
$$;
COMMENT ON FUNCTION engage.occasion_key(integer, text, text) IS
    'The idempotency key of a scheduled or threshold trigger''s occasion: trigger:<trigger id>:<customer>:<episode>.';

-- Inactivity: customers whose last `event` before the moment was `for` earlier, where the moment
-- (last event + for) falls in (since, moment]. One episode per last event: a new event starts the
-- next one. An event arriving late (before the moment, inserted after it) still ends the episode
-- if it arrives before the tick that would fire it.
CREATE FUNCTION engage.fire_inactive(trigger_id integer, since timestamptz, moment timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    fired bigint;
BEGIN
    SELECT tr.compiled ->> 'event_name' AS event_name, tr.compiled -> 'occasion' ->> 'event' AS event,
           (tr.compiled -> 'occasion' ->> 'for_micros')::bigint * interval '1 microsecond' AS span
      INTO t FROM engage.triggers tr WHERE tr.id = fire_inactive.trigger_id;
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    SELECT e.customer_id, t.event_name,
           jsonb_build_object('kind', 'inactive', 'event', t.event, 'last_event_at', e.occurred_at,
                              'inactive_for', t.span::text),
           e.occurred_at + t.span,
           engage.occasion_key(fire_inactive.trigger_id, e.customer_id, e.id::text)
      FROM engage.events e
     WHERE e.name = t.event
       AND e.occurred_at > since - t.span AND e.occurred_at <= moment - t.span
       AND NOT EXISTS (SELECT FROM engage.events later
                        WHERE later.customer_id = e.customer_id AND later.name = t.event
                          AND later.occurred_at <= e.occurred_at + t.span
                          AND (later.occurred_at, later.id) > (e.occurred_at, e.id))
     ORDER BY e.occurred_at, e.id;
    GET DIAGNOSTICS fired = ROW_COUNT;
    RETURN fired;
END
$$;
COMMENT ON FUNCTION engage.fire_inactive(integer, timestamptz, timestamptz) IS
    'engage.tick for an "inactive" trigger: fires once per inactivity episode whose moment (last event + for) falls in (since, moment].';

-- A minute's tick reads only the profiles of the zones where the trigger's local time falls in
-- the window (none, most minutes): profiles are found by zone.
CREATE INDEX profiles_timezone ON engage.profiles (timezone);

-- The distinct values of profiles.timezone (NULL left out), by a skip scan of profiles_timezone:
-- one index descent per zone, however many profiles.
CREATE FUNCTION engage.profile_zones() RETURNS text[]
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE zones(name) AS (
        (SELECT p.timezone FROM engage.profiles p WHERE p.timezone IS NOT NULL ORDER BY p.timezone LIMIT 1)
        UNION ALL
        SELECT (SELECT p.timezone FROM engage.profiles p WHERE p.timezone > zones.name ORDER BY p.timezone LIMIT 1)
          FROM zones WHERE zones.name IS NOT NULL
    )
    SELECT coalesce(array_agg(zones.name), '{}') FROM zones WHERE zones.name IS NOT NULL
$$;
COMMENT ON FUNCTION engage.profile_zones() IS
    'The distinct time zones written in engage.profiles.timezone, known or not, read with one index descent per zone.';

-- Anniversaries and dates: the occurrence is a local date at a local time in the customer's own
-- zone (profiles.timezone when it is a known IANA zone, else engage.default_timezone, else UTC);
-- the wall-clock time holds across DST. Occurrences more than a day before the tick are not
-- fired late (a scheduler stopped for a week does not send last week's birthday greetings).
-- Only the profiles of zones where some local day's occurrence time falls in the window are read:
-- for a minute's tick, the zones whose local time crosses the trigger's `at` (plus its shift)
-- in that minute, often none, and then no profile at all.
CREATE FUNCTION engage.fire_calendar(trigger_id integer, since timestamptz, moment timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    fired bigint;
    earliest timestamptz := greatest(since, moment - interval '1 day');
    -- Local dates in the window, in any zone, lie within a day of its UTC dates.
    first_day date := (earliest AT TIME ZONE 'UTC')::date - 1;
    last_day date := (moment AT TIME ZONE 'UTC')::date + 1;
    month_days text[];
    default_zone text := coalesce(nullif(current_setting('engage.default_timezone', true), ''), 'UTC');
    written_zones text[] := engage.profile_zones();
    known_zones text[];
    default_due boolean;
    due_zones text[];
BEGIN
    SELECT tr.compiled ->> 'event_name' AS event_name, (tr.compiled -> 'occasion' ->> 'yearly')::boolean AS yearly,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(tr.compiled -> 'occasion' -> 'date')) AS path,
           (tr.compiled -> 'occasion' ->> 'at')::time AS local_time,
           (tr.compiled -> 'occasion' ->> 'offset_micros')::bigint * interval '1 microsecond' AS shift
      INTO t FROM engage.triggers tr WHERE tr.id = fire_calendar.trigger_id;
    -- Only profiles whose date can fall in the window are looked at: for anniversaries, the
    -- window's month-days (and 29 February when the 28th is one of them); for dates, the window
    -- moved back by the offset.
    SELECT array_agg(to_char(d, 'MM-DD')) INTO month_days
      FROM generate_series(first_day, last_day, interval '1 day') d;
    IF '02-28' = ANY (month_days) THEN
        month_days := month_days || '02-29'::text;
    END IF;
    -- The zones in which some local day's occurrence falls due in the window. A zone written in
    -- profiles that is not a known one stands for the default zone, as does no zone.
    known_zones := engage.known_time_zones(written_zones);
    SELECT coalesce(array_agg(w.zone), '{}') INTO due_zones
      FROM unnest(written_zones || default_zone) AS w(zone)
     WHERE EXISTS (SELECT FROM generate_series(first_day - t.shift - interval '1 day',
                                               last_day - t.shift + interval '1 day', interval '1 day') AS d(day)
                    WHERE ((d.day::date + t.local_time) + t.shift)
                          AT TIME ZONE CASE WHEN w.zone = ANY (known_zones) THEN w.zone ELSE default_zone END
                          > earliest
                      AND ((d.day::date + t.local_time) + t.shift)
                          AT TIME ZONE CASE WHEN w.zone = ANY (known_zones) THEN w.zone ELSE default_zone END
                          <= moment);
    default_due := default_zone = ANY (due_zones);
    IF cardinality(due_zones) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    SELECT o.customer_id, t.event_name,
           jsonb_build_object('kind', CASE WHEN t.yearly THEN 'anniversary' ELSE 'date' END,
                              'date', o.raw_date, 'occasion', o.local_day, 'time_zone', o.zone),
           o.due, engage.occasion_key(fire_calendar.trigger_id, o.customer_id, o.local_day::text)
      FROM (SELECT c.customer_id, c.zone, c.raw_date, local.day AS local_day,
                   ((local.day + t.local_time) + t.shift) AT TIME ZONE c.zone AS due
              FROM (SELECT p.customer_id,
                           CASE WHEN p.timezone = ANY (known_zones) THEN p.timezone ELSE default_zone END AS zone,
                           p.attributes #>> t.path AS raw_date
                      FROM (SELECT * FROM engage.profiles p WHERE p.timezone = ANY (due_zones)
                            UNION ALL
                            SELECT * FROM engage.profiles p WHERE default_due AND p.timezone IS NULL) p
                     WHERE CASE WHEN t.yearly THEN substr(p.attributes #>> t.path, 6, 5) = ANY (month_days)
                                ELSE left(p.attributes #>> t.path, 10)
                                     BETWEEN to_char(first_day - t.shift - interval '1 day', 'YYYY-MM-DD')
                                         AND to_char(last_day - t.shift + interval '1 day', 'YYYY-MM-DD') END) c
              CROSS JOIN LATERAL (
                  -- The anniversary in each year the window touches, or the one date.
                  SELECT engage.profile_date(c.raw_date, y) AS day
                    FROM generate_series(extract(year FROM first_day)::integer, extract(year FROM last_day)::integer) AS y
                   WHERE t.yearly
                  UNION ALL
                  SELECT engage.profile_date(c.raw_date) WHERE NOT t.yearly
              ) local
             WHERE local.day IS NOT NULL) o
     WHERE o.due > earliest AND o.due <= moment
     ORDER BY o.due, o.customer_id;
    GET DIAGNOSTICS fired = ROW_COUNT;
    RETURN fired;
END
$$;
COMMENT ON FUNCTION engage.fire_calendar(integer, timestamptz, timestamptz) IS
    'engage.tick for "anniversary" and "date" triggers: fires each occurrence (local date and time in the customer''s zone) that falls in (since, moment], at most a day late.';

-- Predictions: p(alive) under the newest model of the purchase event, as of the tick's day.
-- Once per episode: the episode is the customer's number of purchase days, so a new purchase
-- re-arms the trigger.
CREATE FUNCTION engage.fire_predicted(trigger_id integer, moment timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    m engage.purchase_models;
    fired bigint;
BEGIN
    SELECT tr.compiled ->> 'event_name' AS event_name, tr.compiled -> 'occasion' ->> 'event' AS event,
           (tr.compiled -> 'occasion' ->> 'p_alive_below')::float8 AS threshold,
           (tr.compiled -> 'occasion' ->> 'min_purchases')::integer AS min_purchases
      INTO t FROM engage.triggers tr WHERE tr.id = fire_predicted.trigger_id;
    SELECT * INTO m FROM engage.purchase_models pm WHERE pm.event = t.event ORDER BY pm.id DESC LIMIT 1;
    IF m.id IS NULL THEN
        RETURN 0; -- no model fitted yet (engage.fit_purchase_model)
    END IF;
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    SELECT s.customer_id, t.event_name,
           jsonb_build_object('kind', 'predicted', 'p_alive', round(s.p_alive::numeric, 4),
                              'purchase_days', s.frequency + 1, 'model_id', m.id),
           moment,
           engage.occasion_key(fire_predicted.trigger_id, s.customer_id, (s.frequency + 1)::text)
      FROM (SELECT x.customer_id, x.frequency,
                   engage.bgnbd_p_alive(m.r, m.alpha, m.a, m.b, x.frequency, x.recency, x.age) AS p_alive
              FROM engage.purchase_summaries(t.event, (moment AT TIME ZONE 'UTC')::date, m.unit) x
             WHERE x.frequency + 1 >= t.min_purchases) s
     WHERE s.p_alive < t.threshold
     ORDER BY s.customer_id;
    GET DIAGNOSTICS fired = ROW_COUNT;
    RETURN fired;
END
$$;
COMMENT ON FUNCTION engage.fire_predicted(integer, timestamptz) IS
    'engage.tick for "predicted" triggers: fires for customers with at least min_purchases purchase days whose P(alive) under the newest model is below the threshold, once per number of purchase days.';

CREATE FUNCTION engage.tick(moment timestamptz DEFAULT now(), ahead_of_now boolean DEFAULT false)
RETURNS TABLE (trigger text, kind text, since timestamptz, fired bigint)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    from_ timestamptz;
    n bigint;
BEGIN
    -- Ticks only move forward: a moment in the future would fire its occasions early and then
    -- skip them until then. Only on purpose.
    IF moment > now() + interval '1 minute' AND NOT ahead_of_now THEN
        RAISE EXCEPTION 'tick moment % is % ahead of now', moment, date_trunc('second', moment - now())
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Ticks only move forward: every scheduled trigger would fire the occasions up to that moment now, and none until then.',
                  HINT = 'Pass ahead_of_now => true to mean it; engage.set_tick_progress moves a trigger''s progress back.';
    END IF;
    -- One tick at a time: the scheduler worker and a manual or pg_cron call take turns.
    PERFORM FROM engage.locks WHERE name = 'tick' FOR UPDATE;
    FOR t IN
        SELECT tr.id, tr.name, tr.enabled, tr.created_at, p.ticked_until,
               tr.compiled -> 'occasion' ->> 'kind' AS kind,
               coalesce((tr.compiled -> 'occasion' ->> 'backfill')::boolean, false) AS backfill
          FROM engage.triggers tr
          LEFT JOIN engage.tick_progress p ON p.trigger_id = tr.id
         WHERE tr.compiled -> 'occasion' ->> 'kind' IN ('inactive', 'anniversary', 'date', 'predicted')
         ORDER BY tr.id
    LOOP
        -- A new trigger starts at its creation, or, with backfill, at the beginning of time.
        from_ := coalesce(t.ticked_until, CASE WHEN t.backfill THEN '-infinity'::timestamptz ELSE t.created_at END);
        CONTINUE WHEN moment <= from_;
        n := 0;
        IF NOT t.enabled THEN
            NULL; -- a disabled trigger's time passes without firing
        ELSIF t.kind = 'inactive' THEN
            n := engage.fire_inactive(t.id, from_, moment);
        ELSIF t.kind IN ('anniversary', 'date') THEN
            n := engage.fire_calendar(t.id, from_, moment);
        ELSE
            -- Predictions change slowly and cost a pass over the purchases: once per UTC day.
            CONTINUE WHEN t.ticked_until IS NOT NULL
                      AND (moment AT TIME ZONE 'UTC')::date <= (t.ticked_until AT TIME ZONE 'UTC')::date;
            n := engage.fire_predicted(t.id, moment);
        END IF;
        INSERT INTO engage.tick_progress AS p (trigger_id, ticked_until) VALUES (t.id, moment)
        ON CONFLICT (trigger_id) DO UPDATE SET ticked_until = excluded.ticked_until;
        trigger := t.name;
        kind := t.kind;
        since := from_;
        fired := n;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION engage.tick(timestamptz, boolean) IS
    'Fires the scheduled triggers (inactive, anniversary, date, predicted) for the occasions due in (the last tick, moment], through the insert path and its policy. Idempotent: an occasion fires once, whoever ticks. Ticks only move forward; a moment more than a minute ahead of now is an ERROR unless ahead_of_now. Returns per trigger the window start and how many occasions fired.';

CREATE FUNCTION engage.set_tick_progress(trigger text, ticked_until timestamptz) RETURNS boolean
LANGUAGE sql AS $$
    -- After a tick too far ahead, or to replay: the next tick covers (ticked_until, moment].
    -- Occasions already fired stay fired (their idempotency keys are stored).
    WITH moved AS (
        UPDATE engage.tick_progress p SET ticked_until = set_tick_progress.ticked_until
          FROM engage.triggers t
         WHERE t.id = p.trigger_id AND t.name = set_tick_progress.trigger
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM moved)
$$;
COMMENT ON FUNCTION engage.set_tick_progress(text, timestamptz) IS
    'Moves a scheduled trigger''s progress (engage.tick_progress) to ticked_until; false if the trigger has none. Occasions already fired do not fire again.';

-- The enabled triggers on a profile attribute crossing a level, from their compiled form.
CREATE FUNCTION engage.profile_crossing_triggers()
RETURNS TABLE (name text, event_name text, path text[], level numeric, upward boolean)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.compiled ->> 'event_name',
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(t.compiled -> 'occasion' -> 'profile')),
           (t.compiled -> 'occasion' ->> 'level')::numeric, (t.compiled -> 'occasion' ->> 'upward')::boolean
      FROM engage.triggers t
     WHERE t.enabled AND t.compiled -> 'occasion' -> 'profile' <> 'null'
$$;
COMMENT ON FUNCTION engage.profile_crossing_triggers() IS
    'The enabled "crosses" triggers on a profile attribute: name, the event they fire through, the attribute''s path, the level and the direction.';

-- Crossings of a profile attribute, from the statement that changed the profiles. A profile
-- created above the level counts as crossing upward (it had no value below); one created below
-- does not count as falling.
CREATE FUNCTION engage.profile_crossings() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM engage.triggers WHERE enabled AND compiled -> 'occasion' -> 'profile' <> 'null') THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO engage.events (customer_id, name, properties, occurred_at)
        SELECT c.customer_id, c.event_name,
               jsonb_build_object('kind', 'crosses', 'attribute', pg_catalog.array_to_string(c.path, '.'),
                                  'level', c.level, 'before', c.before, 'after', c.after),
               now()
          FROM (SELECT n.customer_id, t.name, t.event_name, t.path, t.level, t.upward,
                       engage.json_number(o.attributes, t.path) AS before,
                       engage.json_number(n.attributes, t.path) AS after
                  FROM new_rows n
                  JOIN old_rows o ON o.customer_id = n.customer_id
                  CROSS JOIN engage.profile_crossing_triggers() t) c
         WHERE CASE WHEN c.upward THEN coalesce(c.before < c.level, true) AND c.after >= c.level
                    ELSE c.before >= c.level AND c.after < c.level END
         ORDER BY c.customer_id, c.name;
    ELSE
        INSERT INTO engage.events (customer_id, name, properties, occurred_at)
        SELECT n.customer_id, t.event_name,
               jsonb_build_object('kind', 'crosses', 'attribute', pg_catalog.array_to_string(t.path, '.'),
                                  'level', t.level, 'before', NULL, 'after', n.attributes #> t.path),
               now()
          FROM new_rows n
          CROSS JOIN engage.profile_crossing_triggers() t
         WHERE t.upward AND engage.json_number(n.attributes, t.path) >= t.level
         ORDER BY n.customer_id, t.name;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION engage.profile_crossings() IS
    'Statement triggers on engage.profiles: fires "crosses" triggers on a profile attribute when a change moves it from below the level to at least it ("at_least"), or from at least it to below ("below").';
CREATE TRIGGER profile_crossings_update AFTER UPDATE ON engage.profiles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION engage.profile_crossings();
CREATE TRIGGER profile_crossings_insert AFTER INSERT ON engage.profiles
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION engage.profile_crossings();

-- Crossings of a windowed sum over events, called by the insert path with the statement's events
-- that some "crosses" trigger sums: for each, the sum over the window ending at it, just before
-- and just after it (events at the same instant in id order). Fires when it goes from below the
-- level to at least it. A late event is judged at its own time: it does not re-judge later ones.
CREATE FUNCTION engage.sum_crossings(event_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    fired bigint;
BEGIN
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    SELECT n.customer_id, c.event_name,
           jsonb_build_object('kind', 'crosses', 'event', c.event, 'level', c.level, 'before', s.before,
                              'after', s.after, 'crossing_event_id', n.id),
           n.occurred_at, engage.occasion_key(c.id, n.customer_id, n.id::text)
      FROM (SELECT t.id, t.compiled ->> 'event_name' AS event_name, t.compiled -> 'occasion' ->> 'event' AS event,
                   (t.compiled -> 'occasion' ->> 'level')::numeric AS level,
                   (t.compiled -> 'occasion' ->> 'within_micros')::bigint * interval '1 microsecond' AS within,
                   ARRAY(SELECT pg_catalog.jsonb_array_elements_text(t.compiled -> 'occasion' -> 'sum')) AS path
              FROM engage.triggers t
             WHERE t.enabled AND t.compiled -> 'occasion' -> 'sum' <> 'null') c
      JOIN engage.events n ON n.id = ANY (event_ids) AND n.name = c.event
      CROSS JOIN LATERAL (
          SELECT coalesce(sum(engage.json_number(e.properties, c.path))
                              FILTER (WHERE (e.occurred_at, e.id) < (n.occurred_at, n.id)), 0) AS before,
                 coalesce(sum(engage.json_number(e.properties, c.path)), 0) AS after
            FROM engage.events e
           WHERE e.customer_id = n.customer_id AND e.name = c.event
             AND e.occurred_at > n.occurred_at - c.within AND e.occurred_at <= n.occurred_at
             AND (e.occurred_at, e.id) <= (n.occurred_at, n.id)
      ) s
     WHERE s.before < c.level AND s.after >= c.level
     ORDER BY n.occurred_at, n.id;
    GET DIAGNOSTICS fired = ROW_COUNT;
    RETURN fired;
END
$$;
COMMENT ON FUNCTION engage.sum_crossings(bigint[]) IS
    'Called by the insert path for events that "crosses" triggers sum: fires those whose windowed sum goes from below the level to at least it with that event.';
