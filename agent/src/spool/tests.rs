use super::*;
use proptest::prelude::*;
use std::path::Path;

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        segment_bytes: 4096,
        fsync: FsyncPolicy::Never,
        commit_interval: std::time::Duration::from_secs(1),
        memory_batches: 4,
    }
}

fn metrics() -> Metrics {
    Metrics::new(&[]).unwrap()
}

fn open(c: SpoolConfig, dests: usize) -> (Spool, OpenReport) {
    Spool::open(c, (0..dests as u32).collect(), metrics()).unwrap()
}

fn now() -> i64 {
    tierwatch_protocol::now_ms()
}

fn body(i: u64) -> Bytes {
    Bytes::from(format!("batch-{i}-").repeat(20))
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref())).count()
}

#[test]
fn unsent_batches_survive_reopen_and_acknowledged_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u64> = {
        let (s, _) = open(cfg(dir.path()), 1);
        let ids = (0..50).map(|i| s.append(body(i), now()).id()).collect::<Vec<_>>();
        for &id in &ids[..30] {
            s.ack(0, id);
        }
        ids
    };
    let (s, report) = open(cfg(dir.path()), 1);
    assert_eq!(report.pending, 20);
    assert_eq!(s.next_backlog(0).map(|(id, _)| id), Some(ids[30]));
    assert_eq!(s.read(ids[30]).unwrap(), Some(body(30)));
    // New ids continue after the old ones.
    assert!(s.append(body(99), now()).id() > ids[49]);
    for &id in &ids[30..] {
        s.ack(0, id);
    }
    assert!(segments(dir.path()) <= 2, "delivered segments are deleted");
}

/// Batches are acknowledged before their group commit: after a power loss
/// an acknowledgement can outlive its record. Its id is never handed out
/// again, so it cannot drop a new batch.
#[test]
fn an_acknowledgement_that_outlived_its_record_drops_no_new_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let (s, _) = open(cfg(dir.path()), 1);
        let a = s.append(body(1), now()).id();
        let b = s.append(body(2), now()).id();
        s.ack(0, b);
        (a, b)
    };
    // Power loss: the second record never reached the disk, its ack did.
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension() == Some("seg".as_ref()))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let one = segment::encode(first, 0, &body(1)).len() as u64;
    assert!(len > one);
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(one).unwrap();
    for round in 0..2 {
        let (s, _) = open(cfg(dir.path()), 1);
        let new = s.append(body(3), now()).id();
        assert!(new > second, "round {round}: id {new} reused");
        assert!(s.is_pending(0, new), "round {round}: the new batch is still to be sent");
    }
}

#[test]
fn backlog_is_oldest_first_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(cfg(dir.path()), 2);
    let ids: Vec<u64> = (0..5).map(|i| s.append(body(i), now()).id()).collect();
    s.ack(0, ids[0]);
    s.ack(0, ids[1]);
    assert_eq!(s.next_backlog(0).map(|(id, _)| id), Some(ids[2]));
    assert_eq!(s.next_backlog(1).map(|(id, _)| id), Some(ids[0]));
    // Still held for destination 1.
    assert_eq!(s.len(), 5);
    assert!(s.is_pending(1, ids[0]) && !s.is_pending(0, ids[0]));
    drop(s);
    let (s, _) = open(cfg(dir.path()), 2);
    assert_eq!(s.next_backlog(0).map(|(id, _)| id), Some(ids[2]));
    assert_eq!(s.next_backlog(1).map(|(id, _)| id), Some(ids[0]));
}

#[test]
fn newest_append_is_announced_to_senders() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(cfg(dir.path()), 1);
    let mut rx = s.subscribe();
    s.append(body(1), now());
    let id = s.append(body(2), now()).id();
    let live = rx.borrow_and_update().clone().unwrap();
    assert_eq!((live.id, live.body), (id, body(2)));
}

#[test]
fn size_bound_drops_the_oldest_segment_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_bytes = 8192;
    c.segment_bytes = 2048;
    let m = metrics();
    let (s, _) = Spool::open(c, vec![0], m.clone()).unwrap();
    let ids: Vec<u64> = (0..100).map(|i| s.append(body(i), now()).id()).collect();
    assert!(m.spool_bytes.get() <= 8192);
    let first = s.next_backlog(0).unwrap().0;
    assert!(first > ids[0], "oldest were dropped");
    let dropped = m
        .snapshot(0)
        .iter()
        .find(|x| x.name == "tierwatch_agent_dropped_batches_total" && x.labels[0].value == "size")
        .map(|x| x.points[0].value)
        .unwrap();
    assert_eq!(dropped as usize + s.len(), 100);
}

#[test]
fn age_bound_drops_old_batches_and_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_age = Duration::from_secs(60);
    {
        let (s, _) = open(c.clone(), 1);
        s.append(body(1), now() - 120_000);
        s.append(body(2), now());
        assert_eq!(s.len(), 1);
    }
    let (s, _) = open(c, 1);
    assert_eq!(s.len(), 1);
}

#[test]
fn torn_tail_is_cut_and_counted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let (s, _) = open(cfg(dir.path()), 1);
        s.append(body(1), now());
        s.append(body(2), now());
        segment::path(dir.path(), 1)
    };
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    let m = metrics();
    let (s, report) = Spool::open(cfg(dir.path()), vec![0], m.clone()).unwrap();
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(m.spool_truncations.get(), 1);
    assert_eq!(s.len(), 1);
    // Appends after the cut are readable after another reopen.
    let id = s.append(body(3), now()).id();
    drop(s);
    let (s, _) = open(cfg(dir.path()), 1);
    assert_eq!(s.read(id).unwrap(), Some(body(3)));
}

#[test]
fn a_refused_write_keeps_the_batch_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_bytes = 64;
    let m = metrics();
    let (s, _) = Spool::open(c, vec![0], m.clone()).unwrap();
    let stored = s.append(body(1), now());
    assert!(matches!(stored, Stored::Memory { .. }));
    assert_eq!(s.read(stored.id()).unwrap(), Some(body(1)));
    assert_eq!((m.spool_write_errors.get(), m.spool_memory_batches.get()), (1, 1));
    for i in 0..10 {
        s.append(body(i), now());
    }
    assert_eq!(m.spool_memory_batches.get(), 4, "memory fallback is bounded");
}

#[derive(Debug, Clone)]
enum Op {
    Append,
    Ack(usize, prop::sample::Index),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Append),
        3 => (0usize..2, any::<prop::sample::Index>()).prop_map(|(d, i)| Op::Ack(d, i)),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Against a model: whatever the order of appends, acknowledgements and
    /// restarts, each destination gets exactly the batches it has not
    /// acknowledged, oldest first, with their bodies intact.
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (mut s, _) = open(c.clone(), 2);
        let mut model: BTreeMap<u64, (Bytes, [bool; 2])> = BTreeMap::new();
        let mut n = 0u64;
        for op in ops {
            match op {
                Op::Append => {
                    n += 1;
                    let id = s.append(body(n), now()).id();
                    model.insert(id, (body(n), [true, true]));
                }
                Op::Ack(d, i) => {
                    let pending: Vec<u64> = model.iter().filter(|(_, (_, p))| p[d]).map(|(&id, _)| id).collect();
                    if !pending.is_empty() {
                        let id = pending[i.index(pending.len())];
                        s.ack(d, id);
                        if let Some(e) = model.get_mut(&id) {
                            e.1[d] = false;
                        }
                        model.retain(|_, (_, p)| p[0] || p[1]);
                    }
                }
                Op::Reopen => {
                    drop(s);
                    s = open(c.clone(), 2).0;
                }
            }
            prop_assert_eq!(s.len(), model.len());
            for d in 0..2 {
                let want = model.iter().find(|(_, (_, p))| p[d]).map(|(&id, _)| id);
                prop_assert_eq!(s.next_backlog(d).map(|(id, _)| id), want);
            }
        }
        for (id, (b, _)) in &model {
            prop_assert_eq!(s.read(*id).unwrap(), Some(b.clone()));
        }
    }
}
