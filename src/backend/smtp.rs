//! SMTP delivery: [`SmtpBackend`] implements [`Backend`] on lettre's
//! low-level client.
//!
//! - `session`: connect, STARTTLS/implicit TLS, EHLO, AUTH, mail
//!   transactions with per-recipient results;
//! - `auth`: mechanism choice (SPEC negotiation order) and the CRAM-MD5 and
//!   NTLM exchanges lettre lacks;
//! - `failure`: stage, transient/permanent classification, words for users.
//!
//! Authenticated sessions are kept for reuse, a few per connection, so that
//! a burst of notifications does not pay TCP + TLS + AUTH for each message.
//! A kept session is dropped when the connection's settings change, when it
//! has been idle too long, or after any error.

mod auth;
mod failure;
mod session;

use std::{
    collections::HashMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use lettre::transport::smtp::extension::ClientId;

pub use self::auth::Mechanism;
pub use self::failure::{Failure, Stage};
use self::session::Session;
use super::{Backend, Delivery, DeliveryError, TestReport, mime};
use crate::domain::{self, Connection, OutgoingMessage, SmtpSettings};

/// SPEC default when a connection sets no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many authenticated sessions are kept, per connection, between
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle sessions kept per connection; more are closed (QUIT) when they
    /// come back. Concurrency itself is bounded by the dispatcher.
    pub max_idle_per_connection: usize,
    /// A session idle longer than this is closed rather than reused: well
    /// under the 5 minutes after which servers commonly drop idle clients.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_connection: 4,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Delivers mail over SMTP. Cheap to share: one per process, behind an
/// `Arc<dyn Backend>`.
pub struct SmtpBackend {
    pool: Mutex<HashMap<String, IdleSessions>>,
    config: PoolConfig,
    /// EHLO name for connections without `hello_name`: the host name,
    /// looked up once.
    default_hello: ClientId,
}

struct IdleSessions {
    /// The settings the sessions were opened with; other settings, other
    /// sessions.
    settings: SmtpSettings,
    /// Most recently used last.
    sessions: Vec<(Session, Instant)>,
}

impl Default for SmtpBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl SmtpBackend {
    pub fn new() -> Self {
        Self::with_pool_config(PoolConfig::default())
    }

    pub fn with_pool_config(config: PoolConfig) -> Self {
        Self {
            pool: Mutex::new(HashMap::new()),
            config,
            default_hello: ClientId::default(),
        }
    }

    /// Number of idle sessions kept for a connection (for tests and
    /// metrics).
    pub fn idle_sessions(&self, connection_name: &str) -> usize {
        self.lock_pool()
            .get(connection_name)
            .map_or(0, |idle| idle.sessions.len())
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, HashMap<String, IdleSessions>> {
        // A panic while holding the lock leaves only a map of idle
        // sessions behind, which stays consistent; keep using it.
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the most recently used idle session opened with these
    /// settings; sessions for older settings or idle too long are closed.
    fn checkout(&self, name: &str, settings: &SmtpSettings) -> Option<Session> {
        let mut retired = Vec::new();
        let found = {
            let mut pool = self.lock_pool();
            let idle = pool.get_mut(name)?;
            if idle.settings != *settings {
                retired.extend(idle.sessions.drain(..).map(|(s, _)| s));
                pool.remove(name);
                None
            } else {
                let now = Instant::now();
                let (fresh, stale): (Vec<_>, Vec<_>) = idle
                    .sessions
                    .drain(..)
                    .partition(|(_, since)| now.duration_since(*since) < self.config.idle_timeout);
                retired.extend(stale.into_iter().map(|(s, _)| s));
                idle.sessions = fresh;
                idle.sessions.pop().map(|(s, _)| s)
            }
        };
        retire(retired);
        found
    }

    /// Keeps a session that just finished a transaction cleanly.
    fn checkin(&self, name: &str, settings: &SmtpSettings, session: Session) {
        let mut retired = Vec::new();
        {
            let mut pool = self.lock_pool();
            let idle = pool.entry(name.to_owned()).or_insert_with(|| IdleSessions {
                settings: settings.clone(),
                sessions: Vec::new(),
            });
            if idle.settings != *settings {
                // The settings changed while this session was sending: it
                // belongs to the new settings' sessions no more than the old.
                retired.push(session);
            } else if idle.sessions.len() >= self.config.max_idle_per_connection {
                retired.push(session);
            } else {
                idle.sessions.push((session, Instant::now()));
            }
        }
        retire(retired);
    }

    async fn send_smtp(
        &self,
        connection: &Connection,
        settings: &SmtpSettings,
        message: &OutgoingMessage,
    ) -> Result<Delivery, DeliveryError> {
        let built = mime::build(message).map_err(|e| DeliveryError::permanent(e.to_string()))?;
        let name = connection.name.as_str();
        let budget = Budget::PerStep(timeout_of(settings));

        let mut session = loop {
            match self.checkout(name, settings) {
                // A kept session may have been closed by the server since;
                // RSET finds out, and a dead one costs nothing but the try.
                Some(mut session) => match session.reset(budget).await {
                    Ok(()) => break session,
                    Err(_) => drop(session),
                },
                None => break Session::open(settings, &self.default_hello, budget).await?,
            }
        };
        match session.transaction(&built, budget).await {
            Ok(delivery) => {
                self.checkin(name, settings, session);
                Ok(delivery)
            }
            Err(failure) => {
                // After an error the session's state is uncertain (a reply
                // may still be in flight): never reuse it.
                retire(vec![session]);
                Err(failure.into())
            }
        }
    }

    async fn test_smtp(&self, connection: &Connection, settings: &SmtpSettings) -> TestReport {
        let timeout = timeout_of(settings);
        let budget = Budget::Until(tokio::time::Instant::now() + timeout, timeout);
        let sender = match connection
            .sender
            .address
            .as_str()
            .parse::<lettre::Address>()
        {
            Ok(sender) => sender,
            Err(e) => {
                return TestReport {
                    ok: false,
                    stage: Stage::Sender.as_str(),
                    detail: format!("the sender address cannot be used in SMTP: {e}"),
                };
            }
        };
        // A fresh session, never a pooled one: the point is to check that
        // connecting and authenticating work now.
        let result = async {
            let mut session = Session::open(settings, &self.default_hello, budget).await?;
            session.check_sender(&sender, budget).await?;
            let info = session.info().clone();
            session.quit(Duration::from_secs(2)).await;
            Ok::<_, Failure>(info)
        }
        .await;
        match result {
            Ok(info) => TestReport {
                ok: true,
                stage: Stage::Sender.as_str(),
                detail: format!(
                    "{} accepted <{sender}> as sender ({}, {})",
                    if info.server_name.is_empty() {
                        "the server"
                    } else {
                        info.server_name.as_str()
                    },
                    if info.tls { "TLS" } else { "no TLS" },
                    match info.mechanism {
                        Some(m) => format!("AUTH {}", m.name()),
                        None => "no AUTH".to_owned(),
                    }
                ),
            },
            Err(failure) => TestReport {
                ok: false,
                stage: failure.stage.as_str(),
                detail: failure.message,
            },
        }
    }
}

#[async_trait::async_trait]
impl Backend for SmtpBackend {
    async fn send(
        &self,
        connection: &Connection,
        message: &OutgoingMessage,
    ) -> Result<Delivery, DeliveryError> {
        match &connection.backend {
            domain::Backend::Smtp(settings) => self.send_smtp(connection, settings, message).await,
            other => Err(DeliveryError::permanent(format!(
                "connection {} is a {} connection, not SMTP",
                connection.name,
                other.kind()
            ))),
        }
    }

    async fn test(&self, connection: &Connection) -> TestReport {
        match &connection.backend {
            domain::Backend::Smtp(settings) => self.test_smtp(connection, settings).await,
            other => TestReport {
                ok: false,
                stage: Stage::Connect.as_str(),
                detail: format!(
                    "connection {} is a {} connection, not SMTP",
                    connection.name,
                    other.kind()
                ),
            },
        }
    }

    async fn forget(&self, connection_name: &str) {
        let removed = self.lock_pool().remove(connection_name);
        if let Some(idle) = removed {
            retire(idle.sessions.into_iter().map(|(s, _)| s).collect());
        }
    }
}

fn timeout_of(settings: &SmtpSettings) -> Duration {
    settings
        .timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Closes sessions that are no longer wanted: QUIT in the background so
/// that the caller does not wait for it.
fn retire(sessions: Vec<Session>) {
    if sessions.is_empty() {
        return;
    }
    // Outside a runtime (a test dropping the backend) the sessions are
    // simply dropped, which closes their sockets.
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            for session in sessions {
                session.quit(Duration::from_secs(5)).await;
            }
        });
    }
}

/// How long each step may take: per step while sending (each reply gets
/// the full timeout), or one deadline for a whole connection test.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    PerStep(Duration),
    Until(tokio::time::Instant, Duration),
}

impl Budget {
    fn deadline(self) -> tokio::time::Instant {
        self.deadline_with(Duration::ZERO)
    }

    /// The deadline of a step that may take `extra` longer than usual
    /// (sending a large message).
    fn deadline_with(self, extra: Duration) -> tokio::time::Instant {
        match self {
            Budget::PerStep(t) => tokio::time::Instant::now() + t + extra,
            Budget::Until(deadline, _) => deadline + extra,
        }
    }

    /// The configured timeout, for lettre's own TCP connect timeout.
    fn step_timeout(self) -> Duration {
        match self {
            Budget::PerStep(t) | Budget::Until(_, t) => t,
        }
    }
}

/// Runs one step of a session with a deadline. A step that runs out of
/// time fails transiently; the session is then in an unknown state and is
/// dropped by the caller.
async fn step<T>(
    deadline: tokio::time::Instant,
    stage: Stage,
    what: &str,
    future: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout_at(deadline, future).await {
        Ok(result) => result,
        Err(_) => Err(Failure::timeout(
            stage,
            what,
            deadline.saturating_duration_since(started),
        )),
    }
}
