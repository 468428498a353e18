-- Predictive models: the BG/NBD customer-base model (Fader, Hardie & Lee 2005), fitted inside the
-- database from purchase events. The maths is in Rust (src/predict); the data handling is here.

-- Per customer, from the days with a purchase event up to calibration_end (UTC days): x = days
-- with a purchase after the first one, t_x = last day - first day, T = calibration_end - first
-- day, in `unit`s. (Several purchases on one day count once, as in the paper.)
CREATE FUNCTION engage.purchase_summaries(event text, calibration_end date, unit interval DEFAULT '7 days')
RETURNS TABLE (customer_id text, frequency double precision, recency double precision, age double precision)
LANGUAGE sql STABLE AS $$
    WITH days AS (
        SELECT e.customer_id, (e.occurred_at AT TIME ZONE 'UTC')::date AS day
          FROM engage.events e
         WHERE e.name = purchase_summaries.event
           AND e.occurred_at < (purchase_summaries.calibration_end + 1)::timestamp AT TIME ZONE 'UTC'
         GROUP BY 1, 2
    ), unit AS (
        SELECT extract(epoch FROM purchase_summaries.unit) / 86400.0 AS days
    )
    SELECT d.customer_id, count(*) - 1, (max(d.day) - min(d.day)) / unit.days,
           (purchase_summaries.calibration_end - min(d.day)) / unit.days
      FROM days d, unit
     GROUP BY d.customer_id, unit.days
$$;
COMMENT ON FUNCTION engage.purchase_summaries(text, date, interval) IS
    'Per customer with purchase events up to calibration_end: BG/NBD summary (frequency x = repeat purchase days, recency t_x, age T) in units.';

CREATE TABLE engage.purchase_models (
    id              integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event           text        NOT NULL,
    calibration_end date        NOT NULL,
    unit            interval    NOT NULL,
    customers       integer     NOT NULL,
    repeat_buyers   integer     NOT NULL,
    r               double precision NOT NULL,
    alpha           double precision NOT NULL,
    a               double precision NOT NULL,
    b               double precision NOT NULL,
    log_likelihood  double precision NOT NULL,
    iterations      bigint      NOT NULL,
    converged       boolean     NOT NULL,
    fitted_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE engage.purchase_models IS
    'Fitted BG/NBD models: the purchase event, calibration end, time unit, data size, the parameters (r, alpha in units, a, b), log-likelihood, and when. The newest per event is the one in use.';
SELECT pg_catalog.pg_extension_config_dump('engage.purchase_models', '');
SELECT pg_catalog.pg_extension_config_dump('engage.purchase_models_id_seq', '');

CREATE FUNCTION engage.fit_purchase_model(
    event text DEFAULT 'purchase', calibration_end date DEFAULT current_date, unit interval DEFAULT '7 days'
) RETURNS engage.purchase_models
LANGUAGE sql AS $$
    INSERT INTO engage.purchase_models (event, calibration_end, unit, customers, repeat_buyers,
                                        r, alpha, a, b, log_likelihood, iterations, converged)
    SELECT fit_purchase_model.event, fit_purchase_model.calibration_end, fit_purchase_model.unit,
           s.customers, s.repeat_buyers, f.r, f.alpha, f.a, f.b, f.log_likelihood, f.iterations, f.converged
      FROM (SELECT count(*)::integer AS customers, (count(*) FILTER (WHERE frequency > 0))::integer AS repeat_buyers,
                   coalesce(array_agg(frequency), '{}') AS x, coalesce(array_agg(recency), '{}') AS t_x,
                   coalesce(array_agg(age), '{}') AS age
              FROM engage.purchase_summaries(fit_purchase_model.event, fit_purchase_model.calibration_end,
                                             fit_purchase_model.unit)) s,
           engage.bgnbd_fit(s.x, s.t_x, s.age) f
    RETURNING *
$$;
COMMENT ON FUNCTION engage.fit_purchase_model(text, date, interval) IS
    'Fits BG/NBD by maximum likelihood to the purchase events up to calibration_end and stores the parameters in engage.purchase_models (returned). Refit by calling it again.';

CREATE VIEW engage.customer_predictions AS
SELECT m.event, s.customer_id, s.frequency, s.recency, s.age,
       engage.bgnbd_p_alive(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.age) AS p_alive,
       engage.bgnbd_expected_purchases(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.age,
                                       extract(epoch FROM interval '30 days') / extract(epoch FROM m.unit))
           AS expected_purchases_30d,
       m.id AS model_id, m.fitted_at
  FROM (SELECT DISTINCT ON (event) * FROM engage.purchase_models ORDER BY event, id DESC) m,
       engage.purchase_summaries(m.event, current_date, m.unit) s;
COMMENT ON VIEW engage.customer_predictions IS
    'Per customer with purchases, under the newest model of each purchase event: the summary as of today, P(alive) and the expected number of repeat purchases in the next 30 days.';
