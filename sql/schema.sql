-- pg_engage schema: tables, indexes, the insert-path triggers and the Segment-style helpers.
-- Loaded after the Rust functions it names (validate_trigger, validate_template, evaluate_events, rules_changed).

-- A trigger definition: JSON on the outside, validated on the way in. engage.validate_trigger
-- raises an ERROR naming the JSON path of the first problem (see README, "The trigger language").
CREATE DOMAIN engage.trigger_definition AS jsonb
    CHECK (engage.validate_trigger(VALUE));
COMMENT ON DOMAIN engage.trigger_definition IS
    'A trigger definition: a JSON object checked by engage.validate_trigger (see the README language reference).';

CREATE TABLE engage.events (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    customer_id     text        COLLATE "C" NOT NULL,
    name            text        COLLATE "C" NOT NULL,
    properties      jsonb       NOT NULL DEFAULT '{}',
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    received_at     timestamptz NOT NULL DEFAULT now(),
    idempotency_key text        COLLATE "C",
    -- Event times are finite and within years 1 to 9999, so event time plus any duration of the
    -- trigger language (at most 3650 days) is a valid timestamp.
    CONSTRAINT events_occurred_at_in_range
        CHECK (occurred_at >= '0001-01-01 00:00:00+00' AND occurred_at < '10000-01-01 00:00:00+00'),
    -- id is unique on its own (an identity); the key also holds customer_id because a table
    -- distributed by customer (README, "Scaling out") can only enforce keys that include it.
    PRIMARY KEY (id, customer_id)
);
COMMENT ON TABLE engage.events IS
    'Customer events. INSERT or COPY into it: each statement is decided in the same transaction.';
COMMENT ON COLUMN engage.events.occurred_at IS
    'Event time: windows and caps use it. Finite, from year 1 to 9999 (constraint events_occurred_at_in_range).';
COMMENT ON COLUMN engage.events.received_at IS 'Arrival time in the database.';
COMMENT ON COLUMN engage.events.idempotency_key IS
    'Optional: an event whose key is already stored for the same customer is skipped (not stored, not decided). Keys are per customer.';
-- Per-customer history look-ups (counts, sequences, absence) go through this index.
CREATE INDEX events_customer_name_time ON engage.events (customer_id, name, occurred_at);
-- Backstop for the idempotency trigger (e.g. REPEATABLE READ transactions racing on one key).
-- Keys are per customer, as a Segment messageId is per source and user: the key is then
-- enforceable on a single customer's shard.
CREATE UNIQUE INDEX events_idempotency_key ON engage.events (customer_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE engage.profiles (
    customer_id text        COLLATE "C" PRIMARY KEY,
    attributes  jsonb       NOT NULL DEFAULT '{}',
    email       text,
    phone       text,
    timezone    text,
    push_token  text,
    locale      text,
    preferred_channel text,
    consent     jsonb       NOT NULL DEFAULT '{}' CHECK (engage.check_consent(consent)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.profiles IS
    'One row per customer: attributes for "profile" predicates, addresses, time zone, locale, preferred channel and consent.';
COMMENT ON COLUMN engage.profiles.consent IS
    'Marketing consent: {"sms": false} opts out of a channel, {"all": false} out of every channel not named with true; a channel not named is allowed unless it requires opt-in. Set by unsubscribe/subscribe events.';

CREATE TABLE engage.triggers (
    id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    definition  engage.trigger_definition NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    priority    integer     GENERATED ALWAYS AS ((engage.compiled_trigger(name, definition) ->> 'priority')::integer) STORED,
    -- What SQL reads of a definition (src/rule/compiled.rs): every default filled in, durations in
    -- microseconds, paths as key arrays. SQL reads this, never the definition itself.
    compiled    jsonb       GENERATED ALWAYS AS (engage.compiled_trigger(name, definition)) STORED,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.triggers IS
    'Trigger definitions. Manage with engage.create_trigger / update_trigger / enable_trigger / disable_trigger / drop_trigger.';
COMMENT ON COLUMN engage.triggers.priority IS 'From the definition: the highest wins when triggers collide.';
COMMENT ON COLUMN engage.triggers.compiled IS
    'The definition as SQL reads it, every default filled in (engage.compiled_trigger): priority, category, event_name (the events an occasion fires through), occasion, goal, variants.';

-- The value sets of the insert path's hot tables are domains rather than table CHECKs: a table's
-- CHECKs are parsed again for every statement that writes it (a tenth of a single-row INSERT
-- went to parsing them), a domain's once per backend.
CREATE DOMAIN engage.decision_outcome AS text COLLATE "C" CHECK (VALUE IN ('fired', 'held_out', 'suppressed'));
CREATE DOMAIN engage.suppression_reason AS text
    CHECK (VALUE IN ('cap', 'conflict', 'frequency', 'consent', 'suppression', 'reentry'));
CREATE DOMAIN engage.message_category AS text CHECK (VALUE IN ('marketing', 'transactional', 'escalation'));
CREATE DOMAIN engage.message_status AS text
    CHECK (VALUE IN ('pending', 'claimed', 'sent', 'dead', 'cancelled', 'suppressed'));
-- The channels, one definition (Rust: rule::Channel; a pg_test compares the two). Columns stay
-- text, checked by a cast to it: a column of a domain type is refused by drivers that map types
-- strictly (a text parameter or result for engage.channel).
CREATE DOMAIN engage.channel AS text CHECK (VALUE IN ('email', 'sms', 'whatsapp', 'push', 'webhook'));
COMMENT ON DOMAIN engage.channel IS 'A delivery channel: email, sms, whatsapp, push or webhook.';
COMMENT ON DOMAIN engage.decision_outcome IS 'What a decision was: fired, held_out (control group) or suppressed.';
COMMENT ON DOMAIN engage.suppression_reason IS 'Why a candidate was suppressed (see engage.decisions.reason).';
COMMENT ON DOMAIN engage.message_category IS 'marketing, transactional or escalation (see engage.outbox.category).';
COMMENT ON DOMAIN engage.message_status IS 'Where a queued message stands (see engage.outbox.status).';

CREATE TABLE engage.decisions (
    event_id        bigint      NOT NULL,
    trigger_id      integer     NOT NULL,
    trigger_version integer     NOT NULL,
    customer_id     text        COLLATE "C" NOT NULL,
    occurred_at     timestamptz NOT NULL,
    decided_at      timestamptz NOT NULL DEFAULT now(),
    outcome         engage.decision_outcome NOT NULL,
    reason          engage.suppression_reason,
    variant         text,
    -- customer_id and occurred_at are those of the event, so the key is unique per
    -- (event_id, trigger_id): nothing is decided twice. Its order serves the insert path's
    -- look-ups: a customer's decisions in an event-time window (caps, conflicts).
    PRIMARY KEY (customer_id, occurred_at, trigger_id, event_id),
    CHECK ((outcome = 'suppressed') = (reason IS NOT NULL))
);
-- The insert path reads only decisions that fired or were held out (a control decision is one
-- that would have fired), never the suppressed ones, which are most of a busy customer's:
-- a cap reads its own trigger's in its window, however long the customer's history ...
CREATE INDEX decisions_counted ON engage.decisions (customer_id, trigger_id, occurred_at)
    WHERE outcome <> 'suppressed';
-- ... and conflicts read every trigger's in the conflict window.
CREATE INDEX decisions_rivals ON engage.decisions (customer_id, occurred_at)
    WHERE outcome <> 'suppressed';
COMMENT ON TABLE engage.decisions IS
    'One row per (event, matching trigger): fired, held_out (control group: would have fired, not sent), or suppressed and why. The primary key means nothing is decided twice.';
COMMENT ON COLUMN engage.decisions.reason IS
    'Why it was suppressed: cap (the trigger''s own cap, or its reentry once/once_per), conflict (a higher-priority trigger won), frequency (a cap across triggers, engage.frequency_caps), consent (opted out of every channel the action could use), suppression (on engage.suppressions), reentry (the customer is still in this journey).';
COMMENT ON COLUMN engage.decisions.variant IS 'The experiment variant the customer was assigned (stable per customer and trigger), when the trigger has variants.';

CREATE TABLE engage.outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    event_id    bigint      NOT NULL,
    trigger_id  integer     NOT NULL,
    customer_id text        COLLATE "C" NOT NULL,
    channel     text        NOT NULL CHECK (channel::engage.channel = channel),
    template    text,
    payload     jsonb       NOT NULL DEFAULT '{}',
    due_at      timestamptz NOT NULL,
    scheduled_at timestamptz NOT NULL,
    cancel_on   jsonb,
    cancelled_by bigint,
    category    engage.message_category NOT NULL DEFAULT 'marketing',
    variant     text,
    step        integer     NOT NULL DEFAULT 0,
    status      engage.message_status NOT NULL DEFAULT 'pending',
    reason      text,
    fallback    text[]      NOT NULL DEFAULT '{}',
    attempts    integer     NOT NULL DEFAULT 0,
    lease       bigint      NOT NULL DEFAULT 0,
    lease_until timestamptz,
    claimed_by  text,
    claimed_at  timestamptz,
    sent_at     timestamptz,
    provider_message_id text,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- id alone is unique (an identity); customer_id is in the key for distribution by customer.
    PRIMARY KEY (id, customer_id)
);
COMMENT ON TABLE engage.outbox IS
    'Queued messages, one per fired decision, written in the transaction of the event. id is the message id receivers de-duplicate on.';
COMMENT ON COLUMN engage.outbox.fallback IS 'Channels still to try, in order, if this one has no address, no consent or fails permanently.';
COMMENT ON COLUMN engage.outbox.due_at IS 'When the next attempt may start (a retry moves it later).';
COMMENT ON COLUMN engage.outbox.scheduled_at IS 'When the message was first due: the order of the customer''s queue, kept across retries.';
COMMENT ON COLUMN engage.outbox.cancel_on IS
    'Events that cancel this message while it is pending: [{"event": name, "same": {properties that must match}}].';
COMMENT ON COLUMN engage.outbox.cancelled_by IS 'The event that cancelled this message.';
COMMENT ON COLUMN engage.outbox.reason IS
    'Why a cancelled or suppressed message was not sent: cancel_on, conflict (superseded by a higher-priority trigger), or, at send time, consent, suppression or frequency.';
COMMENT ON COLUMN engage.outbox.category IS 'marketing (consent, frequency caps, conflicts and quiet hours apply), transactional (they do not), or escalation (a message about the customer to a team, see engage.escalations: none of them, nor the suppression list, apply).';
COMMENT ON COLUMN engage.outbox.step IS 'For a journey (a trigger with steps): which step, from 0. Every step is queued when the customer enters.';
COMMENT ON COLUMN engage.outbox.attempts IS
    'Claims on the current channel: a claim counts as an attempt (a deliverer that dies on the message spent it); defer gives it back.';
COMMENT ON COLUMN engage.outbox.lease IS
    'The lease token: how many times the message was ever claimed. engage.claim returns it; complete, fail, defer, suppress and extend_lease act only with the current token, so a deliverer whose lease was taken over changes nothing.';
COMMENT ON COLUMN engage.outbox.lease_until IS 'A claimed row whose lease has expired (deliverer died) can be claimed again.';
-- The deliverers' work queue: open rows by due time ...
CREATE INDEX outbox_open_due ON engage.outbox (due_at, id) WHERE status IN ('pending', 'claimed');
-- ... and per customer and category, so a customer's messages of one category go out in
-- scheduled order, one at a time (the insert path probes it by customer alone).
CREATE INDEX outbox_open_by_customer ON engage.outbox (customer_id, category, scheduled_at, id)
    WHERE status IN ('pending', 'claimed');
-- Claimed messages by lease end: engage.claim finds the expired leases of poison messages here.
CREATE INDEX outbox_claimed_lease ON engage.outbox (lease_until) WHERE status = 'claimed';

CREATE TABLE engage.escalations (
    event_id    bigint      NOT NULL,
    trigger_id  integer     NOT NULL,
    customer_id text        COLLATE "C" NOT NULL,
    outbox_id   bigint      NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, trigger_id, customer_id)
);
COMMENT ON TABLE engage.escalations IS
    'Escalation decisions: a trigger''s "escalate" condition held for a match (one that its own cap did not suppress), so a message to a team was queued (outbox_id) besides the customer''s own decision.';
SELECT pg_catalog.pg_extension_config_dump('engage.escalations', '');

CREATE TABLE engage.messages (
    outbox_id   bigint      NOT NULL,
    event_id    bigint      NOT NULL,
    trigger_id  integer     NOT NULL,
    customer_id text        COLLATE "C" NOT NULL,
    channel     text        NOT NULL CHECK (channel::engage.channel = channel),
    template    text,
    category    text        NOT NULL DEFAULT 'marketing',
    variant     text,
    queued_at   timestamptz NOT NULL,
    claimed_at  timestamptz,
    sent_at     timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    provider_message_id text,
    cost        numeric(12, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (outbox_id, customer_id)
);
COMMENT ON TABLE engage.messages IS
    'The sent log: one row per delivered message, with its timings, attempts, provider id and cost.';
CREATE INDEX messages_by_customer ON engage.messages (customer_id, sent_at);

-- Customers whose metrics rollups are out of date (sql/metrics.sql, "Rollups").
CREATE TABLE engage.metrics_dirty (
    customer_id text        COLLATE "C" NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX metrics_dirty_customer ON engage.metrics_dirty (customer_id);
COMMENT ON TABLE engage.metrics_dirty IS
    'Customers whose rollup rows are out of date (one row per change; engage.refresh_metrics() clears them). The metrics views compute these customers live.';

CREATE TABLE engage.channels (
    kind                  text    PRIMARY KEY CHECK (kind::engage.channel = kind),
    config                jsonb   NOT NULL DEFAULT '{}',
    enabled               boolean NOT NULL DEFAULT true,
    rate_limit_per_second numeric CHECK (rate_limit_per_second >= 0.001),
    cost_per_message      numeric(12, 6) NOT NULL DEFAULT 0,
    max_attempts          integer NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    backoff_base          interval NOT NULL DEFAULT '10 seconds' CHECK (backoff_base > '0'),
    backoff_max           interval NOT NULL DEFAULT '1 hour',
    quiet_hours_start     time,
    quiet_hours_end       time,
    requires_opt_in       boolean NOT NULL DEFAULT false,
    CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)),
    CHECK (backoff_max >= backoff_base AND backoff_max <= '30 days')
);
COMMENT ON COLUMN engage.channels.requires_opt_in IS
    'When true, marketing messages on this channel need an explicit opt-in (profiles.consent ->> kind = true), as SMS and WhatsApp often do by law.';
COMMENT ON COLUMN engage.channels.quiet_hours_start IS
    'Quiet hours in the customer''s own time zone (profiles.timezone, else engage.default_timezone), e.g. 21:00 to 08:00: a message due inside them is deferred to their end.';
COMMENT ON TABLE engage.channels IS
    'Delivery channels: provider settings (base URL, sender, SMTP host), rate limit, cost and retry policy. Secrets live in engage.channel_secrets.';

CREATE TABLE engage.channel_secrets (
    kind        text  PRIMARY KEY REFERENCES engage.channels ON DELETE CASCADE,
    secrets     jsonb NOT NULL DEFAULT '{}',
    destination text
);
REVOKE ALL ON engage.channel_secrets FROM PUBLIC;
COMMENT ON TABLE engage.channel_secrets IS
    'Provider credentials and signing secrets. Readable only by its owner (the administrator who created the extension); engage_admin writes them without reading them back. Not extension configuration, so pg_dump leaves them out: carry them separately (README, "Install").';
COMMENT ON COLUMN engage.channel_secrets.destination IS
    'Where the channel sent to when these secrets were written (engage.channel_destination), set by the database: credentials go only there. Pointing the channel elsewhere stops its sends until the secrets are written again, so whoever may change engage.channels but not read the secrets cannot have them sent to a server of their own.';

CREATE FUNCTION engage.channel_destination(kind text, config jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind
             WHEN 'webhook' THEN NULL -- its signing secret is never sent, only its signatures
             WHEN 'email' THEN pg_catalog.lower(config ->> 'host') || ':' || coalesce(config ->> 'port', '25')
             ELSE config ->> 'base_url'
           END
$$;
COMMENT ON FUNCTION engage.channel_destination(text, jsonb) IS
    'The server a channel''s credentials are sent to: the SMTP host and port for email, the base_url of the HTTP providers; NULL for webhooks, whose signing secret never leaves the database.';

CREATE FUNCTION engage.bind_channel_secrets() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Fires on INSERT and on an UPDATE that writes secrets (whoever writes them knows them);
    -- engage_admin may UPDATE no other column.
    NEW.destination := (SELECT engage.channel_destination(c.kind, c.config)
                          FROM engage.channels c WHERE c.kind = NEW.kind);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION engage.bind_channel_secrets() IS
    'BEFORE INSERT OR UPDATE OF secrets trigger on engage.channel_secrets: records the channel''s destination when its secrets are written (see engage.channel_secrets.destination).';
CREATE TRIGGER bind_channel_secrets BEFORE INSERT OR UPDATE OF secrets ON engage.channel_secrets
    FOR EACH ROW EXECUTE FUNCTION engage.bind_channel_secrets();

CREATE TABLE engage.templates (
    name     text NOT NULL,
    channel  text NOT NULL CHECK (channel::engage.channel = channel),
    locale   text NOT NULL DEFAULT 'en',
    subject  text CHECK (engage.validate_template(subject)),
    body     text NOT NULL CHECK (engage.validate_template(body)),
    html     text CHECK (engage.validate_template(html)),
    PRIMARY KEY (name, channel, locale)
);
COMMENT ON TABLE engage.templates IS
    'Liquid templates per channel and locale, rendered with profile, event and payload; a template that does not parse is rejected.';

CREATE TABLE engage.suppressions (
    customer_id text        COLLATE "C" NOT NULL,
    channel     text        NOT NULL DEFAULT 'all'
                            CHECK (CASE WHEN channel = 'all' THEN true ELSE channel::engage.channel = channel END),
    reason      text        NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'legal', 'manual')),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, channel)
);
COMMENT ON TABLE engage.suppressions IS
    'The global suppression list: nothing (marketing or transactional) goes to a customer on a listed channel (or any channel, for ''all''). Checked when a trigger fires and again at send time.';

CREATE TABLE engage.frequency_caps (
    id           integer  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      text     CHECK (channel::engage.channel = channel),
    max_messages integer  NOT NULL CHECK (max_messages >= 1),
    per          interval NOT NULL CHECK (per > interval '0')
);
CREATE UNIQUE INDEX frequency_caps_channel_per ON engage.frequency_caps (coalesce(channel, 'all'), per);
COMMENT ON TABLE engage.frequency_caps IS
    'Caps across triggers: at most max_messages marketing messages per customer in any rolling window of length per, on one channel or (channel NULL) on all. Counted from messages sent or queued; enforced when a trigger fires and again at send time.';

-- pg_dump keeps the data of extension tables only when they are marked as configuration.
SELECT pg_catalog.pg_extension_config_dump('engage.events', '');
SELECT pg_catalog.pg_extension_config_dump('engage.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('engage.profiles', '');
SELECT pg_catalog.pg_extension_config_dump('engage.triggers', '');
SELECT pg_catalog.pg_extension_config_dump('engage.triggers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('engage.decisions', '');
SELECT pg_catalog.pg_extension_config_dump('engage.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('engage.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('engage.messages', '');
SELECT pg_catalog.pg_extension_config_dump('engage.channels', '');
SELECT pg_catalog.pg_extension_config_dump('engage.templates', '');
SELECT pg_catalog.pg_extension_config_dump('engage.suppressions', '');
SELECT pg_catalog.pg_extension_config_dump('engage.frequency_caps', '');
SELECT pg_catalog.pg_extension_config_dump('engage.frequency_caps_id_seq', '');

-- Idempotency: engage.skip_duplicate_event (Rust) skips an event whose key is already stored.
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

-- Any change to trigger definitions, channel policies or frequency caps makes every backend
-- reload them before its next evaluated statement.
CREATE TRIGGER rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON engage.triggers
    FOR EACH STATEMENT
    EXECUTE FUNCTION engage.rules_changed();
CREATE TRIGGER rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON engage.channels
    FOR EACH STATEMENT
    EXECUTE FUNCTION engage.rules_changed();
CREATE TRIGGER rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON engage.frequency_caps
    FOR EACH STATEMENT
    EXECUTE FUNCTION engage.rules_changed();

-- Consent events: an `unsubscribe` or `subscribe` event (properties.channel, or every channel
-- when absent) updates the customer's profile consent before the statement is decided.
CREATE FUNCTION engage.apply_consent_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- A known channel's name in any case, or none (every channel); anything else is an ERROR.
    channel text := nullif(engage.consent_key(NEW.properties ->> 'channel'), 'all');
    granted boolean := NEW.name = 'subscribe';
    change jsonb := CASE WHEN channel IS NULL THEN jsonb_build_object('all', granted)
                         ELSE jsonb_build_object(channel, granted) END;
BEGIN
    INSERT INTO engage.profiles AS p (customer_id, consent) VALUES (NEW.customer_id, change)
    ON CONFLICT ON CONSTRAINT profiles_pkey DO UPDATE
       -- Every channel at once replaces the per-channel answers; one channel overrides "all".
       SET consent = CASE WHEN channel IS NULL THEN change ELSE p.consent || change END,
           updated_at = now();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION engage.apply_consent_event() IS
    'Trigger function: an unsubscribe/subscribe event sets profiles.consent for its channel (properties.channel) or for all channels.';
CREATE TRIGGER apply_consent_event
    AFTER INSERT ON engage.events
    FOR EACH ROW WHEN (NEW.name IN ('unsubscribe', 'subscribe'))
    EXECUTE FUNCTION engage.apply_consent_event();

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
    INSERT INTO engage.profiles AS p (customer_id, attributes, email, phone, timezone, push_token, locale, preferred_channel)
    VALUES (identify.customer_id, coalesce(identify.traits, '{}'),
            identify.traits ->> 'email', identify.traits ->> 'phone', identify.traits ->> 'timezone',
            identify.traits ->> 'push_token', identify.traits ->> 'locale', identify.traits ->> 'preferred_channel')
    ON CONFLICT ON CONSTRAINT profiles_pkey DO UPDATE
       SET attributes = p.attributes || excluded.attributes,
           email      = coalesce(excluded.email, p.email),
           phone      = coalesce(excluded.phone, p.phone),
           timezone   = coalesce(excluded.timezone, p.timezone),
           push_token = coalesce(excluded.push_token, p.push_token),
           locale     = coalesce(excluded.locale, p.locale),
           preferred_channel = coalesce(excluded.preferred_channel, p.preferred_channel),
           updated_at = now()
$$;

CREATE FUNCTION engage.unsubscribe(customer_id text, channel text DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$
    SELECT engage.track(unsubscribe.customer_id, 'unsubscribe',
                        jsonb_strip_nulls(jsonb_build_object('channel', unsubscribe.channel)))
$$;
CREATE FUNCTION engage.subscribe(customer_id text, channel text DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$
    SELECT engage.track(subscribe.customer_id, 'subscribe',
                        jsonb_strip_nulls(jsonb_build_object('channel', subscribe.channel)))
$$;
COMMENT ON FUNCTION engage.unsubscribe(text, text) IS
    'Opts a customer out of marketing on one channel, or all channels when channel is NULL, by recording an unsubscribe event; returns the event id.';
COMMENT ON FUNCTION engage.subscribe(text, text) IS
    'Opts a customer in on one channel (needed where engage.channels.requires_opt_in), or all channels when channel is NULL, by recording a subscribe event.';

COMMENT ON FUNCTION engage.track(text, text, jsonb, timestamptz, text) IS
    'Records one event (Segment-style track) and returns its id, or NULL when its idempotency_key was seen before.';
COMMENT ON FUNCTION engage.identify(text, jsonb) IS
    'Upserts a customer profile (Segment-style identify): traits merge into attributes; email, phone, timezone, push_token, locale and preferred_channel traits also fill those columns.';

-- Who runs the scheduler's tick or the metrics refresh takes turns on a row of this table. Only
-- the extension's owner may lock its rows (an advisory lock key, which any role can take, would
-- let any role stall the scheduler or the rollups).
CREATE TABLE engage.locks (
    name text PRIMARY KEY
);
INSERT INTO engage.locks (name) VALUES ('tick'), ('refresh_metrics');
COMMENT ON TABLE engage.locks IS
    'One row per job that runs one at a time (tick, refresh_metrics): engage.tick and engage.refresh_metrics lock it.';

-- Event names and idempotency keys beginning with "trigger:" are the scheduler's: engage.tick
-- and threshold crossings insert events named `trigger:<trigger>` with keys `trigger:<id>:...`,
-- as the extension's owner. An app that could write them would fire a scheduled trigger at will,
-- or pre-empt (or probe for) an occasion's key.
CREATE FUNCTION engage.refuse_reserved_names() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'event names and idempotency keys beginning with "trigger:" are reserved for pg_engage''s scheduled triggers'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('name %s, idempotency_key %s', pg_catalog.quote_literal(pg_catalog.left(NEW.name, 60)),
                                             pg_catalog.quote_nullable(pg_catalog.left(NEW.idempotency_key, 60))),
                  HINT = 'Name the event otherwise; scheduled triggers fire from engage.tick.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION engage.refuse_reserved_names() IS
    'BEFORE INSERT row trigger on engage.events: refuses (42501) an event named "trigger:..." or keyed "trigger:..." unless inserted by the extension (its owner, a superuser).';
-- Fires before skip_duplicate_event (triggers fire in name order), so a reserved key is refused
-- before it could be found to exist.
CREATE TRIGGER refuse_reserved_names
    BEFORE INSERT ON engage.events
    FOR EACH ROW WHEN (NEW.name LIKE 'trigger:%' OR NEW.idempotency_key LIKE 'trigger:%')
    EXECUTE FUNCTION engage.refuse_reserved_names();
