//! The BG/NBD model fitted inside the database, checked against the paper (Fader, Hardie & Lee,
//! "Counting Your Customers the Easy Way", Marketing Science 2005) on its CDNOW sample: the raw
//! transactions (tests/data/cdnow, from the `lifetimes` package) go in as purchase events, SQL
//! summarises them per customer, and the fit must land within 1% of the published estimates
//! r = 0.243, alpha = 4.414, a = 0.793, b = 2.426 (log-likelihood -9582.4).

use pg_engage_it::*;
use std::io::Write;

const PAPER: [(&str, f64); 4] = [("r", 0.243), ("alpha", 4.414), ("a", 0.793), ("b", 2.426)];

/// Loads the CDNOW transactions as `purchase` events of customers `cdnow-<sample id>`, at noon
/// UTC of their day, worth their dollar value.
fn load_cdnow(c: &mut Client) {
    c.batch_execute("CREATE TEMP TABLE cdnow (master text, id int, day text, cds int, amount numeric)").unwrap();
    let raw = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/cdnow/CDNOW_sample.txt"))
        .expect("tests/data/cdnow/CDNOW_sample.txt");
    let mut writer = c.copy_in("COPY cdnow FROM STDIN").unwrap();
    for line in raw.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        writeln!(writer, "{}", fields.join("\t")).unwrap();
    }
    writer.finish().unwrap();
    c.batch_execute(
        "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
         SELECT 'cdnow-' || id, 'purchase', jsonb_build_object('amount', amount, 'cds', cds),
                to_date(day, 'YYYYMMDD') + time '12:00' AT TIME ZONE 'UTC'
           FROM cdnow ORDER BY id, day",
    )
    .unwrap();
}

/// Equation (12) of the paper, written out independently of the extension's code.
fn p_alive_direct(p: &[f64; 4], x: f64, t_x: f64, age: f64) -> f64 {
    let [r, alpha, a, b] = *p;
    if x == 0.0 {
        return 1.0;
    }
    1.0 / (1.0 + a / (b + x - 1.0) * ((alpha + age) / (alpha + t_x)).powf(r + x))
}

#[test]
fn the_cdnow_fit_matches_the_published_parameters() {
    let mut c = shared().create_db("predict_cdnow");
    load_cdnow(&mut c);

    // The summaries match the paper's data description.
    let counts = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE frequency = 0), sum(frequency)::int8
               FROM engage.purchase_summaries('purchase', '1997-09-30')",
            &[],
        )
        .unwrap();
    let counts: (i64, i64, i64) = (counts.get(0), counts.get(1), counts.get(2));
    assert_eq!(counts, (2357, 1411, 2457), "customers, customers without a repeat purchase, repeat purchases");

    let fit = c
        .query_one(
            "SELECT r, alpha, a, b, log_likelihood, converged, customers, unit = '7 days'
               FROM engage.fit_purchase_model('purchase', '1997-09-30')",
            &[],
        )
        .unwrap();
    let params: [f64; 4] = [fit.get(0), fit.get(1), fit.get(2), fit.get(3)];
    for ((name, published), got) in PAPER.iter().zip(params) {
        assert!((got - published).abs() <= 0.01 * published, "{name}: fitted {got}, published {published}");
    }
    let log_likelihood: f64 = fit.get(4);
    assert!((log_likelihood - -9582.4).abs() < 0.5, "log-likelihood {log_likelihood}");
    assert!(fit.get::<_, bool>(5) && fit.get::<_, i32>(6) == 2357 && fit.get::<_, bool>(7));

    // p(alive) for a few customers, against the closed form computed here.
    let rows = c
        .query(
            "SELECT s.frequency, s.recency, s.age,
                    engage.bgnbd_p_alive(m.r, m.alpha, m.a, m.b, s.frequency, s.recency, s.age)
               FROM engage.purchase_summaries('purchase', '1997-09-30') s, engage.purchase_models m
              WHERE s.customer_id IN ('cdnow-1', 'cdnow-2', 'cdnow-3', 'cdnow-18', 'cdnow-1516')",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 5);
    for row in rows {
        let (x, t_x, age, got): (f64, f64, f64, f64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let want = p_alive_direct(&params, x, t_x, age);
        assert!((got - want).abs() < 1e-9, "x={x} t_x={t_x} T={age}: {got} vs {want}");
        assert!(got > 0.0 && got <= 1.0);
    }
    // The paper's worked example: customer 1 (x = 2, t_x = 30.43, T = 38.86) is expected to make
    // 1.226 repeat purchases in the next 39 weeks.
    let expected: f64 = c
        .query_one(
            "SELECT engage.bgnbd_expected_purchases(r, alpha, a, b, 2, 30.43, 38.86, 39) FROM engage.purchase_models",
            &[],
        )
        .unwrap()
        .get(0);
    assert!((expected - 1.226).abs() < 0.005, "E[Y(39)] = {expected}");

    // Predictions for every customer under the newest model, as of today.
    let predictions: (i64, bool) = {
        let r = c
            .query_one(
                "SELECT count(*), bool_and(p_alive > 0 AND p_alive <= 1 AND expected_purchases_30d >= 0)
                   FROM engage.customer_predictions",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(predictions, (2357, true));
}

#[test]
fn a_fit_without_repeat_buyers_is_a_clear_error() {
    let mut c = shared().create_db("predict_no_repeat");
    c.batch_execute(
        "INSERT INTO engage.events (customer_id, name, occurred_at) VALUES
           ('a', 'purchase', '2026-01-01'), ('b', 'purchase', '2026-01-02')",
    )
    .unwrap();
    let e = assert_sql_error(
        &mut c,
        "SELECT * FROM engage.fit_purchase_model('purchase', '2026-02-01')",
        &[],
        "22023",
        "no customer made a repeat purchase",
    );
    assert!(e.hint().is_some_and(|h| h.contains("repeat buyer")), "{e:?}");
}
