-- Comments on the functions written in Rust (loaded last, once they all exist).
COMMENT ON FUNCTION engage.compiled_trigger(text, jsonb) IS
    'The compiled form of a trigger: what SQL reads of its definition, every default filled in (generates engage.triggers.compiled).';
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
COMMENT ON FUNCTION engage.validate_template(text) IS
    'Returns true for a Liquid template that parses and is bounded (NULL too), or raises an ERROR saying why not.';
COMMENT ON FUNCTION engage.worker_status() IS
    'The built-in workers: the deliverer (running, pid, messages sent and failed since the server started, last batch time) and the scheduler (scheduler_running, scheduler_pid). A stopped worker restarts after 5 s unless the server is shutting down.';
COMMENT ON FUNCTION engage.rule_cache_loads() IS
    'How many times backends loaded the trigger definitions, channels and caps since the server started (each change makes every backend load them again); NULL without shared_preload_libraries.';
COMMENT ON FUNCTION engage.consent_key(text) IS
    'The profiles.consent key for a channel name as apps write it (case and spaces ignored; "all" for every channel); an unknown channel is an ERROR (22023).';
COMMENT ON FUNCTION engage.check_consent(jsonb) IS
    'CHECK on profiles.consent: keys are known channels or "all", values true or false; otherwise an ERROR (22023) naming the key.';
COMMENT ON FUNCTION engage.skip_duplicate_event() IS
    'BEFORE INSERT row trigger on engage.events: skips an event whose idempotency_key is already stored.';
COMMENT ON FUNCTION engage.known_time_zones(text[]) IS
    'The names among its argument that are time zones listed in pg_timezone_names, from a list each session reads once an hour (listing the zones loads every zone file).';
COMMENT ON FUNCTION engage.bgnbd_fit(double precision[], double precision[], double precision[]) IS
    'Fits the BG/NBD model (Fader, Hardie & Lee 2005) by maximum likelihood to per-customer summaries: frequency x, recency t_x, age T. Returns r, alpha, a, b, the log-likelihood, iterations and whether it converged.';
COMMENT ON FUNCTION engage.bgnbd_p_alive(double precision, double precision, double precision, double precision, double precision, double precision, double precision) IS
    'BG/NBD P(alive) of a customer (x, t_x, T) under parameters (r, alpha, a, b): the paper''s equation (12). NULL for invalid input.';
COMMENT ON FUNCTION engage.bgnbd_expected_purchases(double precision, double precision, double precision, double precision, double precision, double precision, double precision, double precision) IS
    'BG/NBD expected repeat purchases of a customer (x, t_x, T) in the next t units: the paper''s equation (10). NULL for invalid input.';

