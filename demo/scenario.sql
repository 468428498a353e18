-- The demo scenario: a small shop's first day with pg_engage.
\set ON_ERROR_STOP on
\pset footer off

CREATE EXTENSION IF NOT EXISTS pg_engage;

-- Triggers a marketer would define first.
SELECT engage.create_trigger('welcome', '{
  "description": "Greet every new customer",
  "event": "signed_up",
  "action": {"channel": "email", "template": "welcome"},
  "priority": 5,
  "goal": {"event": "order_completed", "within": "7d", "value": "amount"}
}');
SELECT engage.create_trigger('cart_high_value', '{
  "description": "Carts over 100 get a reminder, at most once a day",
  "event": "cart_updated",
  "where": {"all": [{"property": "cart.value", "gt": 100},
                    {"not": {"property": "coupon", "exists": true}}]},
  "action": {"channel": "email", "template": "cart_reminder", "payload": {"coupon": "SAVE10"}},
  "priority": 10,
  "cap": {"max": 1, "per": "24h"},
  "holdout": 0.2,
  "goal": {"event": "order_completed", "within": "2d", "value": "amount"}
}');
SELECT engage.create_trigger('post_purchase', '{
  "description": "Thank buyers and ask for a review",
  "event": "order_completed",
  "action": {"channel": "email", "template": "thank_you", "payload": {"ask_review": true}},
  "priority": 20,
  "cap": {"max": 3, "per": "7d"}
}');
SELECT engage.create_trigger('vip_order_sms', '{
  "description": "Gold customers get a personal SMS instead",
  "event": "order_completed",
  "where": {"profile": "tier", "eq": "gold"},
  "action": {"channel": "sms", "template": "vip_thanks"},
  "priority": 30
}');

-- The demo day is the last twelve hours, so every message is already due.
SELECT date_trunc('hour', now()) - interval '12 hours' AS t0 \gset

-- 200 customers; every fifth is gold tier (and gave a phone number).
SELECT count(*) AS profiles FROM (
  SELECT engage.identify('c' || i, jsonb_build_object(
           'email', 'customer' || i || '@example.com',
           'first_name', (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara'])[1 + i % 5],
           'phone', CASE WHEN i % 5 = 0 THEN '+1555' || lpad(i::text, 7, '0') END,
           'tier', CASE WHEN i % 5 = 0 THEN 'gold' ELSE 'standard' END,
           'country', (ARRAY['DE', 'FR', 'US', 'GB'])[1 + i % 4]))
    FROM generate_series(1, 200) AS i) AS identified;

-- A day of events in time order: sign-ups, browsing, carts (some customers update theirs
-- several times), and orders. One multi-row INSERT: one evaluation for the whole statement.
INSERT INTO engage.events (customer_id, name, properties, occurred_at)
SELECT customer_id, name, properties, occurred_at
  FROM (
    SELECT 'c' || i AS customer_id, 'signed_up' AS name, '{"source": "ads"}'::jsonb AS properties,
           :'t0'::timestamptz + i * interval '2 minutes' AS occurred_at
      FROM generate_series(1, 200) AS i
    UNION ALL
    SELECT 'c' || i, 'product_viewed', jsonb_build_object('sku', 'sku-' || (i * 7 + v) % 40),
           :'t0'::timestamptz + interval '1 hour' + i * interval '2 minutes' + v * interval '3 minutes'
      FROM generate_series(1, 200) AS i, generate_series(1, 3) AS v
    UNION ALL
    SELECT 'c' || i, 'cart_updated',
           jsonb_build_object('cart', jsonb_build_object('value', (i * 37 + u * 53) % 250, 'items', 1 + u))
             || CASE WHEN i % 10 = 3 THEN '{"coupon": "WELCOME5"}'::jsonb ELSE '{}'::jsonb END,
           :'t0'::timestamptz + interval '2 hours' + i * interval '2 minutes' + u * interval '20 minutes'
      FROM generate_series(1, 200) AS i, generate_series(1, 1 + i % 3) AS u
    UNION ALL
    SELECT 'c' || i, 'order_completed', jsonb_build_object('order_id', 'o' || i, 'amount', 20 + i % 180),
           :'t0'::timestamptz + interval '3 hours' + i * interval '2 minutes'
      FROM generate_series(1, 200) AS i WHERE i % 3 = 0
  ) AS stream
 ORDER BY occurred_at;

-- Apps can also send events one by one, with an idempotency key; a retried send is skipped.
SELECT engage.track('c7', 'order_completed', '{"order_id": "o7", "amount": 99}', :'t0'::timestamptz + interval '10 hours', 'order-o7') AS first_send,
       engage.track('c7', 'order_completed', '{"order_id": "o7", "amount": 99}', :'t0'::timestamptz + interval '10 hours', 'order-o7') AS retried_send;

\echo
\echo '== Events stored'
SELECT name, count(*) AS events FROM engage.events GROUP BY name ORDER BY name;

\echo '== What was decided, per trigger'
SELECT t.name AS trigger, t.priority,
       count(*) FILTER (WHERE d.outcome = 'fired') AS fired,
       count(*) FILTER (WHERE d.reason = 'cap') AS suppressed_cap,
       count(*) FILTER (WHERE d.reason = 'conflict') AS suppressed_conflict
  FROM engage.triggers t LEFT JOIN engage.decisions d ON d.trigger_id = t.id
 GROUP BY t.name, t.priority ORDER BY t.priority DESC;

\echo '== Why: the decisions of customer c5 (gold tier)'
SELECT e.occurred_at, e.name AS event, t.name AS trigger, d.outcome, d.reason
  FROM engage.decisions d JOIN engage.events e ON e.id = d.event_id JOIN engage.triggers t ON t.id = d.trigger_id
 WHERE d.customer_id = 'c5' ORDER BY e.occurred_at, t.priority DESC;

\echo '== What is queued, per channel and template'
SELECT channel, template, count(*) AS messages, min(due_at) AS first_due, max(due_at) AS last_due
  FROM engage.outbox WHERE status = 'pending' GROUP BY channel, template ORDER BY messages DESC;

\echo '== A few queued messages'
SELECT o.id, o.customer_id, o.channel, o.template, o.payload, o.due_at
  FROM engage.outbox o ORDER BY o.id LIMIT 5;
