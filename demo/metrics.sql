-- After delivery: the customers respond, then the analyst views of sql/metrics.sql.
\set ON_ERROR_STOP on
\pset footer off

-- Responses come back through the provider webhooks (here in the generic shape): every third
-- message is opened, every sixth clicked.
SELECT engage.ingest_provider_event('generic', jsonb_agg(jsonb_build_object(
           'message_id', 'msg_' || m.outbox_id, 'event', kind, 'occurred_at', m.sent_at + interval '20 minutes')))
       AS response_events
  FROM engage.messages m,
       LATERAL (VALUES ('opened'), ('clicked')) AS k(kind)
 WHERE m.outbox_id % CASE kind WHEN 'opened' THEN 3 ELSE 6 END = 0;

-- Orders in the hours after the reminders: 40% of the customers who were sent the cart reminder
-- buy, and 20% of the control group who were not (a pseudo-random but repeatable draw).
INSERT INTO engage.events (customer_id, name, properties, occurred_at)
SELECT d.customer_id, 'order_completed', jsonb_build_object('order_id', 'r-' || d.customer_id, 'amount', 80),
       now() + interval '1 hour'
  FROM (SELECT DISTINCT customer_id, outcome FROM engage.decisions d JOIN engage.triggers t ON t.id = d.trigger_id
         WHERE t.name = 'cart_high_value' AND outcome IN ('fired', 'held_out')) d
 WHERE abs(hashtext(d.customer_id)) % 10 < CASE d.outcome WHEN 'fired' THEN 4 ELSE 2 END;

\echo '== engage.trigger_fire_rate'
SELECT trigger, matched, fired, held_out, suppressed, fire_rate, suppression_mix FROM engage.trigger_fire_rate ORDER BY trigger;

\echo '== engage.trigger_response_rates'
SELECT trigger, channel, sent, opened, clicked, open_rate, click_rate FROM engage.trigger_response_rates ORDER BY trigger, channel;

\echo '== engage.trigger_revenue (last touch)'
SELECT trigger, conversions, revenue FROM engage.trigger_revenue WHERE model = 'last_touch' ORDER BY trigger;

\echo '== engage.holdout_uplift'
SELECT trigger, treated, treated_rate, control, control_rate, round(uplift::numeric, 3) AS uplift,
       round(ci_low::numeric, 3) AS ci_low, round(ci_high::numeric, 3) AS ci_high, significant
  FROM engage.holdout_uplift WHERE control > 0;

\echo '== engage.trigger_roi'
SELECT trigger, messages, cost, attributed_revenue, net, round(incremental_revenue::numeric, 2) AS incremental_revenue
  FROM engage.trigger_roi ORDER BY trigger;

\echo '== engage.trigger_latency (seconds: p50, p95, p99)'
\echo '   Both figures count from the events'' own times, and the demo loads a back-dated day (the last'
\echo '   twelve hours) in one go: its messages were due hours before they were loaded, so both read in'
\echo '   hours. With live traffic, occurred_to_decided is the app''s INSERT itself (milliseconds) and'
\echo '   due_to_sent the deliverer''s lag (BENCHMARKS.md, Delivery: a p99 of about 10 ms).'
SELECT trigger, channel, messages,
       (SELECT array_agg(round(x::numeric, 3)) FROM unnest(occurred_to_decided_s) x) AS occurred_to_decided,
       (SELECT array_agg(round(x::numeric, 3)) FROM unnest(due_to_sent_s) x) AS due_to_sent
  FROM engage.trigger_latency ORDER BY trigger, channel;

\echo '== engage.trigger_volume: the busiest hours, and any anomaly'
\echo '   Hours are the events'' own hours (event time), spread over the demo day; anomaly compares an hour'
\echo '   with the same hour of the 7 days before, which the demo does not have, so nothing is flagged.'
SELECT trigger, bucket_start, evaluated, fired, sent, anomaly
  FROM engage.trigger_volume WHERE evaluated > 0 ORDER BY evaluated DESC, trigger LIMIT 5;

\echo '== Dead letters'
SELECT id, customer_id, channel, template, attempts, last_error FROM engage.dead_letters ORDER BY id LIMIT 5;

\echo '== The deliverer and the queue (engage.operations, README "Operating")'
SELECT pending, pending_due, claimed, expired_leases, dead_last_hour, deliverer_running, sent_since_start,
       failed_since_start, scheduler_running, date_trunc('second', tick_lag) AS tick_lag
  FROM engage.operations;
