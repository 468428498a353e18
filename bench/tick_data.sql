-- Data for the scheduler benchmark (bench/tick.sh): :profiles customers with a time zone, a
-- birthday and a renewal date, and about three purchases each over the last year, written in
-- time order (as a live system writes them) straight into the tables (session_replication_role
-- = replica: this measures the tick, not the insert path that stored the history).
\set ON_ERROR_STOP on
SET session_replication_role = replica;
SET synchronous_commit = off;

INSERT INTO engage.profiles (customer_id, timezone, attributes)
SELECT 'p' || n,
       (ARRAY['Europe/Paris', 'America/New_York', 'Asia/Tokyo', 'America/Los_Angeles', 'Europe/London',
              'Australia/Sydney'])[1 + n % 6],
       jsonb_build_object('birthday', (date '1950-01-01' + (n::int8 * 7919 % 20000)::integer)::text,
                          'renews_on', (current_date + (n::int8 * 31 % 60)::integer)::text)
  FROM generate_series(1, :profiles) n;

INSERT INTO engage.events (customer_id, name, properties, occurred_at)
SELECT 'p' || (1 + (i::int8 * 104729) % :profiles), 'purchase', jsonb_build_object('amount', 5 + i % 200),
       now() - interval '365 days' + (i::float8 / (3 * :profiles)) * interval '365 days'
  FROM generate_series(1, 3 * :profiles) i;

-- The paper's CDNOW parameters stand in for a fitted model (fitting is measured elsewhere).
INSERT INTO engage.purchase_models (event, calibration_end, unit, customers, repeat_buyers, r, alpha, a, b,
                                    log_likelihood, iterations, converged)
VALUES ('purchase', current_date, '7 days', :profiles, 0, 0.243, 4.414, 0.793, 2.426, 0, 0, true);

SET session_replication_role = origin;
SELECT engage.create_trigger('winback_' || d, jsonb_build_object(
         'inactive', jsonb_build_object('event', 'purchase', 'for', d || 'd'),
         'action', jsonb_build_object('channel', 'webhook')))
  FROM unnest(ARRAY[30, 60, 90]) d;
SELECT engage.create_trigger('birthday', '{"anniversary": {"date": "birthday", "at": "09:00"}, "action": {"channel": "webhook"}}');
SELECT engage.create_trigger('renewal', '{"date": {"date": "renews_on", "before": "7d", "at": "10:00"}, "action": {"channel": "webhook"}}');
SELECT engage.create_trigger('slipping', '{"predicted": {"p_alive_below": 0.2, "min_purchases": 3}, "action": {"channel": "webhook"}}');
VACUUM ANALYZE;
SELECT (SELECT count(*) FROM engage.profiles) AS profiles, (SELECT count(*) FROM engage.events) AS events;
