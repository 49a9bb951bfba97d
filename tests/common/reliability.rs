//! Helpers for the reliability suites (crash, faults, disk): a counting view
//! of the test SMTP server's spool, load generators, and outbox queries.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine;
use notigate::pb::{self, NotificationState as S};
use tonic::transport::Channel;

use super::TestApp;

/// A plain-text, no-AUTH SMTP connection to a test server on `port` with the
/// given per-step timeout.
pub fn relay(name: &str, port: u16, timeout: Duration) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        log_level: pb::LogLevel::Errors as i32,
        sender: Some(pb::Address {
            address: "alerts@example.com".into(),
            display_name: "Оповещения".into(),
        }),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: u32::from(port),
            tls: pb::SmtpTls::None as i32,
            auth: pb::SmtpAuth::None as i32,
            timeout: Some(prost_types::Duration {
                seconds: timeout.as_secs() as i64,
                nanos: timeout.subsec_nanos() as i32,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn message(to: &str, subject: &str) -> pb::EmailMessage {
    pb::EmailMessage {
        to: vec![pb::Address {
            address: to.into(),
            display_name: String::new(),
        }],
        subject: subject.into(),
        text_body: format!("{subject}: body"),
        ..Default::default()
    }
}

pub fn send_request(connection: &str, message: pb::EmailMessage) -> pb::SendRequest {
    pb::SendRequest {
        connection: connection.into(),
        message: Some(message),
        ..Default::default()
    }
}

/// The notification id in a raw message: the left part of its Message-ID
/// (`<id@sender-domain>`).
pub fn notification_id_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let header_end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..header_end].lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.eq_ignore_ascii_case("Message-ID") {
            return None;
        }
        let value = value.trim();
        let inner = value.strip_prefix('<')?.split('@').next()?;
        Some(inner.to_owned())
    })
}

/// Counts what an `smtp_server.py --spool DIR` received, per notification id,
/// reading each spool file once.
pub struct SpoolCounter {
    dir: PathBuf,
    next: u64,
    counts: HashMap<String, usize>,
    /// Spooled messages without a notigate Message-ID.
    pub foreign: usize,
    pub total: usize,
}

impl SpoolCounter {
    pub fn new(dir: impl Into<PathBuf>) -> SpoolCounter {
        SpoolCounter {
            dir: dir.into(),
            next: 1,
            counts: HashMap::new(),
            foreign: 0,
            total: 0,
        }
    }

    /// Reads the files spooled since the last call.
    pub fn refresh(&mut self) -> &HashMap<String, usize> {
        loop {
            let path = self.dir.join(format!("{}.json", self.next));
            let Ok(bytes) = std::fs::read(&path) else {
                break;
            };
            let record: serde_json::Value =
                serde_json::from_slice(&bytes).expect("spool records are complete JSON");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(record["data_b64"].as_str().unwrap_or_default())
                .expect("data_b64 is base64");
            match notification_id_of(&raw) {
                Some(id) => *self.counts.entry(id).or_default() += 1,
                None => self.foreign += 1,
            }
            self.total += 1;
            self.next += 1;
        }
        &self.counts
    }

    pub fn counts(&self) -> &HashMap<String, usize> {
        &self.counts
    }

    /// Waits until every id in `ids` was received at least once; returns the
    /// ids still missing at the deadline.
    pub fn wait_all(&mut self, ids: &HashSet<String>, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            self.refresh();
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !self.counts.contains_key(*id))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every notification the server has (optionally in one state), following
/// the page tokens.
pub async fn all_notifications(app: &TestApp, state: Option<S>) -> Vec<pb::Notification> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .notifier
            .clone()
            .list_notifications(pb::ListNotificationsRequest {
                connection: String::new(),
                state: state.map_or(0, |s| s as i32),
                page_size: 1000,
                page_token: token,
            })
            .await
            .expect("ListNotifications")
            .into_inner();
        out.extend(page.notifications);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Notifications per state.
pub async fn census(app: &TestApp) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in all_notifications(app, None).await {
        let name = S::try_from(n.state)
            .map(|s| s.as_str_name().trim_start_matches("NOTIFICATION_STATE_"))
            .unwrap_or("?")
            .to_owned();
        *out.entry(name).or_default() += 1;
    }
    out
}

/// Waits until no notification is QUEUED, SENDING or RETRYING.
pub async fn wait_settled(app: &TestApp, within: Duration) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let c = census(app).await;
        let open = ["QUEUED", "SENDING", "RETRYING"]
            .iter()
            .map(|s| c.get(*s).copied().unwrap_or(0))
            .sum::<usize>();
        if open == 0 || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn get(app: &TestApp, id: &str) -> pb::Notification {
    app.notifier
        .clone()
        .get_notification(pb::GetNotificationRequest { id: id.into() })
        .await
        .expect("GetNotification")
        .into_inner()
}

/// Polls until the notification is in `state`; panics at a different final
/// state or after `within`.
pub async fn wait_state(app: &TestApp, id: &str, state: S, within: Duration) -> pb::Notification {
    let deadline = Instant::now() + within;
    loop {
        let n = get(app, id).await;
        let final_state =
            [S::Delivered as i32, S::Failed as i32, S::Canceled as i32].contains(&n.state);
        if n.state == state as i32 || final_state || Instant::now() > deadline {
            assert_eq!(
                S::try_from(n.state).ok(),
                Some(state),
                "notification {id} did not reach {state:?}: {n:?}"
            );
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Senders that call `Send` in a loop, `concurrency` at a time, until
/// stopped; every acknowledged id is recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub acked: Arc<Mutex<HashSet<String>>>,
    pub refused: Arc<AtomicU64>,
}

impl Load {
    pub fn start(channel: Channel, connection: &str, concurrency: usize) -> Load {
        Load::start_into(
            channel,
            connection,
            concurrency,
            Arc::new(Mutex::new(HashSet::new())),
        )
    }

    /// Like [`Load::start`], adding to an existing set of acknowledged ids.
    pub fn start_into(
        channel: Channel,
        connection: &str,
        concurrency: usize,
        acked: Arc<Mutex<HashSet<String>>>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let tasks = (0..concurrency)
            .map(|worker| {
                let stop = stop.clone();
                let acked = acked.clone();
                let refused = refused.clone();
                let mut client = pb::notifier_client::NotifierClient::new(channel.clone());
                let connection = connection.to_owned();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let mut request = tonic::Request::new(send_request(
                            &connection,
                            message(
                                &format!("w{worker}@example.com"),
                                &format!("load {worker}/{n}"),
                            ),
                        ));
                        request.set_timeout(Duration::from_secs(10));
                        match client.send(request).await {
                            Ok(r) => {
                                acked
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(r.into_inner().id);
                            }
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            acked,
            refused,
        }
    }

    /// Stops the senders and waits for them.
    pub async fn stop(self) -> Arc<Mutex<HashSet<String>>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.acked
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A free loopback port: bound, then released. Nothing listens there until
/// a server is started on it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Prints a measured line and appends it to `<target dir>/reliability-measured.txt`,
/// which `.ci/run` shows after the tests (README "Delivery guarantee —
/// measured" quotes these lines).
pub fn report(line: &str) {
    println!("{line}");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reliability-measured.txt"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}
