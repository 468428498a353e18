//! Harness for the pg_engage integration tests.
//!
//! Every test binary (one per file in `tests/tests/`) starts one throwaway PostgreSQL 15 cluster
//! with [`shared`], and every test creates its own database in it with [`Cluster::create_db`], so
//! the tests of one binary run in parallel without seeing each other's rows.
//!
//! A cluster lives in `/tmp/pg_engage_it/<name>-<pid>`: `initdb -A trust -U postgres --no-sync`,
//! a free TCP port on 127.0.0.1, the Unix socket in the data directory, `fsync = off`, then
//! `pg_ctl -w start`. PostgreSQL refuses to run as root, so when the harness runs as root the
//! server binaries run as the OS user `postgres` (or `$PG_ENGAGE_RUNAS`) through `sudo -n -u`.
//! The binaries come from `$PG_BIN` (default `/usr/lib/postgresql/15/bin`).
//!
//! The cluster never outlives the test run:
//! * a [`Cluster`] value stops the server (`pg_ctl -m immediate stop`) and removes its directory
//!   when dropped;
//! * the shared cluster lives in a `static`, which is never dropped, so [`shared`] registers an
//!   `atexit` handler that does the same when the test binary exits (normally or after failures);
//! * and if the test process is killed (SIGKILL, Ctrl-C), a small watchdog shell, started with
//!   every cluster and holding the read end of a pipe whose write end only the test process has,
//!   sees end-of-file and stops the server and removes the directory.
//!
//! Set `PG_ENGAGE_KEEP=1` to keep the data directory (and its `server.log`) after the run.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use postgres::error::{DbError, SqlState};
pub use postgres::types::ToSql;
pub use postgres::{Client, NoTls};
pub use serde_json::{json, Value};

pub mod delivery;

/// Where all clusters live.
pub const ROOT: &str = "/tmp/pg_engage_it";

/// A running PostgreSQL cluster owned by this process.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    /// `true` once stopped and removed, so that stopping twice (Drop and atexit) is harmless.
    stopped: Mutex<bool>,
    /// The watchdog shell; its stdin is the pipe whose end-of-file tells it to clean up.
    watchdog: Mutex<Option<Child>>,
}

impl Cluster {
    /// Creates and starts a fresh cluster named `name` with the default settings.
    pub fn start(name: &str) -> Cluster {
        Self::start_with(name, &[])
    }

    /// Creates and starts a fresh cluster; `settings` are extra `postgresql.conf` lines given as
    /// (name, value) with the value written as is, so quote strings yourself:
    /// `("shared_preload_libraries", "'pg_engage'")`.
    pub fn start_with(name: &str, settings: &[(&str, &str)]) -> Cluster {
        let bin = PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string()));
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(std::env::var("PG_ENGAGE_RUNAS").unwrap_or_else(|_| "postgres".to_string()))
        } else {
            None
        };

        let root = Path::new(ROOT);
        fs::create_dir_all(root).unwrap_or_else(|e| panic!("cannot create {ROOT}: {e}"));
        // The server user must be able to reach its data directory; ignore failures on a root
        // directory that another user created (then it is theirs to get right).
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o1777));
        let dir = root.join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("cannot remove stale {}: {e}", dir.display()));
        }
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));

        let cluster = Cluster { dir, port: 0, bin, run_as, stopped: Mutex::new(false), watchdog: Mutex::new(None) };
        // From here on, a panic drops `cluster`, which stops and removes whatever was started.
        cluster.spawn_watchdog();
        if let Some(user) = &cluster.run_as {
            run(Command::new("chown").arg(format!("{user}:")).arg(&cluster.dir));
        }
        let dir = cluster.dir.to_str().expect("utf-8 path").to_string();
        run(cluster.pg_command("initdb").args(["-D", &dir, "-A", "trust", "-U", "postgres", "--no-sync"]).args([
            "-E",
            "UTF8",
            "--locale=C",
        ]));

        let mut cluster = cluster;
        let mut conf = format!(
            "\n# pg_engage integration tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 100\n\
             log_min_messages = warning\n\
             log_min_error_statement = error\n"
        );
        for (name, value) in settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        append(&cluster.dir.join("postgresql.conf"), &conf);

        // The port was free a moment ago; if another process took it since, try another one.
        let log = format!("{dir}/server.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_port();
            append(&cluster.dir.join("postgresql.conf"), &format!("port = {}\n", cluster.port));
            let start = cluster
                .pg_command("pg_ctl")
                .args(["-D", &dir, "-l", &log, "-w", "-t", "120", "start"])
                .output()
                .expect("run pg_ctl start");
            if start.status.success() {
                break;
            }
            let server_log = fs::read_to_string(&log).unwrap_or_default();
            if attempt < 3 && server_log.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed ({}):\n{}{}\nserver.log:\n{server_log}",
                start.status,
                String::from_utf8_lossy(&start.stdout),
                String::from_utf8_lossy(&start.stderr)
            );
        }
        cluster
    }

    /// The data directory (also the Unix socket directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One connection attempt to database `db` as the superuser `postgres`, without retries
    /// (e.g. to wait for a server that is restarting after a crash).
    pub fn try_connect(&self, db: &str) -> Result<Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .application_name("pg_engage_it")
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
    }

    /// Kills the postmaster with SIGKILL (as a crash or the OOM killer would), then starts the
    /// server again once its orphaned backends have gone (they exit when they see the postmaster
    /// gone; until then the old shared memory is in use and the start fails, so it is retried).
    pub fn kill_postmaster_and_start(&self) {
        let pid: i32 = fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .expect("postmaster.pid names the postmaster");
        // SAFETY: sending a signal to a process id has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 postmaster {pid}");
        let dir = self.dir.to_str().expect("utf-8 path").to_string();
        let log = format!("{dir}/server.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let out = self
                .pg_command("pg_ctl")
                .args(["-D", &dir, "-l", &log, "-w", "-t", "60", "start"])
                .stdin(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not start again after its postmaster was killed:\n{}",
                self.log_tail(30)
            );
        }
    }

    /// Restarts the server (`pg_ctl restart -m fast`, waiting until it accepts connections);
    /// existing connections are closed. Settings changed with ALTER SYSTEM take effect.
    pub fn restart(&self) {
        let dir = self.dir.to_str().expect("utf-8 path").to_string();
        let log = format!("{dir}/server.log");
        let mut out = self
            .pg_command("pg_ctl")
            .args(["-D", &dir, "-l", &log, "-m", "fast", "-w", "-t", "120", "restart"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl restart");
        // A preloaded library that is being reinstalled at this moment cannot be loaded: the
        // server stopped and did not come back. Start it again a few times.
        let mut attempt = 0;
        while !out.status.success() && attempt < 10 {
            let tail = self.log_tail(20);
            if !(tail.contains("could not load library") || tail.contains("could not access file")) {
                break;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_secs(1));
            out = self
                .pg_command("pg_ctl")
                .args(["-D", &dir, "-l", &log, "-w", "-t", "120", "start"])
                .stdin(Stdio::null())
                .output()
                .expect("run pg_ctl start");
        }
        if !out.status.success() {
            panic!(
                "pg_ctl restart failed ({}):\n{}{}\nserver.log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
    }

    /// Connects to database `db` as the superuser `postgres`.
    pub fn connect(&self, db: &str) -> Client {
        let mut last_error = None;
        for _ in 0..50 {
            match postgres::Config::new()
                .host("127.0.0.1")
                .port(self.port)
                .user("postgres")
                .dbname(db)
                .application_name("pg_engage_it")
                .connect(NoTls)
            {
                Ok(client) => return client,
                Err(e) => {
                    // Only "the database system is starting up" and friends are worth a retry.
                    let retry = e.as_db_error().map(|d| *d.code() == SqlState::CANNOT_CONNECT_NOW).unwrap_or(false);
                    if !retry {
                        panic!("cannot connect to database {db} on port {}: {e}", self.port);
                    }
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("cannot connect to database {db}: {last_error:?}");
    }

    /// Creates database `name` (a plain lower-case identifier), runs
    /// `CREATE EXTENSION pg_engage` in it, and returns a connection to it.
    pub fn create_db(&self, name: &str) -> Client {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name must be a plain lower-case identifier: {name:?}"
        );
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", error_text(&e)));
        let mut client = self.connect(name);
        // The extension's files may be being reinstalled at this moment: retry briefly when they
        // cannot be read (any other error fails at once).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute("CREATE EXTENSION pg_engage") {
                Ok(()) => break,
                Err(e) => {
                    let text = error_text(&e);
                    let transient = text.contains("could not load library")
                        || text.contains("could not access file")
                        || text.contains("could not open extension control file")
                        || text.contains("could not stat file");
                    if !transient || attempt >= 20 {
                        panic!("CREATE EXTENSION pg_engage in {name}: {text}");
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    client = self.connect(name);
                }
            }
        }
        client
    }

    /// The last `lines` lines of the server log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server at once and removes the directory (unless `PG_ENGAGE_KEEP` is set).
    /// Idempotent, and never panics (it also runs from `atexit`).
    pub fn stop(&self) {
        let mut stopped = match self.stopped.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *stopped {
            return;
        }
        *stopped = true;
        if self.dir.join("postmaster.pid").exists() {
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.dir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::env::var_os("PG_ENGAGE_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        // Closing the watchdog's stdin lets it finish; it finds nothing left to do.
        let mut watchdog = match self.watchdog.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(mut child) = watchdog.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// A command running the PostgreSQL binary `program` as the server user.
    /// A PostgreSQL program (`pg_dump`, `psql`, ...) of this cluster's installation, run as the
    /// cluster's OS user.
    pub fn pg_command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("sudo");
                c.args(["-n", "-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        // The server user may not be allowed into the current directory.
        cmd.current_dir("/tmp");
        cmd
    }

    /// Starts the watchdog: `sh -c 'cat >/dev/null; pg_ctl stop; rm -rf dir'` with its stdin a pipe
    /// that only this process holds open, in its own process group so that a Ctrl-C aimed at the
    /// test run does not kill it before it has cleaned up.
    fn spawn_watchdog(&self) {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let dir = quote(self.dir.to_str().expect("utf-8 path"));
        let pg_ctl = quote(self.bin.join("pg_ctl").to_str().expect("utf-8 path"));
        let stop = match &self.run_as {
            Some(user) => format!("sudo -n -u {} -- {pg_ctl}", quote(user)),
            None => pg_ctl,
        };
        let remove = if std::env::var_os("PG_ENGAGE_KEEP").is_some() { String::new() } else { format!("rm -rf {dir}") };
        let script = format!(
            "cat >/dev/null; cd /tmp; if [ -f {dir}/postmaster.pid ]; then {stop} -D {dir} -m immediate -w stop; fi; {remove}"
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the cluster watchdog");
        *self.watchdog.lock().unwrap() = Some(child);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop();
    }
}

/// The cluster shared by all tests of this test binary, started on first use and stopped when
/// the process exits. It is named after the test binary (`predicates`, `cap`, …).
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("it").to_string();
        // cargo names test binaries `<file>-<hash>`.
        let name = match stem.rsplit_once('-') {
            Some((base, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => base.to_string(),
            _ => stem,
        };
        let cluster = Cluster::start(&name);
        // SAFETY: registering a plain `extern "C" fn()` with atexit is always sound.
        let registered = unsafe { libc::atexit(stop_shared_cluster) };
        assert_eq!(registered, 0, "atexit registration failed");
        cluster
    })
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Appends `text` to the file at `path` (which keeps its owner).
fn append(path: &Path, text: &str) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

/// Runs a command to completion, panicking with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error as one readable line: SQLSTATE, message, detail and hint when it is a server error.
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" DETAIL: {d}")).unwrap_or_default(),
            db.hint().map(|h| format!(" HINT: {h}")).unwrap_or_default()
        ),
        None => format!("{e}"),
    }
}

/// Asserts that `result` is a server error with SQLSTATE `code` whose message contains
/// `message_part`, and returns the error for further checks (detail, hint).
#[track_caller]
pub fn expect_db_error<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    code: &str,
    message_part: &str,
) -> DbError {
    let err = match result {
        Ok(v) => panic!("expected an error {code} containing {message_part:?}, but it succeeded with {v:?}"),
        Err(e) => e,
    };
    let db = match err.as_db_error() {
        Some(db) => db.clone(),
        None => panic!("expected a server error {code}, got a client error: {err}"),
    };
    assert_eq!(db.code().code(), code, "wrong SQLSTATE; the error was: {}", error_text(&err));
    assert!(
        db.message().contains(message_part),
        "the error message does not contain {message_part:?}; the error was: {}",
        error_text(&err)
    );
    db
}

/// Runs `sql` with `params` and asserts it fails with SQLSTATE `code` and a message containing
/// `message_part`; returns the error.
#[track_caller]
pub fn assert_sql_error(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    code: &str,
    message_part: &str,
) -> DbError {
    let result = client.execute(sql, params);
    expect_db_error(result, code, message_part)
}

// ---------------------------------------------------------------------------------------------
// pg_engage helpers
// ---------------------------------------------------------------------------------------------

/// A connection to database `db` of `cluster` as a new login role `<db>_<suffix>` that is a
/// member of the extension's roles `member_of` (`engage_writer`, `engage_analyst`,
/// `engage_admin`, `engage_worker`) and nothing else: no superuser, owns nothing.
#[track_caller]
pub fn connect_as_member(cluster: &Cluster, db: &str, suffix: &str, member_of: &[&str]) -> Client {
    let role = format!("{db}_{suffix}");
    let mut admin = cluster.connect(db);
    let mut sql = format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;");
    for r in member_of {
        sql.push_str(&format!("GRANT {r} TO {role};"));
    }
    if let Err(e) = admin.batch_execute(&sql) {
        panic!("create role {role}: {}", error_text(&e));
    }
    let mut client = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port())
        .user(&role)
        .dbname(db)
        .application_name("pg_engage_it")
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
    let superuser: bool =
        client.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).unwrap().get(0);
    assert!(!superuser, "{role} must not be a superuser");
    client
}

/// `engage.create_trigger(name, definition)`; panics with the server error when it fails.
#[track_caller]
pub fn create_trigger(client: &mut Client, name: &str, definition: Value) -> i32 {
    match client.query_one("SELECT engage.create_trigger($1, $2)", &[&name, &definition]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("create_trigger({name}, {definition}) failed: {}", error_text(&e)),
    }
}

/// `engage.update_trigger(name, definition)`, returning the new version.
#[track_caller]
pub fn update_trigger(client: &mut Client, name: &str, definition: Value) -> i32 {
    match client.query_one("SELECT engage.update_trigger($1, $2)", &[&name, &definition]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("update_trigger({name}, {definition}) failed: {}", error_text(&e)),
    }
}

/// `engage.identify(customer_id, traits)`.
#[track_caller]
pub fn identify(client: &mut Client, customer: &str, traits: Value) {
    if let Err(e) = client.execute("SELECT engage.identify($1, $2)", &[&customer, &traits]) {
        panic!("identify({customer}, {traits}) failed: {}", error_text(&e));
    }
}

/// A plain single-row INSERT into engage.events with the default `occurred_at`; returns the id.
#[track_caller]
pub fn insert_event(client: &mut Client, customer: &str, name: &str, properties: Value) -> i64 {
    let sql = "INSERT INTO engage.events (customer_id, name, properties) \
               VALUES ($1, $2, $3) RETURNING id::int8";
    match client.query_one(sql, &[&customer, &name, &properties]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("insert event {name} for {customer} failed: {}", error_text(&e)),
    }
}

/// A plain single-row INSERT into engage.events at `occurred_at` (any timestamptz literal, e.g.
/// `"2025-03-01T10:00:00Z"`); returns the id.
#[track_caller]
pub fn insert_event_at(client: &mut Client, customer: &str, name: &str, properties: Value, occurred_at: &str) -> i64 {
    let sql = "INSERT INTO engage.events (customer_id, name, properties, occurred_at) \
               VALUES ($1, $2, $3, $4::text::timestamptz) RETURNING id::int8";
    match client.query_one(sql, &[&customer, &name, &properties, &occurred_at]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("insert event {name} for {customer} at {occurred_at} failed: {}", error_text(&e)),
    }
}

/// One row of engage.decisions, with the trigger's name (None once the trigger is dropped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decision {
    pub trigger: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

/// Expected decision: `trigger` fired.
pub fn fired(trigger: &str) -> Decision {
    Decision { trigger: Some(trigger.to_string()), outcome: "fired".into(), reason: None }
}

/// Expected decision: `trigger` suppressed for `reason` (`cap` or `conflict`).
pub fn suppressed(trigger: &str, reason: &str) -> Decision {
    Decision { trigger: Some(trigger.to_string()), outcome: "suppressed".into(), reason: Some(reason.to_string()) }
}

/// All decisions of one event, ordered by trigger id.
#[track_caller]
pub fn decisions_for(client: &mut Client, event_id: i64) -> Vec<Decision> {
    let sql = "SELECT t.name::text, d.outcome::text, d.reason::text \
               FROM engage.decisions d LEFT JOIN engage.triggers t ON t.id = d.trigger_id \
               WHERE d.event_id = $1::int8 ORDER BY d.trigger_id";
    client
        .query(sql, &[&event_id])
        .unwrap_or_else(|e| panic!("reading decisions: {}", error_text(&e)))
        .iter()
        .map(|r| Decision { trigger: r.get(0), outcome: r.get(1), reason: r.get(2) })
        .collect()
}

/// One row of engage.outbox (the documented columns).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub channel: String,
    pub template: Option<String>,
    pub payload: Option<Value>,
    /// `due_at` as seconds since the Unix epoch (microsecond precision).
    pub due_at_epoch: f64,
    pub status: String,
    pub attempts: i64,
}

/// Every outbox row whose template is `template` (NULL templates match `None`).
#[track_caller]
pub fn outbox_for_template(client: &mut Client, template: Option<&str>) -> Vec<OutboxRow> {
    let sql = "SELECT channel::text, template::text, payload::jsonb, \
                      extract(epoch FROM due_at)::float8, status::text, attempts::int8 \
               FROM engage.outbox WHERE template::text IS NOT DISTINCT FROM $1::text \
               ORDER BY due_at, channel";
    client
        .query(sql, &[&template])
        .unwrap_or_else(|e| panic!("reading outbox: {}", error_text(&e)))
        .iter()
        .map(|r| OutboxRow {
            channel: r.get(0),
            template: r.get(1),
            payload: r.get(2),
            due_at_epoch: r.get(3),
            status: r.get(4),
            attempts: r.get(5),
        })
        .collect()
}

/// Runs a query returning one bigint-compatible value (e.g. `SELECT count(*) …`).
#[track_caller]
pub fn count(client: &mut Client, sql: &str) -> i64 {
    match client.query_one(&format!("SELECT ({sql})::int8"), &[]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("{sql}: {}", error_text(&e)),
    }
}

/// `extract(epoch from <literal>::timestamptz)`, to compare with [`OutboxRow::due_at_epoch`].
#[track_caller]
pub fn epoch(client: &mut Client, timestamp: &str) -> f64 {
    client
        .query_one("SELECT extract(epoch FROM $1::text::timestamptz)::float8", &[&timestamp])
        .unwrap_or_else(|e| panic!("epoch({timestamp}): {}", error_text(&e)))
        .get(0)
}

/// A minimal valid action for tests that only care about the decision.
pub fn email(template: &str) -> Value {
    json!({"channel": "email", "template": template})
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

/// A barrier for concurrency tests that cannot hang the test run: when one participating thread
/// panics (an assertion failed, a query errored), the others' `wait` panics too instead of
/// waiting forever, and every `wait` gives up after two minutes.
///
/// Each participating thread calls [`Rendezvous::join`] first and keeps the guard alive.
pub struct Rendezvous {
    parties: usize,
    state: Mutex<RendezvousState>,
    cv: std::sync::Condvar,
}

struct RendezvousState {
    waiting: usize,
    generation: u64,
    broken: bool,
}

/// Marks the [`Rendezvous`] broken if its thread unwinds.
pub struct RendezvousGuard<'a>(&'a Rendezvous);

impl Drop for RendezvousGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = match self.0.state.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            s.broken = true;
            self.0.cv.notify_all();
        }
    }
}

impl Rendezvous {
    pub fn new(parties: usize) -> Rendezvous {
        Rendezvous {
            parties,
            state: Mutex::new(RendezvousState { waiting: 0, generation: 0, broken: false }),
            cv: std::sync::Condvar::new(),
        }
    }

    /// Call once at the start of each participating thread; keep the guard until it ends.
    pub fn join(&self) -> RendezvousGuard<'_> {
        RendezvousGuard(self)
    }

    /// Blocks until all parties have called `wait` (like `std::sync::Barrier::wait`).
    pub fn wait(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!s.broken, "another thread of this test failed");
        s.waiting += 1;
        if s.waiting == self.parties {
            s.waiting = 0;
            s.generation += 1;
            self.cv.notify_all();
            return;
        }
        let generation = s.generation;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while s.generation == generation {
            assert!(!s.broken, "another thread of this test failed");
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "the other threads never arrived at the rendezvous");
            s = self.cv.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Races `threads` connections to `db` over `rounds` rounds: in each round every connection opens
/// a transaction, waits until all have (so their statements run at the same moment), runs
/// `statement(transaction, thread, round)`, and commits. Panics with the server error on failure.
pub fn in_lockstep(
    db: &str,
    threads: usize,
    rounds: usize,
    statement: impl Fn(&mut postgres::Transaction<'_>, usize, usize) -> Result<u64, postgres::Error> + Sync,
) {
    let barrier = Rendezvous::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, statement) = (&barrier, &statement);
            s.spawn(move || {
                let _guard = barrier.join();
                let mut conn = shared().connect(db);
                for round in 0..rounds {
                    let mut tx = conn.transaction().unwrap();
                    barrier.wait();
                    statement(&mut tx, t, round)
                        .unwrap_or_else(|e| panic!("thread {t} round {round}: {}", error_text(&e)));
                    tx.commit().unwrap_or_else(|e| panic!("thread {t} round {round} commit: {}", error_text(&e)));
                }
            });
        }
    });
}
