//! Client connections: how many each listener port holds (bounded by `--max-connections`), and
//! the drain that asks every one of them to finish on shutdown.
//!
//! Each connection registers a one-shot "please finish" signal when accepted and removes it when
//! it ends: a lock per connection, never per request. Draining fires every signal; a connection
//! then answers its request in flight with `Connection: close` (HTTP/1) or sends GOAWAY (h2),
//! and ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

/// Every client connection of the process.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: AtomicUsize,
    draining: AtomicBool,
    finish: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Notified when the last connection ends while draining.
    all_closed: Notify,
}

/// One listener port's share (its workers' listeners count together).
#[derive(Debug, Default)]
pub struct PortConnections {
    open: AtomicUsize,
}

impl PortConnections {
    /// Counts one more connection unless `max` are open; the count ends when the guard drops.
    pub fn hold(self: &Arc<Self>, max: usize) -> Option<PortHold> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PortHold(self.clone()))
    }
}

/// One connection counted on its port.
#[derive(Debug)]
pub struct PortHold(Arc<PortConnections>);

impl Drop for PortHold {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection counted open; dropping it ends the count.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    all: Arc<Connections>,
    _port: PortHold,
}

impl Connections {
    /// Counts a new connection on `port` and gives the signal telling it to finish; `None`
    /// when the port holds `max` already or the gateway is draining (close it at once).
    pub fn admit(
        self: &Arc<Self>,
        port: &Arc<PortConnections>,
        max: usize,
    ) -> Option<(Ticket, oneshot::Receiver<()>)> {
        let held = port.hold(max)?;
        self.open.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            all: self.clone(),
            _port: held,
        };
        let (tx, rx) = oneshot::channel();
        // Checked under the lock, so no connection admitted while `drain` runs is missed.
        let admitted = {
            let mut finish = self.finish.lock().expect("connections lock");
            let draining = self.draining.load(Ordering::Acquire);
            if !draining {
                finish.insert(ticket.id, tx);
            }
            !draining
        };
        // (The ticket, dropped when refused, takes the lock itself: released above.)
        admitted.then_some((ticket, rx))
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether the gateway is draining (read by a connection before it answers, to say
    /// `connection: close`).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks every connection to finish its request in flight and close.
    pub fn drain(&self) {
        let senders: Vec<_> = {
            let mut finish = self.finish.lock().expect("connections lock");
            self.draining.store(true, Ordering::Release);
            finish.drain().map(|(_, tx)| tx).collect()
        };
        for tx in senders {
            let _ = tx.send(());
        }
    }

    /// Waits until no connection is open (call after [`Connections::drain`]).
    pub async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.all
            .finish
            .lock()
            .expect("connections lock")
            .remove(&self.id);
        if self.all.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_holds_at_most_its_limit_and_drain_refuses_new_ones() {
        let all = Arc::new(Connections::default());
        let port = Arc::new(PortConnections::default());
        let a = all.admit(&port, 2).expect("first");
        let b = all.admit(&port, 2).expect("second");
        assert!(all.admit(&port, 2).is_none(), "over the limit");
        drop(a);
        let (_c, mut told) = all.admit(&port, 2).expect("room again");
        assert_eq!(all.open(), 2);
        all.drain();
        assert!(told.try_recv().is_ok(), "told to finish");
        assert!(all.admit(&port, 2).is_none(), "draining");
        drop(b);
        assert_eq!(all.open(), 1);
    }
}
