//! Group commit. One task owns flushing the sled database (concurrent
//! `flush_async` calls can deadlock in sled 0.34): callers that need their
//! writes durable queue a waiter; the task flushes once for everyone queued,
//! then `fdatasync`s the database file — sled's own flush only issues
//! `sync_file_range`, which survives a killed process but not a power loss.
//!
//! New notifications are not written one by one: [`Flusher::stage`] queues
//! their keys, and the task applies everything staged as one atomic sled
//! batch right before the flush. Every sled batch or transaction seals and
//! writes sled's current I/O buffer (`pin_log`), each write followed by a
//! waited `sync_file_range`; one batch per group instead of one per
//! notification is what lets Send scale.

use std::{
    fs::File,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Inserts into the outbox tree, waiting for the next group commit.
type Staged = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Debug)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<Waiter>,
    staged: Arc<Mutex<Staged>>,
}

impl Flusher {
    /// Starts the flushing task. `db_file` is sled's main data file;
    /// staged writes go to `outbox`.
    pub fn start(db: sled::Db, outbox: sled::Tree, db_file: File) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let staged: Arc<Mutex<Staged>> = Arc::default();
        let db_file = Arc::new(db_file);
        let task_staged = staged.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                // Everything staged before these waiters asked is in here.
                let writes = std::mem::take(&mut *lock(&task_staged));
                let db = db.clone();
                let outbox = outbox.clone();
                let file = db_file.clone();
                let result = tokio::task::spawn_blocking(move || {
                    if !writes.is_empty() {
                        let mut batch = sled::Batch::default();
                        for (k, v) in writes {
                            batch.insert(k, v);
                        }
                        outbox.apply_batch(batch).map_err(StoreError::from)?;
                    }
                    db.flush().map_err(StoreError::from)?;
                    file.sync_data()
                        .map_err(|e| StoreError::from(sled::Error::Io(e)))
                })
                .await
                .unwrap_or_else(|e| Err(StoreError::Database(format!("flush task failed: {e}"))))
                .map(|_| ());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "database flush failed");
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx, staged }
    }

    /// Queues inserts into the outbox tree for the next group commit: they
    /// are applied atomically with everything else staged by then, and are
    /// visible once [`Flusher::flush`] returns.
    pub fn stage(&self, writes: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        lock(&self.staged).extend(writes);
    }

    /// Waits until everything written or staged before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let closed = || StoreError::Unavailable("the database is shutting down".into());
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn lock(staged: &Mutex<Staged>) -> std::sync::MutexGuard<'_, Staged> {
    // A panic while holding the lock can only have left whole entries.
    staged.lock().unwrap_or_else(|e| e.into_inner())
}
