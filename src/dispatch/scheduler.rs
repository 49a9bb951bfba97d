//! Which notification goes next: a time-ordered queue per connection, a
//! concurrency limit per connection, and round-robin across connections so
//! that one slow or failing connection does not starve the others.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::domain::NotificationId;

#[derive(Default)]
struct Queue {
    due: BTreeSet<(u64, NotificationId)>,
    in_flight: usize,
    /// Waiting for the connection to be enabled again.
    held: Vec<NotificationId>,
}

#[derive(Default)]
pub struct Scheduler {
    queues: HashMap<String, Queue>,
    /// Connections in the order they get their next turn.
    ring: VecDeque<String>,
    /// Notifications known to the scheduler (queued, in flight or held).
    total: usize,
}

impl Scheduler {
    pub fn push(&mut self, connection: &str, due_ms: u64, id: NotificationId) {
        let q = self.queue(connection);
        if q.due.insert((due_ms, id)) {
            self.total += 1;
        }
    }

    fn queue(&mut self, connection: &str) -> &mut Queue {
        if !self.queues.contains_key(connection) {
            self.ring.push_back(connection.to_owned());
        }
        self.queues.entry(connection.to_owned()).or_default()
    }

    /// Takes everything due by `now_ms` that the per-connection limit allows,
    /// round-robin: one per connection per round. Returns the work and the
    /// earliest due time left (to sleep until).
    pub fn take_ready(
        &mut self,
        now_ms: u64,
        limit: usize,
    ) -> (Vec<(String, NotificationId)>, Option<u64>) {
        let mut out = Vec::new();
        loop {
            let mut took = false;
            for name in &self.ring {
                let Some(q) = self.queues.get_mut(name) else {
                    continue;
                };
                if q.in_flight >= limit {
                    continue;
                }
                if let Some(&(due, id)) = q.due.first()
                    && due <= now_ms
                {
                    q.due.pop_first();
                    q.in_flight += 1;
                    out.push((name.clone(), id));
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
        // Rotate so that the next call starts with another connection.
        if let Some(first) = self.ring.pop_front() {
            self.ring.push_back(first);
        }
        let next = self
            .queues
            .values()
            .filter(|q| q.in_flight < limit)
            .filter_map(|q| q.due.first().map(|(d, _)| *d))
            .min();
        (out, next)
    }

    /// An attempt ended; the notification left the scheduler unless pushed again.
    pub fn finish(&mut self, connection: &str) {
        if let Some(q) = self.queues.get_mut(connection) {
            q.in_flight = q.in_flight.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
        }
        self.drop_if_idle(connection);
    }

    /// Parks a notification until [`Scheduler::release`] for its connection.
    pub fn hold(&mut self, connection: &str, id: NotificationId) {
        let q = self.queue(connection);
        q.held.push(id);
        self.total += 1;
    }

    /// Makes every held notification of a connection due now.
    pub fn release(&mut self, connection: &str, now_ms: u64) {
        if let Some(q) = self.queues.get_mut(connection) {
            for id in std::mem::take(&mut q.held) {
                q.due.insert((now_ms, id));
            }
        }
    }

    /// Forgets queued and held notifications of a connection (it was deleted).
    pub fn remove_connection(&mut self, connection: &str) {
        if let Some(q) = self.queues.get_mut(connection) {
            self.total = self.total.saturating_sub(q.due.len() + q.held.len());
            q.due.clear();
            q.held.clear();
        }
        self.drop_if_idle(connection);
    }

    fn drop_if_idle(&mut self, connection: &str) {
        let idle = self
            .queues
            .get(connection)
            .is_some_and(|q| q.due.is_empty() && q.held.is_empty() && q.in_flight == 0);
        if idle {
            self.queues.remove(connection);
            self.ring.retain(|n| n != connection);
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// (waiting, in flight, held) across connections.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.queues.values().fold((0, 0, 0), |(w, f, h), q| {
            (w + q.due.len(), f + q.in_flight, h + q.held.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NotificationId {
        NotificationId([n; 16])
    }

    #[test]
    fn a_busy_connection_does_not_starve_others() {
        let mut s = Scheduler::default();
        for i in 0..100 {
            s.push("slow", 0, id(i));
        }
        s.push("fast", 0, id(200));
        let (work, _) = s.take_ready(10, 4);
        assert_eq!(work.iter().filter(|(c, _)| c == "slow").count(), 4);
        assert!(work.iter().any(|(c, _)| c == "fast"));
    }

    #[test]
    fn nothing_is_taken_before_it_is_due() {
        let mut s = Scheduler::default();
        s.push("a", 100, id(1));
        let (work, next) = s.take_ready(50, 4);
        assert!(work.is_empty());
        assert_eq!(next, Some(100));
        let (work, _) = s.take_ready(100, 4);
        assert_eq!(work.len(), 1);
        s.finish("a");
        assert_eq!(s.total(), 0);
    }

    #[test]
    fn held_notifications_wait_for_release() {
        let mut s = Scheduler::default();
        s.hold("a", id(1));
        assert!(s.take_ready(1000, 4).0.is_empty());
        s.release("a", 1000);
        assert_eq!(s.take_ready(1000, 4).0.len(), 1);
    }
}
