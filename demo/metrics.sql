-- What the deliverer did with the demo day (the analyst views of issue 6 will replace these queries).
\pset footer off
\echo '== Delivery, per channel'
SELECT m.channel, count(*) AS sent, sum(m.attempts - 1) AS retries, sum(m.cost) AS cost,
       round(avg(extract(epoch FROM m.sent_at - m.claimed_at)) * 1000, 1) AS avg_send_ms
  FROM engage.messages m GROUP BY m.channel ORDER BY sent DESC;

\echo '== Fire rate per trigger: fired / matching events, and what was delivered'
SELECT t.name AS trigger,
       count(d.*) AS matched,
       round(100.0 * count(*) FILTER (WHERE d.outcome = 'fired') / nullif(count(d.*), 0), 1) AS fire_rate_pct,
       (SELECT count(*) FROM engage.messages m WHERE m.trigger_id = t.id) AS delivered
  FROM engage.triggers t LEFT JOIN engage.decisions d ON d.trigger_id = t.id
 GROUP BY t.id, t.name ORDER BY t.name;

\echo '== Dead letters'
SELECT id, customer_id, channel, template, attempts, last_error FROM engage.dead_letters ORDER BY id LIMIT 5;

\echo '== The deliverer'
SELECT * FROM engage.worker_status();
