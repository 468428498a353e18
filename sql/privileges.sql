-- Who may do what (README, "Security"). Loaded last, once every function exists.

-- 1. Every function of the extension runs with search_path = pg_catalog, pg_temp, whoever calls
-- it and whatever their own search_path: names resolve in pg_catalog (or are schema-qualified,
-- as every engage object is), so a function or operator a role creates in public (an overload of
-- unnest or cardinality, say) can never run in the insert path, the workers or the views. The
-- small SQL functions that the planner inlines into queries (json_number, profile_date, the
-- latency buckets and measures) are the exception (a SET clause would stop the inlining); every
-- name in them is qualified instead.
DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'engage'::regnamespace
           AND p.proname NOT IN ('json_number', 'profile_date', 'latency_bucket', 'latency_bucket_value', 'latency_measures')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$pin$;

-- 2. The four roles, NOLOGIN, to be granted to login roles. Roles belong to the cluster, not to
-- the database: the first CREATE EXTENSION creates them, later ones (other databases) reuse them,
-- and DROP EXTENSION leaves them.
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['engage_writer', 'engage_analyst', 'engage_admin', 'engage_worker'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation OR internal_error THEN
                NULL; -- another database's CREATE EXTENSION created it at the same moment
            END;
        END IF;
    END LOOP;
END
$roles$;

GRANT USAGE ON SCHEMA engage TO engage_writer, engage_analyst, engage_admin, engage_worker;

-- 3. Nothing runs for PUBLIC: each role gets exactly its functions.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA engage FROM PUBLIC;

-- Functions that act on tables their callers may not touch run with the owner's rights; each is
-- executable only by the roles below, and pins its search_path (1.).
-- (track, subscribe and unsubscribe insert an event with the caller's own rights, so the caller
-- is who the reserved-name check sees; identify writes profiles, which apps cannot.)
ALTER FUNCTION engage.identify(text, jsonb) SECURITY DEFINER;
ALTER FUNCTION engage.alias(text, text) SECURITY DEFINER;
ALTER FUNCTION engage.aliased(text) SECURITY DEFINER;
ALTER FUNCTION engage.stored_key(text, text) SECURITY DEFINER;
-- The triggers on engage.events decide as the owner: an app needs INSERT on events and nothing else.
ALTER FUNCTION engage.evaluate_events() SECURITY DEFINER;
ALTER FUNCTION engage.skip_duplicate_event() SECURITY DEFINER;
ALTER FUNCTION engage.apply_consent_event() SECURITY DEFINER;
ALTER FUNCTION engage.profile_crossings() SECURITY DEFINER;
ALTER FUNCTION engage.mark_goal_change() SECURITY DEFINER;
ALTER FUNCTION engage.log_decision_changes() SECURITY DEFINER;
-- The delivery contract.
ALTER FUNCTION engage.claim(integer, interval, text, timestamptz, bigint) SECURITY DEFINER;
ALTER FUNCTION engage.extend_lease(bigint, bigint, interval) SECURITY DEFINER;
ALTER FUNCTION engage.complete(bigint, bigint, text) SECURITY DEFINER;
ALTER FUNCTION engage.complete_many(bigint[], bigint[], text[]) SECURITY DEFINER;
ALTER FUNCTION engage.fail(bigint, bigint, text, boolean) SECURITY DEFINER;
ALTER FUNCTION engage.defer(bigint, bigint, timestamptz, text) SECURITY DEFINER;
ALTER FUNCTION engage.suppress(bigint, bigint, text, text) SECURITY DEFINER;
-- What the metrics views compute from the base tables.
ALTER FUNCTION engage.message_facts_of(text[]) SECURITY DEFINER;
ALTER FUNCTION engage.touches_of(text[]) SECURITY DEFINER;
ALTER FUNCTION engage.exposures_of(text[]) SECURITY DEFINER;
ALTER FUNCTION engage.volume_of(timestamptz, timestamptz, timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.trigger_volume_in(interval, timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.trigger_latency_in(timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.purchase_summaries(text, date, interval) SECURITY DEFINER;
-- What operators run: ticks, rollups, model fits.
ALTER FUNCTION engage.tick(timestamptz, boolean) SECURITY DEFINER;
ALTER FUNCTION engage.set_tick_progress(text, timestamptz) SECURITY DEFINER;
ALTER FUNCTION engage.refresh_metrics(integer) SECURITY DEFINER;
ALTER FUNCTION engage.rebuild_metrics() SECURITY DEFINER;
ALTER FUNCTION engage.fit_purchase_model(text, date, interval) SECURITY DEFINER;
ALTER FUNCTION engage.ingest_provider_event(text, jsonb) SECURITY DEFINER;
ALTER FUNCTION engage.redrive(bigint) SECURITY DEFINER;
-- Reads the channel's config whoever writes the secrets.
ALTER FUNCTION engage.bind_channel_secrets() SECURITY DEFINER;
ALTER FUNCTION engage.purge(interval, interval, integer) SECURITY DEFINER;

-- engage_writer: apps. Insert events (INSERT, COPY, track), profiles and consent; read nothing
-- but the id of the event it inserted (INSERT ... RETURNING id).
GRANT INSERT, SELECT (id) ON engage.events TO engage_writer;
GRANT EXECUTE ON FUNCTION engage.track(text, text, jsonb, timestamptz, text), engage.identify(text, jsonb),
                          engage.subscribe(text, text), engage.unsubscribe(text, text),
                          engage.ingest(jsonb), engage.alias(text, text), engage.aliased(text),
                          engage.stored_key(text, text)
    TO engage_writer;

-- engage_analyst: every metrics view and the decision log; no secrets, no addresses.
GRANT SELECT ON engage.trigger_goals, engage.trigger_volume, engage.trigger_volume_daily,
                engage.trigger_fire_rate, engage.current_messages, engage.current_touches,
                engage.current_exposures, engage.marked_rollups, engage.current_message_totals,
                engage.current_touch_totals, engage.current_exposure_totals, engage.current_volume_counts,
                engage.message_responses, engage.trigger_response_rates,
                engage.attributed_conversions, engage.trigger_revenue, engage.trigger_exposures,
                engage.holdout_uplift, engage.variant_results, engage.trigger_latency, engage.trigger_roi,
                engage.customer_predictions, engage.decisions, engage.triggers,
                engage.queue_health, engage.operations
    TO engage_analyst;
GRANT EXECUTE ON FUNCTION engage.json_number(jsonb, text[]),
                          engage.message_facts_of(text[]), engage.touches_of(text[]), engage.exposures_of(text[]),
                          engage.volume_of(timestamptz, timestamptz, timestamptz),
                          engage.message_totals_delta(engage.rollup_messages[], engage.rollup_messages[]),
                          engage.touch_totals_delta(engage.rollup_touches[], engage.rollup_touches[]),
                          engage.exposure_totals_delta(engage.rollup_exposures[], engage.rollup_exposures[]),
                          engage.trigger_volume_in(interval, timestamptz), engage.trigger_latency_in(timestamptz),
                          engage.purchase_summaries(text, date, interval),
                          engage.worker_status(), engage.rule_cache_loads(),
                          engage.compare_groups(bigint, bigint, numeric, numeric, bigint, bigint, numeric, numeric),
                          engage.bgnbd_p_alive(double precision, double precision, double precision, double precision,
                                               double precision, double precision, double precision),
                          engage.bgnbd_expected_purchases(double precision, double precision, double precision,
                                                          double precision, double precision, double precision,
                                                          double precision, double precision)
    TO engage_analyst;

-- engage_worker: an external deliverer. The claim / complete / fail / defer contract, nothing else.
GRANT EXECUTE ON FUNCTION engage.claim(integer, interval, text, timestamptz, bigint), engage.extend_lease(bigint, bigint, interval),
                          engage.complete(bigint, bigint, text), engage.complete_many(bigint[], bigint[], text[]),
                          engage.fail(bigint, bigint, text, boolean),
                          engage.defer(bigint, bigint, timestamptz, text), engage.suppress(bigint, bigint, text, text)
    TO engage_worker;

-- engage_admin: operators. Definitions, channels, templates, caps, suppressions, redrive, ticks
-- and models, and everything the analyst reads. Writes channel secrets, never reads them back.
GRANT SELECT, INSERT, UPDATE, DELETE ON engage.triggers, engage.channels, engage.templates,
                                        engage.frequency_caps, engage.suppressions
    TO engage_admin;
-- UPDATE of secrets only: writing them binds them to the channel's current destination, and no
-- other UPDATE can move that binding (engage.channel_secrets.destination).
GRANT INSERT, UPDATE (secrets), DELETE, SELECT (kind) ON engage.channel_secrets TO engage_admin;
GRANT SELECT ON engage.events, engage.profiles, engage.aliases, engage.outbox, engage.dead_letters, engage.messages,
                engage.escalations, engage.tick_progress, engage.purchase_models
    TO engage_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA engage TO engage_admin;
GRANT EXECUTE ON FUNCTION engage.create_trigger(text, jsonb), engage.update_trigger(text, jsonb),
                          engage.enable_trigger(text), engage.disable_trigger(text), engage.drop_trigger(text),
                          engage.validate_trigger(jsonb), engage.compiled_trigger(text, jsonb),
                          engage.validate_template(text), engage.redrive(bigint),
                          engage.worker_status(), engage.ingest_provider_event(text, jsonb),
                          engage.tick(timestamptz, boolean), engage.set_tick_progress(text, timestamptz), engage.refresh_metrics(integer), engage.rebuild_metrics(),
                          engage.fit_purchase_model(text, date, interval),
                          engage.purge(interval, interval, integer), engage.history_needed()
    TO engage_admin;

-- Cluster-wide grants, once per cluster like the roles: engage_admin is also an analyst, and may
-- set engage.conflict_window (a superuser setting: it changes what is decided, so apps may not).
-- CREATE EXTENSION in two databases at once may grant the same at the same moment; the loser's
-- "tuple concurrently updated" then means it is granted.
DO $cluster_grants$
BEGIN
    IF NOT pg_catalog.pg_has_role('engage_admin', 'engage_analyst', 'MEMBER') THEN
        BEGIN
            GRANT engage_analyst TO engage_admin;
        EXCEPTION WHEN internal_error OR unique_violation OR duplicate_object THEN
            NULL;
        END;
    END IF;
    IF NOT pg_catalog.has_parameter_privilege('engage_admin', 'engage.conflict_window', 'SET') THEN
        BEGIN
            GRANT SET ON PARAMETER engage.conflict_window TO engage_admin;
        EXCEPTION WHEN internal_error OR unique_violation OR duplicate_object THEN
            NULL;
        END;
    END IF;
END
$cluster_grants$;
