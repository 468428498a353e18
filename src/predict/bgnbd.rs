//! BG/NBD customer-base model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way:
//! An Alternative to the Pareto/NBD Model", Marketing Science 24(2)).
//!
//! While alive, a customer buys at Poisson rate λ ~ Gamma(r, α); after each repeat purchase they
//! drop out with probability p ~ Beta(a, b). A customer is summarised by x (repeat purchases),
//! t_x (time of the last repeat purchase) and T (time since the first purchase), all measured from
//! the first purchase in one unit of the caller's choosing; α is then expressed in that unit.
//!
//! Dependencies: `libm` for ln Γ (`lgamma`: a small, dependency-free port of the musl/FreeBSD
//! routine, accurate to about 1 ulp for positive arguments; `statrs` would pull in `nalgebra`)
//! and `argmin` (+ `argmin-math`, `vec` backend) for the Nelder–Mead optimiser.

use std::cmp::Ordering;
use std::fmt;

use argmin::core::{CostFunction, Error as ArgminError, Executor, State, TerminationReason, TerminationStatus};
use argmin::solver::neldermead::NelderMead;
use libm::lgamma;

/// One customer's calibration-period summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// x: number of repeat purchases (a non-negative whole number).
    pub frequency: f64,
    /// t_x: time from the first to the last purchase (ignored when x = 0).
    pub recency: f64,
    /// T: time from the first purchase to the end of the calibration period.
    pub age: f64,
}

/// Model parameters, all strictly positive: purchase rate λ ~ Gamma(shape r, rate alpha),
/// dropout probability p ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Result of [`fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub params: Params,
    /// Total log-likelihood (paper's equation 6 summed over all customers) at `params`.
    pub log_likelihood: f64,
    /// Nelder–Mead iterations, summed over all restarts.
    pub iterations: u64,
    /// True when the last Nelder–Mead run met its tolerance and a fresh restart from its best
    /// point no longer improved the likelihood. False means the iteration budget ran out first:
    /// `params` is then the best point found, usable but possibly not the maximum.
    pub converged: bool,
}

/// Why [`fit`] could not produce parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    /// No customers were given.
    Empty,
    /// Customer `index` has a NaN or infinite field.
    NonFinite { index: usize },
    /// Customer `index` breaks T ≥ 0, x ∈ {0, 1, 2, …}, or (when x > 0) 0 < t_x ≤ T.
    InvalidSummary { index: usize },
    /// Nobody made a repeat purchase, so the dropout process cannot be identified.
    NoRepeatBuyers,
    /// The optimiser found no finite likelihood, or a parameter overflowed to 0 or ∞.
    DidNotConverge { iterations: u64 },
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::Empty => write!(f, "BG/NBD fit: no customers given"),
            FitError::NonFinite { index } => {
                write!(f, "BG/NBD fit: customer {index} has a non-finite value")
            }
            FitError::InvalidSummary { index } => write!(
                f,
                "BG/NBD fit: customer {index} needs age >= 0, a whole frequency >= 0 and, if it is > 0, 0 < recency <= age"
            ),
            FitError::NoRepeatBuyers => write!(f, "BG/NBD fit: no customer made a repeat purchase"),
            FitError::DidNotConverge { iterations } => {
                write!(f, "BG/NBD fit: no finite optimum found after {iterations} iterations")
            }
        }
    }
}

impl std::error::Error for FitError {}

/// Log-likelihood of `customers` under `p`: the paper's equation (6), summed customer by customer.
/// The fit uses the grouped form (`weighted_ll`); the tests check that both agree.
///
/// Costs three `lgamma` and three `ln` calls per customer: 0.1–0.15 s per 10⁶ customers.
/// Returns NaN if `p` is not strictly positive and finite, or if a summary is invalid (see
/// [`FitError::InvalidSummary`]).
#[cfg(test)]
pub fn log_likelihood(p: &Params, customers: &[Summary]) -> f64 {
    if !valid_params(p) || !customers.iter().all(valid_summary) {
        return f64::NAN;
    }
    let k = Consts::new(p);
    customers.iter().map(|s| ll_one(p, &k, s)).sum()
}

/// Maximum-likelihood fit of (r, α, a, b).
///
/// Nelder–Mead (argmin) on ln r, ln α, ln a, ln b, minimising the mean negative log-likelihood
/// over customers grouped by identical (x, t_x, T). The start is r = a = b = 1 and α = ΣT / Σx
/// (so r/α matches the observed repeat rate). After each run the simplex is rebuilt around
/// the best point and the search restarted, until a restart gains nothing.
///
/// Cost: each likelihood evaluation takes ~45 ns per distinct (x, t_x, T) row (ln Γ terms are
/// computed once per distinct x); a fit needs a few hundred to a few thousand evaluations, with
/// at most 10 runs × 1,000 iterations. Measured in release mode: CDNOW (2,357 customers, 1,016
/// distinct rows) 20–30 ms; 10⁶ synthetic customers in 223,066 distinct rows 4–5 s.
///
/// Data the model cannot pin down (e.g. no spread in purchase rates, so r, α → ∞ together) ends
/// at a boundary: huge or tiny but finite parameters, sometimes with `converged == false`.
pub fn fit(customers: &[Summary]) -> Result<Fit, FitError> {
    if customers.is_empty() {
        return Err(FitError::Empty);
    }
    for (index, s) in customers.iter().enumerate() {
        if ![s.frequency, s.recency, s.age].iter().all(|v| v.is_finite()) {
            return Err(FitError::NonFinite { index });
        }
        if !valid_summary(s) {
            return Err(FitError::InvalidSummary { index });
        }
    }
    let total_x: f64 = customers.iter().map(|s| s.frequency).sum();
    if total_x == 0.0 {
        return Err(FitError::NoRepeatBuyers);
    }
    let total_t: f64 = customers.iter().map(|s| s.age).sum();
    let groups = group(customers);
    let cost = MeanNegLl { groups: &groups, n: customers.len() as f64 };

    let mut best = vec![0.0, (total_t / total_x).max(1e-3).ln(), 0.0, 0.0];
    let mut best_cost = cost.eval(&best);
    let mut iterations = 0;
    let mut converged = false;
    for _ in 0..MAX_RUNS {
        let run = nelder_mead(cost, &best).map_err(|_| FitError::DidNotConverge { iterations })?;
        iterations += run.iterations;
        let gain = best_cost - run.cost;
        if run.cost < best_cost {
            best = run.param;
            best_cost = run.cost;
        }
        if run.tolerance_met && gain <= RESTART_GAIN {
            converged = true;
            break;
        }
    }
    let params = from_log(&best).ok_or(FitError::DidNotConverge { iterations })?;
    let log_likelihood = weighted_ll(&params, &groups);
    if !log_likelihood.is_finite() {
        return Err(FitError::DidNotConverge { iterations });
    }
    Ok(Fit { params, log_likelihood, iterations, converged })
}

/// P(alive at T | x, t_x, T), the paper's equation (12):
/// 1 for x = 0, else 1 / (1 + a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)).
///
/// The odds term is built in log space, so heavy buyers with long gaps underflow cleanly to 0
/// instead of producing inf/inf. NaN for invalid parameters or summary.
pub fn p_alive(p: &Params, s: &Summary) -> f64 {
    if !valid_params(p) || !valid_summary(s) {
        return f64::NAN;
    }
    match dropout_log_odds(p, s) {
        None => 1.0,
        Some(d) if d > 0.0 => (-d).exp() / (1.0 + (-d).exp()),
        Some(d) => 1.0 / (1.0 + d.exp()),
    }
}

/// E[Y(t) | x, t_x, T]: expected repeat purchases in the next `t` time units, the paper's
/// equation (10):
///
/// (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · ₂F₁(r+x, b+x; a+b+x−1; z)] · P(alive),
/// with z = t/(α+T+t) ∈ [0, 1).
///
/// Euler's transformation ₂F₁(A, B; C; z) = (1−z)^(C−A−B) ₂F₁(C−A, C−B; C; z), with 1−z =
/// (α+T)/(α+T+t), turns the bracket into 1 − ((α+T)/(α+T+t))^(a−1) · ₂F₁(a+b−1−r, a−1; a+b+x−1; z):
/// the same value, but its series terms shrink as x grows instead of reaching (1−z)^−x, which
/// overflows for heavy buyers. NaN for invalid input, for a = 1 exactly (a removable 0/0 the
/// formula does not resolve; close to it, about log10(1/|a−1|) digits are lost), or if the
/// series does not converge (see `hyp2f1`).
pub fn expected_purchases(p: &Params, s: &Summary, t: f64) -> f64 {
    if !(valid_params(p) && valid_summary(s) && t >= 0.0 && t.is_finite()) {
        return f64::NAN;
    }
    let x = s.frequency;
    let c = p.a + p.b + x - 1.0;
    let (base, end) = (p.alpha + s.age, p.alpha + s.age + t);
    let Some(f) = hyp2f1(p.a + p.b - 1.0 - p.r, p.a - 1.0, c, t / end) else {
        return f64::NAN;
    };
    let bracket = 1.0 - ((p.a - 1.0) * (base.ln() - end.ln())).exp() * f;
    c / (p.a - 1.0) * bracket * p_alive(p, s)
}

/// Nelder–Mead runs (the first plus restarts) before giving up on `converged`.
const MAX_RUNS: usize = 10;
/// Iterations per Nelder–Mead run.
const MAX_ITERS: u64 = 1_000;
/// Stop a run when the standard deviation of the mean negative log-likelihood over the simplex
/// vertices falls below this.
const SD_TOLERANCE: f64 = 1e-12;
/// A restart that lowers the mean negative log-likelihood by no more than this ends the search.
const RESTART_GAIN: f64 = 1e-10;
/// Edge of the starting simplex in log-parameter space (a factor e^0.5 ≈ 1.65 per parameter).
const SIMPLEX_STEP: f64 = 0.5;
/// Relative size of the bound on the neglected tail at which the ₂F₁ series stops.
const SERIES_EPS: f64 = 1e-15;
/// Most ₂F₁ series terms summed; z = 0.99 needs a few thousand.
const SERIES_MAX_TERMS: u32 = 1_000_000;

/// Per-parameter quantities shared by every customer's likelihood term.
struct Consts {
    ln_gamma_r: f64,
    r_ln_alpha: f64,
    /// ln Γ(a+b) − ln Γ(b), part of ln[B(a, b+x)/B(a, b)].
    ln_beta_ratio: f64,
}

impl Consts {
    fn new(p: &Params) -> Self {
        Consts {
            ln_gamma_r: lgamma(p.r),
            r_ln_alpha: p.r * p.alpha.ln(),
            ln_beta_ratio: lgamma(p.a + p.b) - lgamma(p.b),
        }
    }
}

/// ln L for one customer (equation 6), written as `ll_x(x) + ll_times(s)` with
/// ll_x = ln[Γ(r+x)α^r/Γ(r)] + ln[B(a,b+x)/B(a,b)] (depends on x only) and
/// ll_times = ln[(α+T)^−(r+x) + δ_{x>0} a/(b+x−1) (α+t_x)^−(r+x)], using
/// B(a+1, b+x−1) = B(a, b+x) · a/(b+x−1) and a log-sum-exp.
#[cfg(test)]
fn ll_one(p: &Params, k: &Consts, s: &Summary) -> f64 {
    ll_x(p, k, s.frequency) + ll_times(p, s)
}

fn ll_x(p: &Params, k: &Consts, x: f64) -> f64 {
    lgamma(p.r + x) - k.ln_gamma_r + k.r_ln_alpha + k.ln_beta_ratio + lgamma(p.b + x) - lgamma(p.a + p.b + x)
}

fn ll_times(p: &Params, s: &Summary) -> f64 {
    let alive = -(p.r + s.frequency) * (p.alpha + s.age).ln();
    match dropout_log_odds(p, s) {
        None => alive,
        Some(d) if d > 0.0 => alive + d + (-d).exp().ln_1p(),
        Some(d) => alive + d.exp().ln_1p(),
    }
}

/// ln[a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)]: log odds of "dropped out after the last purchase"
/// against "still alive"; None when x = 0 (no repeat purchase, no chance to drop out).
fn dropout_log_odds(p: &Params, s: &Summary) -> Option<f64> {
    let x = s.frequency;
    (x > 0.0)
        .then(|| p.a.ln() - (p.b + x - 1.0).ln() + (p.r + x) * ((p.alpha + s.age).ln() - (p.alpha + s.recency).ln()))
}

/// Gauss hypergeometric ₂F₁(a, b; c; z) by its power series Σ (a)ₖ(b)ₖ/((c)ₖ k!) zᵏ, 0 ≤ z < 1.
///
/// Each term follows from the last by the ratio ρₖ = z(a+k)(b+k)/((c+k)(k+1)). Once a+k, b+k
/// and c+k are all positive, every later ratio is at most ρ* = z·max(1, (a+k)/(c+k))·max(1,
/// (b+k)/(k+1)) (each factor moves monotonically toward 1), so when ρ* < 1 the rest of the
/// series is bounded by |termₖ|·ρ*/(1−ρ*). Summing stops when that bound is below 1e-15 of the
/// sum. None if z is out of range, c is a non-positive integer, the sum is not finite, or the
/// bound is not met within 10⁶ terms (about z > 0.99997: t beyond ~3·10⁴ × (α+T)).
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&z) || (c <= 0.0 && c.fract() == 0.0) {
        return None;
    }
    let (mut term, mut sum) = (1.0_f64, 1.0_f64);
    for k in 0..SERIES_MAX_TERMS {
        let k = f64::from(k);
        term *= z * (a + k) * (b + k) / ((c + k) * (k + 1.0));
        sum += term;
        if !sum.is_finite() {
            return None;
        }
        let n = k + 1.0;
        if a + n > 0.0 && b + n > 0.0 && c + n > 0.0 {
            let rho = z * ((a + n) / (c + n)).max(1.0) * ((b + n) / (n + 1.0)).max(1.0);
            if rho < 1.0 && term.abs() * rho / (1.0 - rho) <= SERIES_EPS * sum.abs() {
                return Some(sum);
            }
        }
    }
    None
}

/// Params from (ln r, ln α, ln a, ln b); None if a value over/underflows to ∞ or 0.
fn from_log(theta: &[f64]) -> Option<Params> {
    let [r, alpha, a, b] = theta else { return None };
    let p = Params { r: r.exp(), alpha: alpha.exp(), a: a.exp(), b: b.exp() };
    valid_params(&p).then_some(p)
}

fn valid_params(p: &Params) -> bool {
    [p.r, p.alpha, p.a, p.b].iter().all(|v| v.is_finite() && *v > 0.0)
}

/// T is finite and ≥ 0, x is a whole number ≥ 0, and for x > 0 also 0 < t_x ≤ T (a repeat
/// purchase comes after the first; t_x = 0 would make the likelihood unbounded as α → 0).
fn valid_summary(s: &Summary) -> bool {
    let x = s.frequency;
    let whole_x = x.is_finite() && x >= 0.0 && x.fract() == 0.0;
    let age_ok = s.age.is_finite() && s.age >= 0.0;
    whole_x && age_ok && (x == 0.0 || (s.recency > 0.0 && s.recency <= s.age))
}

/// Distinct summaries with their multiplicities, in a deterministic (sorted) order so that a
/// fit is reproducible bit for bit. t_x is set to 0 for x = 0, where it plays no part.
fn group(customers: &[Summary]) -> Vec<(Summary, f64)> {
    let key = |s: &Summary| (s.frequency, if s.frequency == 0.0 { 0.0 } else { s.recency }, s.age);
    let mut keys: Vec<(f64, f64, f64)> = customers.iter().map(key).collect();
    let cmp = |l: &(f64, f64, f64), r: &(f64, f64, f64)| {
        l.0.total_cmp(&r.0).then(l.1.total_cmp(&r.1)).then(l.2.total_cmp(&r.2))
    };
    keys.sort_unstable_by(cmp);
    let mut groups: Vec<(Summary, f64)> = Vec::new();
    for k in keys {
        match groups.last_mut() {
            Some((s, w)) if cmp(&key(s), &k) == Ordering::Equal => *w += 1.0,
            _ => groups.push((Summary { frequency: k.0, recency: k.1, age: k.2 }, 1.0)),
        }
    }
    groups
}

/// Σ weight · ln L over groups; the x-only part is computed once per run of equal x (groups
/// are sorted by x), so the cost is dominated by a few `ln` calls per distinct (x, t_x, T).
fn weighted_ll(p: &Params, groups: &[(Summary, f64)]) -> f64 {
    let k = Consts::new(p);
    let mut cached = (f64::NAN, 0.0);
    let mut total = 0.0;
    for (s, w) in groups {
        if cached.0 != s.frequency {
            cached = (s.frequency, ll_x(p, &k, s.frequency));
        }
        total += w * (cached.1 + ll_times(p, s));
    }
    total
}

/// Mean negative log-likelihood as a function of (ln r, ln α, ln a, ln b); +∞ where the
/// parameters over/underflow or the likelihood is not finite, which Nelder–Mead simply avoids.
#[derive(Clone, Copy)]
struct MeanNegLl<'a> {
    groups: &'a [(Summary, f64)],
    n: f64,
}

impl MeanNegLl<'_> {
    fn eval(&self, theta: &[f64]) -> f64 {
        let ll = from_log(theta).map_or(f64::NAN, |p| weighted_ll(&p, self.groups));
        if ll.is_finite() {
            -ll / self.n
        } else {
            f64::INFINITY
        }
    }
}

impl CostFunction for MeanNegLl<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, theta: &Vec<f64>) -> Result<f64, ArgminError> {
        Ok(self.eval(theta))
    }
}

/// Outcome of one Nelder–Mead run.
struct Run {
    param: Vec<f64>,
    cost: f64,
    iterations: u64,
    tolerance_met: bool,
}

/// One Nelder–Mead run from a simplex with `start` as a vertex and one step along each axis.
fn nelder_mead(cost: MeanNegLl<'_>, start: &[f64]) -> Result<Run, ArgminError> {
    let mut simplex = vec![start.to_vec()];
    for i in 0..start.len() {
        let mut v = start.to_vec();
        v[i] += SIMPLEX_STEP;
        simplex.push(v);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(SD_TOLERANCE)?;
    // No Ctrl-C handler, even if another crate enables argmin's `ctrlc` feature: this code may
    // run inside a PostgreSQL backend, which owns its signals.
    let result = Executor::new(cost, solver).ctrlc(false).configure(|s| s.max_iters(MAX_ITERS)).run()?;
    let state = result.state();
    Ok(Run {
        param: state.get_best_param().cloned().unwrap_or_else(|| start.to_vec()),
        cost: state.get_best_cost(),
        iterations: state.get_iter(),
        tolerance_met: matches!(
            state.get_termination_status(),
            TerminationStatus::Terminated(TerminationReason::SolverConverged)
        ),
    })
}

#[cfg(test)]
mod tests {
    //! BG/NBD against the paper (Fader, Hardie & Lee 2005) on the CDNOW sample, and against
    //! independent high-precision values.
    use super::*;

    /// The paper's published maximum-likelihood estimates for CDNOW (3 decimals).
    const PAPER: Params = Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 };

    fn cdnow() -> Vec<Summary> {
        include_str!("../../tests/data/cdnow/cdnow_customers_summary.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<f64> = line.split(',').map(|v| v.parse().expect("numeric CSV field")).collect();
                Summary { frequency: f[1], recency: f[2], age: f[3] }
            })
            .collect()
    }

    fn s(frequency: f64, recency: f64, age: f64) -> Summary {
        Summary { frequency, recency, age }
    }

    fn close(actual: f64, expected: f64, rel: f64) -> bool {
        (actual - expected).abs() <= rel * expected.abs()
    }

    fn fit_cdnow() -> Fit {
        fit(&cdnow()).expect("CDNOW fits")
    }

    #[test]
    fn data_matches_paper_counts() {
        let d = cdnow();
        assert_eq!(d.len(), 2357);
        assert_eq!(d.iter().filter(|c| c.frequency == 0.0).count(), 1411);
        assert_eq!(d.iter().map(|c| c.frequency).sum::<f64>(), 2457.0);
    }

    #[test]
    fn log_likelihood_at_paper_params() {
        // mpmath: -9582.42683118236; the paper reports -9582.4.
        let ll = log_likelihood(&PAPER, &cdnow());
        assert!((ll - -9582.42683118236).abs() < 1e-8, "{ll}");
    }

    #[test]
    fn fit_recovers_paper_estimates() {
        let f = fit_cdnow();
        assert!(f.converged);
        let p = f.params;
        for (name, got, want) in
            [("r", p.r, PAPER.r), ("alpha", p.alpha, PAPER.alpha), ("a", p.a, PAPER.a), ("b", p.b, PAPER.b)]
        {
            assert!(close(got, want, 0.01), "{name}: {got} vs {want}");
        }
        // The optimum is at least as good as the published (rounded) estimates, and close to -9582.4.
        assert!(f.log_likelihood >= -9582.42683118236 - 1e-9, "{}", f.log_likelihood);
        assert!((f.log_likelihood - -9582.4).abs() < 0.05, "{}", f.log_likelihood);
        // The grouped likelihood used by the fit equals the plain per-customer sum.
        assert!((f.log_likelihood - log_likelihood(&p, &cdnow())).abs() < 1e-7);
    }

    #[test]
    fn paper_example_expected_purchases() {
        // Customer 1 (x=2, t_x=30.43, T=38.86): E[Y(39) | ...] = 1.226 in the paper's companion
        // spreadsheet (as cited by the lifetimes test suite), with the fitted parameters.
        let c = s(2.0, 30.43, 38.86);
        assert!((expected_purchases(&fit_cdnow().params, &c, 39.0) - 1.226).abs() < 0.001);
        assert!((expected_purchases(&PAPER, &c, 39.0) - 1.226).abs() < 0.001);
    }

    /// (params, customer, t, p_alive, E[Y(t)]) computed independently with mpmath at 40 digits from
    /// the paper's formulas as printed.
    fn reference_cases() -> Vec<(Params, Summary, f64, f64, f64)> {
        let other = Params { r: 0.5, alpha: 3.0, a: 1.7, b: 0.4 };
        let small = Params { r: 0.3, alpha: 2.0, a: 0.3, b: 0.4 };
        vec![
            (PAPER, s(2.0, 30.43, 38.86), 39.0, 0.726578570080673, 1.2260281747671444),
            (PAPER, s(0.0, 0.0, 38.86), 39.0, 1.0, 0.19509805201126265),
            (PAPER, s(7.0, 29.43, 38.86), 39.0, 0.6417563459461072, 3.3370532748514163),
            (PAPER, s(29.0, 37.71, 38.0), 39.0, 0.9691295181593396, 20.05294898649679),
            (PAPER, s(1.0, 1.71, 38.86), 1.0, 0.2121009853773791, 0.006062951798282893),
            (PAPER, s(5.0, 10.0, 38.0), 500.0, 0.02748157966307608, 0.5657385953291376),
            (PAPER, s(2000.0, 300.0, 365.0), 30.0, 1.9239134750018691e-165, 3.0292720823882914e-163),
            (other, s(0.0, 0.0, 20.0), 10.0, 1.0, 0.17353390537822602),
            (other, s(3.0, 12.5, 20.0), 52.0, 0.2618357067668641, 0.8031185732185109),
            // a + b < 1, so c = a+b+x−1 < 0 for x = 0: the series starts with sign changes.
            (small, s(0.0, 0.0, 10.0), 5.0, 1.0, 0.11324621110058215),
            (small, s(1.0, 3.0, 10.0), 5.0, 0.2993432321957778, 0.15081369529523667),
            // z = 5000/5042.4 ≈ 0.992: a long series.
            (PAPER, s(3.0, 20.0, 38.0), 5000.0, 0.4820699010035243, 17.20671350709594),
        ]
    }

    #[test]
    fn p_alive_and_expected_purchases_match_mpmath() {
        for (p, c, t, alive, e) in reference_cases() {
            assert!(close(p_alive(&p, &c), alive, 1e-12), "p_alive {c:?}: {}", p_alive(&p, &c));
            let got = expected_purchases(&p, &c, t);
            assert!(close(got, e, 1e-10), "E[Y({t})] {c:?}: {got:e} vs {e:e}");
        }
    }

    #[test]
    fn p_alive_matches_direct_formula() {
        // Equation (12) evaluated as printed, for every CDNOW repeat buyer.
        let p = PAPER;
        for c in cdnow().iter().filter(|c| c.frequency > 0.0) {
            let x = c.frequency;
            let direct =
                1.0 / (1.0 + p.a / (p.b + x - 1.0) * ((p.alpha + c.age) / (p.alpha + c.recency)).powf(p.r + x));
            assert!(close(p_alive(&p, c), direct, 1e-12), "{c:?}");
        }
    }

    #[test]
    fn p_alive_in_unit_interval_and_decreasing_in_age() {
        for x in [1.0, 2.0, 5.0, 20.0] {
            for recency in [0.5, 1.0, 10.0, 30.0] {
                let mut last = 1.0;
                for age in (30..400).map(|w| f64::from(w) * 0.5).filter(|&age| age >= recency) {
                    let pa = p_alive(&PAPER, &s(x, recency, age));
                    assert!(pa > 0.0 && pa <= 1.0, "x={x} t_x={recency} T={age}: {pa}");
                    assert!(pa <= last, "x={x} t_x={recency} T={age}: {pa} > {last}");
                    last = pa;
                }
                assert!(last < p_alive(&PAPER, &s(x, recency, recency.max(15.0))));
            }
        }
        assert_eq!(p_alive(&PAPER, &s(0.0, 0.0, 1e6)), 1.0);
    }

    #[test]
    fn bad_input_gives_errors_not_panics() {
        let ok = s(1.0, 2.0, 3.0);
        assert_eq!(fit(&[]), Err(FitError::Empty));
        assert_eq!(fit(&[ok, s(1.0, f64::NAN, 3.0)]), Err(FitError::NonFinite { index: 1 }));
        assert_eq!(fit(&[ok, s(1.0, 2.0, f64::INFINITY)]), Err(FitError::NonFinite { index: 1 }));
        for bad in [s(-1.0, 1.0, 3.0), s(1.5, 1.0, 3.0), s(1.0, 4.0, 3.0), s(1.0, 0.0, 3.0), s(0.0, 0.0, -1.0)] {
            assert_eq!(fit(&[ok, bad]), Err(FitError::InvalidSummary { index: 1 }), "{bad:?}");
        }
        assert_eq!(fit(&[s(0.0, 0.0, 3.0), s(0.0, 0.0, 5.0)]), Err(FitError::NoRepeatBuyers));
        assert!(!FitError::NoRepeatBuyers.to_string().is_empty());

        let bad_params = Params { r: -1.0, ..PAPER };
        assert!(log_likelihood(&bad_params, &[ok]).is_nan());
        assert!(log_likelihood(&PAPER, &[ok, s(1.0, 4.0, 3.0)]).is_nan());
        assert!(p_alive(&bad_params, &ok).is_nan());
        assert!(p_alive(&PAPER, &s(f64::NAN, 1.0, 3.0)).is_nan());
        assert!(expected_purchases(&bad_params, &ok, 1.0).is_nan());
        assert!(expected_purchases(&PAPER, &ok, -1.0).is_nan());
        assert!(expected_purchases(&PAPER, &ok, f64::INFINITY).is_nan());
        assert_eq!(expected_purchases(&PAPER, &ok, 0.0), 0.0);
    }

    #[test]
    fn fit_is_unit_free() {
        // The same data in days instead of weeks: alpha scales by 7, r, a and b are unchanged, and
        // the likelihood (a density in time) shifts by Σx · ln 7.
        let weeks = fit_cdnow();
        let days: Vec<Summary> = cdnow().iter().map(|c| s(c.frequency, c.recency * 7.0, c.age * 7.0)).collect();
        let f = fit(&days).expect("CDNOW in days fits");
        let (w, d) = (weeks.params, f.params);
        assert!(close(d.alpha, 7.0 * w.alpha, 1e-3) && close(d.r, w.r, 1e-3));
        assert!(close(d.a, w.a, 1e-3) && close(d.b, w.b, 1e-3));
        assert!((f.log_likelihood - (weeks.log_likelihood - 2457.0 * 7f64.ln())).abs() < 1e-4);
    }

    #[test]
    fn degenerate_data_returns_without_panicking() {
        // Data the model cannot pin down: any Ok or Err is acceptable, a panic or a hang is not.
        for d in [vec![s(1.0, 1.0, 1.0)], vec![s(1e6, 1.0, 2.0), s(0.0, 0.0, 2.0)], vec![s(5.0, 10.0, 10.0); 100]] {
            if let Ok(f) = fit(&d) {
                assert!(f.log_likelihood.is_finite(), "{d:?}: {f:?}");
            }
        }
    }
}
