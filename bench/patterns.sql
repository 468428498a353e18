-- The pattern scenario of bench/run.sh (BENCH_PATTERNS=1): 20 pattern triggers loaded on top of
-- the 50 simple triggers of bench/setup.sql, over the same 20 event names. 8 counts (3 correlated
-- on sku), 5 sequences, 3 absences (unless, not_followed_by), 2 all_of, 2 any_of; each capped.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

SELECT engage.create_trigger('p_views_same_sku', '{"pattern": {"count": {"event": "product_viewed", "at_least": 3},
  "within": "7d", "same": ["sku"], "unless": [{"event": "order_completed"}]},
  "action": {"channel": "email", "template": "browse_abandon"}, "cap": {"max": 1, "per": "7d"}}');
SELECT engage.create_trigger('p_views_many', '{"pattern": {"count": {"event": "product_viewed", "at_least": 5}, "within": "1d"},
  "action": {"channel": "push", "template": "many_views"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_cart_same_sku', '{"pattern": {"count": {"event": "cart_updated", "at_least": 2}, "within": "2d", "same": ["sku"]},
  "action": {"channel": "push", "template": "cart_sku"}, "cap": {"max": 1, "per": "2d"}}');
SELECT engage.create_trigger('p_search_many', '{"pattern": {"count": {"event": "search_performed", "at_least": 4}, "within": "1h"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_failed_payments', '{"pattern": {"count": {"event": "payment_failed", "at_least": 2}, "within": "3d"},
  "action": {"channel": "email", "template": "payment_help"}, "cap": {"max": 1, "per": "3d"}}');
SELECT engage.create_trigger('p_first_order', '{"pattern": {"count": {"event": "order_completed", "at_most": 1}, "within": "90d"},
  "action": {"channel": "email", "template": "first_order"}, "cap": {"max": 1, "per": "90d"}}');
SELECT engage.create_trigger('p_refunds', '{"pattern": {"count": {"event": "order_refunded", "at_least": 2}, "within": "30d"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('p_wishlist_sku', '{"pattern": {"count": {"event": "wishlist_item_added", "at_least": 2}, "within": "14d", "same": ["sku"]},
  "action": {"channel": "push", "template": "wishlist"}, "cap": {"max": 1, "per": "7d"}}');

SELECT engage.create_trigger('p_view_cart_checkout', '{"pattern": {"sequence": [{"event": "product_viewed"}, {"event": "cart_updated"},
  {"event": "checkout_started"}], "within": "1d"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_signup_trial', '{"pattern": {"sequence": [{"event": "signed_up"}, {"event": "trial_started"}], "within": "7d"},
  "action": {"channel": "email", "template": "trial_tips"}, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('p_trial_ending_open', '{"pattern": {"sequence": [{"event": "trial_ending"}, {"event": "app_opened"}], "within": "2d"},
  "action": {"channel": "push", "template": "upgrade"}, "cap": {"max": 1, "per": "7d"}}');
SELECT engage.create_trigger('p_delivered_review', '{"pattern": {"sequence": [{"event": "order_delivered"}, {"event": "review_submitted"}],
  "within": "30d"}, "action": {"channel": "email", "template": "thanks_review"}, "cap": {"max": 1, "per": "30d"}}');
SELECT engage.create_trigger('p_click_coupon', '{"pattern": {"sequence": [{"event": "email_clicked"}, {"event": "coupon_applied"}], "within": "1d"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}');

SELECT engage.create_trigger('p_checkout_no_order', '{"pattern": {"sequence": [{"event": "cart_updated"}, {"event": "checkout_started"}],
  "within": "1d", "not_followed_by": {"event": "order_completed", "within": "2h"}},
  "action": {"channel": "email", "template": "checkout_abandon"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_reset_no_open', '{"pattern": {"count": {"event": "password_reset", "at_least": 1}, "within": "1d",
  "not_followed_by": {"event": "app_opened", "within": "1h"}},
  "action": {"channel": "email", "template": "reset_help"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_cancel_unless_renewed', '{"pattern": {"count": {"event": "subscription_cancelled", "at_least": 1}, "within": "30d",
  "unless": [{"event": "subscription_renewed"}]},
  "action": {"channel": "email", "template": "winback"}, "cap": {"max": 1, "per": "30d"}}');

SELECT engage.create_trigger('p_shipped_and_delivered', '{"pattern": {"all_of": [{"event": "order_shipped"}, {"event": "order_delivered"}], "within": "10d"},
  "action": {"channel": "sms", "template": "delivered"}, "cap": {"max": 1, "per": "10d"}}');
SELECT engage.create_trigger('p_big_cart_and_coupon', '{"pattern": {"all_of": [{"event": "cart_updated", "where": {"property": "value", "gt": 150}},
  {"event": "coupon_applied"}], "within": "1d"}, "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}');

SELECT engage.create_trigger('p_engaged', '{"pattern": {"any_of": [{"event": "email_clicked"}, {"event": "app_opened"}], "within": "1d"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "1d"}}');
SELECT engage.create_trigger('p_support_signal', '{"pattern": {"any_of": [{"event": "payment_failed"}, {"event": "order_refunded"}], "within": "7d"},
  "action": {"channel": "webhook"}, "cap": {"max": 1, "per": "7d"}}');
