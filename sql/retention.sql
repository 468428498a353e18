-- Retention (src/retention.rs, README "Retention and vacuum"): closed messages, and events and
-- decisions older than every window a trigger reads, leave the hot tables in bounded batches.

-- Closed outbox rows are found by age: rows are appended in created_at order, so a BRIN index
-- (a few pages, not an entry per row) narrows the scan to the old block ranges.
CREATE INDEX outbox_created_brin ON engage.outbox USING brin (created_at);

CREATE FUNCTION engage.purge(keep_closed_messages interval, keep_history interval, batch_size integer DEFAULT 10000)
RETURNS TABLE (messages bigint, decisions bigint, events bigint)
LANGUAGE plpgsql AS $$
DECLARE
    -- Decisions of other triggers within the conflict window are read as rivals.
    conflict_window interval;
    trigger_needs interval;
    history_cutoff timestamptz;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'engage.purge: batch_size must be at least 1, got %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF keep_closed_messages < interval '0' OR keep_history < interval '0' THEN
        RAISE EXCEPTION 'engage.purge: keep_closed_messages and keep_history must not be negative'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Zero (or NULL) keeps them for ever.';
    END IF;
    messages := 0; decisions := 0; events := 0;
    -- (history_needed loads the library, which defines the setting; pg_settings has it in seconds.)
    SELECT pg_catalog.max(n.needed) INTO trigger_needs FROM engage.history_needed() n;
    SELECT pg_catalog.make_interval(secs => s.setting::float8) INTO conflict_window
      FROM pg_catalog.pg_settings s WHERE s.name = 'engage.conflict_window';

    -- Closed messages, once closed (last claimed, sent, or due: a message cancelled before it
    -- was due counts from its due time) for keep_closed_messages.
    IF keep_closed_messages > interval '0' THEN
        DELETE FROM engage.outbox o
         WHERE o.ctid = ANY (ARRAY(
               SELECT x.ctid FROM engage.outbox x
                WHERE x.created_at < pg_catalog.now() - keep_closed_messages
                  AND x.status IN ('sent', 'dead', 'cancelled', 'suppressed')
                  AND greatest(x.created_at, x.due_at, x.claimed_at, x.sent_at)
                      < pg_catalog.now() - keep_closed_messages
                LIMIT batch_size));
        GET DIAGNOSTICS messages = ROW_COUNT;
    END IF;

    IF keep_history > interval '0' THEN
        -- Decisions, trigger by trigger. An event that arrives keep_history late still reads all
        -- it needs: what the trigger's own caps read (a dropped trigger reads nothing) and, for
        -- other triggers' candidates, the conflict window, counted back from keep_history.
        DELETE FROM engage.decisions d
         WHERE d.ctid = ANY (ARRAY(
               SELECT x.ctid
                 FROM engage.decisions x
                 LEFT JOIN engage.history_needed() n ON n.trigger_id = x.trigger_id
                WHERE x.occurred_at < pg_catalog.now() - keep_history - conflict_window
                  AND x.occurred_at < pg_catalog.now() - keep_history
                                      - greatest(conflict_window, n.needed)
                LIMIT batch_size));
        GET DIAGNOSTICS decisions = ROW_COUNT;

        -- Events, by the same measure over every trigger (any trigger may read any name through
        -- its pattern, cancel conditions or goal), except the event of a message still to send
        -- (its template reads it).
        history_cutoff := pg_catalog.now() - keep_history
                          - greatest(conflict_window, trigger_needs);
        DELETE FROM engage.events e
         WHERE e.ctid = ANY (ARRAY(
               SELECT x.ctid FROM engage.events x
                WHERE x.occurred_at < history_cutoff
                  AND x.id NOT IN (SELECT o.event_id FROM engage.outbox o WHERE o.status IN ('pending', 'claimed'))
                LIMIT batch_size));
        GET DIAGNOSTICS events = ROW_COUNT;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION engage.purge(interval, interval, integer) IS
    'Deletes one batch (at most batch_size rows of each table) of: outbox rows closed (sent, dead, cancelled, suppressed) for keep_closed_messages, and, when keep_history is more than zero, decisions and events older in event time than keep_history plus the longest window a trigger reads (engage.history_needed(), engage.conflict_window), except events of messages still to send: an event that arrives at most keep_history late is decided as if nothing had been deleted. Zero keeps for ever. The scheduler calls it after each tick with engage.keep_closed_messages and engage.keep_history until a batch deletes nothing (at most 10 batches a tick). Returns the rows deleted.';
COMMENT ON FUNCTION engage.history_needed() IS
    'Per trigger (enabled or not), how far back in event time its decisions read stored events and decisions: its cap or reentry window (once: 200 years), pattern window, waits, goal window, inactivity period, summed window; a year for anniversary and date triggers, 200 years for predicted ones. engage.purge never deletes history younger than the longest of these.';
