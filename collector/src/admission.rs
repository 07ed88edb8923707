//! Who may push now, and with how much memory. One push per node is in
//! flight at a time (a stolen certificate cannot open a hundred), and the
//! bodies being read and decoded share one budget of bytes: a push waits
//! for its share briefly, then is told to come back (503), so a burst of
//! large pushes queues instead of exhausting memory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tierwatch_protocol::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting is in KiB: the semaphore counts at most `u32` permits at once.
const UNIT: usize = 1024;

/// Admission of pushes: the nodes with a push in flight and the decode budget.
pub(crate) struct Admission {
    in_flight: Mutex<HashSet<NodeId>>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    wait: Duration,
}

/// A node's push in flight; the node may push again once this is dropped.
pub(crate) struct Slot<'a> {
    admission: &'a Admission,
    node: NodeId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.admission.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.node);
    }
}

/// Bytes of the decode budget held by one push.
pub(crate) struct Reservation {
    permit: OwnedSemaphorePermit,
}

/// The budget stayed exhausted for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub wanted: usize,
    pub budget: usize,
}

impl Admission {
    /// `budget_bytes` of bodies may be read and decoded at once; a push
    /// waits up to `wait` for its share.
    pub(crate) fn new(budget_bytes: usize, wait: Duration) -> Admission {
        let budget_units = u32::try_from(budget_bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1);
        Admission {
            in_flight: Mutex::default(),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            wait,
        }
    }

    /// The node's slot, or `None` while another push of it is in flight.
    pub(crate) fn enter(&self, node: &NodeId) -> Option<Slot<'_>> {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(node.clone()).then(|| Slot { admission: self, node: node.clone() })
    }

    fn units(&self, bytes: usize) -> u32 {
        // A push larger than the whole budget runs alone.
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.budget_units)
    }

    /// Holds `bytes` of the budget, waiting for them at most the configured wait.
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<Reservation, Exhausted> {
        let units = self.units(bytes);
        let exhausted = Exhausted { wanted: bytes, budget: self.budget_units as usize * UNIT };
        match tokio::time::timeout(self.wait, self.budget.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(Reservation { permit }),
            // The semaphore is never closed; a timeout is the budget exhausted.
            Ok(Err(_)) | Err(_) => Err(exhausted),
        }
    }

    /// Grows `held` to `bytes` (it never shrinks: the body is still in memory).
    pub(crate) async fn grow(&self, held: &mut Reservation, bytes: usize) -> Result<(), Exhausted> {
        let want = self.units(bytes);
        let have = held.permit.num_permits() as u32;
        if want <= have {
            return Ok(());
        }
        let more = self.reserve((want - have) as usize * UNIT).await?;
        held.permit.merge(more.permit);
        Ok(())
    }

    /// Bytes of the budget free now.
    #[cfg(test)]
    fn available_bytes(&self) -> usize {
        self.budget.available_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn one_push_per_node_in_flight() {
        let a = Admission::new(1 << 20, Duration::from_millis(10));
        let first = a.enter(&node("nui-cam")).unwrap();
        assert!(a.enter(&node("nui-cam")).is_none());
        let other = a.enter(&node("an-giang"));
        assert!(other.is_some(), "another node is not held back");
        drop(first);
        assert!(a.enter(&node("nui-cam")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_queues_then_refuses() {
        let a = Admission::new(100 * UNIT, Duration::from_secs(1));
        let mut big = a.reserve(60 * UNIT).await.unwrap();
        a.grow(&mut big, 90 * UNIT).await.unwrap();
        assert_eq!(a.available_bytes(), 10 * UNIT);
        assert_eq!(a.reserve(20 * UNIT).await.err(), Some(Exhausted { wanted: 20 * UNIT, budget: 100 * UNIT }));
        // Freed while a push waits: it goes.
        let waiter = a.reserve(20 * UNIT);
        let release = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(big);
        };
        let (got, ()) = tokio::join!(waiter, release);
        assert!(got.is_ok());
        // Larger than the whole budget: runs alone rather than never.
        drop(got);
        assert!(a.reserve(1000 * UNIT).await.is_ok());
    }
}
