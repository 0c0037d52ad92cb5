//! Circuit breaking (Envoy's `circuit_breakers`, default priority), per cluster:
//! - `max_requests`: requests in flight to the cluster;
//! - `max_connections`: upstream connections; an HTTP/1.1 connection carries one request at a
//!   time, so this is the number of HTTP/1.1 requests being sent or answered at once (HTTP/2
//!   clusters multiplex and are held to `max_requests` only);
//! - `max_pending_requests`: requests waiting for a connection when all are busy;
//! - `max_retries`: retries in flight.
//!
//! The breakers of a cluster outlive config generations: a cluster whose thresholds change gets
//! new ones (requests admitted under the old ones finish under them).
//!
//! A request over a limit is answered 503 with flag `UO`; a retry over `max_retries` is not
//! made (the last answer stands), as in Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CircuitBreakers;

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    Requests(u32),
    PendingRequests(u32),
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overflow::Requests(n) => write!(f, "max_requests {n}"),
            Overflow::PendingRequests(n) => {
                write!(f, "max_pending_requests {n} (all max_connections busy)")
            }
        }
    }
}

/// One cluster's breakers, made for one set of thresholds.
#[derive(Debug)]
pub(crate) struct Circuit {
    pub(crate) limits: CircuitBreakers,
    connections: Arc<Semaphore>,
    pending: AtomicUsize,
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// A request admitted by the breakers; holds its place until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    circuit: Arc<Circuit>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.circuit.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry admitted by `max_retries`.
#[derive(Debug)]
pub(crate) struct Retry(Arc<Circuit>);

impl Drop for Retry {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Undoes a pending count if the wait is cancelled.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Circuit {
    pub(crate) fn new(limits: CircuitBreakers) -> Circuit {
        Circuit {
            limits,
            connections: Arc::new(Semaphore::new(
                (limits.max_connections as usize).min(Semaphore::MAX_PERMITS),
            )),
            pending: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    /// Admits a request, waiting for a connection as a pending request when all are busy
    /// (`multiplexed`: HTTP/2, no connection limit).
    pub(crate) async fn admit(self: &Arc<Self>, multiplexed: bool) -> Result<Admitted, Overflow> {
        let max = self.limits.max_requests as usize;
        if self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Overflow::Requests(self.limits.max_requests));
        }
        let mut admitted = Admitted {
            circuit: self.clone(),
            _connection: None,
        };
        if multiplexed {
            return Ok(admitted);
        }
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let max = self.limits.max_pending_requests as usize;
                if self
                    .pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_err()
                {
                    return Err(Overflow::PendingRequests(self.limits.max_pending_requests));
                }
                let _pending = Pending(&self.pending);
                match self.connections.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Err(Overflow::PendingRequests(0)),
                }
            }
        };
        admitted._connection = Some(permit);
        Ok(admitted)
    }

    /// A retry, if `max_retries` allows one more in flight.
    pub(crate) fn retry(self: &Arc<Self>) -> Option<Retry> {
        let max = self.limits.max_retries as usize;
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Retry(self.clone()))
    }

    /// Requests in flight and connections in use, for `/clusters`.
    pub(crate) fn active(&self) -> (usize, usize) {
        let cx = (self.limits.max_connections as usize).min(Semaphore::MAX_PERMITS)
            - self.connections.available_permits();
        (self.requests.load(Ordering::Relaxed), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32, requests: u32, retries: u32) -> CircuitBreakers {
        CircuitBreakers {
            max_connections: connections,
            max_pending_requests: pending,
            max_requests: requests,
            max_retries: retries,
        }
    }

    #[tokio::test]
    async fn one_connection_one_pending_then_overflow() {
        let c = Arc::new(Circuit::new(limits(1, 1, 100, 3)));
        let first = c.admit(false).await.unwrap();
        // The second waits for the connection; the third finds the queue full.
        let c2 = c.clone();
        let second = tokio::spawn(async move { c2.admit(false).await.map(|_| ()) });
        tokio::task::yield_now().await;
        while c.pending.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            c.admit(false).await.unwrap_err(),
            Overflow::PendingRequests(1)
        );
        drop(first);
        assert!(second.await.unwrap().is_ok());
        assert_eq!(c.active(), (0, 0));
        // HTTP/2 is held to max_requests only.
        let h2 = Arc::new(Circuit::new(limits(1, 0, 2, 3)));
        let a = h2.admit(true).await.unwrap();
        let _b = h2.admit(true).await.unwrap();
        assert_eq!(h2.admit(true).await.unwrap_err(), Overflow::Requests(2));
        drop(a);
        assert!(h2.admit(true).await.is_ok());
    }

    #[test]
    fn retries_in_flight_are_limited() {
        let c = Arc::new(Circuit::new(limits(1, 1, 1, 1)));
        let r = c.retry().unwrap();
        assert!(c.retry().is_none());
        drop(r);
        assert!(c.retry().is_some());
    }
}
