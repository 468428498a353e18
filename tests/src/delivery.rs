//! Helpers for the delivery tests: a cluster whose built-in deliverer is running, real receivers
//! on 127.0.0.1 (an HTTP server with scripted answers, an SMTP server), an independent check of
//! Standard Webhooks signatures, and bounded waiting.
//!
//! * [`HttpReceiver`] is a `tiny_http` server: it records every request (method, path, headers,
//!   body, arrival time) the moment it arrives, then answers on its own thread with the next
//!   scripted [`Reply`] (status, body, and an optional delay before answering, to simulate a slow
//!   or timing-out provider); once the script is used up it answers with the default reply.
//! * [`SmtpReceiver`] is a real SMTP server, the `mailin-embedded` crate (no STARTTLS), that
//!   records every message (envelope and raw data) and accepts it with `250`.

use crate::{error_text, Client, Cluster};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `probe` every 50 ms until it returns `Ok`, or panics after `timeout` with `what`, the
/// last `Err` (a description of the state seen) and what `describe` adds (called on failure).
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
    describe: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\nlast seen: {last}\n{}", describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A cluster with the deliverer
// ---------------------------------------------------------------------------------------------

/// Starts a cluster named `name` whose deliverer serves database `name`, creates that database
/// with the extension, and returns once the deliverer is running on it.
///
/// Settings: `engage.database = '<name>'`, `engage.poll_interval = '200ms'`,
/// `engage.allowed_hosts = '127.0.0.1'` (the receivers are local, plain http), then `extra`
/// (written after, so they override). The cluster is started without the preload first, the
/// database and extension are created, and then it is restarted with
/// `shared_preload_libraries = 'pg_engage'`, so the deliverer never starts on a database
/// without the extension.
pub fn start_deliverer(name: &str, extra: &[(&str, &str)]) -> (Cluster, Client) {
    let database = format!("'{name}'");
    let mut settings: Vec<(&str, &str)> = vec![
        ("engage.database", database.as_str()),
        ("engage.poll_interval", "'200ms'"),
        ("engage.allowed_hosts", "'127.0.0.1'"),
    ];
    settings.extend_from_slice(extra);
    let cluster = Cluster::start_with(name, &settings);
    let mut client = cluster.create_db(name);
    client
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_engage'")
        .unwrap_or_else(|e| panic!("ALTER SYSTEM: {}", error_text(&e)));
    drop(client);
    cluster.restart();
    let mut client = cluster.connect(name);
    wait_for_worker(&cluster, &mut client, None);
    (cluster, client)
}

/// Waits (20 s at most) until `engage.worker_status()` reports a running deliverer whose pid is
/// a live `pg_engage deliverer` backend connected to the current database, other than
/// `not_pid`; returns its pid.
#[track_caller]
pub fn wait_for_worker(cluster: &Cluster, client: &mut Client, not_pid: Option<i32>) -> i32 {
    wait_for(
        "the pg_engage deliverer to run",
        Duration::from_secs(20),
        || {
            let row = client
                .query_one(
                    "SELECT s.running, s.pid, \
                            (SELECT count(*) FROM pg_stat_activity a \
                              WHERE a.pid = s.pid AND a.backend_type = 'pg_engage deliverer' \
                                AND a.datname = current_database())::int8 \
                       FROM engage.worker_status() s",
                    &[],
                )
                .unwrap_or_else(|e| panic!("worker_status(): {}", error_text(&e)));
            let (running, pid, live): (bool, Option<i32>, i64) = (row.get(0), row.get(1), row.get(2));
            match pid {
                Some(pid) if running && live == 1 && Some(pid) != not_pid => Ok(pid),
                _ => Err(format!("worker_status: running={running} pid={pid:?}, live backend={live}")),
            }
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    )
}

/// Connects to `db`, retrying for up to `timeout` (e.g. while the server recovers from a crash).
#[track_caller]
pub fn reconnect(cluster: &Cluster, db: &str, timeout: Duration) -> Client {
    wait_for(
        "the server to accept connections again",
        timeout,
        || cluster.try_connect(db).map_err(|e| error_text(&e)),
        || format!("server.log:\n{}", cluster.log_tail(30)),
    )
}

/// The state of one outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbox {
    pub id: i64,
    pub customer_id: String,
    pub channel: String,
    pub status: String,
    pub attempts: i32,
    pub fallback: Vec<String>,
    pub last_error: Option<String>,
    pub provider_message_id: Option<String>,
    pub sent: bool,
}

/// Every outbox row, by id.
#[track_caller]
pub fn outbox(client: &mut Client) -> Vec<Outbox> {
    client
        .query(
            "SELECT id, customer_id, channel, status, attempts, fallback, last_error, \
                    provider_message_id, sent_at IS NOT NULL \
               FROM engage.outbox ORDER BY id",
            &[],
        )
        .unwrap_or_else(|e| panic!("reading the outbox: {}", error_text(&e)))
        .iter()
        .map(|r| Outbox {
            id: r.get(0),
            customer_id: r.get(1),
            channel: r.get(2),
            status: r.get(3),
            attempts: r.get(4),
            fallback: r.get(5),
            last_error: r.get(6),
            provider_message_id: r.get(7),
            sent: r.get(8),
        })
        .collect()
}

/// Waits until every outbox row has left pending/claimed (and there is at least `rows` of
/// them); returns the rows.
#[track_caller]
pub fn wait_settled(cluster: &Cluster, client: &mut Client, rows: usize, timeout: Duration) -> Vec<Outbox> {
    wait_for(
        &format!("{rows} outbox rows to be sent, dead or cancelled"),
        timeout,
        || {
            let now = outbox(client);
            if now.len() >= rows && now.iter().all(|o| o.status != "pending" && o.status != "claimed") {
                Ok(now)
            } else {
                Err(format!("outbox: {now:#?}"))
            }
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    )
}

/// The moment at which "nothing was sent twice" can be checked: waits until every lease taken so
/// far has expired (`lease` is the cluster's `engage.lease`), then queues a barrier message for a
/// channel without configuration and waits until the deliverer has claimed it and recorded it
/// dead; then deletes it again. Claims take due messages oldest first and batches are recorded in
/// claim order after all their sends, so a message that could be claimed a second time (one
/// whose lease expired while it was still claimed) has been sent again by the time the barrier
/// is recorded: what a receiver holds then is final.
#[track_caller]
pub fn past_every_lease(cluster: &Cluster, client: &mut Client, lease: Duration) {
    std::thread::sleep(lease);
    let barrier: i64 = client
        .query_one(
            // A transactional SMS to a customer without a profile: no phone number (or no SMS
            // channel at all), so it goes dead at its first claim.
            "INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, category, due_at, scheduled_at) \
             VALUES (0, 0, '~barrier', 'sms', 'transactional', now(), now()) RETURNING id",
            &[],
        )
        .unwrap_or_else(|e| panic!("queue the barrier message: {}", error_text(&e)))
        .get(0);
    wait_for(
        "the deliverer to claim the barrier message and record it dead",
        Duration::from_secs(30),
        || {
            let status: String = client
                .query_one("SELECT status::text FROM engage.outbox WHERE id = $1", &[&barrier])
                .map_err(|e| error_text(&e))?
                .get(0);
            if status == "dead" {
                Ok(())
            } else {
                Err(format!("barrier message {barrier}: {status}"))
            }
        },
        || format!("server.log:\n{}", cluster.log_tail(30)),
    );
    client
        .execute("DELETE FROM engage.outbox WHERE id = $1", &[&barrier])
        .unwrap_or_else(|e| panic!("delete the barrier message: {}", error_text(&e)));
}

// ---------------------------------------------------------------------------------------------
// HTTP receiver
// ---------------------------------------------------------------------------------------------

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// (name in lower case, value), in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub arrived: Instant,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.body))
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Extra response headers (name, value).
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, body: String::new(), delay: Duration::ZERO, headers: Vec::new() }
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn with_body(mut self, body: &str) -> Reply {
        self.body = body.to_string();
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct HttpState {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    default: Reply,
}

/// An HTTP server on 127.0.0.1 (a free port) that records requests and answers as scripted.
pub struct HttpReceiver {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<HttpState>>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    /// A receiver that answers `200 {"ok":true}` to everything.
    pub fn new() -> HttpReceiver {
        Self::scripted(Vec::new(), Reply::status(200).with_body("{\"ok\":true}"))
    }

    /// A receiver that answers the first requests with `script`, in order, then with `default`.
    pub fn scripted(script: Vec<Reply>, default: Reply) -> HttpReceiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind an HTTP receiver on 127.0.0.1"));
        let addr = server.server_addr().to_ip().expect("an IP listener");
        let state = Arc::new(Mutex::new(HttpState { requests: Vec::new(), script: script.into(), default }));
        let accept = {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                // recv fails (or returns) once unblock() was called on drop.
                while let Ok(mut request) = server.recv() {
                    let arrived = Instant::now();
                    let mut body = String::new();
                    let _ = request.as_reader().read_to_string(&mut body);
                    let recorded = Request {
                        method: request.method().as_str().to_string(),
                        path: request.url().to_string(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
                            .collect(),
                        body,
                        arrived,
                    };
                    let reply = {
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        s.requests.push(recorded);
                        s.script.pop_front().unwrap_or_else(|| s.default.clone())
                    };
                    let answer = move || {
                        std::thread::sleep(reply.delay);
                        let header =
                            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap();
                        let mut response = tiny_http::Response::from_string(reply.body)
                            .with_status_code(reply.status)
                            .with_header(header);
                        for (name, value) in &reply.headers {
                            if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                                response.add_header(h);
                            }
                        }
                        // The client may have given up (a timeout): ignore that.
                        let _ = request.respond(response);
                    };
                    // A delayed answer goes on another thread, so it does not hold up the others;
                    // an immediate one is answered here (no thread per request: the benchmark's
                    // receiver must cost little beside the deliverer it measures).
                    if reply.delay.is_zero() {
                        answer();
                    } else {
                        std::thread::spawn(answer);
                    }
                }
            })
        };
        HttpReceiver { server, state, addr, accept: Some(accept) }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).requests.clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    #[track_caller]
    pub fn wait_for_requests(&self, n: usize, timeout: Duration, cluster: &Cluster) -> Vec<Request> {
        wait_for(
            &format!("{n} requests at the HTTP receiver"),
            timeout,
            || {
                let r = self.requests();
                if r.len() >= n {
                    Ok(r)
                } else {
                    Err(format!("received: {r:#?}"))
                }
            },
            || format!("server.log:\n{}", cluster.log_tail(30)),
        )
    }
}

impl Default for HttpReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SMTP receiver
// ---------------------------------------------------------------------------------------------

/// One message as the SMTP receiver got it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender (MAIL FROM).
    pub from: String,
    /// The envelope recipients (RCPT TO).
    pub to: Vec<String>,
    /// The message as sent after DATA (headers and body).
    pub data: String,
}

impl Mail {
    /// The value of the first header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut unfolded: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = unfolded.last_mut() {
                    last.push_str(line);
                }
            } else {
                unfolded.push(line.to_string());
            }
        }
        unfolded.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

#[derive(Clone)]
struct SmtpHandler {
    mails: Arc<Mutex<Vec<Mail>>>,
    logins: Arc<Mutex<Vec<(String, String)>>>,
    current: Option<Mail>,
}

impl mailin_embedded::Handler for SmtpHandler {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> mailin_embedded::Response {
        self.current = Some(Mail { from: from.to_string(), to: to.to_vec(), data: String::new() });
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(mail) = &mut self.current {
            mail.data.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        if let Some(mail) = self.current.take() {
            self.mails.lock().unwrap_or_else(|p| p.into_inner()).push(mail);
        }
        mailin_embedded::response::OK
    }

    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> mailin_embedded::Response {
        mailin_embedded::response::OK
    }

    fn auth_plain(&mut self, _authorization: &str, user: &str, password: &str) -> mailin_embedded::Response {
        self.logins.lock().unwrap_or_else(|p| p.into_inner()).push((user.to_string(), password.to_string()));
        mailin_embedded::response::AUTH_OK
    }
}

/// A real SMTP server on 127.0.0.1 (a free port). `mailin-embedded` has no way to stop it: its
/// thread lives until the test process exits.
pub struct SmtpReceiver {
    mails: Arc<Mutex<Vec<Mail>>>,
    logins: Arc<Mutex<Vec<(String, String)>>>,
    port: u16,
    /// With STARTTLS: the server's self-signed certificate (PEM), for 127.0.0.1.
    pub certificate: Option<String>,
}

impl SmtpReceiver {
    /// Plain SMTP: no STARTTLS, no AUTH.
    pub fn new() -> SmtpReceiver {
        Self::start(None)
    }

    /// SMTP with STARTTLS (a self-signed certificate for 127.0.0.1, made with openssl) and AUTH
    /// PLAIN, which it offers only once the connection is encrypted.
    pub fn with_starttls() -> SmtpReceiver {
        let dir = std::env::temp_dir().join(format!("pg_engage_smtp_tls_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
        Self::start(Some((cert.display().to_string(), key.display().to_string())))
    }

    fn start(tls: Option<(String, String)>) -> SmtpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an SMTP receiver on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let logins = Arc::new(Mutex::new(Vec::new()));
        let handler = SmtpHandler { mails: Arc::clone(&mails), logins: Arc::clone(&logins), current: None };
        let mut server = mailin_embedded::Server::new(handler);
        let certificate = tls.as_ref().map(|(cert, _)| std::fs::read_to_string(cert).expect("read the certificate"));
        let ssl = match tls {
            Some((cert_path, key_path)) => mailin_embedded::SslConfig::SelfSigned { cert_path, key_path },
            None => mailin_embedded::SslConfig::None,
        };
        if certificate.is_some() {
            server.with_auth(mailin_embedded::AuthMechanism::Plain);
        }
        server.with_name("receiver.test").with_ssl(ssl).expect("the TLS set-up").with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpReceiver { mails, logins, port, certificate }
    }

    /// The (user, password) of every AUTH PLAIN so far.
    pub fn logins(&self) -> Vec<(String, String)> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `n` messages arrived; returns all of them.
    #[track_caller]
    pub fn wait_for_mails(&self, n: usize, timeout: Duration, cluster: &Cluster) -> Vec<Mail> {
        wait_for(
            &format!("{n} messages at the SMTP receiver"),
            timeout,
            || {
                let m = self.mails();
                if m.len() >= n {
                    Ok(m)
                } else {
                    Err(format!("received: {m:#?}"))
                }
            },
            || format!("server.log:\n{}", cluster.log_tail(30)),
        )
    }
}

impl Default for SmtpReceiver {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks
// ---------------------------------------------------------------------------------------------

/// A `whsec_` signing secret made of `key`.
pub fn signing_secret(key: &[u8]) -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// Verifies a Standard Webhooks request: `webhook-signature` holds (among space-separated
/// `version,signature` pairs) a `v1` HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`
/// keyed by the base64-decoded secret. Returns why not when it does not verify.
pub fn verify_standard_webhook(secret: &str, request: &Request) -> Result<(), String> {
    let id = request.header("webhook-id").ok_or("no webhook-id header")?;
    let timestamp = request.header("webhook-timestamp").ok_or("no webhook-timestamp header")?;
    let signatures = request.header("webhook-signature").ok_or("no webhook-signature header")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let ok = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .any(|(version, sig)| version == "v1" && sig == expected);
    if ok {
        Ok(())
    } else {
        Err(format!("no v1 signature equals {expected}: webhook-signature is {signatures:?}"))
    }
}
