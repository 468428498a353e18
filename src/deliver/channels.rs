//! Channel adapters: turn a rendered message into one provider request and classify the answer.
//!
//! Pure I/O, no PostgreSQL calls: these run on the deliverer's sending threads. Each HTTP
//! provider's base URL is configurable, so a real provider or a local receiver can be used.

use super::egress::Egress;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

/// A message ready to send: everything resolved, rendered and configured.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub outbox_id: i64,
    pub kind: String,
    /// Address for the channel: email, phone number, push token, or the webhook URL.
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// The JSON document a webhook posts (and the data a push carries).
    pub document: Value,
    pub config: Value,
    pub secrets: Value,
}

/// Why a send failed, and whether trying again later can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub retryable: bool,
    pub message: String,
}

impl SendError {
    fn retry(message: impl Into<String>) -> Self {
        SendError { retryable: true, message: message.into() }
    }
    fn permanent(message: impl Into<String>) -> Self {
        SendError { retryable: false, message: message.into() }
    }
}

/// The stable message id receivers de-duplicate on: the same for every attempt.
pub fn message_id(outbox_id: i64) -> String {
    format!("msg_{outbox_id}")
}

/// Sends one message; `Ok` carries the provider's message id when it returned one.
/// Nothing leaves that the egress policy refuses (a permanent failure naming what to allow).
pub fn send(
    agent: &ureq::Agent,
    timeout: Duration,
    egress: &Egress,
    msg: &Outgoing,
) -> Result<Option<String>, SendError> {
    match msg.kind.as_str() {
        "webhook" => webhook(agent, egress, msg),
        "email" => email(timeout, egress, msg),
        "sms" => sms(agent, egress, msg),
        "whatsapp" => whatsapp(agent, egress, msg),
        "push" => push(agent, egress, msg),
        other => Err(SendError::permanent(format!("unknown channel kind \"{other}\""))),
    }
}

fn config_str<'a>(msg: &'a Outgoing, key: &str) -> Result<&'a str, SendError> {
    msg.config
        .get(key)
        .or_else(|| msg.secrets.get(key))
        .and_then(Value::as_str)
        .ok_or_else(|| SendError::permanent(format!("channel {} is not configured: missing \"{key}\"", msg.kind)))
}

/// Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")),
/// where the secret is the base64 part of a `whsec_...` string.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("signing secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())))
}

/// The egress check of one provider URL.
fn allowed(egress: &Egress, url: &str) -> Result<(), SendError> {
    egress.check_url(url).map_err(|e| SendError::permanent(format!("egress: {e}")))
}

fn webhook(agent: &ureq::Agent, egress: &Egress, msg: &Outgoing) -> Result<Option<String>, SendError> {
    allowed(egress, &msg.to)?;
    let body = msg.document.to_string();
    let id = message_id(msg.outbox_id);
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut request = agent
        .post(&msg.to)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = msg.secrets.get("signing_secret").and_then(Value::as_str) {
        let signature = sign(secret, &id, timestamp, &body).map_err(SendError::permanent)?;
        request = request.header("webhook-signature", signature);
    }
    let response = request.send(body.as_bytes()).map_err(transport_error)?;
    classify(response).map(|_| Some(id))
}

fn sms(agent: &ureq::Agent, egress: &Egress, msg: &Outgoing) -> Result<Option<String>, SendError> {
    let base = config_str(msg, "base_url")?;
    let sid = config_str(msg, "account_sid")?;
    let token = config_str(msg, "auth_token")?;
    let from = config_str(msg, "from")?;
    let url = format!("{}/2010-04-01/Accounts/{sid}/Messages.json", base.trim_end_matches('/'));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
    allowed(egress, &url)?;
    let response = agent
        .post(&url)
        .header("authorization", format!("Basic {auth}"))
        .header("idempotency-key", message_id(msg.outbox_id))
        .send_form([("To", msg.to.as_str()), ("From", from), ("Body", msg.text.as_str())])
        .map_err(transport_error)?;
    classify(response).map(|v| v.get("sid").and_then(Value::as_str).map(str::to_string))
}

fn whatsapp(agent: &ureq::Agent, egress: &Egress, msg: &Outgoing) -> Result<Option<String>, SendError> {
    let base = config_str(msg, "base_url")?;
    let phone_id = config_str(msg, "phone_number_id")?;
    let token = config_str(msg, "access_token")?;
    let url = format!("{}/{phone_id}/messages", base.trim_end_matches('/'));
    let body = json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": msg.to,
                      "type": "text", "text": {"body": msg.text}, "biz_opaque_callback_data": message_id(msg.outbox_id)});
    allowed(egress, &url)?;
    let response = agent
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .send_json(&body)
        .map_err(transport_error)?;
    classify(response).map(|v| v.pointer("/messages/0/id").and_then(Value::as_str).map(str::to_string))
}

fn push(agent: &ureq::Agent, egress: &Egress, msg: &Outgoing) -> Result<Option<String>, SendError> {
    let base = config_str(msg, "base_url")?;
    let project = config_str(msg, "project_id")?;
    let token = config_str(msg, "access_token")?;
    let url = format!("{}/v1/projects/{project}/messages:send", base.trim_end_matches('/'));
    // FCM data values must be strings.
    let data: serde_json::Map<String, Value> = msg
        .document
        .get("payload")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_string))))
                .collect()
        })
        .unwrap_or_default();
    let mut data = data;
    data.insert("message_id".into(), Value::String(message_id(msg.outbox_id)));
    let body =
        json!({"message": {"token": msg.to, "notification": {"title": msg.subject, "body": msg.text}, "data": data}});
    allowed(egress, &url)?;
    let response = agent
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .send_json(&body)
        .map_err(transport_error)?;
    classify(response).map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
}

fn email(timeout: Duration, egress: &Egress, msg: &Outgoing) -> Result<Option<String>, SendError> {
    use lettre::message::{header, Mailbox, MultiPart, SinglePart};
    use lettre::Transport;
    let host = config_str(msg, "host")?;
    let port = msg.config.get("port").and_then(Value::as_u64).unwrap_or(25) as u16;
    let tls = smtp_tls(host, msg)?;
    // Without TLS, only to a relay the operator listed; with it, to public addresses too.
    match tls {
        lettre::transport::smtp::client::Tls::None => egress.check_plain(host, port),
        _ => egress.check_encrypted(host, port),
    }
    .map_err(|e| SendError::permanent(format!("egress: {e}")))?;
    let from: Mailbox =
        config_str(msg, "from")?.parse().map_err(|e| SendError::permanent(format!("bad sender address: {e}")))?;
    let to: Mailbox =
        msg.to.parse().map_err(|e| SendError::permanent(format!("invalid address \"{}\": {e}", msg.to)))?;
    let domain = from.email.domain().to_string();
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(msg.subject.clone())
        .message_id(Some(format!("<{}@{domain}>", message_id(msg.outbox_id))));
    if let Some(url) = msg.config.get("unsubscribe_url").and_then(Value::as_str) {
        let url = url.replace("{message_id}", &message_id(msg.outbox_id));
        builder = builder.header(ListUnsubscribe(format!("<{url}>"))).header(ListUnsubscribePost);
    }
    let text = SinglePart::builder().header(header::ContentType::TEXT_PLAIN).body(msg.text.clone());
    let email = match &msg.html {
        Some(html) => builder.multipart(
            MultiPart::alternative()
                .singlepart(text)
                .singlepart(SinglePart::builder().header(header::ContentType::TEXT_HTML).body(html.clone())),
        ),
        None => builder.singlepart(text),
    }
    .map_err(|e| SendError::permanent(format!("could not build the email: {e}")))?;
    let mut transport = lettre::SmtpTransport::builder_dangerous(host).port(port).tls(tls).timeout(Some(timeout));
    if let (Some(user), Some(password)) =
        (msg.secrets.get("username").and_then(Value::as_str), msg.secrets.get("password").and_then(Value::as_str))
    {
        transport = transport
            .credentials(lettre::transport::smtp::authentication::Credentials::new(user.into(), password.into()));
    }
    match transport.build().send(&email) {
        Ok(response) => Ok(response.message().next().map(str::to_string)),
        Err(e) if e.is_permanent() => Err(SendError::permanent(format!("SMTP: {e}"))),
        Err(e) => Err(SendError::retry(format!("SMTP: {e}"))),
    }
}

/// The email channel's TLS, from `config.tls`: `"starttls"` (the default) upgrades the connection
/// before anything else is said and fails if the server cannot (so a relay password never goes
/// in clear text), verifying the server's certificate against the public roots and
/// `config.ca_certificate` (PEM) if given; `"none"` is plain SMTP, for a relay listed in
/// engage.allowed_hosts.
fn smtp_tls(host: &str, msg: &Outgoing) -> Result<lettre::transport::smtp::client::Tls, SendError> {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    match msg.config.get("tls").map_or(Some("starttls"), Value::as_str) {
        Some("none") => Ok(Tls::None),
        Some("starttls") => {
            let mut parameters = TlsParameters::builder(host.to_string());
            if let Some(pem) = msg.config.get("ca_certificate") {
                let certificate = pem
                    .as_str()
                    .ok_or("not a string")
                    .and_then(|p| Certificate::from_pem(p.as_bytes()).map_err(|_| "not a PEM certificate"))
                    .map_err(|e| SendError::permanent(format!("email config.ca_certificate: {e}")))?;
                parameters = parameters.add_root_certificate(certificate);
            }
            let parameters = parameters
                .build_rustls()
                .map_err(|e| SendError::permanent(format!("email config: TLS for {host}: {e}")))?;
            Ok(Tls::Required(parameters))
        }
        _ => Err(SendError::permanent(r#"email config.tls must be "starttls" (the default) or "none""#.to_string())),
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): mailbox providers may
/// unsubscribe with one POST to the List-Unsubscribe URL, without the recipient visiting it.
#[derive(Clone)]
struct ListUnsubscribePost;

impl lettre::message::header::Header for ListUnsubscribePost {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}

/// The `List-Unsubscribe` header (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

fn transport_error(e: ureq::Error) -> SendError {
    SendError::retry(format!("HTTP: {e}"))
}

/// 2xx: the JSON body (or null); 429 and 5xx: retryable; other statuses: permanent.
fn classify(mut response: ureq::http::Response<ureq::Body>) -> Result<Value, SendError> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    match status {
        200..=299 => Ok(serde_json::from_str(&text).unwrap_or(Value::Null)),
        429 | 500..=599 => Err(SendError::retry(format!("HTTP {status}: {}", excerpt(&text)))),
        _ => Err(SendError::permanent(format!("HTTP {status}: {}", excerpt(&text)))),
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
