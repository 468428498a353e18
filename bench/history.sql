-- History for bench/history.sh: events :first to :last (numbers, not ids) of a 30-day history
-- of 100,000 customers, with the decisions and the (sent) outbox rows the insert path would have
-- written, straight into the tables (session_replication_role = replica: this is loading, not
-- measured). The same events go into bench.bare_events, so both sides run at equal table size.
--
-- Customers are skewed: customer c<k> with k = 1 + floor(100000 * u^2) for a uniform u, so c1
-- gets about 0.3% of all events (thousands a week at 5 million events) and c100000 almost none.
-- Names, properties and the customer space are those of the pgbench scripts.
-- Decisions: one per (event, trigger on its name), ignoring the triggers' property predicates
-- (an upper bound on what the triggers would have stored): one in ten fired (with its message,
-- sent a second later), the rest suppressed by the cap, as a capped trigger's steady state is.
\set ON_ERROR_STOP on
SET session_replication_role = replica;
SET synchronous_commit = off;

CREATE TEMP TABLE loaded AS
SELECT 'c' || (1 + floor(100000 * power(random(), 2)))::int AS customer_id,
       (ARRAY['product_viewed', 'cart_updated', 'checkout_started', 'order_completed', 'order_shipped',
              'order_delivered', 'order_refunded', 'payment_failed', 'signed_up', 'trial_started',
              'trial_ending', 'subscription_renewed', 'subscription_cancelled', 'search_performed',
              'wishlist_item_added', 'review_submitted', 'coupon_applied', 'app_opened',
              'email_clicked', 'password_reset']::text[])[1 + floor(random() * 20)::int] AS name,
       jsonb_build_object('value', floor(random() * 201)::int, 'sku', 'sku-' || (1 + floor(random() * 5000))::int) AS properties,
       now() - interval '30 days' + (i - :first)::float8 / (:last - :first + 1) * interval '30 days' AS occurred_at
  FROM generate_series(:first, :last) i;

BEGIN;
INSERT INTO bench.bare_events (customer_id, name, properties, occurred_at, received_at)
SELECT customer_id, name, properties, occurred_at, occurred_at FROM loaded;

WITH events AS (
    INSERT INTO engage.events (customer_id, name, properties, occurred_at, received_at)
    SELECT customer_id, name, properties, occurred_at, occurred_at FROM loaded
    RETURNING id, customer_id, name, occurred_at
), decided AS (
    INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, decided_at, outcome, reason)
    SELECT e.id, t.id, t.version, e.customer_id, e.occurred_at, e.occurred_at,
           CASE WHEN (e.id + t.id) % 10 = 0 THEN 'fired' ELSE 'suppressed' END,
           CASE WHEN (e.id + t.id) % 10 = 0 THEN NULL ELSE 'cap' END
      FROM events e JOIN engage.triggers t ON t.definition ->> 'event' = e.name
    RETURNING event_id, trigger_id, customer_id, occurred_at, outcome
)
INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, due_at, scheduled_at, status, sent_at,
                           created_at, attempts, lease)
SELECT d.event_id, d.trigger_id, d.customer_id, 'webhook', d.occurred_at, d.occurred_at, 'sent',
       d.occurred_at + interval '1 second', d.occurred_at, 1, 1
  FROM decided d WHERE d.outcome = 'fired';
COMMIT;
DROP TABLE loaded;
