-- For the on-call engineer: the state of the queue and of the workers, in two views that answer
-- in milliseconds however long the history (they read the open messages by the partial indexes
-- of the outbox, dead ones by outbox_dead, and one row per scheduled trigger). README "Operating";
-- ops/postgres_exporter.yml exports them to Prometheus.

-- Dead messages by when they died: the start of their last attempt (claimed_at). Rare rows, so
-- the index costs nothing on the insert path.
CREATE INDEX outbox_dead ON engage.outbox (claimed_at) WHERE status = 'dead';

CREATE VIEW engage.queue_health AS
SELECT o.channel,
       o.status::text AS status,
       count(*) AS messages,
       count(*) FILTER (WHERE o.status = 'pending' AND o.due_at <= now()) AS due,
       now() - min(o.due_at) FILTER (WHERE o.status = 'pending' AND o.due_at <= now()) AS oldest_due_age,
       count(*) FILTER (WHERE o.status = 'claimed' AND o.lease_until < now()) AS expired_leases
  FROM engage.outbox o
 WHERE o.status IN ('pending', 'claimed')
 GROUP BY o.channel, o.status;
COMMENT ON VIEW engage.queue_health IS
    'Open messages by channel and status: how many, how many are due, how long the oldest due pending one has waited, and claimed ones whose lease expired (their deliverer died or hangs: they are claimed again).';

CREATE VIEW engage.operations AS
SELECT (SELECT count(*) FROM engage.outbox o WHERE o.status = 'pending') AS pending,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'pending' AND o.due_at <= now()) AS pending_due,
       (SELECT now() - min(o.due_at) FROM engage.outbox o WHERE o.status = 'pending' AND o.due_at <= now())
           AS oldest_due_age,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'claimed') AS claimed,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'claimed' AND o.lease_until < now()) AS expired_leases,
       (SELECT count(*) FROM engage.outbox o WHERE o.status = 'dead' AND o.claimed_at > now() - interval '1 hour')
           AS dead_last_hour,
       w.running AS deliverer_running,
       w.pid AS deliverer_pid,
       w.last_batch_at AS deliverer_last_batch_at,
       w.sent AS sent_since_start,
       w.failed AS failed_since_start,
       w.scheduler_running,
       t.last_tick AS ticked_until,
       now() - t.last_tick AS tick_lag,
       engage.rule_cache_loads() AS rule_cache_loads
  FROM engage.worker_status() w,
       (SELECT max(p.ticked_until) AS last_tick FROM engage.tick_progress p) t;
COMMENT ON VIEW engage.operations IS
    'One row for the on-call engineer: pending and due messages and the age of the oldest due one, claimed messages and expired leases, messages dead in the last hour; the built-in deliverer (running, pid, last batch, sent and failed since the server started) and scheduler (running; ticked_until, the latest instant a tick covered, whoever ran it, and tick_lag, how far behind now it is); rule-set loads by all backends since the start. Worker fields are false/NULL without shared_preload_libraries.';
