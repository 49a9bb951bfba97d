//! `notigate.v1.Notifier`: accept e-mail into the durable outbox and report
//! on its delivery.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Mutex, broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    convert::timestamp,
    invalid, invalid_field,
    message::{MessageError, MessageLimits, parse_message},
    page_size,
};
use crate::{
    connlog::{Kind, describe},
    dispatch::Dispatcher,
    domain::{ConnectionName, Notification, NotificationId, State},
    pb::{self, notifier_server::Notifier},
    store::{Change, Store},
};

/// `Send` limits beyond the message itself.
#[derive(Debug, Clone)]
pub struct SendLimits {
    pub message: MessageLimits,
    /// Notifications waiting or in flight; beyond it Send is refused.
    pub max_queued: usize,
}

impl Default for SendLimits {
    fn default() -> Self {
        Self {
            message: MessageLimits::default(),
            max_queued: 1_000_000,
        }
    }
}

const IDEMPOTENCY_STRIPES: usize = 64;
/// `wait_for_delivery` answers at most this long after the call started.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct NotifierService {
    store: Arc<Store>,
    dispatcher: Arc<Dispatcher>,
    limits: SendLimits,
    /// Serialises Sends that share an idempotency key (by hash stripe), so
    /// that check-then-insert cannot race.
    idempotency_locks: Vec<Mutex<()>>,
    /// Turns true when the server starts draining: long waits end then.
    draining: watch::Receiver<bool>,
}

impl NotifierService {
    pub fn new(
        store: Arc<Store>,
        dispatcher: Arc<Dispatcher>,
        limits: SendLimits,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            dispatcher,
            limits,
            draining,
            idempotency_locks: (0..IDEMPOTENCY_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn lock_for(&self, key: &str) -> &Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.idempotency_locks[(h.finish() as usize) % IDEMPOTENCY_STRIPES]
    }

    fn find(&self, field: &str, id: &str) -> Result<Notification, Status> {
        let parsed = NotificationId::parse(id).map_err(|e| invalid_field(field, e))?;
        self.store
            .get_notification(&parsed)?
            .ok_or_else(|| Status::not_found(format!("notification {id:?} not found")))
    }

    /// Waits for `id` to reach a final state, or until `deadline`.
    async fn wait_final(
        &self,
        id: NotificationId,
        deadline: tokio::time::Instant,
    ) -> Result<Notification, Status> {
        let mut updates = self.dispatcher.subscribe();
        let mut draining = self.draining.clone();
        loop {
            let current = self
                .store
                .get_notification(&id)?
                .ok_or_else(|| Status::not_found("the notification disappeared"))?;
            if current.state.is_final() {
                return Ok(current);
            }
            loop {
                // None: the deadline passed or the server is draining.
                let received = tokio::select! {
                    r = tokio::time::timeout_at(deadline, updates.recv()) => r.ok(),
                    _ = draining.wait_for(|d| *d) => None,
                };
                match received {
                    None => return Ok(self.store.get_notification(&id)?.unwrap_or(current)),
                    Some(Ok(n)) if n.id == id && n.state.is_final() => return Ok(n),
                    Some(Ok(_)) => continue,
                    // Missed updates: look at the store again.
                    Some(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Some(Err(broadcast::error::RecvError::Closed)) => {
                        return Err(Status::unavailable("the server is shutting down"));
                    }
                }
            }
        }
    }
}

/// The call's deadline from `grpc-timeout`, if the client set one.
fn call_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub fn state_to_pb(s: State) -> pb::NotificationState {
    match s {
        State::Queued => pb::NotificationState::Queued,
        State::Sending => pb::NotificationState::Sending,
        State::Retrying => pb::NotificationState::Retrying,
        State::Delivered => pb::NotificationState::Delivered,
        State::Failed => pb::NotificationState::Failed,
        State::Canceled => pb::NotificationState::Canceled,
    }
}

pub fn notification_to_pb(n: &Notification) -> pb::Notification {
    pb::Notification {
        id: n.id.to_string(),
        connection: n.connection.clone(),
        state: state_to_pb(n.state) as i32,
        attempts: n.attempts,
        last_error: n.last_error.clone(),
        next_attempt_time: n.next_attempt_time.map(timestamp),
        create_time: Some(timestamp(n.create_time)),
        update_time: Some(timestamp(n.update_time)),
        provider_message_id: n.provider_message_id.clone(),
        rejected_recipients: n
            .rejected
            .iter()
            .map(|r| pb::RejectedRecipient {
                address: r.address.clone(),
                reply: r.reply.clone(),
            })
            .collect(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

#[tonic::async_trait]
impl Notifier for NotifierService {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let started = tokio::time::Instant::now();
        let timeout = call_timeout(&request);
        let request = request.into_inner();
        let message = request
            .message
            .as_ref()
            .ok_or_else(|| invalid_field("message", "is required"))?;
        let connection = if request.connection.is_empty() {
            self.store.default_connection()?.ok_or_else(|| {
                Status::failed_precondition(
                    "no connection named and no default connection is set (set is_default on one)",
                )
            })?
        } else {
            let name = ConnectionName::parse(&request.connection)
                .map_err(|e| invalid_field("connection", e))?;
            self.store.get_connection(name.as_str())?
        };
        let connection = connection.connection;
        if connection.disabled {
            return Err(Status::failed_precondition(format!(
                "connection {:?} is disabled",
                connection.name.as_str()
            )));
        }
        if request.idempotency_key.len() > 256 {
            return Err(invalid_field(
                "idempotency_key",
                "must be at most 256 bytes",
            ));
        }
        let id = NotificationId::new();
        let outgoing = parse_message(
            message,
            id.to_string(),
            connection.sender.clone(),
            &self.limits.message,
        )
        .map_err(|e| match e {
            MessageError::Invalid(v) => invalid(v),
            MessageError::TooLarge { size, limit } => Status::resource_exhausted(format!(
                "message is {size} bytes (subject, bodies and attachments); the limit is {limit}"
            )),
        })?;

        let key = request.idempotency_key.clone();
        let _guard = if key.is_empty() {
            None
        } else {
            Some(self.lock_for(&key).lock().await)
        };
        let existing = if key.is_empty() {
            None
        } else {
            self.store.find_idempotent(&key)?
        };
        let notification = match existing {
            Some(n) => n,
            None => {
                if self.dispatcher.queued() >= self.limits.max_queued {
                    return Err(Status::resource_exhausted(format!(
                        "the outbox is full ({} notifications waiting); try again later",
                        self.limits.max_queued
                    )));
                }
                let now = SystemTime::now();
                let n = Notification {
                    id,
                    connection: connection.name.to_string(),
                    state: State::Queued,
                    attempts: 0,
                    last_error: String::new(),
                    next_attempt_time: Some(now),
                    create_time: now,
                    update_time: now,
                    provider_message_id: String::new(),
                    rejected: Vec::new(),
                    idempotency_key: key.clone(),
                };
                self.store.enqueue(&n, &outgoing)?;
                self.store.durable().await.map_err(|e| {
                    Status::unavailable(format!("the outbox could not be made durable: {e}"))
                })?;
                self.dispatcher.submit(&n);
                self.dispatcher
                    .metrics()
                    .accepted
                    .get_or_create(&crate::metrics::ConnectionLabels {
                        connection: n.connection.clone(),
                    })
                    .inc();
                self.dispatcher.logs().event(
                    connection.name.as_str(),
                    connection.log_level,
                    Kind::Step,
                    || format!("id={} queued {}", n.id, describe(&outgoing)),
                );
                n
            }
        };
        drop(_guard);
        let notification = if request.wait_for_delivery && !notification.state.is_final() {
            let budget = timeout
                .map(|t| t.saturating_sub(Duration::from_millis(200).min(t / 10)))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            self.wait_final(notification.id, started + budget).await?
        } else {
            notification
        };
        Ok(Response::new(pb::SendResponse {
            id: notification.id.to_string(),
            state: state_to_pb(notification.state) as i32,
        }))
    }

    async fn get_notification(
        &self,
        request: Request<pb::GetNotificationRequest>,
    ) -> Result<Response<pb::Notification>, Status> {
        let n = self.find("id", &request.into_inner().id)?;
        Ok(Response::new(notification_to_pb(&n)))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let r = request.into_inner();
        let limit = page_size(r.page_size)?;
        let connection = if r.connection.is_empty() {
            None
        } else {
            Some(ConnectionName::parse(&r.connection).map_err(|e| invalid_field("connection", e))?)
        };
        let state = match pb::NotificationState::try_from(r.state) {
            Ok(pb::NotificationState::Unspecified) => None,
            Ok(pb::NotificationState::Queued) => Some(State::Queued),
            Ok(pb::NotificationState::Sending) => Some(State::Sending),
            Ok(pb::NotificationState::Retrying) => Some(State::Retrying),
            Ok(pb::NotificationState::Delivered) => Some(State::Delivered),
            Ok(pb::NotificationState::Failed) => Some(State::Failed),
            Ok(pb::NotificationState::Canceled) => Some(State::Canceled),
            Err(_) => return Err(invalid_field("state", format!("unknown value {}", r.state))),
        };
        let after =
            match super::decode_page_token(&r.page_token)? {
                Some(s) => Some(NotificationId::parse(&s).map_err(|_| {
                    invalid_field("page_token", "is not a token this server issued")
                })?),
                None => None,
            };
        let (page, more) = self.store.list_notifications(
            connection.as_ref().map(|c| c.as_str()),
            state,
            after,
            limit,
        )?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => super::encode_page_token(&last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page.iter().map(notification_to_pb).collect(),
            next_page_token,
        }))
    }

    type WatchNotificationStream = WatchStream;

    async fn watch_notification(
        &self,
        request: Request<pb::WatchNotificationRequest>,
    ) -> Result<Response<Self::WatchNotificationStream>, Status> {
        let id_text = request.into_inner().id;
        // Subscribe before reading, so no change between the two is missed.
        let mut updates = self.dispatcher.subscribe();
        let first = self.find("id", &id_text)?;
        let store = self.store.clone();
        let id = first.id;
        let mut draining = self.draining.clone();
        let stream = async_stream::try_stream! {
            let mut last = first.clone();
            yield notification_to_pb(&first);
            while !last.state.is_final() {
                let received = tokio::select! {
                    r = updates.recv() => r,
                    _ = draining.wait_for(|d| *d) => Err(broadcast::error::RecvError::Closed),
                };
                let next = match received {
                    Ok(n) if n.id == id => n,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        match store.get_notification(&id).map_err(Status::from)? {
                            Some(n) => n,
                            None => break,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        Err(Status::unavailable("the server is shutting down"))?;
                        break;
                    }
                };
                if next != last {
                    yield notification_to_pb(&next);
                    last = next;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_notification(
        &self,
        request: Request<pb::CancelNotificationRequest>,
    ) -> Result<Response<pb::Notification>, Status> {
        let id_text = request.into_inner().id;
        let id = NotificationId::parse(&id_text).map_err(|e| invalid_field("id", e))?;
        let now = SystemTime::now();
        let outcome = self.store.transition(&id, |n| match n.state {
            State::Queued | State::Retrying => Ok(Change::Write(Notification {
                state: State::Canceled,
                next_attempt_time: None,
                update_time: now,
                ..n.clone()
            })),
            other => Err(other),
        })?;
        match outcome {
            Ok(Some(n)) => {
                self.store.durable().await?;
                self.dispatcher.publish(&n);
                self.dispatcher.finished(&n);
                if let Ok(c) = self.store.get_connection(&n.connection) {
                    self.dispatcher.logs().event(
                        &n.connection,
                        c.connection.log_level,
                        Kind::Step,
                        || format!("id={} canceled", n.id),
                    );
                }
                Ok(Response::new(notification_to_pb(&n)))
            }
            Ok(None) => Err(Status::not_found(format!(
                "notification {id_text:?} not found"
            ))),
            Err(state) => Err(Status::failed_precondition(format!(
                "notification is {}: only QUEUED or RETRYING notifications can be canceled",
                state_to_pb(state).as_str_name()
            ))),
        }
    }
}
