-- pgbench script, single-row workload, (b) engage.events with the 50 benchmark triggers.
-- One event per transaction: a random customer among 100,000, a random name among the 20 event
-- names of bench/setup.sql, and small properties {"value": 0..200, "sku": "sku-1".."sku-5000"}.
-- single_row_bare.sql and single_row_engage.sql differ only in the target table.
\set cust random(1, 100000)
\set ev random(1, 20)
\set value random(0, 200)
\set sku random(1, 5000)
INSERT INTO engage.events (customer_id, name, properties)
VALUES ('c' || :cust::text,
        (ARRAY['product_viewed', 'cart_updated', 'checkout_started', 'order_completed', 'order_shipped',
               'order_delivered', 'order_refunded', 'payment_failed', 'signed_up', 'trial_started',
               'trial_ending', 'subscription_renewed', 'subscription_cancelled', 'search_performed',
               'wishlist_item_added', 'review_submitted', 'coupon_applied', 'app_opened',
               'email_clicked', 'password_reset']::text[])[:ev::int],
        jsonb_build_object('value', :value::int, 'sku', 'sku-' || :sku::text));
