//! `notigate-bench`: the load generator of issue 7. Not a timed test: a tool
//! that runs one workload through notigate and through Postfix (as a
//! smarthost relay) into the same counting SMTP sink, and prints the table.
//!
//! Phases (each can be skipped):
//! 1. sink ceiling: `smtp-source` → sink, and this tool's own SMTP client →
//!    sink, at the run's concurrency: the sink must not be the bottleneck;
//! 2. notigate: a fresh server and data dir, N messages at a concurrency (or
//!    a fixed offered rate), delivered into the sink;
//! 3. Postfix: a private instance on loopback, relayhost the sink, the same
//!    N messages submitted over SMTP at the same concurrency;
//! 4. Send latency at a fixed offered rate (open loop);
//! 5. backlog: the sink stopped, B messages queued (server RSS, disk bytes per
//!    queued message), a restart (time until serving), the sink back (drain).
//!
//! Everything listens on and connects to 127.0.0.1 only.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use notigate::pb::{
    self, connection_admin_client::ConnectionAdminClient, notifier_client::NotifierClient,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader, BufWriter},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};
use tonic::transport::Channel;

const SENDER: &str = "bench@example.com";
const RECIPIENT: &str = "rcpt@example.net";
const SENT_HEADER: &str = "X-Bench-Sent";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "notigate-bench",
    about = "Load generator: notigate and Postfix side by side into one counting SMTP sink"
)]
struct Args {
    /// Messages per run (notigate and Postfix).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Size of the text body in bytes.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Attachments per message.
    #[arg(long, default_value_t = 0)]
    attachments: usize,
    /// Size of each attachment in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    attachment_size: usize,
    /// Calls (notigate) or SMTP sessions (Postfix, ceiling) in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offer a fixed rate (msg/s, open loop) instead of a closed loop at
    /// `--concurrency`.
    #[arg(long)]
    rate: Option<f64>,
    /// The notigate binary to start.
    #[arg(long, default_value = "target/release/notigate")]
    server_bin: PathBuf,
    /// Target a running server instead of starting one (e.g.
    /// http://127.0.0.1:50051); the backlog phase is skipped then.
    #[arg(long)]
    target: Option<String>,
    /// The server's --connection-concurrency (SMTP sessions at once).
    #[arg(long, default_value_t = 8)]
    connection_concurrency: usize,
    /// gRPC channels (HTTP/2 connections) the calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Where data dirs, Postfix instances and logs go (wiped per phase).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Messages for the Postfix run (default: --messages).
    #[arg(long)]
    postfix_messages: Option<usize>,
    /// Messages queued into Postfix with the sink stopped, for its disk
    /// bytes per queued message.
    #[arg(long, default_value_t = 10_000)]
    postfix_hold_messages: usize,
    #[arg(long)]
    skip_postfix: bool,
    #[arg(long)]
    skip_ceiling: bool,
    /// Skip the main notigate run (the latency and backlog phases have
    /// their own switches).
    #[arg(long)]
    skip_notigate: bool,
    /// Offered rate of the Send latency phase (0 = skip).
    #[arg(long, default_value_t = 2000.0)]
    latency_rate: f64,
    /// Duration of the Send latency phase, seconds.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
    /// Messages queued with the sink stopped (0 = skip the backlog phase).
    #[arg(long, default_value_t = 200_000)]
    backlog: usize,
    /// Longest retry delay in the backlog phase, so that the drain starts
    /// soon after the sink returns.
    #[arg(long, default_value = "10s")]
    backlog_retry_max_delay: String,
    /// Also write the Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 600)]
    deliver_timeout: u64,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- the sink

/// What the sink saw.
#[derive(Default)]
struct SinkStats {
    messages: AtomicU64,
    sessions: AtomicU64,
    /// Unix µs of the last message received.
    last_us: AtomicU64,
    /// Delivery latencies (µs): arrival − the `X-Bench-Sent` header.
    latencies: Mutex<Vec<u64>>,
}

/// A counting SMTP sink: ESMTP with PIPELINING, replies batched while
/// pipelined commands are waiting, content scanned only for the
/// `X-Bench-Sent` header. Runs on its own thread and runtime.
struct Sink {
    port: u16,
    stats: Arc<SinkStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(port: u16) -> Result<Sink> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("sink: cannot listen on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(SinkStats::default());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("sink runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("sink listener");
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    let _ = stream.set_nodelay(true);
                                    thread_stats.sessions.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(sink_session(stream, thread_stats.clone()));
                                }
                            }
                        }
                    }
                });
                // Dropping the runtime closes every session.
            })?;
        Ok(Sink {
            port,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn count(&self) -> u64 {
        self.stats.messages.load(Ordering::Relaxed)
    }

    fn last_us(&self) -> u64 {
        self.stats.last_us.load(Ordering::Relaxed)
    }

    fn latencies(&self) -> Vec<u64> {
        self.stats.latencies.lock().unwrap().clone()
    }

    /// Waits until `n` messages arrived; false on timeout.
    async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn sink_session(stream: TcpStream, stats: Arc<SinkStats>) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = TokioBufReader::with_capacity(64 * 1024, r);
    let mut w = BufWriter::with_capacity(16 * 1024, w);
    w.write_all(b"220 bench-sink ESMTP\r\n").await?;
    w.flush().await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" => {
                w.write_all(
                    b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 209715200\r\n250 ENHANCEDSTATUSCODES\r\n",
                )
                .await?
            }
            b"HELO" => w.write_all(b"250 bench-sink\r\n").await?,
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => w.write_all(b"250 2.0.0 Ok\r\n").await?,
            b"DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                w.flush().await?;
                let mut sent: Option<u64> = None;
                let mut in_headers = true;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    if in_headers {
                        if line == b"\r\n" || line == b"\n" {
                            in_headers = false;
                        } else if line.len() > SENT_HEADER.len() + 1
                            && line[..SENT_HEADER.len()].eq_ignore_ascii_case(SENT_HEADER.as_bytes())
                            && line[SENT_HEADER.len()] == b':'
                        {
                            sent = std::str::from_utf8(&line[SENT_HEADER.len() + 1..])
                                .ok()
                                .and_then(|s| s.trim().parse().ok());
                        }
                    }
                }
                let now = unix_micros();
                if let Some(sent) = sent {
                    stats
                        .latencies
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent));
                }
                stats.last_us.fetch_max(now, Ordering::Relaxed);
                stats.messages.fetch_add(1, Ordering::Relaxed);
                w.write_all(b"250 2.0.0 Ok: queued\r\n").await?;
            }
            b"QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                w.flush().await?;
                return Ok(());
            }
            _ => {
                w.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                    .await?
            }
        }
        // Pipelined commands still waiting: answer them together.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

/// A port nothing listens on (for "the sink is stopped").
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ------------------------------------------------------------- workload

struct Workload {
    body: String,
    attachments: Vec<pb::Attachment>,
}

impl Workload {
    fn new(args: &Args) -> Self {
        // Short ASCII lines: the text goes as 7bit, like typical alerts.
        let mut body = String::with_capacity(args.size + 80);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut i = 0usize;
        while body.len() < args.size {
            let room = args.size - body.len();
            if room <= 1 {
                body.push('\n');
                continue;
            }
            let n = room.min(76) - 1;
            for _ in 0..n {
                body.push(alphabet[i % alphabet.len()] as char);
                i += 7;
            }
            body.push('\n');
        }
        let attachments = (0..args.attachments)
            .map(|k| pb::Attachment {
                filename: format!("report-{k}.bin"),
                content_type: "application/octet-stream".into(),
                content: (0..args.attachment_size)
                    .map(|j| (j.wrapping_mul(31).wrapping_add(k)) as u8)
                    .collect(),
                content_id: String::new(),
            })
            .collect();
        Workload { body, attachments }
    }

    fn send_request(&self, seq: usize, sent_us: u64) -> pb::SendRequest {
        pb::SendRequest {
            connection: "bench".into(),
            idempotency_key: String::new(),
            message: Some(pb::EmailMessage {
                to: vec![pb::Address {
                    address: RECIPIENT.into(),
                    display_name: String::new(),
                }],
                subject: format!("bench message {seq}"),
                text_body: self.body.clone(),
                attachments: self.attachments.clone(),
                headers: HashMap::from([(SENT_HEADER.to_owned(), sent_us.to_string())]),
                ..Default::default()
            }),
            wait_for_delivery: false,
        }
    }

    /// The same message as RFC 5322 bytes (CRLF, dot-terminated), for SMTP
    /// submission to Postfix.
    fn smtp_message(&self, seq: usize, sent_us: u64) -> Vec<u8> {
        let mut m = String::with_capacity(self.body.len() + 600);
        let _ = write!(
            m,
            "From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench message {seq}\r\n\
             Message-ID: <{seq}.{sent_us}@example.com>\r\nMIME-Version: 1.0\r\n"
        );
        let _ = write!(m, "{SENT_HEADER}: {sent_us}\r\n");
        let text = self.body.replace('\n', "\r\n");
        if self.attachments.is_empty() {
            m.push_str("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n");
            m.push_str(&text);
        } else {
            m.push_str("Content-Type: multipart/mixed; boundary=\"b0undary\"\r\n\r\n");
            m.push_str("--b0undary\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n");
            m.push_str(&text);
            for a in &self.attachments {
                let _ = write!(
                    m,
                    "\r\n--b0undary\r\nContent-Type: {}\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                    a.content_type, a.filename
                );
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&a.content);
                for chunk in b64.as_bytes().chunks(76) {
                    m.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                    m.push_str("\r\n");
                }
            }
            m.push_str("\r\n--b0undary--\r\n");
        }
        if !m.ends_with("\r\n") {
            m.push_str("\r\n");
        }
        m.push_str(".\r\n");
        m.into_bytes()
    }
}

// ---------------------------------------------------------------- stats

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// What a load run measured on the client side.
#[derive(Default)]
struct LoadResult {
    /// Send (or SMTP submission) latencies, µs.
    latencies: Vec<u64>,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    /// Unix µs of the first call's start and the last call's end.
    start_us: u64,
    end_us: u64,
}

impl LoadResult {
    fn accept_rate(&self) -> f64 {
        self.ok as f64 / ((self.end_us - self.start_us) as f64 / 1e6)
    }
}

#[derive(Default)]
struct Row {
    name: String,
    messages: usize,
    accept_rate: f64,
    delivered_rate: f64,
    send: [f64; 3],
    delivery: [f64; 2],
    peak_rss_kb: u64,
    disk_per_msg: Option<f64>,
    errors: usize,
    note: String,
}

fn row(name: &str, load: &LoadResult, sink: &Sink, delivered: bool, peak_rss_kb: u64) -> Row {
    let mut send = load.latencies.clone();
    send.sort_unstable();
    let mut deliv = sink.latencies();
    deliv.sort_unstable();
    let delivered_rate = if delivered {
        sink.count() as f64 / ((sink.last_us() - load.start_us) as f64 / 1e6)
    } else {
        f64::NAN
    };
    Row {
        name: name.into(),
        messages: load.ok,
        accept_rate: load.accept_rate(),
        delivered_rate,
        send: [pct(&send, 0.5), pct(&send, 0.99), pct(&send, 0.999)],
        delivery: [pct(&deliv, 0.5), pct(&deliv, 0.99)],
        peak_rss_kb,
        disk_per_msg: None,
        errors: load.errors,
        note: if delivered {
            String::new()
        } else {
            format!("only {} of {} delivered in time", sink.count(), load.ok)
        },
    }
}

// -------------------------------------------------------- process helpers

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Bytes a process caused to be written to storage (`/proc/PID/io`).
fn write_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Proportional set size (shared pages split among their users), so that a
/// sum over processes counts shared libraries once.
fn pss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Memory of `pid` and its direct children (Postfix's master and the
/// daemons it runs): the sum of their PSS.
fn tree_rss_kb(pid: u32) -> u64 {
    let mut total = pss_kb(pid).unwrap_or(0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += pss_kb(child).unwrap_or(0);
            }
        }
    }
    total
}

/// Samples a process tree's RSS until dropped; keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(tree_rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { peak, stop }
    }

    fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes allocated on disk under `path` (like `du`).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(dir) = std::fs::read_dir(path)
    {
        for e in dir.flatten() {
            total += disk_bytes(&e.path());
        }
    }
    total
}

fn fresh_dir(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

// ------------------------------------------------------------ the server

struct Server {
    child: Child,
    url: String,
    /// From spawn to the `listening on` line.
    listening_after: Duration,
}

impl Server {
    fn start(args: &Args, data_dir: &Path, extra: &[&str], log: &Path) -> Result<Server> {
        let started = Instant::now();
        let mut child = Command::new(&args.server_bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args([
                "--connection-concurrency",
                &args.connection_concurrency.to_string(),
            ])
            .args(extra)
            // Per-message retry lines would cost the server more than the
            // work they describe.
            .env("RUST_LOG", "warn,notigate::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", args.server_bin.display()))?;
        let stderr = child.stderr.take().context("server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let mut log = std::fs::File::create(log)?;
        std::thread::spawn(move || {
            use std::io::Write;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(addr) = rest.split_whitespace().next()
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| anyhow!("the server did not say `listening on` (see its log)"))?;
        Ok(Server {
            url: format!("http://{addr}"),
            listening_after: started.elapsed(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful drain), then wait.
    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..600 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the server did not stop within 30 s of SIGTERM; killed")
    }
}

async fn channels(url: &str, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(
            Channel::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?,
        );
    }
    Ok(out)
}

async fn create_connection(channel: Channel, sink_port: u16) -> Result<()> {
    let mut admin = ConnectionAdminClient::new(channel);
    // A targeted server may keep the connection of an earlier run (with
    // another sink port, perhaps mail queued for it): start over.
    if let Err(e) = admin
        .delete_connection(pb::DeleteConnectionRequest {
            name: "bench".into(),
            etag: String::new(),
            force: true,
        })
        .await
        && e.code() != tonic::Code::NotFound
    {
        bail!("DeleteConnection bench: {e}");
    }
    admin
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(pb::Connection {
                name: "bench".into(),
                description: "notigate-bench sink".into(),
                log_level: pb::LogLevel::Errors as i32,
                sender: Some(pb::Address {
                    address: SENDER.into(),
                    display_name: "Bench".into(),
                }),
                is_default: true,
                backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
                    host: "127.0.0.1".into(),
                    port: sink_port.into(),
                    tls: pb::SmtpTls::None as i32,
                    auth: pb::SmtpAuth::None as i32,
                    ..Default::default()
                })),
                ..Default::default()
            }),
        })
        .await
        .context("CreateConnection")?;
    Ok(())
}

/// Sends `n` messages through Notifier.Send: a closed loop at
/// `concurrency`, or an open loop at `rate` msg/s (latency counted from the
/// scheduled time, so a stalled server cannot hide queueing).
async fn notigate_load(
    channels: &[Channel],
    workload: Arc<Workload>,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> LoadResult {
    let results = Arc::new(Mutex::new(LoadResult::default()));
    let start_us = unix_micros();
    let clients: Vec<_> = channels
        .iter()
        .map(|c| NotifierClient::new(c.clone()).max_decoding_message_size(64 << 20))
        .collect();
    let record = |results: &Arc<Mutex<LoadResult>>, r: Result<(), tonic::Status>, us: u64| {
        let mut g = results.lock().unwrap();
        match r {
            Ok(()) => {
                g.ok += 1;
                g.latencies.push(us);
            }
            Err(e) => {
                g.errors += 1;
                if g.first_error.is_none() {
                    g.first_error = Some(format!("{}: {}", e.code(), e.message()));
                }
            }
        }
    };
    match rate {
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for t in 0..concurrency.max(1) {
                let mut client = clients[t % clients.len()].clone();
                let (next, workload, results) = (next.clone(), workload.clone(), results.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= n {
                            break;
                        }
                        let t0 = Instant::now();
                        let req = workload.send_request(seq, unix_micros());
                        let r = client.send(req).await.map(drop);
                        record(&results, r, t0.elapsed().as_micros() as u64);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Some(rate) => {
            let base = tokio::time::Instant::now();
            let in_flight = Arc::new(Semaphore::new(20_000));
            let mut tasks = Vec::new();
            for seq in 0..n {
                let due = base + Duration::from_secs_f64(seq as f64 / rate);
                tokio::time::sleep_until(due).await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut client = clients[seq % clients.len()].clone();
                let (workload, results) = (workload.clone(), results.clone());
                tasks.push(tokio::spawn(async move {
                    let req = workload.send_request(seq, unix_micros());
                    let r = client.send(req).await.map(drop);
                    record(&results, r, due.elapsed().as_micros() as u64);
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    let mut r = std::mem::take(&mut *results.lock().unwrap());
    r.start_us = start_us;
    r.end_us = unix_micros();
    r
}

// ------------------------------------------------------- the SMTP client

async fn read_reply(r: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("the SMTP server closed the connection");
        }
        if line.len() < 4 {
            bail!("malformed SMTP reply {line:?}");
        }
        if line.as_bytes()[3] != b'-' {
            return line[..3]
                .parse()
                .map_err(|_| anyhow!("malformed SMTP reply {line:?}"));
        }
    }
}

async fn expect(r: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>, code: u16) -> Result<()> {
    let got = read_reply(r).await?;
    if got != code {
        bail!("SMTP reply {got}, expected {code}");
    }
    Ok(())
}

/// Submits `n` messages over SMTP at `concurrency` sessions (kept open,
/// MAIL/RCPT/DATA pipelined); each latency is from MAIL FROM to the reply
/// to the final dot.
async fn smtp_load(port: u16, workload: Arc<Workload>, n: usize, concurrency: usize) -> LoadResult {
    let results = Arc::new(Mutex::new(LoadResult::default()));
    let start_us = unix_micros();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, workload, results) = (next.clone(), workload.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let session = async {
                let stream = TcpStream::connect(("127.0.0.1", port)).await?;
                stream.set_nodelay(true)?;
                let (r, mut w) = stream.into_split();
                let mut r = TokioBufReader::new(r);
                expect(&mut r, 220).await?;
                w.write_all(b"EHLO bench.example.com\r\n").await?;
                expect(&mut r, 250).await?;
                let envelope = format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n");
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        break;
                    }
                    let t0 = Instant::now();
                    let message = workload.smtp_message(seq, unix_micros());
                    w.write_all(envelope.as_bytes()).await?;
                    expect(&mut r, 250).await?;
                    expect(&mut r, 250).await?;
                    expect(&mut r, 354).await?;
                    w.write_all(&message).await?;
                    let code = read_reply(&mut r).await?;
                    let mut g = results.lock().unwrap();
                    if code == 250 {
                        g.ok += 1;
                        g.latencies.push(t0.elapsed().as_micros() as u64);
                    } else {
                        g.errors += 1;
                        g.first_error
                            .get_or_insert_with(|| format!("reply {code} to the message"));
                    }
                }
                w.write_all(b"QUIT\r\n").await?;
                let _ = read_reply(&mut r).await;
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = session.await {
                let mut g = results.lock().unwrap();
                g.errors += 1;
                g.first_error.get_or_insert_with(|| e.to_string());
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut r = std::mem::take(&mut *results.lock().unwrap());
    r.start_us = start_us;
    r.end_us = unix_micros();
    r
}

// ------------------------------------------------------------- Postfix

/// A private Postfix instance: its own config dir and on-disk queue, an
/// smtpd on a loopback port, everything relayed to `relay_port`.
struct Postfix {
    config_dir: PathBuf,
    queue_dir: PathBuf,
    port: u16,
    master_pid: u32,
}

impl Postfix {
    fn start(base: &Path, relay_port: u16) -> Result<Postfix> {
        fresh_dir(base)?;
        let base = std::fs::canonicalize(base)?;
        let (config_dir, queue_dir, data_dir) =
            (base.join("etc"), base.join("queue"), base.join("data"));
        for d in [&config_dir, &queue_dir, &data_dir] {
            std::fs::create_dir_all(d)?;
        }
        let port = free_port()?;
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = bench.localdomain\n\
             mydestination =\n\
             local_recipient_maps =\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtputf8_enable = no\n\
             maillog_file_prefixes = {base}\n\
             maillog_file = {base}/maillog\n",
            queue = queue_dir.display(),
            data = data_dir.display(),
            base = base.display(),
        );
        // Debian's services, unchrooted (the queue is not a chroot jail).
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             proxywrite unix - - n - 1 proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             local unix - n n - - local\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(config_dir.join("main.cf"), main_cf)?;
        std::fs::write(config_dir.join("master.cf"), master_cf)?;
        let run = |what: &[&str]| -> Result<()> {
            let out = Command::new("postfix")
                .arg("-c")
                .arg(&config_dir)
                .args(what)
                .output()
                .context("running postfix (is it installed? scripts/bench.sh installs it)")?;
            if !out.status.success() {
                bail!(
                    "postfix {what:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        run(&["check"])?;
        let _ = Command::new("chown")
            .args(["-R", "postfix"])
            .arg(&data_dir)
            .status();
        run(&["start"])?;
        let pid_file = queue_dir.join("pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let (true, Some(master_pid)) = (up, pid) {
                return Ok(Postfix {
                    config_dir,
                    queue_dir,
                    port,
                    master_pid,
                });
            }
            if Instant::now() > deadline {
                bail!("postfix did not start listening on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .output();
    }
}

// --------------------------------------------------------------- phases

struct Report {
    lines: Vec<String>,
    /// Print lines as they come (the final report); else they are progress
    /// on stderr and printed with the report at the end.
    echo: bool,
}

impl Report {
    fn new(echo: bool) -> Self {
        Report {
            lines: Vec::new(),
            echo,
        }
    }

    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if self.echo {
            println!("{line}");
        } else {
            eprintln!("[bench] {line}");
        }
        self.lines.push(line);
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.0}")
    }
}

fn log_progress(what: &str) {
    eprintln!("[bench] {what}");
}

async fn sink_ceiling(args: &Args, workload: &Arc<Workload>, report: &mut Report) -> Result<()> {
    let n = args.messages.min(50_000);
    if which("smtp-source") {
        let sink = Sink::start(0)?;
        log_progress(&format!("sink ceiling: smtp-source, {n} messages"));
        let start = unix_micros();
        let status = Command::new("smtp-source")
            .args(["-d", "-s", &args.concurrency.to_string()])
            .args(["-l", &args.size.to_string(), "-m", &n.to_string()])
            .args(["-f", SENDER, "-t", RECIPIENT])
            .arg(format!("127.0.0.1:{}", sink.port))
            .stdout(Stdio::null())
            .status()?;
        let ok = status.success() && sink.wait_for(n as u64, Duration::from_secs(60)).await;
        let rate = sink.count() as f64 / ((sink.last_us() - start) as f64 / 1e6);
        report.say(format!(
            "- sink ceiling, smtp-source → sink ({} sessions, {} B, {n} messages): **{}** msg/s{}",
            args.concurrency,
            args.size,
            fmt_rate(rate),
            if ok { "" } else { " (incomplete)" }
        ));
        sink.stop();
    }
    let sink = Sink::start(0)?;
    log_progress(&format!("sink ceiling: bench SMTP client, {n} messages"));
    let load = smtp_load(sink.port, workload.clone(), n, args.concurrency).await;
    sink.wait_for(load.ok as u64, Duration::from_secs(60)).await;
    let rate = sink.count() as f64 / ((sink.last_us() - load.start_us) as f64 / 1e6);
    report.say(format!(
        "- sink ceiling, bench's pipelining SMTP client → sink ({} sessions): **{}** msg/s",
        args.concurrency,
        fmt_rate(rate)
    ));
    sink.stop();
    Ok(())
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn notigate_run(args: &Args, workload: &Arc<Workload>) -> Result<Row> {
    let sink = Sink::start(0)?;
    let data_dir = args.work_dir.join("notigate-main");
    fresh_dir(&data_dir)?;
    let server = match &args.target {
        Some(_) => None,
        None => Some(Server::start(
            args,
            &data_dir.join("data"),
            &[],
            &data_dir.join("server.log"),
        )?),
    };
    let url = match (&server, &args.target) {
        (Some(s), _) => s.url.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => unreachable!(),
    };
    let chans = channels(&url, args.channels).await?;
    create_connection(chans[0].clone(), sink.port).await?;
    let sampler = server.as_ref().map(|s| RssSampler::start(s.pid()));
    let own_cpu_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    log_progress(&format!(
        "notigate: {} messages, {}",
        args.messages,
        match args.rate {
            Some(r) => format!("offered {r} msg/s"),
            None => format!("concurrency {}", args.concurrency),
        }
    ));
    let load = notigate_load(
        &chans,
        workload.clone(),
        args.messages,
        args.concurrency,
        args.rate,
    )
    .await;
    if let Some(e) = &load.first_error {
        eprintln!("[bench] notigate: {} Send errors, first: {e}", load.errors);
    }
    let delivered = sink
        .wait_for(load.ok as u64, Duration::from_secs(args.deliver_timeout))
        .await;
    let peak = server
        .as_ref()
        .and_then(|s| proc_status_kb(s.pid(), "VmHWM:"))
        .unwrap_or(0)
        .max(sampler.as_ref().map_or(0, |s| s.peak_kb()));
    let own_cpu = cpu_seconds(std::process::id()).map(|c| c - own_cpu_before);
    let mut r = row("notigate", &load, &sink, delivered, peak);
    let per_msg = |v: Option<f64>, scale: f64| {
        v.map(|v| format!("{:.2}", v * scale / load.ok.max(1) as f64))
            .unwrap_or_else(|| "?".into())
    };
    let pid = server.as_ref().map(Server::pid);
    r.note = format!(
        "{}{}connection concurrency {}, {} SMTP sessions; server CPU {} ms/msg, wrote {} KB/msg; \
         bench client + sink CPU {} ms/msg",
        r.note,
        if r.note.is_empty() { "" } else { "; " },
        args.connection_concurrency,
        sink.stats.sessions.load(Ordering::Relaxed),
        per_msg(pid.and_then(cpu_seconds), 1000.0),
        per_msg(pid.and_then(write_bytes).map(|b| b as f64), 1.0 / 1024.0),
        per_msg(own_cpu, 1000.0),
    );
    drop(sampler);
    if let Some(s) = server {
        s.stop()?;
    }
    sink.stop();
    Ok(r)
}

async fn postfix_run(args: &Args, workload: &Arc<Workload>) -> Result<Row> {
    let n = args.postfix_messages.unwrap_or(args.messages);
    let sink = Sink::start(0)?;
    let postfix = Postfix::start(&args.work_dir.join("postfix-main"), sink.port)?;
    let sampler = RssSampler::start(postfix.master_pid);
    log_progress(&format!(
        "postfix: {n} messages over SMTP, {} sessions",
        args.concurrency
    ));
    let load = smtp_load(postfix.port, workload.clone(), n, args.concurrency).await;
    if let Some(e) = &load.first_error {
        eprintln!(
            "[bench] postfix: {} submission errors, first: {e}",
            load.errors
        );
    }
    let delivered = sink
        .wait_for(load.ok as u64, Duration::from_secs(args.deliver_timeout))
        .await;
    let mut r = row("Postfix relay", &load, &sink, delivered, sampler.peak_kb());
    r.note = format!(
        "{}{}memory: PSS of master + daemons, summed",
        r.note,
        if r.note.is_empty() { "" } else { "; " }
    );
    drop(sampler);
    postfix.stop();
    sink.stop();

    // Disk per queued message: the same messages held with the sink stopped.
    if args.postfix_hold_messages > 0 {
        let hold = args.postfix_hold_messages;
        let postfix = Postfix::start(&args.work_dir.join("postfix-hold"), free_port()?)?;
        log_progress(&format!("postfix: {hold} messages with the sink stopped"));
        let before = disk_bytes(&postfix.queue_dir);
        let load = smtp_load(postfix.port, workload.clone(), hold, args.concurrency).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = disk_bytes(&postfix.queue_dir);
        r.disk_per_msg = Some(after.saturating_sub(before) as f64 / load.ok.max(1) as f64);
        postfix.stop();
    }
    Ok(r)
}

async fn latency_run(args: &Args, workload: &Arc<Workload>, report: &mut Report) -> Result<()> {
    let n = (args.latency_rate * args.latency_seconds as f64) as usize;
    let sink = Sink::start(0)?;
    let dir = args.work_dir.join("notigate-latency");
    fresh_dir(&dir)?;
    let server = Server::start(args, &dir.join("data"), &[], &dir.join("server.log"))?;
    let chans = channels(&server.url, args.channels).await?;
    create_connection(chans[0].clone(), sink.port).await?;
    log_progress(&format!(
        "latency: {} msg/s offered for {} s",
        args.latency_rate, args.latency_seconds
    ));
    let load = notigate_load(&chans, workload.clone(), n, 0, Some(args.latency_rate)).await;
    let delivered = sink
        .wait_for(load.ok as u64, Duration::from_secs(args.deliver_timeout))
        .await;
    let r = row("notigate", &load, &sink, delivered, 0);
    report.say(format!(
        "- Send latency at **{} msg/s offered** (open loop, {} s, {} messages, {} errors): \
         p50 **{} ms**, p99 **{} ms**, p99.9 **{} ms**; delivery p50 {} ms, p99 {} ms",
        args.latency_rate,
        args.latency_seconds,
        load.ok,
        load.errors,
        fmt_ms(r.send[0]),
        fmt_ms(r.send[1]),
        fmt_ms(r.send[2]),
        fmt_ms(r.delivery[0]),
        fmt_ms(r.delivery[1]),
    ));
    server.stop()?;
    sink.stop();
    Ok(())
}

async fn backlog_run(
    args: &Args,
    workload: &Arc<Workload>,
    report: &mut Report,
) -> Result<Option<f64>> {
    let n = args.backlog;
    let dir = args.work_dir.join("notigate-backlog");
    fresh_dir(&dir)?;
    let data = dir.join("data");
    let sink_port = free_port()?;
    let retry = [
        "--retry-max-delay",
        args.backlog_retry_max_delay.as_str(),
        "--max-queued",
        "10000000",
    ];
    let server = Server::start(args, &data, &retry, &dir.join("server-1.log"))?;
    let chans = channels(&server.url, args.channels).await?;
    create_connection(chans[0].clone(), sink_port).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = disk_bytes(&data);
    let sampler = RssSampler::start(server.pid());
    log_progress(&format!("backlog: {n} messages with the sink stopped"));
    let load = notigate_load(&chans, workload.clone(), n, args.concurrency, None).await;
    // Let the dispatcher's first (failing) attempts run over the backlog.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_now = proc_status_kb(server.pid(), "VmRSS:").unwrap_or(0);
    let peak = sampler
        .peak_kb()
        .max(proc_status_kb(server.pid(), "VmHWM:").unwrap_or(0));
    drop(sampler);
    let after = disk_bytes(&data);
    let per_msg = after.saturating_sub(before) as f64 / load.ok.max(1) as f64;
    report.say(format!(
        "- backlog, sink stopped: {} queued at {} msg/s accepted ({} errors); server RSS **{:.0} MB** \
         (peak {:.0} MB); disk **{:.0} B per queued message** ({:.0} MB data dir)",
        load.ok,
        fmt_rate(load.accept_rate()),
        load.errors,
        rss_now as f64 / 1024.0,
        peak as f64 / 1024.0,
        per_msg,
        after as f64 / 1e6,
    ));
    drop(chans);
    server.stop()?;

    // Restart with the backlog: time until a call is answered.
    log_progress("backlog: restart");
    let t0 = Instant::now();
    let server = Server::start(args, &data, &retry, &dir.join("server-2.log"))?;
    let chans = channels(&server.url, 1).await?;
    let mut admin = ConnectionAdminClient::new(chans[0].clone());
    admin
        .get_connection(pb::GetConnectionRequest {
            name: "bench".into(),
        })
        .await
        .context("GetConnection after the restart")?;
    let serving = t0.elapsed();
    let rss_restart = proc_status_kb(server.pid(), "VmRSS:").unwrap_or(0);

    // The sink returns: the backlog drains.
    log_progress("backlog: sink back, draining");
    let sink = Sink::start(sink_port)?;
    let t1 = Instant::now();
    let drained = sink
        .wait_for(load.ok as u64, Duration::from_secs(args.deliver_timeout))
        .await;
    let drain = t1.elapsed();
    let peak2 = proc_status_kb(server.pid(), "VmHWM:").unwrap_or(0);
    report.say(format!(
        "- restart with {} queued: `listening on` after {:.2} s, first call answered after **{:.2} s** \
         (RSS {:.0} MB); sink back: {} in **{:.1} s** ({} msg/s, peak RSS {:.0} MB)",
        load.ok,
        server.listening_after.as_secs_f64(),
        serving.as_secs_f64(),
        rss_restart as f64 / 1024.0,
        if drained {
            "drained".to_owned()
        } else {
            format!("only {} delivered", sink.count())
        },
        drain.as_secs_f64(),
        fmt_rate(sink.count() as f64 / drain.as_secs_f64()),
        peak2 as f64 / 1024.0,
    ));
    server.stop()?;
    sink.stop();
    Ok(Some(per_msg))
}

fn table(rows: &[Row]) -> Vec<String> {
    let mut out = vec![
        "| system | messages | Send accepted msg/s | delivered msg/s (first Send → last at sink) | Send p50 / p99 / p99.9 ms | delivery p50 / p99 ms | peak RSS MB | disk B / queued msg | notes |".to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|".to_owned(),
    ];
    for r in rows {
        out.push(format!(
            "| {} | {} | {} | {} | {} / {} / {} | {} / {} | {:.0} | {} | {}{} |",
            r.name,
            r.messages,
            fmt_rate(r.accept_rate),
            fmt_rate(r.delivered_rate),
            fmt_ms(r.send[0]),
            fmt_ms(r.send[1]),
            fmt_ms(r.send[2]),
            fmt_ms(r.delivery[0]),
            fmt_ms(r.delivery[1]),
            r.peak_rss_kb as f64 / 1024.0,
            r.disk_per_msg
                .map(|d| format!("{d:.0}"))
                .unwrap_or_else(|| "–".into()),
            r.note,
            if r.errors > 0 {
                format!("; {} errors", r.errors)
            } else {
                String::new()
            },
        ));
    }
    out
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), load average {load} at the start")
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.work_dir)?;
    let workload = Arc::new(Workload::new(&args));
    let mut report = Report::new(true);
    report.say(format!(
        "notigate-bench: {} messages of {} B text{}, concurrency {}{}; machine: {}",
        args.messages,
        args.size,
        if args.attachments > 0 {
            format!(
                " + {} × {} B attachments",
                args.attachments, args.attachment_size
            )
        } else {
            String::new()
        },
        args.concurrency,
        args.rate
            .map(|r| format!(", offered {r} msg/s"))
            .unwrap_or_default(),
        machine()
    ));
    report.say("");
    let mut notes = Vec::new();
    if !args.skip_ceiling {
        let mut r = Report::new(false);
        sink_ceiling(&args, &workload, &mut r).await?;
        notes.extend(r.lines);
    }
    let mut rows = Vec::new();
    let mut backlog_disk = None;
    if !args.skip_notigate {
        rows.push(notigate_run(&args, &workload).await?);
    }
    if !args.skip_postfix {
        rows.push(postfix_run(&args, &workload).await?);
    }
    if args.latency_rate > 0.0 && args.target.is_none() {
        let mut r = Report::new(false);
        latency_run(&args, &workload, &mut r).await?;
        notes.extend(r.lines);
    }
    if args.backlog > 0 && args.target.is_none() {
        let mut r = Report::new(false);
        backlog_disk = backlog_run(&args, &workload, &mut r).await?;
        notes.extend(r.lines);
    }
    if let (Some(d), Some(r)) = (backlog_disk, rows.iter_mut().find(|r| r.name == "notigate")) {
        r.disk_per_msg = Some(d);
    }
    for line in table(&rows) {
        report.say(line);
    }
    report.say("");
    if let (Some(n), Some(p)) = (
        rows.iter().find(|r| r.name == "notigate"),
        rows.iter().find(|r| r.name != "notigate"),
    ) {
        report.say(format!(
            "- notigate / Postfix: **{:.1}×** delivered msg/s, {:.1}× accepted msg/s",
            n.delivered_rate / p.delivered_rate,
            n.accept_rate / p.accept_rate
        ));
    }
    for n in notes {
        report.say(n);
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report.lines.join("\n") + "\n")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}
