-- Segment-shaped ingestion: engage.ingest takes the calls an app already sends to Segment or
-- RudderStack (track, identify, page, screen, group, alias), one or a batch, and records them.
-- README "Segment-shaped ingestion" gives the mapping.

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
