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
    sync::{Notify, broadcast, mpsc, watch},
    task::JoinSet,
};

pub use retry::RetryPolicy;
use scheduler::Scheduler;

use crate::{
    backend::{Backend, Delivery, DeliveryError, FailureKind},
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

/// An attempt that ended, on its way to the finisher, which records a
/// whole group of them in one store transaction.
struct Finished {
    connection: Connection,
    claimed: Notification,
    /// The outer error: the stored message could not be read.
    result: Result<Result<Delivery, DeliveryError>, StoreError>,
    /// Recipients and subject for the file log (FULL level only).
    described: String,
}

/// After a store failure during an attempt, try again this much later.
const STORE_RETRY: Duration = Duration::from_secs(5);

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
    ///
    /// Store writes are grouped: the notifications taken in one round are
    /// claimed (SENDING) in one transaction, and the attempts that ended
    /// while the finisher was busy are recorded in one transaction.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut attempts = JoinSet::new();
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let finisher = tokio::spawn(self.clone().finish_loop(done_rx));
        // Purge at least twice per retention window (every minute at most).
        let purge_every =
            (self.config.retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut purge = tokio::time::interval(purge_every);
        loop {
            while attempts.try_join_next().is_some() {}
            let (work, next) = self
                .scheduler()
                .take_ready(now_ms(), self.config.connection_concurrency);
            for (connection, claimed) in self.claim(work) {
                let this = self.clone();
                let done = done_tx.clone();
                attempts.spawn(async move { this.attempt(connection, claimed, done).await });
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
                while attempts.join_next().await.is_some() {}
            }
        }
        // Every attempt has ended or was aborted, so every sender is gone
        // once ours is: the finisher records what was sent, then stops.
        drop(done_tx);
        let _ = finisher.await;
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

    /// An attempt ended: the notification leaves the scheduler, or comes
    /// back for a retry, or waits for its connection to be enabled.
    fn settle(&self, connection: &str, id: NotificationId, next: Next) {
        let mut s = self.scheduler();
        s.finish(connection);
        match next {
            Next::Done => {}
            Next::Retry(at) => s.push(connection, millis(at), id),
            Next::Hold => s.hold(connection, id),
        }
    }

    /// Claims the work taken from the scheduler: QUEUED/RETRYING become
    /// SENDING (attempts + 1) in one transaction. Returns what is to be
    /// sent now; everything else is settled here.
    fn claim(&self, work: Vec<(String, NotificationId)>) -> Vec<(Connection, Notification)> {
        if work.is_empty() {
            return Vec::new();
        }
        let now = SystemTime::now();
        let mut connections: std::collections::HashMap<&str, Option<Connection>> =
            std::collections::HashMap::new();
        let mut store_failed = None;
        for (name, _) in &work {
            if connections.contains_key(name.as_str()) {
                continue;
            }
            let c = match self.store.get_connection(name) {
                Ok(v) => Some(v.connection),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => {
                    store_failed = Some(e);
                    break;
                }
            };
            connections.insert(name, c);
        }
        let ids: Vec<NotificationId> = work.iter().map(|(_, id)| *id).collect();
        let claimed = match store_failed {
            Some(e) => Err(e),
            None => self.store.transition_each(&ids, |i, n| {
                let name = work[i].0.as_str();
                if !matches!(n.state, State::Queued | State::Retrying) {
                    return Change::Keep;
                }
                match connections.get(name).and_then(Option::as_ref) {
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
            }),
        };
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, count = work.len(), "store failure while claiming notifications; retrying in 5 s");
                for (name, id) in &work {
                    self.settle(name, *id, Next::Retry(now + STORE_RETRY));
                }
                self.wake.notify_one();
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut settled = false;
        for ((name, id), n) in work.iter().zip(claimed) {
            let Some(n) = n else {
                self.settle(name, *id, Next::Done);
                settled = true;
                continue;
            };
            match (
                connections.get(name.as_str()).and_then(Option::as_ref),
                n.state,
            ) {
                (Some(c), State::Queued | State::Retrying) if c.disabled => {
                    tracing::debug!(%id, connection = %name, "connection disabled; holding");
                    self.logs.event(name, c.log_level, Kind::Step, || {
                        format!("id={id} waiting: the connection is disabled")
                    });
                    self.settle(name, *id, Next::Hold);
                    settled = true;
                }
                (Some(c), State::Sending) => {
                    self.logs.event(name, c.log_level, Kind::Step, || {
                        format!("id={id} attempt {} started", n.attempts)
                    });
                    self.publish(&n);
                    out.push((c.clone(), n));
                }
                _ => {
                    self.publish(&n);
                    self.settle(name, *id, Next::Done);
                    settled = true;
                }
            }
        }
        if settled {
            // Slots were freed: the run loop looks again.
            self.wake.notify_one();
        }
        out
    }

    /// Sends one claimed notification and hands the outcome to the finisher.
    async fn attempt(
        self: Arc<Self>,
        connection: Connection,
        claimed: Notification,
        done: mpsc::UnboundedSender<Finished>,
    ) {
        let mut described = String::new();
        let result = match self.store.get_message(&claimed.id) {
            Err(e) => Err(e),
            Ok(None) => Ok(Err(DeliveryError::permanent(
                "the stored message is missing; it cannot be sent",
            ))),
            Ok(Some(mut message)) => {
                if connection.log_level == crate::domain::LogLevel::Full {
                    described = describe(&message);
                }
                // The connection's current sender: edits apply to the next attempt.
                message.from = connection.sender.clone();
                let backend = self.backends.for_connection(&connection);
                Ok(
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
                    },
                )
            }
        };
        let finished = Finished {
            connection,
            claimed,
            result,
            described,
        };
        if let Err(mpsc::error::SendError(f)) = done.send(finished) {
            // No finisher (cannot happen while `run` lives): leave it to
            // the next start, as an interrupted attempt.
            self.settle(f.connection.name.as_str(), f.claimed.id, Next::Done);
        }
    }

    /// Attempt, backend-error and latency metrics for one ended attempt.
    fn observe_attempt(
        &self,
        connection: &Connection,
        n: &Notification,
        result: &Result<Delivery, DeliveryError>,
        now: SystemTime,
    ) {
        let outcome = match result {
            Ok(_) => "delivered",
            Err(e) if e.kind == FailureKind::Transient => "transient",
            Err(_) => "permanent",
        };
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabels {
                connection: n.connection.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Err(e) = result {
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
    }

    /// The connection's file log lines for one ended attempt.
    fn log_outcome(&self, connection: &Connection, n: &Notification, described: &str) {
        let (name, level, id) = (connection.name.as_str(), connection.log_level, n.id);
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
    }

    /// Records ended attempts, as many at once as have queued up.
    async fn finish_loop(self: Arc<Self>, mut done: mpsc::UnboundedReceiver<Finished>) {
        while let Some(first) = done.recv().await {
            // Let the other attempts that are ready to end run first: a
            // bigger group costs the same one transaction.
            tokio::task::yield_now().await;
            let mut group = vec![first];
            while let Ok(f) = done.try_recv() {
                group.push(f);
            }
            self.finish(group).await;
            self.wake.notify_one();
        }
    }

    /// The final (or retrying) state of each ended attempt, in one
    /// transaction; then the watchers and the scheduler hear of it.
    async fn finish(&self, group: Vec<Finished>) {
        let now = SystemTime::now();
        let mut sent = Vec::with_capacity(group.len());
        for f in group {
            match f.result {
                Ok(result) => sent.push((f.connection, f.claimed, result, f.described)),
                Err(e) => {
                    tracing::error!(id = %f.claimed.id, error = %e, "store failure during an attempt; retrying in 5 s");
                    self.settle(
                        f.connection.name.as_str(),
                        f.claimed.id,
                        Next::Retry(now + STORE_RETRY),
                    );
                }
            }
        }
        let ids: Vec<NotificationId> = sent.iter().map(|(_, c, _, _)| c.id).collect();
        let retry = &self.config.retry;
        let rejected = |list: &[crate::backend::RejectedRecipient]| -> Vec<Rejected> {
            list.iter()
                .map(|r| Rejected {
                    address: r.address.clone(),
                    reply: r.reply.clone(),
                })
                .collect()
        };
        let written = self.store.transition_each(&ids, |i, n| {
            let (_, claimed, result, _) = &sent[i];
            let age = now.duration_since(claimed.create_time).unwrap_or_default();
            let mut next = Notification {
                update_time: now,
                next_attempt_time: None,
                ..n.clone()
            };
            match result {
                Ok(d) => {
                    next.state = State::Delivered;
                    next.provider_message_id = d.provider_message_id.clone();
                    next.rejected = rejected(&d.rejected);
                }
                Err(_) if n.state != State::Sending => return Change::Keep,
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
            Change::Write(next)
        });
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, count = sent.len(), "store failure recording attempts; retrying in 5 s");
                for (connection, claimed, _, _) in &sent {
                    self.settle(
                        connection.name.as_str(),
                        claimed.id,
                        Next::Retry(now + STORE_RETRY),
                    );
                }
                return;
            }
        };
        // The attempts stay in flight (their slots held) until their
        // outcomes are on disk: a crash before this point sends the messages
        // again, after it never. Without the wait, a crash while only
        // deliveries run (no Send forcing a flush) re-sent everything
        // delivered since sled's last periodic flush.
        if written.iter().flatten().any(|n| n.state.is_final())
            && let Err(e) = self.store.durable().await
        {
            tracing::error!(error = %e, "the outcome of attempts could not be made durable");
        }
        for ((connection, claimed, result, described), n) in sent.iter().zip(written) {
            let id = claimed.id;
            let name = connection.name.as_str();
            let Some(n) = n else {
                self.settle(name, id, Next::Done);
                continue;
            };
            self.publish(&n);
            self.finished(&n);
            self.observe_attempt(connection, &n, result, now);
            self.log_outcome(connection, &n, described);
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
            let next = match (n.state, n.next_attempt_time) {
                (State::Retrying, Some(at)) => Next::Retry(at),
                _ => Next::Done,
            };
            self.settle(name, id, next);
        }
    }
}
