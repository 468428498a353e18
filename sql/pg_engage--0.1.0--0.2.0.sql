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

-- Metrics in milliseconds (issue 19; sql/metrics.sql, "Volume counts" and "Running totals"): the
-- volume and fire-rate views read hourly counts; responses, spend, revenue, uplift and variants
-- read running totals; latency percentiles read histograms. The update builds them with
-- engage.rebuild_metrics() at its end: minutes on a history of millions of messages.
DROP INDEX engage.rollup_messages_trigger_sent;
CREATE INDEX rollup_messages_sent ON engage.rollup_messages (sent_at);
CREATE INDEX decisions_decided_brin ON engage.decisions USING brin (decided_at);

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

CREATE OR REPLACE FUNCTION engage.trigger_volume_in(bucket interval, since timestamptz)
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

CREATE OR REPLACE VIEW engage.trigger_fire_rate AS
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

CREATE OR REPLACE FUNCTION engage.touches_of(customers text[])
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
CREATE OR REPLACE FUNCTION engage.exposures_of(customers text[])
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

CREATE OR REPLACE FUNCTION engage.refresh_metrics(batch integer DEFAULT 10000) RETURNS integer
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

CREATE OR REPLACE FUNCTION engage.rebuild_metrics() RETURNS bigint
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

CREATE OR REPLACE VIEW engage.trigger_response_rates AS
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

CREATE OR REPLACE VIEW engage.trigger_revenue AS
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

CREATE OR REPLACE VIEW engage.holdout_uplift AS
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

CREATE OR REPLACE VIEW engage.variant_results AS
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

CREATE OR REPLACE FUNCTION engage.trigger_latency_in(since timestamptz)
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

COMMENT ON VIEW engage.trigger_latency IS
    'engage.trigger_latency_in over the messages sent in the last 30 days: p50/p95/p99 latencies per trigger and channel, in seconds (arrays of three, each within 4.33% of an order statistic).';

CREATE OR REPLACE VIEW engage.trigger_roi AS
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

DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'engage'::regnamespace
           AND p.proname IN ('log_decision_changes', 'volume_of', 'count_volume', 'trigger_volume_in', 'touches_of',
                             'exposures_of', 'message_totals_delta', 'touch_totals_delta', 'exposure_totals_delta',
                             'latency_histogram_delta', 'refresh_metrics', 'rebuild_metrics', 'trigger_latency_in')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$pin$;
ALTER FUNCTION engage.log_decision_changes() SECURITY DEFINER;
ALTER FUNCTION engage.volume_of(timestamptz, timestamptz, timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.touches_of(text[]) SECURITY DEFINER;
ALTER FUNCTION engage.exposures_of(text[]) SECURITY DEFINER;
ALTER FUNCTION engage.trigger_volume_in(interval, timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.trigger_latency_in(timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.refresh_metrics(integer) SECURITY DEFINER;
ALTER FUNCTION engage.rebuild_metrics() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION engage.log_decision_changes(), engage.volume_of(timestamptz, timestamptz, timestamptz),
                           engage.count_volume(), engage.latency_bucket(double precision), engage.latency_bucket_value(integer),
                           engage.latency_measures(timestamptz, timestamptz, timestamptz, timestamptz, timestamptz),
                           engage.message_totals_delta(engage.rollup_messages[], engage.rollup_messages[]),
                           engage.touch_totals_delta(engage.rollup_touches[], engage.rollup_touches[]),
                           engage.exposure_totals_delta(engage.rollup_exposures[], engage.rollup_exposures[]),
                           engage.latency_histogram_delta(engage.rollup_messages[], engage.rollup_messages[])
    FROM PUBLIC;
GRANT SELECT ON engage.marked_rollups, engage.current_message_totals, engage.current_touch_totals,
                engage.current_exposure_totals, engage.current_volume_counts
    TO engage_analyst;
GRANT EXECUTE ON FUNCTION engage.volume_of(timestamptz, timestamptz, timestamptz),
                          engage.message_totals_delta(engage.rollup_messages[], engage.rollup_messages[]),
                          engage.touch_totals_delta(engage.rollup_touches[], engage.rollup_touches[]),
                          engage.exposure_totals_delta(engage.rollup_exposures[], engage.rollup_exposures[])
    TO engage_analyst;

-- The totals, histograms and counts start as the aggregate of the history (their invariant).
SELECT engage.rebuild_metrics();
