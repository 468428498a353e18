//! The built-in deliverer: a background worker that claims due messages through engage.claim,
//! renders them, sends them on threads (no transaction is open during network I/O), and records
//! each outcome through engage.complete / engage.fail: the same contract as external deliverers.

use super::channels::{self, Outgoing, SendError};
use super::{settings, status, template};
use crate::jsonb::Lenient;
use crate::policy::quiet_hours::{self, QuietHours};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One claimed message: either ready to send, or already known to fail (no address, no consent,
/// no template, a template error), which is recorded without any network call.
enum Prepared {
    Send(Outgoing),
    Fail(i64, SendError),
    /// Inside the customer's quiet hours: give it back, due at this RFC 3339 instant.
    Defer(i64, String),
    /// No longer passes the policy (consent, suppression list, frequency cap): reason, detail.
    Suppress(i64, &'static str, String),
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
    BackgroundWorker::transaction(|| Spi::run("SET jit = off"))
        .unwrap_or_else(|e| error!("pg_engage deliverer could not configure its session: {e}"));
    status::worker_started();
    log!("pg_engage deliverer started on database \"{database}\"");

    // Pacing state lives as long as the worker, so rate limits hold across batches.
    let pacing = RateLimits::default();
    let mut idle = false;
    loop {
        let wait = if idle { settings::poll_interval() } else { Duration::ZERO };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break; // SIGTERM: the previous batch is fully recorded; nothing is in flight.
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, as PostgreSQL's own workers do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !settings::worker_enabled() {
            idle = true;
            continue;
        }
        idle = deliver_one_batch(&pacing) == 0;
    }
    status::worker_stopped();
    log!("pg_engage deliverer stopped");
    super::exit_to_be_restarted();
}

/// Claims, sends and records one batch; returns how many messages it handled.
fn deliver_one_batch(pacing: &RateLimits) -> usize {
    let batch = BackgroundWorker::transaction(|| claim_and_prepare(settings::batch_size(), settings::lease_seconds()));
    if batch.is_empty() {
        return 0;
    }
    let results = send_all(&batch, pacing);
    let deferred: Vec<(i64, String)> = batch
        .iter()
        .filter_map(|p| if let Prepared::Defer(id, until) = p { Some((*id, until.clone())) } else { None })
        .collect();
    let suppressed: Vec<(i64, &str, String)> = batch
        .iter()
        .filter_map(|p| if let Prepared::Suppress(id, r, d) = p { Some((*id, *r, d.clone())) } else { None })
        .collect();
    let handled = results.len() + deferred.len() + suppressed.len();
    BackgroundWorker::transaction(|| record(&results, &deferred, &suppressed));
    status::batch_done(&results);
    handled
}

/// The outcome of one message, to record.
pub type Outcome = (i64, Result<Option<String>, SendError>);

fn send_all(batch: &[Prepared], pacing: &RateLimits) -> Vec<Outcome> {
    let timeout = settings::http_timeout();
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
    let queue: Mutex<std::slice::Iter<Prepared>> = Mutex::new(batch.iter());
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::with_capacity(batch.len()));
    let threads = settings::concurrency().min(batch.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some(item) = next else { break };
                let outcome = match item {
                    Prepared::Defer(..) | Prepared::Suppress(..) => continue,
                    Prepared::Fail(id, error) => (*id, Err(error.clone())),
                    Prepared::Send(msg) => {
                        pacing.wait_turn(msg);
                        (msg.outbox_id, channels::send(&agent, timeout, msg))
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
        let gap = Duration::from_secs_f64(1.0 / rate);
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

/// Records a batch's outcomes with set-based calls of the public API.
fn record(results: &[Outcome], deferred: &[(i64, String)], suppressed: &[(i64, &str, String)]) {
    let (mut sent_ids, mut provider_ids) = (Vec::new(), Vec::new());
    let (mut failed_ids, mut errors, mut retryable) = (Vec::new(), Vec::new(), Vec::new());
    for (id, result) in results {
        match result {
            Ok(provider_id) => {
                sent_ids.push(*id);
                provider_ids.push(provider_id.clone());
            }
            Err(e) => {
                failed_ids.push(*id);
                errors.push(e.message.clone());
                retryable.push(e.retryable);
            }
        }
    }
    Spi::connect_mut(|client| -> Result<(), pgrx::spi::Error> {
        if !sent_ids.is_empty() {
            client.update(
                "SELECT engage.complete(u.id, u.provider_id) FROM unnest($1::int8[], $2::text[]) AS u(id, provider_id)",
                None,
                &[sent_ids.into(), provider_ids.into()],
            )?;
        }
        if !deferred.is_empty() {
            let (ids, until): (Vec<i64>, Vec<String>) = deferred.iter().cloned().unzip();
            client.update(
                "SELECT engage.defer(u.id, u.until::timestamptz, 'deferred: quiet hours until ' || u.until) \
                   FROM unnest($1::int8[], $2::text[]) AS u(id, until)",
                None,
                &[ids.into(), until.into()],
            )?;
        }
        if !suppressed.is_empty() {
            let ids: Vec<i64> = suppressed.iter().map(|s| s.0).collect();
            let reasons: Vec<&str> = suppressed.iter().map(|s| s.1).collect();
            let details: Vec<&str> = suppressed.iter().map(|s| s.2.as_str()).collect();
            client.update(
                "SELECT engage.suppress(u.id, u.reason, u.detail) FROM unnest($1::int8[], $2::text[], $3::text[]) AS u(id, reason, detail)",
                None,
                &[ids.into(), reasons.into(), details.into()],
            )?;
        }
        if !failed_ids.is_empty() {
            client.update(
                "SELECT engage.fail(u.id, u.error, u.retryable) FROM unnest($1::int8[], $2::text[], $3::bool[]) AS u(id, error, retryable)",
                None,
                &[failed_ids.into(), errors.into(), retryable.into()],
            )?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| error!("pg_engage deliverer could not record outcomes: {e}"));
}

const CLAIM: &str = "\
SELECT c.id, c.customer_id, c.channel, c.template, c.payload, c.trigger_id,
       t.name AS trigger_name,
       e.name AS event_name, e.properties, e.occurred_at::text,
       p.attributes, p.email, p.phone, p.push_token, coalesce(p.locale, 'en'), p.consent,
       ch.config, coalesce(s.secrets, '{}'), ch.enabled, ch.rate_limit_per_second::float8,
       p.timezone, to_char(ch.quiet_hours_start, 'HH24:MI:SS'), to_char(ch.quiet_hours_end, 'HH24:MI:SS'),
       c.category <> 'marketing', coalesce(ch.requires_opt_in, false), cardinality(c.fallback) > 0,
       c.category <> 'escalation' AND EXISTS (SELECT 1 FROM engage.suppressions x
                WHERE x.customer_id = c.customer_id AND x.channel IN ('all', c.channel)),
       CASE WHEN c.category = 'marketing' THEN
         (SELECT format('frequency cap: %s messages per %s%s', f.max_messages, f.per, ' on ' || f.channel)
            FROM engage.frequency_caps f
           WHERE (f.channel IS NULL OR f.channel = c.channel)
             AND f.max_messages <= (SELECT count(*) FROM engage.messages m
                                     WHERE m.customer_id = c.customer_id AND m.category = 'marketing'
                                       AND (f.channel IS NULL OR m.channel = f.channel)
                                       AND m.sent_at > now() - f.per)
           ORDER BY f.id LIMIT 1)
       END
  FROM engage.claim($1, make_interval(secs => $2), 'pg_engage deliverer') c
  LEFT JOIN engage.triggers t ON t.id = c.trigger_id
  LEFT JOIN engage.events e ON e.id = c.event_id
  LEFT JOIN engage.profiles p ON p.customer_id = c.customer_id
  LEFT JOIN engage.channels ch ON ch.kind = c.channel
  LEFT JOIN engage.channel_secrets s ON s.kind = c.channel";

const TEMPLATES: &str = "SELECT name, channel, locale, subject, body, html FROM engage.templates";

fn claim_and_prepare(batch_size: i32, lease_seconds: f64) -> Vec<Prepared> {
    Spi::connect_mut(|client| -> Result<Vec<Prepared>, pgrx::spi::Error> {
        let rows = client.update(CLAIM, None, &[batch_size.into(), lease_seconds.into()])?;
        let mut claimed = Vec::new();
        for row in rows {
            claimed.push(Claimed {
                id: row.get(1)?.unwrap_or_default(),
                customer_id: row.get(2)?.unwrap_or_default(),
                channel: row.get(3)?.unwrap_or_default(),
                template: row.get(4)?,
                payload: json_value(row.get(5)?),
                trigger_name: row.get(7)?.unwrap_or_default(),
                event_name: row.get(8)?.unwrap_or_default(),
                properties: json_value(row.get(9)?),
                occurred_at: row.get(10)?.unwrap_or_default(),
                attributes: json_value(row.get(11)?),
                email: row.get(12)?,
                phone: row.get(13)?,
                push_token: row.get(14)?,
                locale: row.get(15)?.unwrap_or_else(|| "en".into()),
                consent: json_value(row.get(16)?),
                config: row.get::<Lenient>(17)?.map(|j| j.0),
                secrets: json_value(row.get(18)?),
                enabled: row.get(19)?.unwrap_or(false),
                rate: row.get(20)?,
                timezone: row.get(21)?,
                quiet: match (row.get::<String>(22)?, row.get::<String>(23)?) {
                    (Some(start), Some(end)) => QuietHours::parse(&start, &end),
                    _ => None,
                },
                transactional: row.get(24)?.unwrap_or(false),
                requires_opt_in: row.get(25)?.unwrap_or(false),
                has_fallback: row.get(26)?.unwrap_or(false),
                suppressed: row.get(27)?.unwrap_or(false),
                over_frequency_cap: row.get(28)?,
            });
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut templates = Templates::new();
        for row in client.select(TEMPLATES, None, &[])? {
            let key =
                (row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default(), row.get(3)?.unwrap_or_default());
            templates.insert(key, (row.get(4)?, row.get(5)?.unwrap_or_default(), row.get(6)?));
        }
        Ok(claimed.into_iter().map(|c| c.prepare(&templates)).collect())
    })
    .unwrap_or_else(|e| error!("pg_engage deliverer could not claim messages: {e}"))
}

fn now() -> chrono::DateTime<chrono::Utc> {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
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
    /// On the suppression list for this channel or all.
    suppressed: bool,
    /// The frequency cap that sending now would exceed, described.
    over_frequency_cap: Option<String>,
}

/// Templates by (name, channel, locale): (subject, body, html).
type Templates = HashMap<(String, String, String), (Option<String>, String, Option<String>)>;

impl Claimed {
    /// The send-time re-check, then rendering. A message whose channel is no longer allowed moves
    /// to its next fallback channel, or is suppressed when it has none.
    fn prepare(self, templates: &Templates) -> Prepared {
        let marketing = !self.transactional;
        let refused = if self.suppressed {
            Some(("suppression", format!("customer is on the suppression list for {}", self.channel)))
        } else if marketing && !crate::policy::consents(&self.consent, &self.channel, self.requires_opt_in) {
            Some(("consent", format!("customer has not consented to marketing on {}", self.channel)))
        } else {
            None
        };
        if let Some((reason, detail)) = refused {
            return if self.has_fallback {
                Prepared::Fail(self.id, SendError { retryable: false, message: detail })
            } else {
                Prepared::Suppress(self.id, reason, detail)
            };
        }
        if let (true, Some(quiet)) = (marketing, &self.quiet) {
            let zone = quiet_hours::zone(self.timezone.as_deref(), &settings::default_timezone());
            if let Some(until) = quiet.deferral(now(), zone) {
                return Prepared::Defer(self.id, until.to_rfc3339());
            }
        }
        if let (true, Some(cap)) = (marketing, &self.over_frequency_cap) {
            return Prepared::Suppress(self.id, "frequency", cap.clone());
        }
        match self.try_prepare(templates) {
            Ok(msg) => Prepared::Send(msg),
            Err(e) => Prepared::Fail(self.id, e),
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
