//! Who may push now, and with how much memory. One push per node is in
//! flight at a time (a stolen certificate cannot open a hundred); each node
//! has token buckets for batches, bytes and events (over them: 429, come
//! back later); and the bodies being read and decoded share one budget of
//! bytes: a push waits for its share briefly, then is told to come back
//! (503), so a burst of large pushes queues instead of exhausting memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tierwatch_protocol::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting is in KiB: the semaphore counts at most `u32` permits at once.
const UNIT: usize = 1024;

/// What one node may use (`ingest.quotas`). The defaults fit a commune
/// with a thousand targets replaying a day's backlog, ten times over.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Live series of one node; new ones beyond are refused (existing ones keep updating).
    pub series_per_node: usize,
    /// Batches per second (a backlog replays small batches fast).
    pub batches_per_second: f64,
    /// Body bytes per second.
    pub bytes_per_second: f64,
    /// Security events per second.
    pub events_per_second: f64,
    /// How long a node may run at a rate over the sustained one before it is
    /// held back: each bucket holds this many seconds of its rate.
    #[serde(with = "tierwatch_runtime::duration::serde")]
    pub burst: Duration,
    /// Security events kept per node in the state database; a node's
    /// oldest go first, never another node's.
    pub security_events_per_node: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            series_per_node: 20_000,
            batches_per_second: 100.0,
            bytes_per_second: 4.0 * 1024.0 * 1024.0,
            events_per_second: 500.0,
            burst: Duration::from_secs(10),
            security_events_per_node: 10_000,
        }
    }
}

/// A rate a push went over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OverRate {
    /// `batches`, `bytes` or `events`.
    pub what: &'static str,
    /// The sustained rate per second.
    pub rate: f64,
    /// When the push would fit.
    pub retry_after: Duration,
}

/// A token bucket: `rate` per second, holding up to `rate * burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, cap: f64, now: Instant) {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(cap);
        self.at = now;
    }
}

/// A node's buckets: batches, bytes, events.
#[derive(Debug, Clone, Copy)]
struct Buckets([Bucket; 3]);

/// Admission of pushes: the nodes with a push in flight, their rates, the decode budget.
pub(crate) struct Admission {
    in_flight: Mutex<HashSet<NodeId>>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    wait: Duration,
    quotas: Quotas,
    buckets: Mutex<HashMap<NodeId, Buckets>>,
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
    pub(crate) fn new(budget_bytes: usize, wait: Duration, quotas: Quotas) -> Admission {
        let budget_units = u32::try_from(budget_bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1);
        Admission {
            in_flight: Mutex::default(),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            wait,
            quotas,
            buckets: Mutex::default(),
        }
    }

    /// The quotas in force.
    pub(crate) fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Takes `batches`, `bytes` and `events` from `node`'s buckets at `now`,
    /// or none of them and says which rate the push is over. A push larger
    /// than a full bucket goes once the bucket is full (so it is not refused forever).
    pub(crate) fn spend(
        &self,
        node: &NodeId,
        batches: usize,
        bytes: usize,
        events: usize,
        now: Instant,
    ) -> Result<(), OverRate> {
        let q = &self.quotas;
        let burst = q.burst.as_secs_f64().max(1.0);
        let rates = [("batches", q.batches_per_second), ("bytes", q.bytes_per_second), ("events", q.events_per_second)];
        let want = [batches as f64, bytes as f64, events as f64];
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = all
            .entry(node.clone())
            .or_insert_with(|| Buckets(rates.map(|(_, rate)| Bucket { tokens: rate * burst, at: now })));
        for (i, (what, rate)) in rates.iter().enumerate() {
            let cap = rate * burst;
            b.0[i].refill(*rate, cap, now);
            let need = want[i].min(cap);
            if b.0[i].tokens < need {
                let retry_after =
                    Duration::from_secs_f64(((need - b.0[i].tokens) / rate.max(f64::MIN_POSITIVE)).min(3600.0));
                return Err(OverRate { what, rate: *rate, retry_after });
            }
        }
        for (i, w) in want.iter().enumerate() {
            let cap = rates[i].1 * burst;
            b.0[i].tokens -= w.min(cap);
        }
        Ok(())
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

    /// Grows `held` to `bytes` (it never shrinks: the body is still in
    /// memory) if the budget has them now. It does not wait: a push holding
    /// its body's share while waiting for more would hold up every push
    /// queued behind it (the semaphore is first come, first served).
    pub(crate) fn grow(&self, held: &mut Reservation, bytes: usize) -> Result<(), Exhausted> {
        let want = self.units(bytes);
        let have = held.permit.num_permits() as u32;
        if want <= have {
            return Ok(());
        }
        let exhausted = Exhausted { wanted: bytes, budget: self.budget_units as usize * UNIT };
        let more = self.budget.clone().try_acquire_many_owned(want - have).map_err(|_| exhausted)?;
        held.permit.merge(more);
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
        let a = Admission::new(1 << 20, Duration::from_millis(10), Quotas::default());
        let first = a.enter(&node("nui-cam")).unwrap();
        assert!(a.enter(&node("nui-cam")).is_none());
        let other = a.enter(&node("an-giang"));
        assert!(other.is_some(), "another node is not held back");
        drop(first);
        assert!(a.enter(&node("nui-cam")).is_some());
    }

    #[test]
    fn each_node_has_its_own_buckets_that_refill() {
        let quotas = Quotas {
            batches_per_second: 2.0,
            bytes_per_second: 1000.0,
            events_per_second: 10.0,
            burst: Duration::from_secs(2),
            ..Quotas::default()
        };
        let a = Admission::new(1 << 20, Duration::from_millis(10), quotas);
        let (hostile, honest) = (node("nui-cam"), node("an-giang"));
        let t0 = Instant::now();
        // A burst of four batches, then the fifth is over the batch rate.
        for _ in 0..4 {
            a.spend(&hostile, 1, 10, 0, t0).unwrap();
        }
        let over = a.spend(&hostile, 1, 10, 0, t0).unwrap_err();
        assert_eq!((over.what, over.rate), ("batches", 2.0));
        assert_eq!(over.retry_after, Duration::from_millis(500));
        // Another node is not held back.
        a.spend(&honest, 1, 10, 0, t0).unwrap();
        // Half a second later one more batch fits; a refused push spent nothing.
        a.spend(&hostile, 1, 10, 0, t0 + Duration::from_millis(500)).unwrap();
        let later = t0 + Duration::from_secs(10);
        a.spend(&hostile, 1, 10, 15, later).unwrap();
        let over = a.spend(&hostile, 1, 10, 10, later).unwrap_err();
        assert_eq!(over.what, "events");
        a.spend(&hostile, 1, 10, 5, later).unwrap();
        // Larger than a full bucket: goes when the bucket is full.
        let much_later = later + Duration::from_secs(60);
        a.spend(&hostile, 1, 1_000_000, 0, much_later).unwrap();
        assert_eq!(a.spend(&hostile, 1, 1, 0, much_later).unwrap_err().what, "bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_queues_then_refuses() {
        let a = Admission::new(100 * UNIT, Duration::from_secs(1), Quotas::default());
        let mut big = a.reserve(60 * UNIT).await.unwrap();
        a.grow(&mut big, 90 * UNIT).unwrap();
        assert_eq!(a.available_bytes(), 10 * UNIT);
        // Growing does not wait: more than is free is refused at once.
        let mut small = a.reserve(5 * UNIT).await.unwrap();
        assert!(a.grow(&mut small, 20 * UNIT).is_err());
        drop(small);
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
