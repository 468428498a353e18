-- Demo delivery setup: every channel points at the local sink (run with -v http_base=... -v smtp_port=...).
\set ON_ERROR_STOP on
INSERT INTO engage.channels (kind, config, cost_per_message, rate_limit_per_second) VALUES
  ('email',    jsonb_build_object('host', '127.0.0.1', 'port', :smtp_port, 'tls', 'none', 'from', 'Shop <hello@shop.example>',
                                  'unsubscribe_url', 'https://shop.example/unsubscribe?m={message_id}'), 0.0004, NULL),
  ('sms',      jsonb_build_object('base_url', :'http_base', 'account_sid', 'ACdemo', 'from', '+15550000000'), 0.0079, 50),
  ('whatsapp', jsonb_build_object('base_url', :'http_base', 'phone_number_id', '1000'), 0.0050, NULL),
  ('push',     jsonb_build_object('base_url', :'http_base', 'project_id', 'demo'), 0, NULL),
  ('webhook',  jsonb_build_object('url', :'http_base' || '/hooks/engage'), 0, NULL);
INSERT INTO engage.channel_secrets (kind, secrets) VALUES
  ('sms',      '{"auth_token": "demo-token"}'),
  ('whatsapp', '{"access_token": "demo-token"}'),
  ('push',     '{"access_token": "demo-token"}'),
  ('webhook',  '{"signing_secret": "whsec_ZGVtby1zaWduaW5nLWtleS0xMjM0NTY3OA=="}');

INSERT INTO engage.templates (name, channel, subject, body, html) VALUES
  ('welcome', 'email', 'Welcome, {{ profile.first_name | default: "friend" }}!',
   'Thanks for signing up via {{ event.properties.source }}.',
   '<p>Thanks for signing up via <b>{{ event.properties.source }}</b>.</p>'),
  ('cart_reminder', 'email', 'Your cart of {{ event.properties.cart.value }} is waiting',
   'Complete your order with coupon {{ payload.coupon }}.', NULL),
  ('thank_you', 'email', 'Thank you for order {{ event.properties.order_id }}',
   'We received {{ event.properties.amount }}. {% if payload.ask_review %}Tell us how we did!{% endif %}', NULL),
  ('vip_thanks', 'sms', NULL,
   'Thank you {{ profile.first_name | default: "" }} for order {{ event.properties.order_id }} - your VIP team', NULL);
