-- pg_engage schema: tables, indexes, the insert-path triggers and the Segment-style helpers.
-- Loaded after the Rust functions (finalize), so the CHECK and triggers below can use them.

-- A trigger definition: JSON on the outside, validated on the way in. engage.validate_trigger
-- raises an ERROR naming the JSON path of the first problem (see README, "The trigger language").
CREATE DOMAIN engage.trigger_definition AS jsonb
    CHECK (engage.validate_trigger(VALUE));
COMMENT ON DOMAIN engage.trigger_definition IS
    'A trigger definition: a JSON object checked by engage.validate_trigger (see the README language reference).';

CREATE TABLE engage.events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     text        NOT NULL,
    name            text        NOT NULL,
    properties      jsonb       NOT NULL DEFAULT '{}',
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    received_at     timestamptz NOT NULL DEFAULT now(),
    idempotency_key text
);
COMMENT ON TABLE engage.events IS
    'Customer events. INSERT or COPY into it: each statement is decided in the same transaction.';
COMMENT ON COLUMN engage.events.occurred_at IS 'Event time: windows and caps use it.';
COMMENT ON COLUMN engage.events.received_at IS 'Arrival time in the database.';
COMMENT ON COLUMN engage.events.idempotency_key IS
    'Optional: an event whose key is already stored is skipped (not stored, not decided).';
-- Per-customer history look-ups (counts, sequences, absence) go through this index.
CREATE INDEX events_customer_name_time ON engage.events (customer_id, name, occurred_at);
-- Backstop for the idempotency trigger (e.g. REPEATABLE READ transactions racing on one key).
CREATE UNIQUE INDEX events_idempotency_key ON engage.events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE engage.profiles (
    customer_id text        PRIMARY KEY,
    attributes  jsonb       NOT NULL DEFAULT '{}',
    email       text,
    phone       text,
    timezone    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.profiles IS
    'One row per customer: attributes for "profile" predicates, addresses and time zone.';

CREATE TABLE engage.triggers (
    id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    definition  engage.trigger_definition NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    priority    integer     GENERATED ALWAYS AS (coalesce((definition ->> 'priority')::integer, 0)) STORED,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.triggers IS
    'Trigger definitions. Manage with engage.create_trigger / update_trigger / enable_trigger / disable_trigger / drop_trigger.';
COMMENT ON COLUMN engage.triggers.priority IS 'From the definition: the highest wins when triggers collide.';

CREATE TABLE engage.decisions (
    event_id        bigint      NOT NULL,
    trigger_id      integer     NOT NULL,
    trigger_version integer     NOT NULL,
    customer_id     text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    decided_at      timestamptz NOT NULL DEFAULT now(),
    outcome         text        NOT NULL CHECK (outcome IN ('fired', 'suppressed')),
    reason          text        CHECK (reason IN ('cap', 'conflict')),
    PRIMARY KEY (event_id, trigger_id),
    CHECK ((outcome = 'fired') = (reason IS NULL))
);
COMMENT ON TABLE engage.decisions IS
    'One row per (event, matching trigger): fired, or suppressed and why. The primary key means nothing is decided twice.';
-- Cap look-ups: fired decisions of one customer and trigger in an event-time window.
CREATE INDEX decisions_fired_by_customer ON engage.decisions (customer_id, trigger_id, occurred_at)
    WHERE outcome = 'fired';

CREATE TABLE engage.outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    bigint      NOT NULL,
    trigger_id  integer     NOT NULL,
    customer_id text        NOT NULL,
    channel     text        NOT NULL,
    template    text,
    payload     jsonb       NOT NULL DEFAULT '{}',
    due_at      timestamptz NOT NULL,
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'claimed', 'sent', 'dead', 'cancelled')),
    attempts    integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.outbox IS
    'Queued messages, one per fired decision, written in the transaction of the event.';
-- The deliverer's work queue: pending rows by due time.
CREATE INDEX outbox_pending_due ON engage.outbox (due_at) WHERE status = 'pending';

-- pg_dump keeps the data of extension tables only when they are marked as configuration.
SELECT pg_catalog.pg_extension_config_dump('engage.events', '');
SELECT pg_catalog.pg_extension_config_dump('engage.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('engage.profiles', '');
SELECT pg_catalog.pg_extension_config_dump('engage.triggers', '');
SELECT pg_catalog.pg_extension_config_dump('engage.triggers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('engage.decisions', '');
SELECT pg_catalog.pg_extension_config_dump('engage.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('engage.outbox_id_seq', '');

-- Idempotency: skip an event whose key is already stored. The advisory lock makes a concurrent
-- insert of the same key wait for the first; READ COMMITTED then sees the committed row.
CREATE FUNCTION engage.skip_duplicate_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(1701273959, pg_catalog.hashtext(NEW.idempotency_key));
    IF EXISTS (SELECT 1 FROM engage.events WHERE idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION engage.skip_duplicate_event() IS
    'BEFORE INSERT row trigger on engage.events: skips an event whose idempotency_key is already stored.';

CREATE TRIGGER skip_duplicate_event
    BEFORE INSERT ON engage.events
    FOR EACH ROW WHEN (NEW.idempotency_key IS NOT NULL)
    EXECUTE FUNCTION engage.skip_duplicate_event();

-- The insert path: one evaluation per statement over its transition table.
CREATE TRIGGER evaluate_events
    AFTER INSERT ON engage.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION engage.evaluate_events();

-- Any change to trigger definitions makes every backend recompile its rules.
CREATE TRIGGER rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON engage.triggers
    FOR EACH STATEMENT
    EXECUTE FUNCTION engage.rules_changed();

CREATE FUNCTION engage.track(
    customer_id     text,
    name            text,
    properties      jsonb       DEFAULT '{}',
    occurred_at     timestamptz DEFAULT now(),
    idempotency_key text        DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, idempotency_key)
    VALUES (track.customer_id, track.name, coalesce(track.properties, '{}'),
            coalesce(track.occurred_at, now()), track.idempotency_key)
    RETURNING id
$$;

CREATE FUNCTION engage.identify(customer_id text, traits jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql AS $$
    INSERT INTO engage.profiles AS p (customer_id, attributes, email, phone, timezone)
    VALUES (identify.customer_id, coalesce(identify.traits, '{}'),
            identify.traits ->> 'email', identify.traits ->> 'phone', identify.traits ->> 'timezone')
    ON CONFLICT ON CONSTRAINT profiles_pkey DO UPDATE
       SET attributes = p.attributes || excluded.attributes,
           email      = coalesce(excluded.email, p.email),
           phone      = coalesce(excluded.phone, p.phone),
           timezone   = coalesce(excluded.timezone, p.timezone),
           updated_at = now()
$$;

COMMENT ON FUNCTION engage.track(text, text, jsonb, timestamptz, text) IS
    'Records one event (Segment-style track) and returns its id, or NULL when its idempotency_key was seen before.';
COMMENT ON FUNCTION engage.identify(text, jsonb) IS
    'Upserts a customer profile (Segment-style identify): traits merge into attributes; email, phone and timezone traits also fill those columns.';
COMMENT ON FUNCTION engage.validate_trigger(jsonb) IS
    'Returns true for a valid trigger definition, or raises an ERROR naming the JSON path and the problem.';
COMMENT ON FUNCTION engage.create_trigger(text, jsonb) IS
    'Creates a trigger from a JSON definition (validated) and returns its id.';
COMMENT ON FUNCTION engage.update_trigger(text, jsonb) IS
    'Replaces a trigger''s definition (validated) and returns its new version.';
COMMENT ON FUNCTION engage.enable_trigger(text) IS 'Enables a trigger.';
COMMENT ON FUNCTION engage.disable_trigger(text) IS 'Disables a trigger: it stays defined but fires nothing.';
COMMENT ON FUNCTION engage.drop_trigger(text) IS 'Drops a trigger; its past decisions and queued messages stay.';
COMMENT ON FUNCTION engage.evaluate_events() IS
    'Statement-level AFTER INSERT trigger on engage.events: decides which triggers fire and queues their messages.';
COMMENT ON FUNCTION engage.rules_changed() IS
    'Statement trigger on engage.triggers: makes every backend recompile its cached rules.';
