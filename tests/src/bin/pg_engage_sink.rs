//! A local sink for the demo: one HTTP receiver (webhook, SMS, WhatsApp and push requests) and one
//! SMTP receiver, on 127.0.0.1. It writes its addresses to a file, prints one line per message it
//! receives, and exits after the given number of seconds.
//!
//! Usage: pg_engage_sink <addresses-file> <seconds> [--quiet]
//! With --quiet (the delivery benchmark) it prints nothing until it exits.

use pg_engage_it::delivery::{HttpReceiver, Reply, SmtpReceiver};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(file), Some(seconds)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!("usage: pg_engage_sink <addresses-file> <seconds> [--quiet]");
        std::process::exit(2);
    };
    let quiet = args.iter().any(|a| a == "--quiet");
    // One answer that satisfies every provider shape: Twilio's sid, WhatsApp's message id, FCM's name.
    let answer = r#"{"sid": "SM-sink", "messages": [{"id": "wamid.sink"}], "name": "projects/demo/messages/sink"}"#;
    let http = HttpReceiver::scripted(Vec::new(), Reply::status(200).with_body(answer));
    let smtp = SmtpReceiver::new();
    std::fs::write(file, format!("http_base={}\nsmtp_port={}\n", http.url(""), smtp.port()))
        .expect("write the addresses file");

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut seen_http, mut seen_smtp) = (0, 0);
    let mut out = std::io::stdout();
    while Instant::now() < deadline {
        if quiet {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        for r in http.requests().iter().skip(seen_http) {
            let what = r.path.split('?').next().unwrap_or("");
            let id = r.header("webhook-id").or_else(|| r.header("idempotency-key")).unwrap_or("-");
            let _ = writeln!(out, "sink: HTTP {} {what} id={id} ({} bytes)", r.method, r.body.len());
            seen_http += 1;
        }
        for m in smtp.mails().iter().skip(seen_smtp) {
            let subject = m.header("Subject").unwrap_or_default();
            let _ = writeln!(out, "sink: SMTP to {} subject \"{subject}\"", m.to.join(","));
            seen_smtp += 1;
        }
        let _ = out.flush();
        std::thread::sleep(Duration::from_millis(200));
    }
    if quiet {
        (seen_http, seen_smtp) = (http.requests().len(), smtp.mails().len());
    }
    println!("sink: received {seen_http} HTTP requests and {seen_smtp} emails");
}
