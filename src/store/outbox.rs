//! The outbox: notifications, their messages and the indexes over them, all
//! in one sled tree so that each change is one atomic batch or transaction.
//!
//! Keys (`id` is the 16-byte UUIDv7, so ids sort by creation time):
//! - `n` id            → postcard [`Notification`]
//! - `m` id            → postcard [`OutgoingMessage`] (removed at a final state)
//! - `p` id            → pending: due time (u64 ms, BE) + connection name;
//!   present exactly while the state is not final, scanned at start-up
//! - `c` name 0x00 id  → state code: a connection's notifications
//! - `i` key           → id: idempotency keys
//! - `e` ms id         → empty: final notifications by the time they ended,
//!   for the retention purge

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{Store, StoreError};
use crate::domain::{Notification, NotificationId, OutgoingMessage, State};

fn key(prefix: u8, id: &NotificationId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.0);
    k
}

fn conn_key(connection: &str, id: &NotificationId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + connection.len() + 16);
    k.push(b'c');
    k.extend_from_slice(connection.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.0);
    k
}

fn conn_prefix(connection: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + connection.len());
    k.push(b'c');
    k.extend_from_slice(connection.as_bytes());
    k.push(0);
    k
}

fn idem_key(k: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + k.len());
    out.push(b'i');
    out.extend_from_slice(k.as_bytes());
    out
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn expiry_key(t: SystemTime, id: &NotificationId) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = b'e';
    k[1..9].copy_from_slice(&millis(t).to_be_bytes());
    k[9..].copy_from_slice(&id.0);
    k
}

fn pending_value(due: SystemTime, connection: &str) -> Vec<u8> {
    let mut v = millis(due).to_be_bytes().to_vec();
    v.extend_from_slice(connection.as_bytes());
    v
}

fn id_from(bytes: &[u8]) -> Option<NotificationId> {
    bytes.try_into().ok().map(NotificationId)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // postcard serializes plain data into a Vec without failing.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        key: what.to_owned(),
        reason: e.to_string(),
    })
}

/// One notification's change inside a transaction; the indexes follow the
/// new state.
fn transition_in(
    t: &TransactionalTree,
    id: &NotificationId,
    change: impl FnOnce(&Notification) -> Change,
) -> Result<Option<Notification>, ConflictableTransactionError<StoreError>> {
    let Some(bytes) = t.get(key(b'n', id))? else {
        return Ok(None);
    };
    let current: Notification =
        decode("notification", &bytes).map_err(ConflictableTransactionError::Abort)?;
    let next = match change(&current) {
        Change::Keep => return Ok(Some(current)),
        Change::Write(next) => next,
    };
    t.insert(&key(b'n', id), encode(&next))?;
    if next.state != current.state {
        t.insert(conn_key(&next.connection, id), &[next.state.code()])?;
    }
    if next.state.is_final() {
        t.remove(&key(b'p', id))?;
        t.remove(&key(b'm', id))?;
        t.insert(&expiry_key(next.update_time, id), &[])?;
    } else {
        let due = next.next_attempt_time.unwrap_or(next.update_time);
        t.insert(&key(b'p', id), pending_value(due, &next.connection))?;
    }
    Ok(Some(next))
}

/// A pending notification found at start-up.
pub struct Pending {
    pub id: NotificationId,
    pub connection: String,
    pub due: SystemTime,
}

/// What a state change decided; returned by the closure given to
/// [`Store::transition`].
pub enum Change {
    /// Write this notification.
    Write(Notification),
    /// Leave everything as it is.
    Keep,
}

impl Store {
    /// Looks up an idempotency key: the id it was first used for, if that
    /// notification still exists.
    pub fn find_idempotent(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<Notification>, StoreError> {
        let Some(id) = self.outbox.get(idem_key(idempotency_key))? else {
            return Ok(None);
        };
        match id_from(&id) {
            Some(id) => self.get_notification(&id),
            None => Ok(None),
        }
    }

    /// Adds a new notification and its message, atomically, with the next
    /// group commit: neither written nor visible until [`Store::durable`]
    /// returns, which the caller must await before acknowledging.
    pub fn enqueue(&self, n: &Notification, message: &OutgoingMessage) -> Result<(), StoreError> {
        let notification = encode(n);
        let message = encode(message);
        self.check_space((notification.len() + message.len()) as u64)?;
        let due = n.next_attempt_time.unwrap_or(n.create_time);
        let mut writes = vec![
            (key(b'n', &n.id).to_vec(), notification),
            (key(b'm', &n.id).to_vec(), message),
            (key(b'p', &n.id).to_vec(), pending_value(due, &n.connection)),
            (conn_key(&n.connection, &n.id), vec![n.state.code()]),
        ];
        if !n.idempotency_key.is_empty() {
            writes.push((idem_key(&n.idempotency_key), n.id.0.to_vec()));
        }
        self.flusher.stage(writes);
        Ok(())
    }

    pub fn get_notification(
        &self,
        id: &NotificationId,
    ) -> Result<Option<Notification>, StoreError> {
        match self.outbox.get(key(b'n', id))? {
            Some(bytes) => Ok(Some(decode("notification", &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn get_message(&self, id: &NotificationId) -> Result<Option<OutgoingMessage>, StoreError> {
        match self.outbox.get(key(b'm', id))? {
            Some(bytes) => Ok(Some(decode("message", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Changes one notification atomically: `change` sees the current
    /// version and decides. The indexes follow the new state. Returns the
    /// notification as it is afterwards, or `None` when it does not exist.
    pub fn transition<E>(
        &self,
        id: &NotificationId,
        change: impl Fn(&Notification) -> Result<Change, E>,
    ) -> Result<Result<Option<Notification>, E>, StoreError> {
        let refused = std::cell::RefCell::new(None);
        let result = self.outbox.transaction(|t: &TransactionalTree| {
            transition_in(t, id, |current| match change(current) {
                Ok(c) => c,
                Err(e) => {
                    *refused.borrow_mut() = Some(e);
                    Change::Keep
                }
            })
        });
        let result = match result {
            Ok(r) => r,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        match refused.into_inner() {
            Some(e) => Ok(Err(e)),
            None => Ok(Ok(result)),
        }
    }

    /// Changes several notifications in one atomic transaction, each as
    /// [`Store::transition`] would: `change` gets the position in `ids` and
    /// the current version. One transaction instead of one per notification
    /// matters: each sled transaction seals and writes sled's I/O buffer.
    pub fn transition_each(
        &self,
        ids: &[NotificationId],
        change: impl Fn(usize, &Notification) -> Change,
    ) -> Result<Vec<Option<Notification>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.outbox.transaction(|t: &TransactionalTree| {
            let mut out = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                out.push(transition_in(t, id, |current| change(i, current))?);
            }
            Ok(out)
        });
        match result {
            Ok(r) => Ok(r),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Every pending notification, for the dispatcher at start-up.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.scan_prefix([b'p']) {
            let (k, v) = item?;
            let (Some(id), true) = (id_from(&k[1..]), v.len() >= 8) else {
                continue;
            };
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&v[..8]);
            out.push(Pending {
                id,
                connection: String::from_utf8_lossy(&v[8..]).into_owned(),
                due: UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ms)),
            });
        }
        Ok(out)
    }

    pub fn pending_count(&self) -> usize {
        self.outbox.scan_prefix([b'p']).count()
    }

    /// Ids of a connection's notifications that are not final.
    pub fn pending_of(&self, connection: &str) -> Result<Vec<NotificationId>, StoreError> {
        let prefix = conn_prefix(connection);
        let mut out = Vec::new();
        for item in self.outbox.scan_prefix(&prefix) {
            let (k, v) = item?;
            let final_state = v
                .first()
                .and_then(|c| State::from_code(*c))
                .is_none_or(State::is_final);
            if !final_state && let Some(id) = id_from(&k[prefix.len()..]) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// A page of notifications in creation order after `after`, optionally
    /// only one connection's and one state's. Returns them and whether more
    /// may follow.
    pub fn list_notifications(
        &self,
        connection: Option<&str>,
        state: Option<State>,
        after: Option<NotificationId>,
        limit: usize,
    ) -> Result<(Vec<Notification>, bool), StoreError> {
        let mut out = Vec::new();
        let (prefix, start) = match connection {
            Some(c) => {
                let p = conn_prefix(c);
                let start = match &after {
                    Some(id) => conn_key(c, id),
                    None => p.clone(),
                };
                (p, start)
            }
            None => {
                let start = match &after {
                    Some(id) => key(b'n', id).to_vec(),
                    None => vec![b'n'],
                };
                (vec![b'n'], start)
            }
        };
        for item in self.outbox.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(id) = id_from(&k[prefix.len()..]) else {
                continue;
            };
            if Some(id) == after {
                continue;
            }
            let n: Notification = if connection.is_some() {
                if let Some(s) = state
                    && v.first() != Some(&s.code())
                {
                    continue;
                }
                match self.get_notification(&id)? {
                    Some(n) => n,
                    None => continue,
                }
            } else {
                let n: Notification = decode("notification", &v)?;
                if state.is_some_and(|s| s != n.state) {
                    continue;
                }
                n
            };
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(n);
        }
        Ok((out, false))
    }

    /// Removes final notifications that ended before `cutoff`, at most
    /// `limit` per call. Returns how many were removed.
    pub fn purge_expired(&self, cutoff: SystemTime, limit: usize) -> Result<usize, StoreError> {
        let end = expiry_key(cutoff, &NotificationId([0; 16]));
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for item in self.outbox.range([b'e'].as_slice()..end.as_slice()) {
            let (k, _) = item?;
            batch.remove(k.clone());
            if let Some(id) = id_from(&k[9..]) {
                if let Some(n) = self.get_notification(&id)? {
                    batch.remove(conn_key(&n.connection, &id).as_slice());
                    if !n.idempotency_key.is_empty() {
                        // Only if the key still points at this notification.
                        if self.outbox.get(idem_key(&n.idempotency_key))?.as_deref()
                            == Some(&id.0[..])
                        {
                            batch.remove(idem_key(&n.idempotency_key).as_slice());
                        }
                    }
                }
                batch.remove(&key(b'n', &id));
                batch.remove(&key(b'm', &id));
            }
            removed += 1;
            if removed == limit {
                break;
            }
        }
        if removed > 0 {
            self.outbox.apply_batch(batch)?;
        }
        Ok(removed)
    }
}
