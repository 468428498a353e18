-- A synthetic history for the metrics benchmark (bench/metrics.sh): :events events over 90 days
-- for about 500,000 customers, with the decisions, sent messages and responses a live system would
-- have stored. Written directly (session_replication_role = replica): this measures reading.
\set ON_ERROR_STOP on
SET session_replication_role = replica;
SET synchronous_commit = off;

SELECT engage.create_trigger('t' || i, jsonb_build_object(
         'event', CASE WHEN i <= 10 THEN 'cart_updated' ELSE 'signed_up' END,
         'priority', i, 'action', jsonb_build_object('channel', 'email', 'template', 't'),
         'holdout', CASE WHEN i <= 3 THEN 0.1 ELSE 0 END,
         'goal', jsonb_build_object('event', 'purchase', 'within', '7d', 'value', 'amount')))
  FROM generate_series(1, 20) i;

-- Events: 70% page views, 20% carts, 5% sign-ups, 5% purchases, in time order. A customer's
-- events come in runs of 7 (a session of a few seconds); the customer of a run is spread by a
-- multiplier modulo a prime, so each customer's runs differ in their mix, and a purchase often
-- follows a cart in the same run (inside the goal window of the message that cart triggered).
INSERT INTO engage.events (customer_id, name, properties, occurred_at, received_at)
SELECT 'c' || (i::int8 / 7 * 7919 % 499979),
       CASE WHEN i % 20 < 14 THEN 'page_viewed' WHEN i % 20 < 18 THEN 'cart_updated'
            WHEN i % 20 = 18 THEN 'signed_up' ELSE 'purchase' END,
       CASE WHEN i % 20 = 19 THEN jsonb_build_object('amount', 10 + i % 90) ELSE '{}'::jsonb END,
       now() - interval '90 days' + (i::float8 / :events) * interval '90 days',
       now() - interval '90 days' + (i::float8 / :events) * interval '90 days'
  FROM generate_series(1, :events) i;

-- Decisions: each cart or sign-up matches one trigger; 80% fired, 5% held out, 15% suppressed.
INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, decided_at, outcome, reason)
SELECT e.id, t.id, 1, e.customer_id, e.occurred_at,
       -- decided 0.1 ms to 100 ms after the event (log-uniform, spread by the event id)
       e.occurred_at + power(10, (e.id * 7919 % 1000) / 333.0) * interval '0.1 ms',
       -- (the name comes from id % 20, so outcome and trigger use id / 20: independent of it)
       CASE WHEN e.id / 20 % 20 < 16 THEN 'fired' WHEN e.id / 20 % 20 = 16 THEN 'held_out' ELSE 'suppressed' END,
       CASE WHEN e.id / 20 % 20 < 17 THEN NULL WHEN e.id / 20 % 20 = 17 THEN 'cap'
            WHEN e.id / 20 % 20 = 18 THEN 'conflict' ELSE 'frequency' END
  FROM engage.events e
  JOIN engage.triggers t ON t.name = 't' || CASE e.name WHEN 'cart_updated' THEN 1 + e.id / 20 % 10 ELSE 11 + e.id / 20 % 10 END
 WHERE e.name IN ('cart_updated', 'signed_up');

INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, template, due_at, scheduled_at, status,
                           sent_at, created_at, attempts)
SELECT d.event_id, d.trigger_id, d.customer_id, 'email', 't', d.occurred_at, d.occurred_at, 'sent',
       -- sent 10 ms to 100 s after its decision (log-uniform): latency percentiles see a spread
       d.decided_at + power(10, (d.event_id * 104729 % 1000) / 250.0) * interval '10 ms', d.decided_at, 1
  FROM engage.decisions d WHERE d.outcome = 'fired';
INSERT INTO engage.messages (outbox_id, event_id, trigger_id, customer_id, channel, template, queued_at, claimed_at,
                             sent_at, attempts, cost)
SELECT o.id, o.event_id, o.trigger_id, o.customer_id, o.channel, o.template, o.created_at, o.created_at, o.sent_at, 1, 0.0004
  FROM engage.outbox o;

-- Responses: a fifth of the messages are opened an hour later.
INSERT INTO engage.events (customer_id, name, properties, occurred_at)
SELECT m.customer_id, 'message_opened', jsonb_build_object('message_id', 'msg_' || m.outbox_id), m.sent_at + interval '1 hour'
  FROM engage.messages m WHERE m.outbox_id % 5 = 0;

VACUUM ANALYZE;
SELECT (SELECT count(*) FROM engage.events) AS events, (SELECT count(*) FROM engage.decisions) AS decisions,
       (SELECT count(*) FROM engage.messages) AS messages;
