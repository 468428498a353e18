-- The outbox contract, for the built-in worker and for any external deliverer alike:
-- claim a batch (each row leased for a while), deliver, then complete or fail each row.
-- A row whose lease expires before complete/fail (the deliverer died) is claimed again, so a
-- message is delivered at least once; its id never changes, so receivers can de-duplicate.
-- Every claim hands out a new lease token, and only the current token records an outcome: a
-- deliverer that lost its lease changes nothing.

CREATE FUNCTION engage.claim(
    batch_size   integer     DEFAULT 100,
    lease_for    interval    DEFAULT '5 minutes',
    worker       text        DEFAULT NULL,
    after_due_at timestamptz DEFAULT NULL,
    after_id     bigint      DEFAULT NULL
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
    variant     text,
    lease       bigint
)
-- Walk outbox_open_due in due order and stop at batch_size. The planner misestimates the "is
-- the head of its queue" anti-join (it expects it to remove nearly every row) and would rather
-- check every open message and sort them all: 85 ms instead of 1 ms per claim with 20,000 due.
-- (after_due_at, after_id) continue a scan past the last message of a full batch: while a
-- transaction holds back vacuum, every message sent since it began leaves two dead entries at
-- the front of outbox_open_due that a scan from the start steps through (after two minutes and
-- 15,000 messages, 29,000 buffer reads to find 200 messages; hours of it, millions). A deliverer
-- still scans from the start when a batch was not full, and at least every second, for what a
-- continued scan passes by (the next message of a customer whose head was just sent, a
-- message queued already due).
LANGUAGE sql SET enable_sort = off AS $$
    -- Poison messages: a claimed message whose lease expired after its channel's max_attempts
    -- claims (the deliverer died or hung on it every time) is not claimed again; it moves to its
    -- next fallback channel, or dead. Swept by scans from the start only: expired leases are
    -- found by lease_until, where dead entries of the same kind gather.
    UPDATE engage.outbox o
       SET status   = CASE WHEN pg_catalog.cardinality(o.fallback) > 0 THEN 'pending' ELSE 'dead' END,
           channel  = CASE WHEN pg_catalog.cardinality(o.fallback) > 0 THEN o.fallback[1] ELSE o.channel END,
           fallback = CASE WHEN pg_catalog.cardinality(o.fallback) > 0 THEN o.fallback[2:] ELSE o.fallback END,
           attempts = CASE WHEN pg_catalog.cardinality(o.fallback) > 0 THEN 0 ELSE o.attempts END,
           due_at = now(), lease_until = NULL,
           last_error = 'lease expired ' || o.attempts || ' times: the deliverer died or hung on this message'
     WHERE claim.after_due_at IS NULL
       AND o.status = 'claimed' AND o.lease_until < now()
       AND o.attempts >= coalesce((SELECT c.max_attempts FROM engage.channels c WHERE c.kind = o.channel), 8);

    -- Only the head of each customer's queue of a category (by scheduled_at, kept across
    -- retries) is claimable, and not while another deliverer holds it or it waits for a retry: a
    -- customer's messages of one category go out one at a time, in order, and a marketing message
    -- waiting for the end of quiet hours never holds up a transactional one. Messages of a
    -- disabled channel are held, not failed.
    WITH heads AS (
        SELECT o.id
          FROM engage.outbox o
         WHERE o.status IN ('pending', 'claimed')
           AND o.due_at <= now()
           AND (o.due_at, o.id) > (coalesce(claim.after_due_at, '-infinity'), coalesce(claim.after_id, 0))
           AND (o.status = 'pending' OR o.lease_until < now())
           -- The head, read as the first entry of the customer's queue in outbox_open_by_customer:
           -- written as "no earlier open message" (an anti-join), the planner, misled by stale
           -- statistics, walked outbox_open_due for every candidate (0.9 s a claim, 5,000 due).
           AND o.id = (
                 SELECT head.id FROM engage.outbox head
                  WHERE head.customer_id = o.customer_id
                    AND head.category = o.category
                    AND head.status IN ('pending', 'claimed')
                  ORDER BY head.scheduled_at, head.id
                  LIMIT 1)
           AND NOT EXISTS (
                 SELECT 1 FROM engage.channels c WHERE c.kind = o.channel AND NOT c.enabled)
         ORDER BY o.due_at, o.id
         LIMIT claim.batch_size
           FOR UPDATE SKIP LOCKED
    )
    UPDATE engage.outbox o
       SET status = 'claimed',
           lease_until = now() + claim.lease_for,
           claimed_by = coalesce(claim.worker, current_user),
           claimed_at = now(),
           attempts = o.attempts + 1,
           lease = o.lease + 1
      FROM heads
     WHERE o.id = heads.id
    RETURNING o.id, o.customer_id, o.channel, o.fallback, o.template, o.payload, o.event_id,
              o.trigger_id, o.attempts, o.due_at, o.category, o.variant, o.lease
$$;

CREATE FUNCTION engage.extend_lease(message_id bigint, lease bigint, lease_for interval DEFAULT '5 minutes')
RETURNS boolean
LANGUAGE sql AS $$
    -- The holder's heartbeat: a long send keeps its lease; false when the lease is no longer its.
    WITH extended AS (
        UPDATE engage.outbox o SET lease_until = now() + extend_lease.lease_for
         WHERE o.id = extend_lease.message_id AND o.status = 'claimed' AND o.lease = extend_lease.lease
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM extended)
$$;

CREATE FUNCTION engage.complete_many(message_ids bigint[], leases bigint[], provider_message_ids text[])
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

CREATE FUNCTION engage.complete(message_id bigint, lease bigint, provider_message_id text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    -- One message: engage.complete_many of one.
    SELECT engage.complete_many(ARRAY[complete.message_id], ARRAY[complete.lease],
                                ARRAY[complete.provider_message_id]) = 1
$$;

CREATE FUNCTION engage.fail(message_id bigint, lease bigint, error text, retryable boolean DEFAULT true)
RETURNS text
LANGUAGE sql AS $$
    -- Retryable: back to pending after an exponential backoff with jitter (equal jitter: half the
    -- delay fixed, half random), up to the channel's max_attempts; then, or when not retryable,
    -- the next fallback channel if any, else dead with the last error. The delay is computed in
    -- seconds as a double and capped before it becomes an interval, so no attempt count can
    -- overflow it. Only the current lease records; a stale one gets NULL.
    WITH policy AS (
        SELECT coalesce(c.max_attempts, 8) AS max_attempts,
               extract(epoch FROM coalesce(c.backoff_base, interval '10 seconds'))::float8 AS base_s,
               extract(epoch FROM coalesce(c.backoff_max, interval '1 hour'))::float8 AS cap_s
          FROM engage.outbox o LEFT JOIN engage.channels c ON c.kind = o.channel
         WHERE o.id = fail.message_id
    )
    UPDATE engage.outbox o
       SET status = CASE
                      WHEN fail.retryable AND o.attempts < p.max_attempts THEN 'pending'
                      WHEN pg_catalog.cardinality(o.fallback) > 0 THEN 'pending'
                      ELSE 'dead' END,
           due_at = CASE
                      WHEN fail.retryable AND o.attempts < p.max_attempts
                      THEN now() + pg_catalog.make_interval(secs =>
                               least(p.cap_s, p.base_s * power(2::float8, least(greatest(o.attempts - 1, 0), 60)))
                               * (0.5 + random() / 2))
                      ELSE now() END,
           channel  = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR pg_catalog.cardinality(o.fallback) = 0
                           THEN o.channel ELSE o.fallback[1] END,
           fallback = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR pg_catalog.cardinality(o.fallback) = 0
                           THEN o.fallback ELSE o.fallback[2:] END,
           attempts = CASE WHEN (fail.retryable AND o.attempts < p.max_attempts) OR pg_catalog.cardinality(o.fallback) = 0
                           THEN o.attempts ELSE 0 END,
           lease_until = NULL,
           last_error = left(fail.error, 2000)
      FROM policy p
     WHERE o.id = fail.message_id AND o.status = 'claimed' AND o.lease = fail.lease
    RETURNING o.status
$$;

CREATE FUNCTION engage.defer(message_id bigint, lease bigint, until timestamptz, reason text DEFAULT 'deferred')
RETURNS boolean
LANGUAGE sql AS $$
    -- Gives a claimed message back, due later, without spending an attempt (quiet hours). Its
    -- place in the customer's queue moves to `until` too, so it holds up nothing due before.
    WITH deferred AS (
        UPDATE engage.outbox o
           SET status = 'pending', due_at = defer.until, scheduled_at = greatest(o.scheduled_at, defer.until),
               lease_until = NULL, attempts = greatest(o.attempts - 1, 0), last_error = defer.reason
         WHERE o.id = defer.message_id AND o.status = 'claimed' AND o.lease = defer.lease
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM deferred)
$$;

CREATE FUNCTION engage.suppress(message_id bigint, lease bigint, reason text, detail text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    -- The send-time re-check: a claimed message that no longer passes the policy is recorded as
    -- suppressed with its reason, not sent and not failed.
    WITH suppressed AS (
        UPDATE engage.outbox o
           SET status = 'suppressed', reason = suppress.reason, lease_until = NULL,
               last_error = coalesce(suppress.detail, suppress.reason)
         WHERE o.id = suppress.message_id AND o.status = 'claimed' AND o.lease = suppress.lease
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

COMMENT ON FUNCTION engage.claim(integer, interval, text, timestamptz, bigint) IS
    'Claims up to batch_size due messages (the head of each customer''s queue per category) for a lease and returns each with its lease token; deliver each, then call engage.complete or engage.fail with that token. A message whose lease expired max_attempts times moves to its next fallback channel or dead. after_due_at and after_id (the due_at and id of the last message of a full batch) continue a scan in due order instead of starting from the front; scan from the front (NULL) after a batch that was not full and at least every second.';
COMMENT ON FUNCTION engage.extend_lease(bigint, bigint, interval) IS
    'Heartbeat: extends a claimed message''s lease by lease_for; false if the lease token is no longer current.';
COMMENT ON FUNCTION engage.complete_many(bigint[], bigint[], text[]) IS
    'Marks claimed messages sent (the i-th with the i-th lease token and provider id) and logs them in engage.messages in one statement; returns how many were completed (a stale token completes nothing).';
COMMENT ON FUNCTION engage.complete(bigint, bigint, text) IS
    'Marks a claimed message sent and logs it in engage.messages; false if the lease token is not current (taken over, or already completed).';
COMMENT ON FUNCTION engage.fail(bigint, bigint, text, boolean) IS
    'Records a failed attempt: retryable failures back off exponentially with jitter (never overflowing); permanent or exhausted ones move to the next fallback channel or to dead. Returns the new status, or NULL if the lease token is not current.';
COMMENT ON FUNCTION engage.defer(bigint, bigint, timestamptz, text) IS
    'Gives a claimed message back, due at until (and queued from then), without spending an attempt (used for quiet hours); false if the lease token is not current.';
COMMENT ON FUNCTION engage.suppress(bigint, bigint, text, text) IS
    'Records a claimed message as suppressed at send time (reason: consent, suppression or frequency) instead of sending it; false if the lease token is not current.';
COMMENT ON FUNCTION engage.redrive(bigint) IS 'Puts a dead message back in the queue, due now, with its attempts reset; false if it was not dead.';
COMMENT ON VIEW engage.dead_letters IS 'Messages that could not be delivered, with the last error; engage.redrive(id) retries one.';
