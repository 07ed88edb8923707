//! Sealed batches waiting to be pushed, oldest first, bounded in count.
//! In memory for now; the on-disk spool replaces it (see ARCHITECTURE.md).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// An encoded batch and its sequence number.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub sequence: u64,
    pub body: Bytes,
}

/// The queue between the batcher (producer) and the pusher (consumer).
pub struct Outbox {
    queue: Mutex<VecDeque<Sealed>>,
    capacity: usize,
    /// Wakes the pusher when a batch is added.
    pub ready: Notify,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` batches.
    pub fn new(capacity: usize) -> Self {
        Outbox { queue: Mutex::new(VecDeque::new()), capacity: capacity.max(1), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sealed>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch; returns the one dropped to make room, if any.
    pub fn push(&self, batch: Sealed) -> Option<Sealed> {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.len() >= self.capacity { q.pop_front() } else { None };
            q.push_back(batch);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The oldest batch, left in place until [`Outbox::remove`].
    pub fn front(&self) -> Option<Sealed> {
        self.lock().front().cloned()
    }

    /// Removes the batch with `sequence` (after it was acknowledged or refused).
    pub fn remove(&self, sequence: u64) {
        let mut q = self.lock();
        if let Some(i) = q.iter().position(|b| b.sequence == sequence) {
            q.remove(i);
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: u64) -> Sealed {
        Sealed { sequence: s, body: Bytes::new() }
    }

    #[test]
    fn bounded_oldest_dropped_first() {
        let o = Outbox::new(2);
        assert!(o.push(b(1)).is_none());
        assert!(o.push(b(2)).is_none());
        assert_eq!(o.push(b(3)).map(|d| d.sequence), Some(1));
        assert_eq!(o.front().map(|f| f.sequence), Some(2));
        o.remove(2);
        assert_eq!(o.front().map(|f| f.sequence), Some(3));
        assert_eq!(o.len(), 1);
    }
}
