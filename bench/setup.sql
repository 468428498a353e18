-- Benchmark database setup for bench/run.sh.
--
-- (a) bench.bare_events: a table shaped exactly like engage.events (same columns, defaults,
--     indexes and constraints, via LIKE ... INCLUDING ALL) but with no trigger on it.
-- (b) engage.events with 50 enabled triggers over 20 event names: every trigger has a cap,
--     17 (a third) have property predicates, channels and priorities are mixed.
--
-- The pgbench scripts insert properties shaped like {"value": 0..200, "sku": "sku-1".."sku-5000"},
-- so the predicates below match a realistic share of events (from about 0.1% to about 50%).

\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE EXTENSION pg_engage;

CREATE SCHEMA bench;
CREATE TABLE bench.bare_events (LIKE engage.events INCLUDING ALL);

-- product_viewed (3)
SELECT engage.create_trigger('browse_abandon_push', '{
  "event": "product_viewed",
  "action": {"channel": "push", "template": "browse_reminder"},
  "priority": 1, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('high_value_view_email', '{
  "event": "product_viewed",
  "where": {"property": "value", "gt": 150},
  "action": {"channel": "email", "template": "premium_picks"},
  "priority": 5, "cap": {"max": 1, "per": "24h"}}');
SELECT engage.create_trigger('product_view_webhook', '{
  "event": "product_viewed",
  "action": {"channel": "webhook", "payload": {"sink": "analytics"}},
  "priority": 0, "cap": {"max": 10, "per": "1h"}}');

-- cart_updated (3)
SELECT engage.create_trigger('cart_high_value', '{
  "event": "cart_updated",
  "where": {"property": "value", "gt": 100},
  "action": {"channel": "email", "template": "cart_reminder", "payload": {"coupon": "SAVE10"}},
  "priority": 10, "cap": {"max": 1, "per": "24h"}}');
SELECT engage.create_trigger('cart_update_push', '{
  "event": "cart_updated",
  "action": {"channel": "push", "template": "cart_saved"},
  "priority": 2, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('cart_sku_promo_sms', '{
  "event": "cart_updated",
  "where": {"property": "sku", "in": ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5"]},
  "action": {"channel": "sms", "template": "sku_promo"},
  "priority": 8, "cap": {"max": 1, "per": "7d"}}');

-- checkout_started (3)
SELECT engage.create_trigger('checkout_nudge_email', '{
  "event": "checkout_started",
  "action": {"channel": "email", "template": "checkout_nudge"},
  "priority": 3, "cap": {"max": 2, "per": "6h"}}');
SELECT engage.create_trigger('checkout_big_ticket_whatsapp', '{
  "event": "checkout_started",
  "where": {"all": [{"property": "value", "gte": 120}, {"property": "sku", "exists": true}]},
  "action": {"channel": "whatsapp", "template": "checkout_concierge"},
  "priority": 9, "cap": {"max": 1, "per": "24h"}}');
SELECT engage.create_trigger('checkout_webhook', '{
  "event": "checkout_started",
  "action": {"channel": "webhook", "payload": {"sink": "crm"}},
  "priority": 0, "cap": {"max": 20, "per": "1h"}}');

-- order_completed (3)
SELECT engage.create_trigger('order_confirmation_email', '{
  "event": "order_completed",
  "action": {"channel": "email", "template": "order_confirmation"},
  "priority": 10, "cap": {"max": 5, "per": "1h"}}');
SELECT engage.create_trigger('order_receipt_sms', '{
  "event": "order_completed",
  "action": {"channel": "sms", "template": "order_receipt"},
  "priority": 4, "cap": {"max": 5, "per": "1h"}}');
SELECT engage.create_trigger('vip_order_webhook', '{
  "event": "order_completed",
  "where": {"property": "value", "gte": 180},
  "action": {"channel": "webhook", "payload": {"team": "vip"}},
  "priority": 20, "cap": {"max": 3, "per": "24h"}}');

-- order_shipped (2)
SELECT engage.create_trigger('shipping_update_push', '{
  "event": "order_shipped",
  "action": {"channel": "push", "template": "shipping_update"},
  "priority": 5, "cap": {"max": 3, "per": "1d"}}');
SELECT engage.create_trigger('shipping_update_sms', '{
  "event": "order_shipped",
  "action": {"channel": "sms", "template": "shipping_update"},
  "priority": 3, "cap": {"max": 2, "per": "1d"}}');

-- order_delivered (2)
SELECT engage.create_trigger('delivery_review_request', '{
  "event": "order_delivered",
  "action": {"channel": "email", "template": "review_request"},
  "priority": 2, "cap": {"max": 1, "per": "7d"}}');
SELECT engage.create_trigger('delivery_gift_whatsapp', '{
  "event": "order_delivered",
  "where": {"property": "sku", "contains": "sku-7"},
  "action": {"channel": "whatsapp", "template": "gift_followup"},
  "priority": 6, "cap": {"max": 1, "per": "30d"}}');

-- order_refunded (2)
SELECT engage.create_trigger('refund_email', '{
  "event": "order_refunded",
  "action": {"channel": "email", "template": "refund_processed"},
  "priority": 5, "cap": {"max": 3, "per": "24h"}}');
SELECT engage.create_trigger('refund_large_webhook', '{
  "event": "order_refunded",
  "where": {"property": "value", "gt": 150},
  "action": {"channel": "webhook", "payload": {"team": "finance"}},
  "priority": 7, "cap": {"max": 10, "per": "1h"}}');

-- payment_failed (3)
SELECT engage.create_trigger('payment_retry_email', '{
  "event": "payment_failed",
  "action": {"channel": "email", "template": "payment_retry"},
  "priority": 10, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('payment_retry_sms', '{
  "event": "payment_failed",
  "where": {"property": "value", "gt": 50},
  "action": {"channel": "sms", "template": "payment_retry"},
  "priority": 12, "cap": {"max": 2, "per": "24h"}}');
SELECT engage.create_trigger('payment_failed_webhook', '{
  "event": "payment_failed",
  "action": {"channel": "webhook", "payload": {"team": "billing"}},
  "priority": 1, "cap": {"max": 10, "per": "1h"}}');

-- signed_up (3)
SELECT engage.create_trigger('welcome_email', '{
  "event": "signed_up",
  "action": {"channel": "email", "template": "welcome"},
  "priority": 10, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('welcome_push', '{
  "event": "signed_up",
  "action": {"channel": "push", "template": "welcome"},
  "priority": 5, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('signup_promo_sms', '{
  "event": "signed_up",
  "where": {"property": "value", "gte": 100},
  "action": {"channel": "sms", "template": "signup_promo"},
  "priority": 3, "cap": {"max": 1, "per": "7d"}}');

-- trial_started (2)
SELECT engage.create_trigger('trial_tips_email', '{
  "event": "trial_started",
  "action": {"channel": "email", "template": "trial_tips"},
  "priority": 2, "cap": {"max": 3, "per": "7d"}}');
SELECT engage.create_trigger('trial_onboarding_push', '{
  "event": "trial_started",
  "action": {"channel": "push", "template": "trial_onboarding"},
  "priority": 1, "cap": {"max": 3, "per": "1d"}}');

-- trial_ending (3)
SELECT engage.create_trigger('trial_ending_email', '{
  "event": "trial_ending",
  "action": {"channel": "email", "template": "trial_ending"},
  "priority": 8, "cap": {"max": 1, "per": "3d"}}');
SELECT engage.create_trigger('trial_ending_sms', '{
  "event": "trial_ending",
  "where": {"property": "value", "gt": 100},
  "action": {"channel": "sms", "template": "trial_ending"},
  "priority": 9, "cap": {"max": 1, "per": "3d"}}');
SELECT engage.create_trigger('trial_ending_webhook', '{
  "event": "trial_ending",
  "action": {"channel": "webhook", "payload": {"team": "sales"}},
  "priority": 0, "cap": {"max": 5, "per": "1d"}}');

-- subscription_renewed (2)
SELECT engage.create_trigger('renewal_receipt_email', '{
  "event": "subscription_renewed",
  "action": {"channel": "email", "template": "renewal_receipt"},
  "priority": 5, "cap": {"max": 2, "per": "1d"}}');
SELECT engage.create_trigger('renewal_thanks_push', '{
  "event": "subscription_renewed",
  "action": {"channel": "push", "template": "renewal_thanks"},
  "priority": 1, "cap": {"max": 1, "per": "7d"}}');

-- subscription_cancelled (3)
SELECT engage.create_trigger('winback_email', '{
  "event": "subscription_cancelled",
  "action": {"channel": "email", "template": "winback"},
  "priority": 6, "cap": {"max": 1, "per": "14d"}}');
SELECT engage.create_trigger('winback_high_value_whatsapp', '{
  "event": "subscription_cancelled",
  "where": {"property": "value", "gte": 150},
  "action": {"channel": "whatsapp", "template": "winback_offer"},
  "priority": 9, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('churn_webhook', '{
  "event": "subscription_cancelled",
  "action": {"channel": "webhook", "payload": {"team": "success"}},
  "priority": 0, "cap": {"max": 10, "per": "1h"}}');

-- search_performed (2)
SELECT engage.create_trigger('search_no_result_push', '{
  "event": "search_performed",
  "where": {"property": "value", "lt": 10},
  "action": {"channel": "push", "template": "search_help"},
  "priority": 2, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('search_digest_email', '{
  "event": "search_performed",
  "action": {"channel": "email", "template": "search_digest"},
  "priority": 1, "cap": {"max": 1, "per": "24h"}}');

-- wishlist_item_added (2)
SELECT engage.create_trigger('wishlist_price_drop_email', '{
  "event": "wishlist_item_added",
  "action": {"channel": "email", "template": "price_watch"},
  "priority": 3, "cap": {"max": 2, "per": "24h"}}');
SELECT engage.create_trigger('wishlist_sku_push', '{
  "event": "wishlist_item_added",
  "where": {"property": "sku", "in": ["sku-10", "sku-20", "sku-30", "sku-40", "sku-50"]},
  "action": {"channel": "push", "template": "wishlist_hot_item"},
  "priority": 4, "cap": {"max": 3, "per": "1h"}}');

-- review_submitted (2)
SELECT engage.create_trigger('review_thanks_email', '{
  "event": "review_submitted",
  "action": {"channel": "email", "template": "review_thanks"},
  "priority": 2, "cap": {"max": 3, "per": "24h"}}');
SELECT engage.create_trigger('review_low_score_webhook', '{
  "event": "review_submitted",
  "where": {"property": "value", "lt": 40},
  "action": {"channel": "webhook", "payload": {"team": "support"}},
  "priority": 8, "cap": {"max": 10, "per": "1h"}}');

-- coupon_applied (3)
SELECT engage.create_trigger('coupon_confirm_push', '{
  "event": "coupon_applied",
  "action": {"channel": "push", "template": "coupon_confirmed"},
  "priority": 1, "cap": {"max": 5, "per": "1h"}}');
SELECT engage.create_trigger('coupon_big_basket_email', '{
  "event": "coupon_applied",
  "where": {"all": [{"property": "value", "gt": 80}, {"not": {"property": "value", "gte": 200}}]},
  "action": {"channel": "email", "template": "coupon_upsell"},
  "priority": 4, "cap": {"max": 1, "per": "24h"}}');
SELECT engage.create_trigger('coupon_abuse_webhook', '{
  "event": "coupon_applied",
  "where": {"property": "sku", "contains": "sku-99"},
  "action": {"channel": "webhook", "payload": {"team": "fraud"}},
  "priority": 15, "cap": {"max": 3, "per": "1h"}}');

-- app_opened (2)
SELECT engage.create_trigger('app_open_push', '{
  "event": "app_opened",
  "action": {"channel": "push", "template": "daily_deals"},
  "priority": 1, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('app_reengage_email', '{
  "event": "app_opened",
  "action": {"channel": "email", "template": "reengage"},
  "priority": 0, "cap": {"max": 1, "per": "7d"}}');

-- email_clicked (2)
SELECT engage.create_trigger('email_click_webhook', '{
  "event": "email_clicked",
  "action": {"channel": "webhook", "payload": {"sink": "attribution"}},
  "priority": 1, "cap": {"max": 20, "per": "1h"}}');
SELECT engage.create_trigger('email_click_followup_sms', '{
  "event": "email_clicked",
  "action": {"channel": "sms", "template": "click_followup"},
  "priority": 2, "cap": {"max": 1, "per": "24h"}}');

-- password_reset (3)
SELECT engage.create_trigger('password_reset_email', '{
  "event": "password_reset",
  "action": {"channel": "email", "template": "password_reset"},
  "priority": 20, "cap": {"max": 5, "per": "1h"}}');
SELECT engage.create_trigger('password_reset_sms', '{
  "event": "password_reset",
  "action": {"channel": "sms", "template": "password_reset_code"},
  "priority": 10, "cap": {"max": 3, "per": "1h"}}');
SELECT engage.create_trigger('password_reset_security_webhook', '{
  "event": "password_reset",
  "where": {"any": [{"property": "value", "gt": 190}, {"property": "sku", "eq": "sku-1"}]},
  "action": {"channel": "webhook", "payload": {"team": "security"}},
  "priority": 5, "cap": {"max": 10, "per": "1h"}}');

ANALYZE;
