-- pg_engage 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_engage UPDATE). 0.1.0 is the release whose
-- generated script is kept in sql/versions/; tests/tests/upgrade.rs checks that an updated
-- database has the catalog of a fresh 0.2.0 install and keeps its data and queue.
--
-- 0.2.0: journeys decide re-entry in event time (code only), and a minute's calendar tick reads
-- only the profiles of the zones whose local time it is (below).
\echo Use "ALTER EXTENSION pg_engage UPDATE" to load this file. \quit

CREATE FUNCTION engage.known_time_zones(names text[]) RETURNS text[]
STRICT STABLE PARALLEL SAFE LANGUAGE c
AS 'MODULE_PATHNAME', 'known_time_zones_wrapper';
COMMENT ON FUNCTION engage.known_time_zones(text[]) IS
    'The names among its argument that are time zones listed in pg_timezone_names, from a list each session reads once an hour (listing the zones loads every zone file).';

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
CREATE OR REPLACE FUNCTION engage.fire_calendar(trigger_id integer, since timestamptz, moment timestamptz) RETURNS bigint
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
    SELECT tr.name, tr.definition ? 'anniversary' AS yearly,
           engage.json_path(coalesce(tr.definition -> 'anniversary', tr.definition -> 'date') ->> 'date') AS path,
           coalesce(coalesce(tr.definition -> 'anniversary', tr.definition -> 'date') ->> 'at', '09:00')::time AS local_time,
           coalesce(-engage.duration(tr.definition -> 'date' ->> 'before'),
                    engage.duration(tr.definition -> 'date' ->> 'after'), interval '0') AS shift
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
    SELECT o.customer_id, 'trigger:' || t.name,
           jsonb_build_object('kind', CASE WHEN t.yearly THEN 'anniversary' ELSE 'date' END,
                              'date', o.raw_date, 'occasion', o.local_day, 'time_zone', o.zone),
           o.due, 'trigger:' || fire_calendar.trigger_id || ':' || o.customer_id || ':' || o.local_day
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


-- As sql/privileges.sql does for every function: a pinned search_path (CREATE OR REPLACE resets
-- it), and nothing for PUBLIC.
ALTER FUNCTION engage.known_time_zones(text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.profile_zones() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.fire_calendar(integer, timestamptz, timestamptz) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.known_time_zones(text[]), engage.profile_zones() FROM PUBLIC;
