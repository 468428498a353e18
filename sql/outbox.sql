-- The outbox contract, for the built-in worker and for any external deliverer alike:
-- claim a batch (each row leased for a while), deliver, then complete or fail each row.
-- A row whose lease expires before complete/fail (the deliverer died) is claimed again, so a
-- message is delivered at least once; its id never changes, so receivers can de-duplicate.

CREATE FUNCTION engage.claim(
    batch_size integer  DEFAULT 100,
    lease      interval DEFAULT '5 minutes',
    worker     text     DEFAULT NULL
) RETURNS TABLE (
    id          bigint,
    customer_id text,
    channel     text,
    fallback    text[],
    template    text,
    payload     jsonb,
    event_id    bigint,
    trigger_id  integer,
    attempts    integer,
    due_at      timestamptz,
    category    text,
    variant     text
)
LANGUAGE sql AS $$
    -- Only the head of each customer's queue (by scheduled_at, kept across retries) is claimable,
    -- and not while another deliverer holds it or it waits for a retry: a customer's messages go
    -- out one at a time, in order. Messages of a disabled channel are held, not failed.
    WITH heads AS (
        SELECT o.id
          FROM engage.outbox o
         WHERE o.status IN ('pending', 'claimed')
           AND o.due_at <= now()
           AND (o.status = 'pending' OR o.lease_until < now())
           AND NOT EXISTS (
                 SELECT 1 FROM engage.outbox earlier
                  WHERE earlier.customer_id = o.customer_id
                    AND earlier.status IN ('pending', 'claimed')
                    AND (earlier.scheduled_at, earlier.id) < (o.scheduled_at, o.id))
           AND NOT EXISTS (
                 SELECT 1 FROM engage.channels c WHERE c.kind = o.channel AND NOT c.enabled)
         ORDER BY o.due_at, o.id
         LIMIT claim.batch_size
           FOR UPDATE SKIP LOCKED
    )
    UPDATE engage.outbox o
       SET status = 'claimed',
           lease_until = now() + claim.lease,
           claimed_by = coalesce(claim.worker, current_user),
           claimed_at = now(),
           attempts = o.attempts + 1
      FROM heads
     WHERE o.id = heads.id
    RETURNING o.id, o.customer_id, o.channel, o.fallback, o.template, o.payload, o.event_id,
              o.trigger_id, o.attempts, o.due_at, o.category, o.variant
$$;

CREATE FUNCTION engage.complete(message_id bigint, provider_message_id text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    -- Only a claimed row completes; completing a message twice (a duplicate delivery after an
    -- expired lease) is a no-op that returns false.
    WITH sent AS (
        UPDATE engage.outbox o
           SET status = 'sent', sent_at = now(), lease_until = NULL,
               provider_message_id = complete.provider_message_id, last_error = NULL
         WHERE o.id = complete.message_id AND o.status = 'claimed'
        RETURNING o.*
    ), logged AS (
        INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, category,
                                     variant, queued_at, claimed_at, sent_at, attempts, provider_message_id, cost)
        SELECT s.id, s.event_id, s.trigger_id, s.customer_id, s.channel, s.template, s.category, s.variant,
               s.created_at, s.claimed_at, s.sent_at, s.attempts, s.provider_message_id,
               coalesce((SELECT c.cost_per_message FROM engage.channels c WHERE c.kind = s.channel), 0)
          FROM sent s
        ON CONFLICT (outbox_id) DO NOTHING
        RETURNING customer_id
    ), marked AS (
        -- The customer's metrics rollups now miss this message (sql/metrics.sql, "Rollups").
        INSERT INTO engage.metrics_dirty (customer_id) SELECT customer_id FROM logged
    )
    SELECT EXISTS (SELECT 1 FROM logged)
$$;

CREATE FUNCTION engage.fail(message_id bigint, error text, retryable boolean DEFAULT true)
RETURNS text
LANGUAGE sql AS $$
    -- Retryable: back to pending after an exponential backoff with jitter (equal jitter: half the
    -- delay fixed, half random), up to the channel's max_attempts; then, or when not retryable,
    -- the next fallback channel if any, else dead with the last error.
    WITH policy AS (
        SELECT coalesce(c.max_attempts, 8) AS max_attempts,
               coalesce(c.backoff_base, interval '10 seconds') AS base,
               coalesce(c.backoff_max, interval '1 hour') AS cap
          FROM engage.outbox o LEFT JOIN engage.channels c ON c.kind = o.channel
         WHERE o.id = fail.message_id
    )
    UPDATE engage.outbox o
       SET status = CASE
                      WHEN fail.retryable AND o.attempts < p.max_attempts THEN 'pending'
                      WHEN cardinality(o.fallback) > 0 THEN 'pending'
                      ELSE 'dead' END,
           due_at = CASE
                      WHEN fail.retryable AND o.attempts < p.max_attempts
                      THEN now() + least(p.cap, p.base * power(2, o.attempts - 1))
                                   * (0.5 + random() / 2)
                      ELSE now() END,
           channel  = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR cardinality(o.fallback) = 0
                           THEN o.channel ELSE o.fallback[1] END,
           fallback = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR cardinality(o.fallback) = 0
                           THEN o.fallback ELSE o.fallback[2:] END,
           attempts = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR cardinality(o.fallback) = 0
                           THEN o.attempts ELSE 0 END,
           lease_until = NULL,
           last_error = fail.error
      FROM policy p
     WHERE o.id = fail.message_id AND o.status = 'claimed'
    RETURNING o.status
$$;

CREATE FUNCTION engage.defer(message_id bigint, until timestamptz, reason text DEFAULT 'deferred')
RETURNS boolean
LANGUAGE sql AS $$
    -- Gives a claimed message back, due later, without spending an attempt (quiet hours).
    WITH deferred AS (
        UPDATE engage.outbox o
           SET status = 'pending', due_at = defer.until, lease_until = NULL,
               attempts = greatest(o.attempts - 1, 0), last_error = defer.reason
         WHERE o.id = defer.message_id AND o.status = 'claimed'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM deferred)
$$;

CREATE FUNCTION engage.suppress(message_id bigint, reason text, detail text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    -- The send-time re-check: a claimed message that no longer passes the policy is recorded as
    -- suppressed with its reason, not sent and not failed.
    WITH suppressed AS (
        UPDATE engage.outbox o
           SET status = 'suppressed', reason = suppress.reason, lease_until = NULL,
               last_error = coalesce(suppress.detail, suppress.reason)
         WHERE o.id = suppress.message_id AND o.status = 'claimed'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM suppressed)
$$;

CREATE FUNCTION engage.redrive(message_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH redriven AS (
        UPDATE engage.outbox o
           SET status = 'pending', due_at = now(), attempts = 0, lease_until = NULL
         WHERE o.id = redrive.message_id AND o.status = 'dead'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM redriven)
$$;

CREATE VIEW engage.dead_letters AS
SELECT id, customer_id, channel, template, trigger_id, event_id, attempts, last_error, created_at, due_at AS died_at
  FROM engage.outbox
 WHERE status = 'dead';

COMMENT ON FUNCTION engage.claim(integer, interval, text) IS
    'Claims up to batch_size due messages (the head of each customer''s queue) for a lease; deliver each, then call engage.complete or engage.fail.';
COMMENT ON FUNCTION engage.complete(bigint, text) IS
    'Marks a claimed message sent and logs it in engage.messages; false if it was not claimed (e.g. already completed).';
COMMENT ON FUNCTION engage.fail(bigint, text, boolean) IS
    'Records a failed attempt: retryable failures back off exponentially with jitter; permanent or exhausted ones move to the next fallback channel or to dead. Returns the new status.';
COMMENT ON FUNCTION engage.defer(bigint, timestamptz, text) IS
    'Gives a claimed message back, due at until, without spending an attempt (used for quiet hours); false if it was not claimed.';
COMMENT ON FUNCTION engage.suppress(bigint, text, text) IS
    'Records a claimed message as suppressed at send time (reason: consent, suppression or frequency) instead of sending it; false if it was not claimed.';
COMMENT ON FUNCTION engage.redrive(bigint) IS 'Puts a dead message back in the queue, due now, with its attempts reset; false if it was not dead.';
COMMENT ON VIEW engage.dead_letters IS 'Messages that could not be delivered, with the last error; engage.redrive(id) retries one.';
