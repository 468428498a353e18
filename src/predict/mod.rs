//! Predictive models inside the database. The BG/NBD customer-base model (`bgnbd`) is fitted by
//! maximum likelihood to per-customer purchase summaries that SQL computes from engage.events
//! (sql/predict.sql); these functions expose the fit, p(alive) and expected purchases to SQL.

pub mod bgnbd;

use crate::sql_error;
use bgnbd::{Params, Summary};
use pgrx::prelude::*;

fn summaries(frequency: &[f64], recency: &[f64], age: &[f64]) -> Vec<Summary> {
    if frequency.len() != recency.len() || frequency.len() != age.len() {
        sql_error::invalid_argument(
            format!(
                "frequency, recency and age must have the same length (got {}, {}, {})",
                frequency.len(),
                recency.len(),
                age.len()
            ),
            "pass one element per customer in each array",
        );
    }
    frequency
        .iter()
        .zip(recency)
        .zip(age)
        .map(|((&frequency, &recency), &age)| Summary { frequency, recency, age })
        .collect()
}

/// Fits the BG/NBD model to per-customer summaries (x repeat purchases, t_x recency, T age).
#[pg_extern(immutable, parallel_safe, strict)]
fn bgnbd_fit(
    frequency: Vec<f64>,
    recency: Vec<f64>,
    age: Vec<f64>,
) -> TableIterator<
    'static,
    (
        name!(r, f64),
        name!(alpha, f64),
        name!(a, f64),
        name!(b, f64),
        name!(log_likelihood, f64),
        name!(iterations, i64),
        name!(converged, bool),
    ),
> {
    let customers = summaries(&frequency, &recency, &age);
    match bgnbd::fit(&customers) {
        Ok(f) => TableIterator::once((
            f.params.r,
            f.params.alpha,
            f.params.a,
            f.params.b,
            f.log_likelihood,
            i64::try_from(f.iterations).unwrap_or(i64::MAX),
            f.converged,
        )),
        Err(e) => sql_error::invalid_argument(
            e.to_string(),
            "the fit needs customers with a whole frequency >= 0, 0 < recency <= age when frequency > 0, and at least one repeat buyer",
        ),
    }
}

/// P(alive) of a customer with x repeat purchases, last at t_x, observed for T, under BG/NBD
/// parameters; NULL for invalid input.
#[pg_extern(immutable, parallel_safe, strict)]
#[allow(clippy::too_many_arguments)]
fn bgnbd_p_alive(r: f64, alpha: f64, a: f64, b: f64, frequency: f64, recency: f64, age: f64) -> Option<f64> {
    let p = bgnbd::p_alive(&Params { r, alpha, a, b }, &Summary { frequency, recency, age });
    p.is_finite().then_some(p)
}

/// Expected repeat purchases in the next `t` time units of the same customer; NULL for invalid
/// input.
#[pg_extern(immutable, parallel_safe, strict)]
#[allow(clippy::too_many_arguments)]
fn bgnbd_expected_purchases(
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    frequency: f64,
    recency: f64,
    age: f64,
    t: f64,
) -> Option<f64> {
    let e = bgnbd::expected_purchases(&Params { r, alpha, a, b }, &Summary { frequency, recency, age }, t);
    e.is_finite().then_some(e)
}
