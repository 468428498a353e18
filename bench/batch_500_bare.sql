-- pgbench script, batch workload, (a) bare: no trigger.
-- 500 events per transaction in one multi-row INSERT, with the same distributions as the
-- single-row scripts: customer among 100,000, name among 20, {"value": 0..200, "sku": "sku-1".."sku-5000"}.
-- batch_500_bare.sql and batch_500_engage.sql differ only in the target table.
INSERT INTO bench.bare_events (customer_id, name, properties)
SELECT 'c' || (1 + floor(random() * 100000))::int,
       (ARRAY['product_viewed', 'cart_updated', 'checkout_started', 'order_completed', 'order_shipped',
              'order_delivered', 'order_refunded', 'payment_failed', 'signed_up', 'trial_started',
              'trial_ending', 'subscription_renewed', 'subscription_cancelled', 'search_performed',
              'wishlist_item_added', 'review_submitted', 'coupon_applied', 'app_opened',
              'email_clicked', 'password_reset']::text[])[1 + floor(random() * 20)::int],
       jsonb_build_object('value', floor(random() * 201)::int,
                          'sku', 'sku-' || (1 + floor(random() * 5000))::int)
FROM generate_series(1, 500);
