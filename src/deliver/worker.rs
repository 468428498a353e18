//! The built-in deliverer: a background worker that claims due messages through engage.claim,
//! renders them, sends them on threads (no transaction is open during network I/O), and records
//! each outcome through engage.complete / engage.fail: the same contract as external deliverers.

use super::channels::{self, Outgoing, SendError};
use super::egress::Egress;
use super::template;
use crate::evaluate::rule_cache;
use crate::jsonb::Lenient;
use crate::policy::quiet_hours::{self, QuietHours};
use crate::policy::{self, FrequencyCap};
use crate::rule::Channel;
use crate::settings;
use crate::workers::{self, Worker};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One claimed message: either ready to send, or already known to fail (no address, no consent,
/// no template, a template error), which is recorded without any network call.
enum Prepared {
    Send(Leased, Outgoing),
    Fail(Leased, SendError),
    /// Inside the customer's quiet hours: give it back, due at this RFC 3339 instant.
    Defer(Leased, String),
    /// No longer passes the policy (consent, suppression list, frequency cap): reason, detail.
    Suppress(Leased, &'static str, String),
}

/// A claimed message: its outbox id and the lease token its outcome is recorded with.
#[derive(Debug, Clone, Copy)]
pub struct Leased {
    pub id: i64,
    pub token: i64,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_engage_deliverer_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // The claim's correlated policy sub-queries have a high estimated cost over the (unknown)
    // batch, which would cross jit_above_cost and spend most of a second compiling a query that
    // runs in a millisecond. The worker's statements are all short: no JIT for this session.
    // Its statements resolve names in pg_catalog only (engage objects are qualified), so nothing a
    // role creates in public, nor a database-level search_path, can run as the worker.
    BackgroundWorker::transaction(|| Spi::run("SET jit = off; SET search_path = pg_catalog, pg_temp"))
        .unwrap_or_else(|e| error!("pg_engage deliverer could not configure its session: {e}"));
    workers::started(Worker::Deliverer);
    log!("pg_engage deliverer started on database \"{database}\"");

    // Pacing state lives as long as the worker, so rate limits hold across batches; so does the
    // HTTP agent, so connections to providers are kept alive across batches.
    let pacing = Arc::new(RateLimits::default());
    let mut http = Http::new();
    let mut idle = false;
    // Batches overlap: while one is being sent on its own threads, this thread claims the next
    // and records the one before (the database and the network both stay busy). Sends never
    // overlap: at most engage.concurrency requests are open at a time.
    let mut in_flight: Option<InFlight> = None;
    let mut scan = ClaimScan::default();
    loop {
        let wait = if idle { settings::poll_interval() } else { Duration::ZERO };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break; // SIGTERM: the batch in flight is finished and recorded below.
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, as PostgreSQL's own workers do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            http = Http::new();
        }
        let next = if settings::worker_enabled() { claim_batch(&mut scan) } else { None };
        let sent = in_flight.take().map(InFlight::wait);
        in_flight = next.map(|batch| batch.start(&pacing, &http));
        idle = in_flight.is_none() && sent.is_none();
        if let Some(sent) = sent {
            sent.record();
        }
    }
    if let Some(batch) = in_flight.take() {
        batch.wait().record();
    }
    workers::stopped(Worker::Deliverer);
    log!("pg_engage deliverer stopped");
    workers::exit_to_be_restarted();
}

/// A claimed and prepared batch: what to send (or fail at once), and what needs no sending.
struct Ready {
    to_send: Vec<Prepared>,
    deferred: Vec<(Leased, String)>,
    suppressed: Vec<(Leased, &'static str, String)>,
}

/// A batch whose messages are being sent on their own threads.
struct InFlight {
    sending: std::thread::JoinHandle<Vec<Outcome>>,
    deferred: Vec<(Leased, String)>,
    suppressed: Vec<(Leased, &'static str, String)>,
}

/// A batch whose sends are over, to record.
struct Sent {
    results: Vec<Outcome>,
    deferred: Vec<(Leased, String)>,
    suppressed: Vec<(Leased, &'static str, String)>,
}

/// Where the next claim starts in due order: after the last message of a full batch (a backlog
/// is drained without stepping again through the dead entries of what was sent, which pile up
/// while a long transaction holds vacuum back), or from the front after a batch that was not
/// full and at least every [`FULL_SCAN_EVERY`], for what a continued scan passes by.
#[derive(Default)]
struct ClaimScan {
    after: Option<(TimestampWithTimeZone, i64)>,
    from_front_at: Option<Instant>,
}

const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

impl ClaimScan {
    fn start(&self) -> Option<(TimestampWithTimeZone, i64)> {
        match self.from_front_at {
            Some(at) if at.elapsed() < FULL_SCAN_EVERY => self.after,
            _ => None,
        }
    }

    /// After a claim that started at `started`, of `batch_size`, that claimed `last` last.
    fn advance(
        &mut self,
        started: Option<(TimestampWithTimeZone, i64)>,
        claimed: usize,
        batch_size: i32,
        last: Option<(TimestampWithTimeZone, i64)>,
    ) {
        if started.is_none() {
            self.from_front_at = Some(Instant::now());
        }
        self.after = if claimed as i64 >= i64::from(batch_size) { last } else { None };
    }
}

/// Claims a batch and prepares it (the send-time re-check, rendering); None when nothing is due.
fn claim_batch(scan: &mut ClaimScan) -> Option<Ready> {
    // The claim commits before anything is rendered: a template that kills the worker while it
    // renders has spent an attempt of its own message (so it ends dead after max_attempts claims)
    // and undoes nothing else.
    let (batch_size, start) = (settings::batch_size(), scan.start());
    let Claim { claimed, templates, frequency_caps, last } =
        BackgroundWorker::transaction(|| claim(batch_size, settings::lease().as_secs_f64(), start));
    scan.advance(start, claimed.len(), batch_size, last);
    if claimed.is_empty() {
        return None;
    }
    let mut ready = Ready { to_send: Vec::new(), deferred: Vec::new(), suppressed: Vec::new() };
    for prepared in claimed.into_iter().map(|c| c.prepare(&templates, &frequency_caps)) {
        match prepared {
            Prepared::Defer(leased, until) => ready.deferred.push((leased, until)),
            Prepared::Suppress(leased, reason, detail) => ready.suppressed.push((leased, reason, detail)),
            other => ready.to_send.push(other),
        }
    }
    Some(ready)
}

impl Ready {
    /// Starts sending on `engage.concurrency` threads of their own (they make no PostgreSQL call).
    fn start(self, pacing: &Arc<RateLimits>, http: &Http) -> InFlight {
        let (pacing, agent, timeout, egress) =
            (Arc::clone(pacing), http.agent.clone(), http.timeout, Arc::clone(&http.egress));
        let threads = settings::concurrency();
        let to_send = self.to_send;
        let sending = std::thread::spawn(move || send_all(&to_send, &pacing, &agent, timeout, &egress, threads));
        InFlight { sending, deferred: self.deferred, suppressed: self.suppressed }
    }
}

impl InFlight {
    fn wait(self) -> Sent {
        let results = self.sending.join().unwrap_or_else(|_| {
            // Its messages stay claimed: their leases expire and they are sent again.
            warning!("pg_engage deliverer: a sending thread panicked; its batch is retried when the leases expire");
            Vec::new()
        });
        Sent { results, deferred: self.deferred, suppressed: self.suppressed }
    }
}

impl Sent {
    /// Records every outcome (see `record`).
    fn record(self) {
        BackgroundWorker::transaction(|| record(&self.results, &self.deferred, &self.suppressed));
        let sent = self.results.iter().filter(|(_, r)| r.is_ok()).count();
        workers::batch_done(sent, self.results.len() - sent);
    }
}

/// The outcome of one message, to record.
pub type Outcome = (Leased, Result<Option<String>, SendError>);

/// The HTTP client of the deliverer's sending threads: one connection pool for the life of the
/// worker (rebuilt on reload, for a new timeout), with an idle connection kept per sending thread,
/// and no redirects followed (a provider URL answering 3xx fails the attempt: a redirect could
/// carry the credentials to another host).
struct Http {
    agent: ureq::Agent,
    timeout: Duration,
    egress: Arc<Egress>,
}

impl Http {
    fn new() -> Http {
        let timeout = settings::http_timeout();
        let threads = settings::concurrency();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(threads)
            .max_idle_connections(threads * 8)
            .build()
            .into();
        Http { agent, timeout, egress: Arc::new(settings::egress()) }
    }
}

fn send_all(
    batch: &[Prepared],
    pacing: &RateLimits,
    agent: &ureq::Agent,
    timeout: Duration,
    egress: &Egress,
    threads: usize,
) -> Vec<Outcome> {
    let queue: Mutex<std::slice::Iter<Prepared>> = Mutex::new(batch.iter());
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::with_capacity(batch.len()));
    let threads = threads.min(batch.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some(item) = next else { break };
                let outcome = match item {
                    Prepared::Defer(..) | Prepared::Suppress(..) => continue,
                    Prepared::Fail(leased, error) => (*leased, Err(error.clone())),
                    Prepared::Send(leased, msg) => {
                        pacing.wait_turn(msg);
                        (*leased, channels::send(agent, timeout, egress, msg))
                    }
                };
                if let Ok(mut r) = results.lock() {
                    r.push(outcome);
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// Per-channel pacing: each send reserves the next slot at `1 / rate_limit_per_second`.
#[derive(Default)]
struct RateLimits(Mutex<HashMap<String, Instant>>);

impl RateLimits {
    fn wait_turn(&self, msg: &Outgoing) {
        let Some(rate) = msg.config.get("rate_limit_per_second").and_then(Value::as_f64).filter(|r| *r > 0.0) else {
            return;
        };
        // engage.channels allows at least 0.001 per second; bound the gap anyway (no panic).
        let gap = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX).min(Duration::from_secs(1000));
        let slot = {
            let Ok(mut next) = self.0.lock() else { return };
            let now = Instant::now();
            let slot = next.get(&msg.kind).copied().filter(|t| *t > now).unwrap_or(now);
            next.insert(msg.kind.clone(), slot + gap);
            slot
        };
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
    }
}

/// Records a batch's outcomes with set-based calls of the public API, in a subtransaction. Should
/// that fail (one message's bookkeeping raising an ERROR), each message is recorded in its own
/// subtransaction, so one failure undoes only its own message: it stays claimed, its lease
/// expires and it is claimed again (and ends dead after max_attempts claims).
fn record(results: &[Outcome], deferred: &[(Leased, String)], suppressed: &[(Leased, &str, String)]) {
    if in_subtransaction(|| record_set(results, deferred, suppressed)).is_ok() {
        return;
    }
    for outcome in results {
        if let Err(e) = in_subtransaction(|| record_set(std::slice::from_ref(outcome), &[], &[])) {
            warning!("pg_engage deliverer could not record the outcome of message {}: {e}", outcome.0.id);
        }
    }
    for d in deferred {
        if let Err(e) = in_subtransaction(|| record_set(&[], std::slice::from_ref(d), &[])) {
            warning!("pg_engage deliverer could not defer message {}: {e}", d.0.id);
        }
    }
    for x in suppressed {
        if let Err(e) = in_subtransaction(|| record_set(&[], &[], std::slice::from_ref(x))) {
            warning!("pg_engage deliverer could not suppress message {}: {e}", x.0.id);
        }
    }
}

/// Runs `f` in a subtransaction of the current transaction: kept if it returns, rolled back alone
/// (with the ERROR's message returned) if it raises one.
fn in_subtransaction(f: impl FnOnce()) -> Result<(), String> {
    // SAFETY: the same steps as PL/pgSQL's exception blocks: begin an internal subtransaction,
    // release it on success, roll it back on error, and restore the caller's memory context and
    // resource owner either way. pgrx turns the ERROR into a panic caught here and flushes it.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::PgTryBuilder::new(std::panic::AssertUnwindSafe(move || {
            f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(())
        }))
        .catch_others(|e| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::CurrentResourceOwner = owner;
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                    r.message().to_string()
                }
                other => format!("{other:?}"),
            })
        })
        .execute()
    }
}

fn record_set(results: &[Outcome], deferred: &[(Leased, String)], suppressed: &[(Leased, &str, String)]) {
    let (mut sent_ids, mut sent_leases, mut provider_ids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failed_ids, mut failed_leases, mut errors, mut retryable) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (leased, result) in results {
        match result {
            Ok(provider_id) => {
                sent_ids.push(leased.id);
                sent_leases.push(leased.token);
                provider_ids.push(provider_id.clone());
            }
            Err(e) => {
                failed_ids.push(leased.id);
                failed_leases.push(leased.token);
                errors.push(e.message.clone());
                retryable.push(e.retryable);
            }
        }
    }
    Spi::connect_mut(|client| -> Result<(), pgrx::spi::Error> {
        if !sent_ids.is_empty() {
            client.update(
                "SELECT engage.complete_many($1::int8[], $2::int8[], $3::text[])",
                None,
                &[sent_ids.into(), sent_leases.into(), provider_ids.into()],
            )?;
        }
        if !deferred.is_empty() {
            let ids: Vec<i64> = deferred.iter().map(|d| d.0.id).collect();
            let leases: Vec<i64> = deferred.iter().map(|d| d.0.token).collect();
            let until: Vec<&str> = deferred.iter().map(|d| d.1.as_str()).collect();
            client.update(
                "SELECT engage.defer(u.id, u.lease, u.until::timestamptz, 'deferred: quiet hours until ' || u.until) \
                   FROM unnest($1::int8[], $2::int8[], $3::text[]) AS u(id, lease, until)",
                None,
                &[ids.into(), leases.into(), until.into()],
            )?;
        }
        if !suppressed.is_empty() {
            let ids: Vec<i64> = suppressed.iter().map(|s| s.0.id).collect();
            let leases: Vec<i64> = suppressed.iter().map(|s| s.0.token).collect();
            let reasons: Vec<&str> = suppressed.iter().map(|s| s.1).collect();
            let details: Vec<&str> = suppressed.iter().map(|s| s.2.as_str()).collect();
            client.update(
                "SELECT engage.suppress(u.id, u.lease, u.reason, u.detail) \
                   FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) AS u(id, lease, reason, detail)",
                None,
                &[ids.into(), leases.into(), reasons.into(), details.into()],
            )?;
        }
        if !failed_ids.is_empty() {
            client.update(
                "SELECT engage.fail(u.id, u.lease, u.error, u.retryable) \
                   FROM unnest($1::int8[], $2::int8[], $3::text[], $4::bool[]) AS u(id, lease, error, retryable)",
                None,
                &[failed_ids.into(), failed_leases.into(), errors.into(), retryable.into()],
            )?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| error!("pg_engage deliverer could not record outcomes: {e}"));
}

/// The claim itself: the claimed messages' ids and lease tokens.
const CLAIM: &str =
    "SELECT id, lease, due_at FROM engage.claim($1, make_interval(secs => $2), 'pg_engage deliverer', $3, $4)";

/// What sending the claimed messages needs, and the send-time re-check's facts. A statement of
/// its own after the claim, so its snapshot sees everything committed before the claim took the
/// messages (read in the claim's statement, a consent withdrawn in the same transaction that
/// queued a message could be missed: the claim function sees that transaction, the outer query's
/// older snapshot would not).
const CLAIMED: &str = "\
SELECT c.id, c.customer_id, c.channel, c.template, c.payload, c.lease,
       t.name AS trigger_name,
       e.name AS event_name, e.properties, e.occurred_at::text AS occurred_at,
       p.attributes, p.email, p.phone, p.push_token, coalesce(p.locale, 'en') AS locale, p.consent,
       ch.config, coalesce(s.secrets, '{}') AS secrets, coalesce(ch.enabled, false) AS enabled,
       ch.rate_limit_per_second::float8 AS rate,
       p.timezone, to_char(ch.quiet_hours_start, 'HH24:MI:SS') AS quiet_start,
       to_char(ch.quiet_hours_end, 'HH24:MI:SS') AS quiet_end,
       c.category <> 'marketing' AS transactional, coalesce(ch.requires_opt_in, false) AS requires_opt_in,
       cardinality(c.fallback) > 0 AS has_fallback,
       -- An escalation goes to a team, not the customer: the suppression list is not theirs.
       CASE WHEN c.category <> 'escalation' THEN
         ARRAY(SELECT x.channel FROM engage.suppressions x WHERE x.customer_id = c.customer_id) END AS suppressed,
       sent.channels AS sent_channels, sent.ago AS sent_ago,
       s.kind IS NOT NULL AND c.channel <> 'webhook'
         AND s.destination IS DISTINCT FROM engage.channel_destination(c.channel, ch.config) AS secrets_moved
  FROM engage.outbox c
  LEFT JOIN engage.triggers t ON t.id = c.trigger_id
  LEFT JOIN engage.events e ON e.id = c.event_id
  LEFT JOIN engage.profiles p ON p.customer_id = c.customer_id
  LEFT JOIN engage.channels ch ON ch.kind = c.channel
  LEFT JOIN engage.channel_secrets s ON s.kind = c.channel
  -- For a marketing message, the customer's marketing messages sent within the longest
  -- frequency cap: their channels, and how long ago (microseconds). Without caps, the sent log
  -- is not read at all (a one-time filter).
  LEFT JOIN LATERAL (
       SELECT array_agg(m.channel ORDER BY m.sent_at) AS channels,
              array_agg((extract(epoch FROM now() - m.sent_at) * 1000000)::int8 ORDER BY m.sent_at) AS ago
         FROM engage.messages m
        WHERE EXISTS (SELECT FROM engage.frequency_caps)
          AND c.category = 'marketing' AND m.customer_id = c.customer_id AND m.category = 'marketing'
          AND m.sent_at > now() - (SELECT max(f.per) FROM engage.frequency_caps f)) sent ON true
 WHERE c.id = ANY ($1) AND c.status = 'claimed'
 ORDER BY c.due_at, c.id";

const TEMPLATES: &str = "SELECT name, channel, locale, subject, body, html FROM engage.templates";

/// A claimed batch and what preparing it needs.
#[derive(Default)]
struct Claim {
    claimed: Vec<Claimed>,
    templates: Templates,
    frequency_caps: Vec<FrequencyCap>,
    /// The (due_at, id) of the last claimed message in due order.
    last: Option<(TimestampWithTimeZone, i64)>,
}

/// Claims a batch (continuing after `after` in due order, if given) and reads what sending it
/// needs: the claimed messages and the templates.
fn claim(batch_size: i32, lease_seconds: f64, after: Option<(TimestampWithTimeZone, i64)>) -> Claim {
    Spi::connect_mut(|client| -> Result<Claim, pgrx::spi::Error> {
        let mut ids: Vec<i64> = Vec::new();
        let mut last: Option<(TimestampWithTimeZone, i64)> = None;
        let args = [batch_size.into(), lease_seconds.into(), after.map(|a| a.0).into(), after.map(|a| a.1).into()];
        for row in client.update(CLAIM, None, &args)? {
            let id = row.get_by_name::<i64, _>("id")?.unwrap_or_default();
            ids.push(id);
            if let Some(due_at) = row.get_by_name::<TimestampWithTimeZone, _>("due_at")? {
                if last.is_none_or(|l| (due_at, id) > l) {
                    last = Some((due_at, id));
                }
            }
        }
        if ids.is_empty() {
            return Ok(Claim::default());
        }
        // `update`, not `select`: a fresh snapshot that sees the claim (SPI read-only mode keeps the old one).
        let rows = client.update(CLAIMED, None, &[ids.into()])?;
        let mut claimed = Vec::new();
        for row in rows {
            // Columns by the names CLAIMED gives them, which are the fields'.
            let id: i64 = row.get_by_name("id")?.unwrap_or_default();
            let text = |name: &str| row.get_by_name::<String, _>(name);
            let json = |name: &str| row.get_by_name::<Lenient, _>(name).map(json_value);
            let flag = |name: &str| row.get_by_name::<bool, _>(name).map(|b| b.unwrap_or(false));
            claimed.push(Claimed {
                id,
                customer_id: text("customer_id")?.unwrap_or_default(),
                channel: text("channel")?.unwrap_or_default(),
                template: text("template")?,
                payload: json("payload")?,
                trigger_name: text("trigger_name")?.unwrap_or_default(),
                event_name: text("event_name")?.unwrap_or_default(),
                properties: json("properties")?,
                occurred_at: text("occurred_at")?.unwrap_or_default(),
                attributes: json("attributes")?,
                email: text("email")?,
                phone: text("phone")?,
                push_token: text("push_token")?,
                locale: text("locale")?.unwrap_or_else(|| "en".into()),
                consent: json("consent")?,
                config: row.get_by_name::<Lenient, _>("config")?.map(|j| j.0),
                secrets: json("secrets")?,
                enabled: flag("enabled")?,
                rate: row.get_by_name("rate")?,
                timezone: text("timezone")?,
                quiet: match (text("quiet_start")?, text("quiet_end")?) {
                    (Some(start), Some(end)) => QuietHours::parse(&start, &end),
                    _ => None,
                },
                transactional: flag("transactional")?,
                requires_opt_in: flag("requires_opt_in")?,
                has_fallback: flag("has_fallback")?,
                suppressed: row.get_by_name::<Vec<String>, _>("suppressed")?.unwrap_or_default(),
                sent_marketing: {
                    let channels = row.get_by_name::<Vec<String>, _>("sent_channels")?.unwrap_or_default();
                    let ago = row.get_by_name::<Vec<i64>, _>("sent_ago")?.unwrap_or_default();
                    channels.iter().zip(ago).filter_map(|(c, ago)| Some((Channel::parse(c)?, -ago))).collect()
                },
                leased: Leased { id, token: row.get_by_name("lease")?.unwrap_or_default() },
                secrets_moved: flag("secrets_moved")?,
            });
        }
        if claimed.is_empty() {
            return Ok(Claim { last, ..Claim::default() });
        }
        let mut templates = Templates::new();
        for row in client.select(TEMPLATES, None, &[])? {
            let text = |name: &str| row.get_by_name::<String, _>(name);
            let key = (
                text("name")?.unwrap_or_default(),
                text("channel")?.unwrap_or_default(),
                text("locale")?.unwrap_or_default(),
            );
            templates.insert(key, (text("subject")?, text("body")?.unwrap_or_default(), text("html")?));
        }
        let frequency_caps = rule_cache::frequency_caps(client)?;
        Ok(Claim { claimed, templates, frequency_caps, last })
    })
    .unwrap_or_else(|e| error!("pg_engage deliverer could not claim messages: {e}"))
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from(std::time::SystemTime::now())
}

/// A jsonb column; a value JSON cannot hold (a number beyond double range) reads as missing.
fn json_value(column: Option<Lenient>) -> Value {
    column.map_or(Value::Null, |j| j.0)
}

struct Claimed {
    id: i64,
    customer_id: String,
    channel: String,
    template: Option<String>,
    payload: Value,
    trigger_name: String,
    event_name: String,
    properties: Value,
    occurred_at: String,
    attributes: Value,
    email: Option<String>,
    phone: Option<String>,
    push_token: Option<String>,
    locale: String,
    consent: Value,
    config: Option<Value>,
    secrets: Value,
    enabled: bool,
    rate: Option<f64>,
    timezone: Option<String>,
    quiet: Option<QuietHours>,
    /// Not a marketing message (transactional or escalation): consent, quiet hours and frequency caps do not apply.
    transactional: bool,
    requires_opt_in: bool,
    has_fallback: bool,
    /// The channels (or "all") the customer is on the suppression list for; none for an escalation.
    suppressed: Vec<String>,
    /// The customer's marketing messages sent within the longest frequency cap: channel and
    /// when, in microseconds relative to the re-check (negative: before it).
    sent_marketing: Vec<(Channel, i64)>,
    leased: Leased,
    /// The channel points elsewhere than when its secrets were written: they are not sent.
    secrets_moved: bool,
}

/// Templates by (name, channel, locale): (subject, body, html).
type Templates = HashMap<(String, String, String), (Option<String>, String, Option<String>)>;

impl Claimed {
    /// The send-time re-check, then rendering. A message whose channel is no longer allowed moves
    /// to its next fallback channel, or is suppressed when it has none.
    fn prepare(self, templates: &Templates, frequency_caps: &[FrequencyCap]) -> Prepared {
        let marketing = !self.transactional;
        // The insert path's routing rule, asked again with today's list and consent.
        let refused = policy::refusal(&self.channel, &self.suppressed, &self.consent, self.requires_opt_in, marketing)
            .map(|reason| {
                let detail = match reason {
                    policy::Reason::Suppression => format!("customer is on the suppression list for {}", self.channel),
                    _ => format!("customer has not consented to marketing on {}", self.channel),
                };
                (reason.as_str(), detail)
            });
        if let Some((reason, detail)) = refused {
            return if self.has_fallback {
                Prepared::Fail(self.leased, SendError { retryable: false, message: detail })
            } else {
                Prepared::Suppress(self.leased, reason, detail)
            };
        }
        if let (true, Some(quiet)) = (marketing, &self.quiet) {
            let zone = quiet_hours::zone(self.timezone.as_deref(), &settings::default_timezone());
            if let Some(until) = quiet.deferral(now(), zone) {
                return Prepared::Defer(self.leased, until.to_rfc3339());
            }
        }
        // The insert path's frequency rule, now with the messages actually sent.
        let channel = Channel::parse(&self.channel);
        if let (true, Some(channel)) = (marketing, channel) {
            if let Some(cap) = policy::over_frequency_cap(frequency_caps, channel, 0, &self.sent_marketing) {
                return Prepared::Suppress(self.leased, "frequency", cap.describe());
            }
        }
        match self.try_prepare(templates) {
            Ok(msg) => Prepared::Send(self.leased, msg),
            Err(e) => Prepared::Fail(self.leased, e),
        }
    }

    fn try_prepare(&self, templates: &Templates) -> Result<Outgoing, SendError> {
        let permanent = |message: String| SendError { retryable: false, message };
        let Some(config) = &self.config else {
            return Err(permanent(format!("channel \"{}\" is not configured in engage.channels", self.channel)));
        };
        if !self.enabled {
            return Err(SendError { retryable: true, message: format!("channel \"{}\" is disabled", self.channel) });
        }
        if self.secrets_moved {
            return Err(permanent(format!(
                "channel \"{}\" points elsewhere than when its secrets were written: write engage.channel_secrets again to send its credentials there",
                self.channel
            )));
        }
        let to = match self.channel.as_str() {
            "email" => self.email.clone(),
            "sms" | "whatsapp" => self.phone.clone(),
            "push" => self.push_token.clone(),
            _ => config.get("url").and_then(Value::as_str).map(str::to_string),
        }
        .filter(|a| !a.is_empty())
        .ok_or_else(|| permanent(format!("no {} address for customer {}", self.channel, self.customer_id)))?;

        let mut profile = self.attributes.clone();
        if let Value::Object(map) = &mut profile {
            map.insert("customer_id".into(), json!(self.customer_id));
        }
        let document = json!({
            "id": channels::message_id(self.id),
            "type": self.trigger_name,
            "customer_id": self.customer_id,
            "event": {"name": self.event_name, "properties": self.properties, "occurred_at": self.occurred_at},
            "payload": self.payload,
        });
        let context = template::Context::object(vec![
            ("profile", template::Context::from_json(&profile)),
            ("event", template::Context::from_json(&document["event"])),
            ("payload", template::Context::from_json(&self.payload)),
            ("message", template::Context::from_json(&json!({"id": channels::message_id(self.id)}))),
        ]);
        let (subject, text, html) = match &self.template {
            None => (String::new(), String::new(), None),
            Some(name) => {
                let found = templates
                    .get(&(name.clone(), self.channel.clone(), self.locale.clone()))
                    .or_else(|| templates.get(&(name.clone(), self.channel.clone(), "en".to_string())))
                    .ok_or_else(|| {
                        permanent(format!(
                            "no template \"{name}\" for channel {} (locale {})",
                            self.channel, self.locale
                        ))
                    })?;
                let render =
                    |t: &str| template::render(t, &context).map_err(|e| permanent(format!("template \"{name}\": {e}")));
                let subject = found.0.as_deref().map(render).transpose()?.unwrap_or_default();
                let html = found.2.as_deref().map(render).transpose()?;
                (subject, render(&found.1)?, html)
            }
        };
        let mut document = document;
        if self.template.is_some() {
            document["rendered"] = json!({"subject": subject, "body": text});
        }
        let mut config = config.clone();
        if let (Value::Object(map), Some(rate)) = (&mut config, self.rate) {
            map.insert("rate_limit_per_second".into(), json!(rate));
        }
        Ok(Outgoing {
            outbox_id: self.id,
            kind: self.channel.clone(),
            to,
            subject,
            text,
            html,
            document,
            config,
            secrets: self.secrets.clone(),
        })
    }
}

/// Message preparation (`Claimed::prepare`): the send-time re-check, the address, the template,
/// the document. Pure: no database, no clock (none of these messages has quiet hours).
#[cfg(test)]
mod prepare_tests {
    use super::*;

    /// A marketing webhook message for c1 that passes every check.
    fn claimed(channel: &str) -> Claimed {
        Claimed {
            id: 42,
            customer_id: "c1".into(),
            channel: channel.into(),
            template: None,
            payload: json!({"coupon": "SAVE10"}),
            trigger_name: "cart".into(),
            event_name: "cart_updated".into(),
            properties: json!({"value": 120}),
            occurred_at: "2026-01-01T10:00:00+00:00".into(),
            attributes: json!({"first_name": "Ada"}),
            email: Some("ada@example.com".into()),
            phone: Some("+15550000001".into()),
            push_token: None,
            locale: "de".into(),
            consent: json!({}),
            config: Some(json!({"url": "https://hooks.example.com/in"})),
            secrets: json!({}),
            enabled: true,
            rate: None,
            timezone: None,
            quiet: None,
            transactional: false,
            requires_opt_in: false,
            has_fallback: false,
            suppressed: Vec::new(),
            sent_marketing: Vec::new(),
            leased: Leased { id: 42, token: 7 },
            secrets_moved: false,
        }
    }

    fn templates() -> Templates {
        HashMap::from([
            (
                ("welcome".to_string(), "email".to_string(), "en".to_string()),
                (
                    Some("Hi {{ profile.first_name }}".to_string()),
                    "Code {{ payload.coupon }}, ref {{ message.id }}".to_string(),
                    None,
                ),
            ),
            (
                ("welcome".to_string(), "email".to_string(), "fr".to_string()),
                (Some("Salut {{ profile.first_name }}".to_string()), "Code {{ payload.coupon }}".to_string(), None),
            ),
        ])
    }

    fn sent(p: Prepared) -> Outgoing {
        match p {
            Prepared::Send(leased, msg) => {
                assert_eq!((leased.id, leased.token), (42, 7), "the lease travels with the message");
                msg
            }
            Prepared::Fail(_, e) => panic!("failed: {}", e.message),
            Prepared::Defer(_, at) => panic!("deferred to {at}"),
            Prepared::Suppress(_, reason, detail) => panic!("suppressed ({reason}): {detail}"),
        }
    }

    fn failed(p: Prepared) -> SendError {
        match p {
            Prepared::Fail(_, e) => e,
            _ => panic!("expected a failure"),
        }
    }

    fn suppressed(p: Prepared) -> (&'static str, String) {
        match p {
            Prepared::Suppress(_, reason, detail) => (reason, detail),
            _ => panic!("expected a suppression"),
        }
    }

    #[test]
    fn a_webhook_goes_to_the_channel_url_with_the_message_document() {
        let msg = sent(claimed("webhook").prepare(&templates(), &[]));
        assert_eq!(
            (msg.outbox_id, msg.kind.as_str(), msg.to.as_str()),
            (42, "webhook", "https://hooks.example.com/in")
        );
        assert_eq!(
            msg.document,
            json!({"id": "msg_42", "type": "cart", "customer_id": "c1",
                   "event": {"name": "cart_updated", "properties": {"value": 120}, "occurred_at": "2026-01-01T10:00:00+00:00"},
                   "payload": {"coupon": "SAVE10"}}),
            "no template: no rendered part"
        );
    }

    #[test]
    fn each_channel_takes_its_address_from_the_profile_and_a_missing_one_is_permanent() {
        assert_eq!(sent(claimed("email").prepare(&templates(), &[])).to, "ada@example.com");
        assert_eq!(sent(claimed("sms").prepare(&templates(), &[])).to, "+15550000001");
        assert_eq!(sent(claimed("whatsapp").prepare(&templates(), &[])).to, "+15550000001");
        let e = failed(claimed("push").prepare(&templates(), &[]));
        assert!(!e.retryable && e.message == "no push address for customer c1", "{}", e.message);
        let mut empty = claimed("email");
        empty.email = Some(String::new());
        assert_eq!(failed(empty.prepare(&templates(), &[])).message, "no email address for customer c1");
    }

    #[test]
    fn the_template_of_the_customers_locale_is_rendered_else_english_else_it_fails() {
        let mut french = claimed("email");
        french.template = Some("welcome".into());
        french.locale = "fr".into();
        let msg = sent(french.prepare(&templates(), &[]));
        assert_eq!((msg.subject.as_str(), msg.text.as_str()), ("Salut Ada", "Code SAVE10"));
        assert_eq!(msg.document["rendered"], json!({"subject": "Salut Ada", "body": "Code SAVE10"}));

        let mut german = claimed("email");
        german.template = Some("welcome".into());
        let msg = sent(german.prepare(&templates(), &[]));
        assert_eq!(
            (msg.subject.as_str(), msg.text.as_str()),
            ("Hi Ada", "Code SAVE10, ref msg_42"),
            "no de: the en one"
        );

        let mut unknown = claimed("email");
        unknown.template = Some("goodbye".into());
        let e = failed(unknown.prepare(&templates(), &[]));
        assert!(
            !e.retryable && e.message.contains("no template \"goodbye\" for channel email (locale de)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_suppression_list_and_consent_refuse_a_marketing_message_or_move_it_to_its_fallback() {
        let mut listed = claimed("email");
        listed.suppressed = vec!["email".into()];
        assert_eq!(suppressed(listed.prepare(&templates(), &[])).0, "suppression");
        let mut other = claimed("email");
        other.suppressed = vec!["sms".into()];
        sent(other.prepare(&templates(), &[]));
        let mut listed = claimed("email");
        listed.suppressed = vec!["all".into()];
        listed.has_fallback = true;
        let e = failed(listed.prepare(&templates(), &[]));
        assert!(!e.retryable, "a refusal with a fallback fails permanently, so fail() moves it on: {}", e.message);

        let mut opted_out = claimed("email");
        opted_out.consent = json!({"email": false});
        assert_eq!(
            suppressed(opted_out.prepare(&templates(), &[])),
            ("consent", "customer has not consented to marketing on email".into())
        );
        let mut transactional = claimed("email");
        transactional.consent = json!({"email": false});
        transactional.transactional = true;
        sent(transactional.prepare(&templates(), &[]));

        let mut opt_in = claimed("sms");
        opt_in.requires_opt_in = true;
        assert_eq!(suppressed(opt_in.prepare(&templates(), &[])).0, "consent", "a channel that requires opt-in");
        let mut opted_in = claimed("sms");
        opted_in.requires_opt_in = true;
        opted_in.consent = json!({"sms": true});
        sent(opted_in.prepare(&templates(), &[]));
    }

    #[test]
    fn a_frequency_cap_counts_the_messages_sent_in_its_window_and_spares_transactional_ones() {
        const HOUR: i64 = 3_600_000_000;
        let caps = [
            FrequencyCap { channel: Some(Channel::Email), max: 2, per_micros: 24 * HOUR },
            FrequencyCap { channel: None, max: 3, per_micros: 24 * HOUR },
        ];
        let with_sent = |channel: &str, sent: &[(Channel, i64)]| {
            let mut c = claimed(channel);
            c.sent_marketing = sent.to_vec();
            c
        };
        let two_emails = [(Channel::Email, -2 * HOUR), (Channel::Sms, -HOUR), (Channel::Email, -23 * HOUR)];
        assert_eq!(
            suppressed(with_sent("email", &two_emails).prepare(&templates(), &caps)),
            ("frequency", "frequency cap: 2 messages per 1 day on email".into())
        );
        // An email a day ago has left the window.
        sent(
            with_sent("email", &[(Channel::Email, -2 * HOUR), (Channel::Email, -24 * HOUR)])
                .prepare(&templates(), &caps),
        );
        // Three messages on any channels reach the cap on all channels.
        assert_eq!(
            suppressed(with_sent("sms", &two_emails).prepare(&templates(), &caps)),
            ("frequency", "frequency cap: 3 messages per 1 day".into())
        );
        let mut transactional = with_sent("email", &two_emails);
        transactional.transactional = true;
        sent(transactional.prepare(&templates(), &caps));
    }

    #[test]
    fn the_channel_must_be_configured_enabled_and_still_where_its_secrets_were_written() {
        let mut unconfigured = claimed("webhook");
        unconfigured.config = None;
        let e = failed(unconfigured.prepare(&templates(), &[]));
        assert!(!e.retryable && e.message.contains("not configured"), "{}", e.message);
        let mut disabled = claimed("webhook");
        disabled.enabled = false;
        let e = failed(disabled.prepare(&templates(), &[]));
        assert!(e.retryable, "a disabled channel is retried later: {}", e.message);
        let mut moved = claimed("webhook");
        moved.secrets_moved = true;
        let e = failed(moved.prepare(&templates(), &[]));
        assert!(!e.retryable && e.message.contains("points elsewhere"), "{}", e.message);
    }

    #[test]
    fn the_channels_rate_limit_reaches_the_sender() {
        let mut paced = claimed("webhook");
        paced.rate = Some(2.5);
        assert_eq!(sent(paced.prepare(&templates(), &[])).config["rate_limit_per_second"], json!(2.5));
    }
}
