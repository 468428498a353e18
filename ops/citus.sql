-- pg_engage on Citus: which tables are distributed by customer and which are reference tables.
-- Run once on the coordinator, after CREATE EXTENSION pg_engage on every node (README, "Scaling
-- out"). tests/tests/citus.rs checks these calls against the catalog: every table of the
-- extension is named once, and every key of a distributed table holds its distribution column.

-- Configuration, read by every node: replicated whole.
SELECT create_reference_table('engage.triggers');
SELECT create_reference_table('engage.tick_progress');
SELECT create_reference_table('engage.channels');
SELECT create_reference_table('engage.channel_secrets');
SELECT create_reference_table('engage.templates');
SELECT create_reference_table('engage.frequency_caps');
SELECT create_reference_table('engage.purchase_models');
SELECT create_reference_table('engage.locks');
-- Metrics running totals, latency histograms and volume counts: per trigger, not per customer,
-- written by engage.refresh_metrics on the coordinator (sql/metrics.sql). Not built or tested on
-- Citus (README, "Scaling out"): the counts' horizon reads the coordinator's pg_stat_activity, and
-- the insert path logs decision changes to engage.volume_changes.
SELECT create_reference_table('engage.totals_messages');
SELECT create_reference_table('engage.totals_touches');
SELECT create_reference_table('engage.totals_exposures');
SELECT create_reference_table('engage.latency_histograms');
SELECT create_reference_table('engage.volume_counts');
SELECT create_reference_table('engage.volume_counted');
SELECT create_reference_table('engage.volume_changes');

-- A customer's rows, co-located by customer: the insert path, the deliverer's per-customer
-- checks and the rollups of one customer stay on one node.
SELECT create_distributed_table('engage.events', 'customer_id');
SELECT create_distributed_table('engage.profiles', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.decisions', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.outbox', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.escalations', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.messages', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.suppressions', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.metrics_dirty', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.rollup_messages', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.rollup_touches', 'customer_id', colocate_with => 'engage.events');
SELECT create_distributed_table('engage.rollup_exposures', 'customer_id', colocate_with => 'engage.events');
-- An alias lives with the anonymous id it maps (looked up by that id).
SELECT create_distributed_table('engage.aliases', 'previous_id', colocate_with => 'engage.events');
