//! A bounded message queue with an explicit overflow policy.
//!
//! Every subscription and every pipe's main flow owns one. Pushing never
//! allocates once the queue has grown to its capacity (the ring buffer is
//! reserved up front), and every message the policy drops is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// What a full queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overflow {
    /// Wait for room. On TCP this pushes back on the peer, so nothing is lost;
    /// a subscription with this policy can hold up its whole pipe.
    Block,
    /// Drop the message that arrived (the queue keeps the oldest). Counted.
    #[default]
    DropNewest,
    /// Drop the oldest queued message to make room. Counted.
    DropOldest,
}

/// The result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The message was queued.
    Queued,
    /// The message (or an older one) was dropped by the policy.
    Dropped,
    /// The queue is closed; the message was discarded.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer queue.
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    overflow: Overflow,
    /// Woken when an item is pushed or the queue closes.
    readable: Notify,
    /// Woken when an item is popped (for `Overflow::Block`).
    writable: Notify,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

impl<T> Queue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub(crate) fn new(capacity: usize, overflow: Overflow) -> Self {
        let capacity = capacity.max(1);
        Queue {
            // Reserve a modest start; VecDeque grows to `capacity` at most once.
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(64)),
                closed: false,
            }),
            capacity,
            overflow,
            readable: Notify::new(),
            writable: Notify::new(),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes without waiting. A full queue applies its policy, except that
    /// `Block` behaves as `DropNewest` here.
    pub(crate) fn try_push(&self, item: T) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let outcome = if st.items.len() < self.capacity {
            st.items.push_back(item);
            Pushed::Queued
        } else if self.overflow == Overflow::DropOldest {
            st.items.pop_front();
            st.items.push_back(item);
            Pushed::Dropped
        } else {
            Pushed::Dropped
        };
        drop(st);
        if outcome == Pushed::Dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.readable.notify_one();
        outcome
    }

    /// Pushes, waiting for room when the policy is `Block`.
    ///
    /// Cancel safety: if cancelled while waiting, the item is dropped and
    /// nothing was queued.
    pub(crate) async fn push(&self, item: T) -> Pushed {
        if self.overflow != Overflow::Block {
            return self.try_push(item);
        }
        // Fast path: room now, so no waiter is registered.
        let mut item = match self.push_if_room(item) {
            Ok(outcome) => return outcome,
            Err(item) => item,
        };
        loop {
            let writable = self.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            item = match self.push_if_room(item) {
                Ok(outcome) => return outcome,
                Err(item) => item,
            };
            writable.await;
        }
    }

    /// Queues `item` if there is room; gives it back if the queue is full.
    fn push_if_room(&self, item: T) -> Result<Pushed, T> {
        let mut st = self.lock();
        if st.closed {
            return Ok(Pushed::Closed);
        }
        if st.items.len() >= self.capacity {
            return Err(item);
        }
        st.items.push_back(item);
        drop(st);
        self.readable.notify_one();
        Ok(Pushed::Queued)
    }

    /// Takes the next item without waiting. `Err(true)` means closed and empty.
    pub(crate) fn try_pop(&self) -> Result<T, bool> {
        let mut st = self.lock();
        match st.items.pop_front() {
            Some(item) => {
                let more = !st.items.is_empty();
                drop(st);
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if self.overflow == Overflow::Block {
                    self.writable.notify_one();
                }
                if more {
                    // Let another waiting consumer see the rest.
                    self.readable.notify_one();
                }
                Ok(item)
            }
            None => Err(st.closed),
        }
    }

    /// Waits for the next item; `None` once the queue is closed and drained.
    ///
    /// Cancel safety: cancel safe. An item is only taken in the same poll that
    /// returns it.
    pub(crate) async fn pop(&self) -> Option<T> {
        // Fast path: something is waiting, so no waiter is registered.
        match self.try_pop() {
            Ok(item) => return Some(item),
            Err(true) => return None,
            Err(false) => {}
        }
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            match self.try_pop() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => readable.await,
            }
        }
    }

    /// Closes the queue: pushes are refused, pops drain what is left.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }

    /// Whether the queue has been closed.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Items dropped by the overflow policy so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Items handed to a consumer so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Moves every waiting item out (used when a handler takes over a flow).
    pub(crate) fn drain(&self) -> Vec<T> {
        let items: Vec<T> = self.lock().items.drain(..).collect();
        if self.overflow == Overflow::Block {
            self.writable.notify_waiters();
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn drop_newest_keeps_oldest_and_counts() {
        let q = Queue::new(2, Overflow::DropNewest);
        assert_eq!(q.try_push(1), Pushed::Queued);
        assert_eq!(q.try_push(2), Pushed::Queued);
        assert_eq!(q.try_push(3), Pushed::Dropped);
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.try_pop(), Ok(1));
        assert_eq!(q.try_pop(), Ok(2));
        assert_eq!(q.try_pop(), Err(false));
    }

    #[test]
    fn drop_oldest_keeps_newest_and_counts() {
        let q = Queue::new(2, Overflow::DropOldest);
        for i in 1..=5 {
            q.try_push(i);
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.try_pop(), Ok(4));
        assert_eq!(q.try_pop(), Ok(5));
        assert_eq!(q.delivered(), 2);
    }

    #[test]
    fn close_drains_then_ends() {
        let q = Queue::new(4, Overflow::DropNewest);
        q.try_push(7);
        q.close();
        assert_eq!(q.try_push(8), Pushed::Closed);
        assert_eq!(q.try_pop(), Ok(7));
        assert_eq!(q.try_pop(), Err(true));
    }

    #[tokio::test]
    async fn block_waits_for_room() {
        let q = Arc::new(Queue::new(1, Overflow::Block));
        assert_eq!(q.push(1).await, Pushed::Queued);
        let q2 = q.clone();
        let pusher = tokio::spawn(async move { q2.push(2).await });
        // The pusher cannot finish until we pop.
        assert_eq!(timeout(T, q.pop()).await.unwrap(), Some(1));
        assert_eq!(timeout(T, pusher).await.unwrap().unwrap(), Pushed::Queued);
        assert_eq!(timeout(T, q.pop()).await.unwrap(), Some(2));
        assert_eq!(q.dropped(), 0);
    }

    #[tokio::test]
    async fn pop_wakes_on_push_and_on_close() {
        let q = Arc::new(Queue::<u32>::new(4, Overflow::DropNewest));
        let q2 = q.clone();
        let popper = tokio::spawn(async move { (q2.pop().await, q2.pop().await) });
        q.try_push(9);
        q.close();
        assert_eq!(timeout(T, popper).await.unwrap().unwrap(), (Some(9), None));
    }
}
