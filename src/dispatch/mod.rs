//! The dispatcher: takes due notifications from the scheduler, delivers them
//! through the connection's backend with bounded concurrency per connection,
//! and records every state change in the store. Retries what is transient,
//! fails what is permanent, and announces each change to watchers.

mod retry;
mod scheduler;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Notify, broadcast, watch},
    task::JoinSet,
};

pub use retry::RetryPolicy;
use scheduler::Scheduler;

use crate::{
    backend::{Backend, DeliveryError, FailureKind},
    connlog::{ConnectionLogs, Kind, describe},
    domain::{
        Backend as BackendSettings, Connection, Notification, NotificationId, Rejected, State,
    },
    metrics::{
        BackendErrorLabels, ConnectionLabels, Metrics, OutcomeLabels, QueueLabels, StateLabels,
    },
    store::{Change, Store, StoreError, millis},
};

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub retry: RetryPolicy,
    /// Attempts running at once per connection.
    pub connection_concurrency: usize,
    /// How long final notifications are kept.
    pub retention: Duration,
    /// An attempt that takes longer is abandoned as a transient failure.
    pub attempt_timeout: Duration,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            connection_concurrency: 8,
            retention: Duration::from_secs(7 * 24 * 3600),
            attempt_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// The backends, one per technology.
#[derive(Clone)]
pub struct Backends {
    pub smtp: Arc<dyn Backend>,
    pub exchange: Arc<dyn Backend>,
}

impl Backends {
    pub fn for_connection(&self, c: &Connection) -> &Arc<dyn Backend> {
        match c.backend {
            BackendSettings::Smtp(_) => &self.smtp,
            BackendSettings::Exchange(_) => &self.exchange,
        }
    }
}

pub struct Dispatcher {
    store: Arc<Store>,
    logs: Arc<ConnectionLogs>,
    metrics: Arc<Metrics>,
    backends: Backends,
    config: DispatchConfig,
    scheduler: Mutex<Scheduler>,
    wake: Notify,
    updates: broadcast::Sender<Notification>,
}

/// What happens to a notification after an attempt.
enum Next {
    Done,
    Retry(SystemTime),
    Hold,
}

fn now_ms() -> u64 {
    millis(SystemTime::now())
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        logs: Arc<ConnectionLogs>,
        metrics: Arc<Metrics>,
        backends: Backends,
        config: DispatchConfig,
    ) -> Arc<Self> {
        let (updates, _) = broadcast::channel(4096);
        Arc::new(Self {
            store,
            logs,
            metrics,
            backends,
            config,
            scheduler: Mutex::new(Scheduler::default()),
            wake: Notify::new(),
            updates,
        })
    }

    fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        // A panic while holding the lock cannot leave the scheduler in a
        // state worse than losing one bookkeeping step; keep going.
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn logs(&self) -> &ConnectionLogs {
        &self.logs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a notification that reached a final state.
    pub fn finished(&self, n: &Notification) {
        let state = match n.state {
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Canceled => "canceled",
            _ => return,
        };
        self.metrics
            .finished
            .get_or_create(&StateLabels {
                connection: n.connection.clone(),
                state: state.to_owned(),
            })
            .inc();
    }

    /// Sets the queue-depth gauges from the scheduler (at scrape time).
    pub fn refresh_gauges(&self) {
        let (waiting, sending, held) = self.scheduler().counts();
        for (state, n) in [("waiting", waiting), ("sending", sending), ("held", held)] {
            self.metrics
                .queue_depth
                .get_or_create(&QueueLabels {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
    }

    /// Loads every pending notification from the store. Attempts that a
    /// crash interrupted (SENDING) become due again: delivery is at least once.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let pending = self.store.pending()?;
        let now = SystemTime::now();
        let mut scheduler = self.scheduler();
        for p in &pending {
            // Most pending notifications are simply waiting: only an
            // interrupted attempt needs a write.
            let interrupted = matches!(
                self.store.get_notification(&p.id)?,
                Some(n) if n.state == State::Sending
            );
            if !interrupted {
                scheduler.push(&p.connection, millis(p.due), p.id);
                continue;
            }
            let due = match self.store.transition(&p.id, |n| {
                Ok::<_, ()>(if n.state == State::Sending {
                    Change::Write(Notification {
                        state: State::Retrying,
                        last_error: "the attempt was interrupted by a restart; sending again"
                            .into(),
                        next_attempt_time: Some(now),
                        update_time: now,
                        ..n.clone()
                    })
                } else {
                    Change::Keep
                })
            })? {
                Ok(Some(n)) if !n.state.is_final() => n.next_attempt_time.unwrap_or(p.due),
                _ => continue,
            };
            scheduler.push(&p.connection, millis(due), p.id);
        }
        Ok(pending.len())
    }

    /// Schedules a stored notification.
    pub fn submit(&self, n: &Notification) {
        let due = n.next_attempt_time.unwrap_or(n.create_time);
        self.scheduler().push(&n.connection, millis(due), n.id);
        self.wake.notify_one();
        let _ = self.updates.send(n.clone());
    }

    /// Every state change of every notification.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.updates.subscribe()
    }

    pub fn publish(&self, n: &Notification) {
        let _ = self.updates.send(n.clone());
    }

    /// Notifications waiting, in flight or held.
    pub fn queued(&self) -> usize {
        self.scheduler().total()
    }

    /// A connection was changed: drop backend state built from the old
    /// settings and give held notifications (disabled connection) a new try.
    pub async fn connection_changed(&self, name: &str) {
        self.backends.smtp.forget(name).await;
        self.backends.exchange.forget(name).await;
        self.scheduler().release(name, now_ms());
        self.wake.notify_one();
    }

    /// A connection was deleted with `force`: its pending notifications end
    /// FAILED with the reason.
    pub async fn connection_deleted(
        &self,
        connection: &Connection,
        ids: &[NotificationId],
    ) -> Result<(), StoreError> {
        let name = connection.name.as_str();
        self.scheduler().remove_connection(name);
        let now = SystemTime::now();
        for id in ids {
            let reason = format!("connection {name:?} was deleted (force) before delivery");
            if let Ok(Some(n)) = self.store.transition(id, |n| {
                Ok::<_, ()>(if n.state.is_final() {
                    Change::Keep
                } else {
                    Change::Write(Notification {
                        state: State::Failed,
                        last_error: reason.clone(),
                        next_attempt_time: None,
                        update_time: now,
                        ..n.clone()
                    })
                })
            })? {
                self.logs
                    .event(name, connection.log_level, Kind::Error, || {
                        format!("id={} failed: {}", n.id, n.last_error)
                    });
                self.publish(&n);
            }
        }
        self.backends.smtp.forget(name).await;
        self.backends.exchange.forget(name).await;
        self.store.durable().await
    }

    /// Runs until `stop` turns true, then waits up to the grace period for
    /// attempts in flight. Unfinished ones stay SENDING in the store and are
    /// recovered at the next start.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut attempts = JoinSet::new();
        // Purge at least twice per retention window (every minute at most).
        let purge_every =
            (self.config.retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut purge = tokio::time::interval(purge_every);
        loop {
            while attempts.try_join_next().is_some() {}
            let (work, next) = self
                .scheduler()
                .take_ready(now_ms(), self.config.connection_concurrency);
            for (connection, id) in work {
                let this = self.clone();
                attempts.spawn(async move { this.attempt(connection, id).await });
            }
            let sleep = next
                .map(|due| due.saturating_sub(now_ms()))
                .unwrap_or(3_600_000);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
                _ = purge.tick() => self.purge(),
                _ = stop.changed() => break,
            }
        }
        let in_flight = attempts.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for attempts in flight");
            let drained = tokio::time::timeout(self.config.shutdown_grace, async {
                while attempts.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    left = attempts.len(),
                    "attempts still running at the end of the grace period; they will be retried at the next start"
                );
                attempts.abort_all();
            }
        }
    }

    fn purge(&self) {
        let cutoff = SystemTime::now()
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        loop {
            match self.store.purge_expired(cutoff, 10_000) {
                Ok(10_000) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(removed = n, "purged notifications past retention");
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "purging old notifications failed");
                    break;
                }
            }
        }
    }

    async fn attempt(self: Arc<Self>, connection: String, id: NotificationId) {
        let next = match self.try_attempt(&connection, id).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(%id, error = %e, "store failure during an attempt; retrying in 5 s");
                Next::Retry(SystemTime::now() + Duration::from_secs(5))
            }
        };
        {
            let mut s = self.scheduler();
            s.finish(&connection);
            match next {
                Next::Done => {}
                Next::Retry(at) => s.push(&connection, millis(at), id),
                Next::Hold => s.hold(&connection, id),
            }
        }
        self.wake.notify_one();
    }

    async fn try_attempt(&self, name: &str, id: NotificationId) -> Result<Next, StoreError> {
        let now = SystemTime::now();
        let connection = match self.store.get_connection(name) {
            Ok(v) => Some(v.connection),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let claimed = self.store.transition(&id, |n| {
            Ok::<_, ()>(if !matches!(n.state, State::Queued | State::Retrying) {
                Change::Keep
            } else {
                match &connection {
                    None => Change::Write(Notification {
                        state: State::Failed,
                        last_error: format!("connection {name:?} no longer exists"),
                        next_attempt_time: None,
                        update_time: now,
                        ..n.clone()
                    }),
                    Some(c) if c.disabled => Change::Keep,
                    Some(_) => Change::Write(Notification {
                        state: State::Sending,
                        attempts: n.attempts + 1,
                        next_attempt_time: None,
                        update_time: now,
                        ..n.clone()
                    }),
                }
            })
        })?;
        let Ok(Some(n)) = claimed else {
            return Ok(Next::Done);
        };
        match (&connection, n.state) {
            (Some(c), State::Queued | State::Retrying) if c.disabled => {
                tracing::debug!(%id, connection = name, "connection disabled; holding");
                self.logs.event(name, c.log_level, Kind::Step, || {
                    format!("id={id} waiting: the connection is disabled")
                });
                Ok(Next::Hold)
            }
            (Some(c), State::Sending) => {
                self.logs.event(name, c.log_level, Kind::Step, || {
                    format!("id={id} attempt {} started", n.attempts)
                });
                self.publish(&n);
                let c = c.clone();
                self.deliver(c, n).await
            }
            _ => {
                self.publish(&n);
                Ok(Next::Done)
            }
        }
    }

    async fn deliver(
        &self,
        connection: Connection,
        claimed: Notification,
    ) -> Result<Next, StoreError> {
        let id = claimed.id;
        let mut described = String::new();
        let result = match self.store.get_message(&id)? {
            None => Err(DeliveryError::permanent(
                "the stored message is missing; it cannot be sent",
            )),
            Some(mut message) => {
                if connection.log_level == crate::domain::LogLevel::Full {
                    described = describe(&message);
                }
                // The connection's current sender: edits apply to the next attempt.
                message.from = connection.sender.clone();
                let backend = self.backends.for_connection(&connection);
                match tokio::time::timeout(
                    self.config.attempt_timeout,
                    backend.send(&connection, &message),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(DeliveryError::transient(format!(
                        "the attempt did not finish within {:?}",
                        self.config.attempt_timeout
                    ))),
                }
            }
        };
        let now = SystemTime::now();
        let age = now.duration_since(claimed.create_time).unwrap_or_default();
        let retry = &self.config.retry;
        let rejected = |list: &[crate::backend::RejectedRecipient]| -> Vec<Rejected> {
            list.iter()
                .map(|r| Rejected {
                    address: r.address.clone(),
                    reply: r.reply.clone(),
                })
                .collect()
        };
        let finished = self.store.transition(&id, |n| {
            let mut next = Notification {
                update_time: now,
                next_attempt_time: None,
                ..n.clone()
            };
            match &result {
                Ok(d) => {
                    next.state = State::Delivered;
                    next.provider_message_id = d.provider_message_id.clone();
                    next.rejected = rejected(&d.rejected);
                }
                Err(_) if n.state != State::Sending => return Ok::<_, ()>(Change::Keep),
                Err(e) => {
                    next.rejected = rejected(&e.rejected);
                    match e.kind {
                        FailureKind::Permanent => {
                            next.state = State::Failed;
                            next.last_error = e.message.clone();
                        }
                        FailureKind::Transient if retry.exhausted(n.attempts, age) => {
                            next.state = State::Failed;
                            next.last_error = format!(
                                "gave up after {} attempts over {}: {}",
                                n.attempts,
                                humantime::format_duration(Duration::from_secs(age.as_secs())),
                                e.message
                            );
                        }
                        FailureKind::Transient => {
                            next.state = State::Retrying;
                            next.last_error = e.message.clone();
                            next.next_attempt_time =
                                Some(now + retry.delay(n.attempts, e.retry_after));
                        }
                    }
                }
            }
            Ok(Change::Write(next))
        })?;
        let Ok(Some(n)) = finished else {
            return Ok(Next::Done);
        };
        if n.state.is_final() {
            // The attempt stays in flight (its slot held) until its outcome
            // is on disk: a crash before this point sends the message again,
            // after it never. Without the wait, a crash while only
            // deliveries run (no Send forcing a flush) re-sent everything
            // delivered since sled's last periodic flush.
            if let Err(e) = self.store.durable().await {
                tracing::error!(%id, error = %e, "the outcome of an attempt could not be made durable");
            }
        }
        self.publish(&n);
        self.finished(&n);
        let name = connection.name.as_str();
        let level = connection.log_level;
        let outcome = match (&result, n.state) {
            (Ok(_), _) => "delivered",
            (Err(e), _) if e.kind == FailureKind::Transient => "transient",
            _ => "permanent",
        };
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabels {
                connection: n.connection.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Err(e) = &result {
            self.metrics
                .backend_errors
                .get_or_create(&BackendErrorLabels {
                    backend: connection.backend.kind().to_owned(),
                    kind: match e.kind {
                        FailureKind::Transient => "transient",
                        FailureKind::Permanent => "permanent",
                    }
                    .to_owned(),
                })
                .inc();
        }
        if n.state == State::Delivered {
            let latency = now.duration_since(n.create_time).unwrap_or_default();
            self.metrics
                .delivery_latency
                .get_or_create(&ConnectionLabels {
                    connection: n.connection.clone(),
                })
                .observe(latency.as_secs_f64());
        }
        match n.state {
            State::Delivered => {
                self.logs.event(name, level, Kind::Step, || {
                    format!(
                        "id={id} delivered attempt={} {described} reply={:?}",
                        n.attempts, n.provider_message_id
                    )
                });
                for r in &n.rejected {
                    self.logs.event(name, level, Kind::Error, || {
                        format!("id={id} recipient {} refused: {}", r.address, r.reply)
                    });
                }
            }
            State::Failed => self.logs.event(name, level, Kind::Error, || {
                format!("id={id} failed attempt={}: {}", n.attempts, n.last_error)
            }),
            State::Retrying => self.logs.event(name, level, Kind::Error, || {
                format!(
                    "id={id} attempt {} failed, retrying at {}: {}",
                    n.attempts,
                    n.next_attempt_time
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default(),
                    n.last_error
                )
            }),
            _ => {}
        }
        match n.state {
            State::Delivered => {
                tracing::debug!(%id, connection = %n.connection, attempts = n.attempts, "delivered")
            }
            State::Failed => {
                tracing::warn!(%id, connection = %n.connection, attempts = n.attempts, error = %n.last_error, "delivery failed")
            }
            State::Retrying => {
                tracing::info!(%id, connection = %n.connection, attempts = n.attempts, error = %n.last_error, "delivery will be retried")
            }
            _ => {}
        }
        Ok(match (n.state, n.next_attempt_time) {
            (State::Retrying, Some(at)) => Next::Retry(at),
            _ => Next::Done,
        })
    }
}
