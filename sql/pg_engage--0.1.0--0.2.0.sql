-- pg_engage 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_engage UPDATE). 0.1.0 is the release whose
-- generated script is kept in sql/versions/; tests/tests/upgrade.rs checks that an updated
-- database has the catalog of a fresh 0.2.0 install and keeps its data and queue.
--
-- 0.2.0: journeys decide re-entry in event time (code only), a minute's calendar tick reads
-- only the profiles of the zones whose local time it is, Segment-shaped ingestion and the
-- operations views, and keys ready for distribution by customer (below).
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


-- Segment-shaped ingestion (sql/ingest.sql).
-- Anonymous ids merged into a known customer by an alias call: later calls that carry only the
-- anonymous id are recorded for the known customer.
CREATE TABLE engage.aliases (
    previous_id text        COLLATE "C" PRIMARY KEY,
    customer_id text        COLLATE "C" NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.aliases IS
    'Segment alias calls: previous_id (an anonymousId) now means customer_id. Events already recorded under previous_id stay there.';
SELECT pg_catalog.pg_extension_config_dump('engage.aliases', '');

CREATE FUNCTION engage.aliased(anonymous_id text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT a.customer_id FROM engage.aliases a WHERE a.previous_id = aliased.anonymous_id
$$;
COMMENT ON FUNCTION engage.aliased(text) IS
    'The customer an anonymous id was merged into by an alias call, or NULL.';

CREATE FUNCTION engage.stored_key(customer_id text, key text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM engage.events e
                    WHERE e.customer_id = stored_key.customer_id AND e.idempotency_key = stored_key.key)
$$;
COMMENT ON FUNCTION engage.stored_key(text, text) IS
    'Whether the customer has an event with this idempotency key (engage.ingest reports the call as a duplicate; an app learns no more than a skipped insert tells it).';

CREATE FUNCTION engage.alias(previous_id text, customer_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    existing text;
BEGIN
    IF alias.previous_id IS NULL OR alias.customer_id IS NULL OR alias.previous_id = alias.customer_id THEN
        RAISE EXCEPTION 'alias needs two different ids, previousId and userId'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO engage.aliases AS a (previous_id, customer_id) VALUES (alias.previous_id, alias.customer_id)
    ON CONFLICT ON CONSTRAINT aliases_pkey DO NOTHING;
    SELECT a.customer_id INTO existing FROM engage.aliases a WHERE a.previous_id = alias.previous_id;
    IF existing <> alias.customer_id THEN
        RAISE EXCEPTION 'previousId "%" is already an alias of "%"', alias.previous_id, existing
            USING ERRCODE = 'unique_violation';
    END IF;
    -- The anonymous profile's traits go to the known customer; what the known profile already
    -- has wins.
    INSERT INTO engage.profiles AS p (customer_id, attributes, email, phone, timezone, push_token, locale, preferred_channel)
    SELECT alias.customer_id, anon.attributes, anon.email, anon.phone, anon.timezone, anon.push_token, anon.locale,
           anon.preferred_channel
      FROM engage.profiles anon
     WHERE anon.customer_id = alias.previous_id
    ON CONFLICT ON CONSTRAINT profiles_pkey DO UPDATE
       SET attributes = excluded.attributes || p.attributes,
           email      = coalesce(p.email, excluded.email),
           phone      = coalesce(p.phone, excluded.phone),
           timezone   = coalesce(p.timezone, excluded.timezone),
           push_token = coalesce(p.push_token, excluded.push_token),
           locale     = coalesce(p.locale, excluded.locale),
           preferred_channel = coalesce(p.preferred_channel, excluded.preferred_channel),
           updated_at = now();
END
$$;
COMMENT ON FUNCTION engage.alias(text, text) IS
    'Segment alias: previous_id (an anonymousId) now means customer_id; the anonymous profile''s traits merge into the known one (the known values win). Events already recorded under previous_id stay there, with their decisions. ERROR 23505 if previous_id is already an alias of another customer.';

CREATE FUNCTION engage.ingest(calls jsonb)
RETURNS TABLE (item integer, type text, customer_id text, outcome text, error text)
LANGUAGE plpgsql AS $$
DECLARE
    items jsonb;
    call jsonb;
    pos bigint;
    kind text;
    customer text;
    anonymous text;
    name_ text;
    props jsonb;
    at_field text;
    at_ timestamptz;
    key_ text;
    traits jsonb;
    earlier text;
    seen_keys text[] := '{}';
    -- Identify and alias calls, in order: applied after the checks, outside the per-call
    -- subtransactions (a subtransaction that writes takes a transaction id, and more than 64 of
    -- them in one transaction slow down every snapshot on the server).
    op_pos integer[] := '{}';
    op_kind text[] := '{}';
    op_customer text[] := '{}';
    op_previous text[] := '{}';
    op_traits jsonb[] := '{}';
    -- This batch's aliases, so that its later calls with the anonymous id see them.
    alias_previous text[] := '{}';
    alias_customer text[] := '{}';
    ev_pos integer[] := '{}';
    ev_customer text[] := '{}';
    ev_name text[] := '{}';
    ev_props jsonb[] := '{}';
    ev_at timestamptz[] := '{}';
    ev_key text[] := '{}';
    ev_type text[] := '{}';
    i integer;
BEGIN
    items := CASE pg_catalog.jsonb_typeof(calls)
                 WHEN 'array' THEN calls
                 WHEN 'object' THEN coalesce(calls -> 'batch', pg_catalog.jsonb_build_array(calls))
             END;
    IF items IS NULL OR pg_catalog.jsonb_typeof(items) <> 'array' THEN
        RAISE EXCEPTION 'ingest: expected a call object, an array of calls or {"batch": [...]}, got %',
                        coalesce(pg_catalog.jsonb_typeof(calls), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- 1. Check every call and sort it: an error per bad call, the rest collected. Nothing is
    -- written here.
    FOR call, pos IN SELECT c.value, c.ordinality FROM pg_catalog.jsonb_array_elements(items) WITH ORDINALITY c LOOP
        item := pos;
        type := NULL;
        customer_id := NULL;
        outcome := 'error';
        error := NULL;
        BEGIN
            IF pg_catalog.jsonb_typeof(call) <> 'object' THEN
                RAISE EXCEPTION 'a call is a JSON object, got %', pg_catalog.jsonb_typeof(call);
            END IF;
            -- A batch's own context applies to every call in it (the call's keys win).
            IF pg_catalog.jsonb_typeof(calls -> 'context') = 'object' THEN
                call := call || pg_catalog.jsonb_build_object('context', (calls -> 'context') || coalesce(call -> 'context', '{}'));
            END IF;
            kind := call ->> 'type';
            type := kind;
            IF kind IS NULL OR kind NOT IN ('track', 'identify', 'page', 'screen', 'group', 'alias') THEN
                RAISE EXCEPTION 'type: expected track, identify, page, screen, group or alias, got %',
                                coalesce(call -> 'type', 'null');
            END IF;
            anonymous := call ->> 'anonymousId';
            customer := coalesce(call ->> 'userId',
                                 alias_customer[pg_catalog.array_position(alias_previous, anonymous)],
                                 engage.aliased(anonymous), anonymous);
            IF customer IS NULL OR customer = '' THEN
                RAISE EXCEPTION 'userId or anonymousId: one is required';
            END IF;
            customer_id := customer;
            IF kind = 'alias' THEN
                IF call ->> 'userId' IS NULL OR call ->> 'previousId' IS NULL
                   OR call ->> 'userId' = call ->> 'previousId' THEN
                    RAISE EXCEPTION 'alias: previousId and userId are required, and differ';
                END IF;
                earlier := coalesce(alias_customer[pg_catalog.array_position(alias_previous, call ->> 'previousId')],
                                    engage.aliased(call ->> 'previousId'));
                IF earlier <> call ->> 'userId' THEN
                    RAISE EXCEPTION 'previousId "%" is already an alias of "%"', call ->> 'previousId', earlier;
                END IF;
                alias_previous := alias_previous || (call ->> 'previousId');
                alias_customer := alias_customer || (call ->> 'userId');
                op_pos := op_pos || pos::integer;
                op_kind := op_kind || kind;
                op_customer := op_customer || (call ->> 'userId');
                op_previous := op_previous || (call ->> 'previousId');
                op_traits := op_traits || '{}'::jsonb;
                CONTINUE;
            END IF;
            IF kind = 'identify' THEN
                traits := coalesce(call -> 'traits', '{}');
                IF pg_catalog.jsonb_typeof(traits) <> 'object' THEN
                    RAISE EXCEPTION 'traits: expected an object, got %', pg_catalog.jsonb_typeof(traits);
                END IF;
                -- Segment keeps the time zone and locale in the context.
                traits := pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                              'timezone', call #>> '{context,timezone}', 'locale', call #>> '{context,locale}')) || traits;
                op_pos := op_pos || pos::integer;
                op_kind := op_kind || kind;
                op_customer := op_customer || customer;
                op_previous := op_previous || NULL::text;
                op_traits := op_traits || traits;
                CONTINUE;
            END IF;
            -- An event: track, page, screen or group.
            props := coalesce(call -> 'properties', '{}');
            IF pg_catalog.jsonb_typeof(props) <> 'object' THEN
                RAISE EXCEPTION 'properties: expected an object, got %', pg_catalog.jsonb_typeof(props);
            END IF;
            name_ := CASE kind WHEN 'track' THEN call ->> 'event' ELSE kind END;
            IF name_ IS NULL OR name_ = '' THEN
                RAISE EXCEPTION 'event: a track call needs an event name';
            END IF;
            IF kind IN ('page', 'screen') THEN
                props := pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                             'name', call -> 'name', 'category', call -> 'category')) || props;
            ELSIF kind = 'group' THEN
                IF call ->> 'groupId' IS NULL THEN
                    RAISE EXCEPTION 'groupId: a group call needs one';
                END IF;
                props := pg_catalog.jsonb_build_object('groupId', call -> 'groupId', 'traits', coalesce(call -> 'traits', '{}'));
            END IF;
            at_field := CASE WHEN call ? 'timestamp' THEN 'timestamp'
                             WHEN call ? 'originalTimestamp' THEN 'originalTimestamp'
                             WHEN call ? 'receivedAt' THEN 'receivedAt' END;
            IF at_field IS NULL THEN
                at_ := now();
            ELSE
                BEGIN
                    at_ := (call ->> at_field)::timestamptz;
                EXCEPTION WHEN data_exception THEN
                    at_ := NULL;
                END;
                IF at_ IS NULL OR NOT (at_ >= '0001-01-01 00:00:00+00' AND at_ < '10000-01-01 00:00:00+00') THEN
                    RAISE EXCEPTION '%: expected an ISO 8601 time between the years 1 and 9999, got %',
                                    at_field, coalesce(call -> at_field, 'null');
                END IF;
            END IF;
            key_ := call ->> 'messageId';
            IF name_ LIKE 'trigger:%' OR key_ LIKE 'trigger:%' THEN
                RAISE EXCEPTION 'event and messageId: names and keys beginning with "trigger:" are reserved for pg_engage''s scheduled triggers';
            END IF;
            -- Keys are per customer: stored before (the writer role cannot read events itself,
            -- hence the definer's look-up), or earlier in this batch.
            IF key_ IS NOT NULL THEN
                IF pg_catalog.jsonb_build_array(customer, key_)::text = ANY (seen_keys)
                   OR engage.stored_key(customer, key_) THEN
                    outcome := 'duplicate';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                seen_keys := seen_keys || pg_catalog.jsonb_build_array(customer, key_)::text;
            END IF;
            ev_pos := ev_pos || pos::integer;
            ev_customer := ev_customer || customer;
            ev_name := ev_name || name_;
            ev_props := ev_props || props;
            ev_at := ev_at || at_;
            ev_key := ev_key || key_;
            ev_type := ev_type || kind;
        EXCEPTION WHEN others THEN
            GET STACKED DIAGNOSTICS error = MESSAGE_TEXT;
            outcome := 'error';
            RETURN NEXT;
        END;
    END LOOP;
    -- 2. Identify and alias calls, in order, so the events below are decided with the profiles
    -- they bring.
    FOR i IN 1 .. coalesce(pg_catalog.array_length(op_pos, 1), 0) LOOP
        IF op_kind[i] = 'alias' THEN
            PERFORM engage.alias(op_previous[i], op_customer[i]);
        ELSE
            PERFORM engage.identify(op_customer[i], op_traits[i]);
        END IF;
    END LOOP;
    -- 3. Every event of the batch in one statement: one run of the insert path, in event time.
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    SELECT e.customer_id, e.name, e.properties, e.occurred_at, e.idempotency_key
      FROM unnest(ev_pos, ev_customer, ev_name, ev_props, ev_at, ev_key)
               AS e(pos, customer_id, name, properties, occurred_at, idempotency_key)
     ORDER BY e.pos;
    RETURN QUERY
    SELECT o.pos, o.kind, o.customer_id, 'ingested'::text, NULL::text
      FROM unnest(op_pos, op_kind, op_customer) AS o(pos, kind, customer_id);
    RETURN QUERY
    SELECT e.pos, e.type, e.customer_id, 'ingested'::text, NULL::text
      FROM unnest(ev_pos, ev_type, ev_customer) AS e(pos, type, customer_id);
END
$$;
COMMENT ON FUNCTION engage.ingest(jsonb) IS
    'Records Segment / RudderStack calls (track, identify, page, screen, group, alias): one call, an array, or {"batch": [...]}. Identify and alias calls apply first, in order, then every event of the batch is inserted in one statement. One row per call: outcome ingested, duplicate (its messageId was already stored or repeated in the batch) or error, with the field and the problem; a bad call does not stop the others.';

-- The operations views (sql/operations.sql) and the rule cache's load counter they read.
CREATE FUNCTION engage."rule_cache_loads"() RETURNS bigint
VOLATILE PARALLEL SAFE STRICT LANGUAGE c
AS 'MODULE_PATHNAME', 'rule_cache_loads_wrapper';
COMMENT ON FUNCTION engage.rule_cache_loads() IS
    'How many times backends loaded the trigger definitions, channels and caps since the server started (each change makes every backend load them again); NULL without shared_preload_libraries.';

-- Dead messages by when they died: the start of their last attempt (claimed_at). Rare rows, so
-- the index costs nothing on the insert path.
CREATE INDEX outbox_dead ON engage.outbox (claimed_at) WHERE status = 'dead';

-- One definition of the channels, the domain engage.channel (Rust: rule::Channel), which every
-- channel column's CHECK casts to, instead of a list per table; outbox and messages had none.
CREATE DOMAIN engage.channel AS text CHECK (VALUE IN ('email', 'sms', 'whatsapp', 'push', 'webhook'));
COMMENT ON DOMAIN engage.channel IS 'A delivery channel: email, sms, whatsapp, push or webhook.';
ALTER TABLE engage.channels DROP CONSTRAINT channels_kind_check,
    ADD CONSTRAINT channels_kind_check CHECK (kind::engage.channel = kind);
ALTER TABLE engage.templates DROP CONSTRAINT templates_channel_check,
    ADD CONSTRAINT templates_channel_check CHECK (channel::engage.channel = channel);
ALTER TABLE engage.frequency_caps DROP CONSTRAINT frequency_caps_channel_check,
    ADD CONSTRAINT frequency_caps_channel_check CHECK (channel::engage.channel = channel);
ALTER TABLE engage.suppressions DROP CONSTRAINT suppressions_channel_check,
    ADD CONSTRAINT suppressions_channel_check CHECK (CASE WHEN channel = 'all' THEN true ELSE channel::engage.channel = channel END);
ALTER TABLE engage.outbox ADD CONSTRAINT outbox_channel_check CHECK (channel::engage.channel = channel);
ALTER TABLE engage.messages ADD CONSTRAINT messages_channel_check CHECK (channel::engage.channel = channel);

CREATE VIEW engage.queue_health AS
SELECT o.channel,
       o.status::text AS status,
       count(*) AS messages,
       count(*) FILTER (WHERE o.status = 'pending' AND o.due_at <= now()) AS due,
       now() - min(o.due_at) FILTER (WHERE o.status = 'pending' AND o.due_at <= now()) AS oldest_due_age,
       count(*) FILTER (WHERE o.status = 'claimed' AND o.lease_until < now()) AS expired_leases
  FROM engage.outbox o
 WHERE o.status IN ('pending', 'claimed')
 GROUP BY o.channel, o.status;
COMMENT ON VIEW engage.queue_health IS
    'Open messages by channel and status: how many, how many are due, how long the oldest due pending one has waited, and claimed ones whose lease expired (their deliverer died or hangs: they are claimed again).';

CREATE VIEW engage.operations AS
SELECT (SELECT count(*) FROM engage.outbox o WHERE o.status = 'pending') AS pending,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'pending' AND o.due_at <= now()) AS pending_due,
       (SELECT now() - min(o.due_at) FROM engage.outbox o WHERE o.status = 'pending' AND o.due_at <= now())
           AS oldest_due_age,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'claimed') AS claimed,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'claimed' AND o.lease_until < now()) AS expired_leases,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'dead' AND o.claimed_at > now() - interval '1 hour')
           AS dead_last_hour,
       w.running AS deliverer_running,
       w.pid AS deliverer_pid,
       w.last_batch_at AS deliverer_last_batch_at,
       w.sent AS sent_since_start,
       w.failed AS failed_since_start,
       w.scheduler_running,
       t.last_tick AS ticked_until,
       now() - t.last_tick AS tick_lag,
       engage.rule_cache_loads() AS rule_cache_loads
  FROM engage.worker_status() w,
       (SELECT max(p.ticked_until) AS last_tick FROM engage.tick_progress p) t;
COMMENT ON VIEW engage.operations IS
    'One row for the on-call engineer: pending and due messages and the age of the oldest due one, claimed messages and expired leases, messages dead in the last hour; the built-in deliverer (running, pid, last batch, sent and failed since the server started) and scheduler (running; ticked_until, the latest instant a tick covered, whoever ran it, and tick_lag, how far behind now it is); rule-set loads by all backends since the start. Worker fields are false/NULL without shared_preload_libraries.';

-- As sql/privileges.sql does for every function: a pinned search_path (CREATE OR REPLACE resets
-- it), and nothing for PUBLIC.
ALTER FUNCTION engage.known_time_zones(text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.profile_zones() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.fire_calendar(integer, timestamptz, timestamptz) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.known_time_zones(text[]), engage.profile_zones() FROM PUBLIC;
ALTER FUNCTION engage.rule_cache_loads() SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.rule_cache_loads() FROM PUBLIC;
GRANT SELECT ON engage.queue_health, engage.operations TO engage_analyst;
-- worker_status: granted to the analyst before the admin, as a fresh install does (the ACL's order).
REVOKE EXECUTE ON FUNCTION engage.worker_status() FROM engage_admin;
GRANT EXECUTE ON FUNCTION engage.worker_status(), engage.rule_cache_loads() TO engage_analyst;
GRANT EXECUTE ON FUNCTION engage.worker_status() TO engage_admin;
ALTER FUNCTION engage.alias(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.aliased(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.ingest(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.alias(text, text) SECURITY DEFINER;
ALTER FUNCTION engage.aliased(text) SECURITY DEFINER;
ALTER FUNCTION engage.stored_key(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.stored_key(text, text) SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION engage.alias(text, text), engage.aliased(text), engage.stored_key(text, text), engage.ingest(jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION engage.ingest(jsonb), engage.alias(text, text), engage.aliased(text), engage.stored_key(text, text)
    TO engage_writer;
GRANT SELECT ON engage.aliases TO engage_admin;

-- Keys that a table distributed by customer can enforce (README, "Scaling out"): every primary
-- key and unique index of a customer's table holds customer_id, and idempotency keys are per
-- customer. The keys stored so far were unique on their own, so they are unique per customer.
ALTER TABLE engage.events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (id, customer_id);
DROP INDEX engage.events_idempotency_key;
CREATE UNIQUE INDEX events_idempotency_key ON engage.events (customer_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
COMMENT ON COLUMN engage.events.idempotency_key IS
    'Optional: an event whose key is already stored for the same customer is skipped (not stored, not decided). Keys are per customer.';
ALTER TABLE engage.outbox DROP CONSTRAINT outbox_pkey, ADD PRIMARY KEY (id, customer_id);
ALTER TABLE engage.escalations DROP CONSTRAINT escalations_pkey, ADD PRIMARY KEY (event_id, trigger_id, customer_id);
ALTER TABLE engage.messages DROP CONSTRAINT messages_pkey, ADD PRIMARY KEY (outbox_id, customer_id);
ALTER TABLE engage.rollup_messages DROP CONSTRAINT rollup_messages_pkey, ADD PRIMARY KEY (message_id, customer_id);
ALTER TABLE engage.rollup_touches DROP CONSTRAINT rollup_touches_pkey,
    ADD PRIMARY KEY (conversion_event_id, message_id, customer_id);
-- Its ON CONFLICT names the new key of engage.messages.
CREATE OR REPLACE FUNCTION engage.complete_many(message_ids bigint[], leases bigint[], provider_message_ids text[])
RETURNS bigint
LANGUAGE sql AS $$
    -- Marks claimed messages sent and logs them in engage.messages, in one statement: the i-th
    -- message with the i-th lease token and provider id. Only the current lease completes:
    -- completing after another deliverer took a message over (an expired lease), or twice, does
    -- nothing. Returns how many were completed.
    WITH done AS (
        SELECT u.id, u.lease, u.provider_message_id
          FROM unnest(complete_many.message_ids, complete_many.leases, complete_many.provider_message_ids)
               AS u(id, lease, provider_message_id)
    ), sent AS (
        UPDATE engage.outbox o
           SET status = 'sent', sent_at = now(), lease_until = NULL,
               provider_message_id = d.provider_message_id, last_error = NULL
          FROM done d
         WHERE o.id = d.id AND o.status = 'claimed' AND o.lease = d.lease
        RETURNING o.*
    ), logged AS (
        INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, category,
                                     variant, queued_at, claimed_at, sent_at, attempts, provider_message_id, cost)
        SELECT s.id, s.event_id, s.trigger_id, s.customer_id, s.channel, s.template, s.category, s.variant,
               s.created_at, s.claimed_at, s.sent_at, s.attempts, s.provider_message_id,
               coalesce(c.cost_per_message, 0)
          FROM sent s LEFT JOIN engage.channels c ON c.kind = s.channel
        ON CONFLICT (outbox_id, customer_id) DO NOTHING
        RETURNING customer_id
    ), marked AS (
        -- The customers' metrics rollups now miss these messages (sql/metrics.sql, "Rollups").
        INSERT INTO engage.metrics_dirty (customer_id) SELECT customer_id FROM logged
    )
    SELECT count(*) FROM logged
$$;
ALTER FUNCTION engage.complete_many(bigint[], bigint[], text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.complete_many(bigint[], bigint[], text[]) SECURITY DEFINER;

-- One meaning for a definition (src/rule/compiled.rs): SQL reads engage.triggers.compiled, the
-- definition with every default filled in, generated by engage.compiled_trigger, instead of the
-- definition JSON with its own copies of the defaults. engage.json_path and engage.duration,
-- which read paths and durations out of definitions, go.
CREATE FUNCTION engage.compiled_trigger(name text, definition jsonb) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c
AS 'MODULE_PATHNAME', 'compiled_trigger_wrapper';
COMMENT ON FUNCTION engage.compiled_trigger(text, jsonb) IS
    'The compiled form of a trigger: what SQL reads of its definition, every default filled in (generates engage.triggers.compiled).';
ALTER FUNCTION engage.compiled_trigger(text, jsonb) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.compiled_trigger(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION engage.compiled_trigger(text, jsonb) TO engage_admin;
ALTER TABLE engage.triggers DROP COLUMN priority,
    ADD COLUMN priority integer GENERATED ALWAYS AS ((engage.compiled_trigger(name, definition) ->> 'priority')::integer) STORED,
    ADD COLUMN compiled jsonb GENERATED ALWAYS AS (engage.compiled_trigger(name, definition)) STORED;

COMMENT ON COLUMN engage.triggers.priority IS 'From the definition: the highest wins when triggers collide.';

COMMENT ON COLUMN engage.triggers.compiled IS
    'The definition as SQL reads it, every default filled in (engage.compiled_trigger): priority, category, event_name (the events an occasion fires through), occasion, goal, variants.';

CREATE OR REPLACE VIEW engage.trigger_goals AS
SELECT t.id AS trigger_id,
       t.name AS trigger,
       t.compiled -> 'goal' ->> 'event' AS goal_event,
       (t.compiled -> 'goal' ->> 'within_micros')::bigint * interval '1 microsecond' AS within,
       CASE WHEN t.compiled -> 'goal' -> 'value' <> 'null'
            THEN ARRAY(SELECT pg_catalog.jsonb_array_elements_text(t.compiled -> 'goal' -> 'value')) END AS value_path
  FROM engage.triggers t
 WHERE t.compiled -> 'goal' <> 'null';

CREATE OR REPLACE VIEW engage.variant_results AS
WITH arms AS (
    SELECT t.id AS trigger_id, v.name AS variant, v.position
      FROM engage.triggers t, jsonb_array_elements_text(t.compiled -> 'variants') WITH ORDINALITY AS v(name, position)
), groups AS (
    SELECT x.trigger_id, x.trigger, x.variant,
           count(*) AS n, count(*) FILTER (WHERE x.converted) AS conv,
           sum(x.revenue) AS rev, sum(x.revenue * x.revenue) AS rev_sq
      FROM engage.trigger_exposures x
     WHERE NOT x.control AND x.variant IS NOT NULL
     GROUP BY x.trigger_id, x.trigger, x.variant
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

CREATE OR REPLACE TRIGGER mark_goal_change AFTER UPDATE ON engage.triggers
    FOR EACH ROW WHEN (OLD.compiled -> 'goal' IS DISTINCT FROM NEW.compiled -> 'goal')
    EXECUTE FUNCTION engage.mark_goal_change();

CREATE OR REPLACE TRIGGER mark_goal_drop AFTER DELETE ON engage.triggers
    FOR EACH ROW WHEN (OLD.compiled -> 'goal' <> 'null')
    EXECUTE FUNCTION engage.mark_goal_change();

DROP FUNCTION engage.json_path(text);
DROP FUNCTION engage.duration(text);

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

-- The idempotency key of an occasion, in the scheduler's reserved namespace ("trigger:", see
-- engage.refuse_reserved_names): the trigger, the customer and the episode, so each occasion of a
-- customer fires once.
CREATE FUNCTION engage.occasion_key(trigger_id integer, customer_id text, episode text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'trigger:' || occasion_key.trigger_id || ':' || occasion_key.customer_id || ':' || occasion_key.episode
$$;
COMMENT ON FUNCTION engage.occasion_key(integer, text, text) IS
    'The idempotency key of a scheduled or threshold trigger''s occasion: trigger:<trigger id>:<customer>:<episode>.';

ALTER FUNCTION engage.occasion_key(integer, text, text) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.occasion_key(integer, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION engage.fire_inactive(trigger_id integer, since timestamptz, moment timestamptz) RETURNS bigint
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

CREATE OR REPLACE FUNCTION engage.fire_predicted(trigger_id integer, moment timestamptz) RETURNS bigint
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

CREATE OR REPLACE FUNCTION engage.tick(moment timestamptz DEFAULT now(), ahead_of_now boolean DEFAULT false)
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

CREATE OR REPLACE FUNCTION engage.profile_crossings() RETURNS trigger
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

CREATE OR REPLACE FUNCTION engage.sum_crossings(event_ids bigint[]) RETURNS bigint
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

ALTER FUNCTION engage.profile_crossing_triggers() SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION engage.profile_crossing_triggers() FROM PUBLIC;
ALTER FUNCTION engage.fire_inactive(integer, timestamptz, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.fire_predicted(integer, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.tick(timestamptz, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.tick(timestamptz, boolean) SECURITY DEFINER;
ALTER FUNCTION engage.profile_crossings() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION engage.profile_crossings() SECURITY DEFINER;
ALTER FUNCTION engage.sum_crossings(bigint[]) SET search_path = pg_catalog, pg_temp;
