//! Spool costs, and the replay rate after an outage.
//! Run: `cargo bench -p tierwatch-agent --bench spool`.
//!
//! 1. Append per batch with `fsync: always` and `never` (the batch: what an
//!    agent with 10 targets seals per push, ~75 series), against a bare
//!    write + fdatasync of the same bytes as the reference.
//! 2. Opening a spool of 20,000 unsent batches (scan, checksums, index).
//! 3. Replay through the spool alone: oldest first, read back, acknowledge.
//! 4. End to end: a backlog of 3,000 batches delivered over mTLS to a real
//!    collector (in this process) with no replay cap, live batches absent.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tierwatch_agent::config::Config;
use tierwatch_agent::deliver::{self, Destination};
use tierwatch_agent::metrics::Metrics;
use tierwatch_agent::push::{client_config, Pusher};
use tierwatch_agent::spool::{FsyncPolicy, Spool, SpoolConfig};
use tierwatch_protocol::testing::typical_batch;
use tokio_util::sync::CancellationToken;

fn spool_cfg(dir: &std::path::Path, fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 4 << 30,
        max_age: Duration::from_secs(7 * 86400),
        segment_bytes: 4 << 20,
        fsync,
        commit_interval: Duration::from_secs(1),
        memory_batches: 10,
    }
}

fn body(seq: u64) -> Bytes {
    let mut b = typical_batch(1);
    b.sequence = seq;
    Bytes::from(b.encode_to_vec())
}

fn fill(dir: &std::path::Path, n: u64, fsync: FsyncPolicy) -> Duration {
    let (spool, _) = Spool::open(spool_cfg(dir, fsync), vec![0], Metrics::new(&[]).unwrap()).unwrap();
    let now = tierwatch_protocol::now_ms();
    let bodies: Vec<Bytes> = (1..=n).map(body).collect();
    let t = Instant::now();
    for b in bodies {
        spool.append(b, now);
        // Today's worst case: one commit per batch (the committer groups them).
        if fsync == FsyncPolicy::Always {
            spool.commit().unwrap();
        }
    }
    t.elapsed()
}

fn main() {
    let size = body(1).len();
    println!("batch: {size} bytes encoded (10 targets, ~75 series)");
    // Reference: the same bytes with a bare write + fdatasync, no spool.
    {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
        let b = body(1);
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            f.write_all(&b).unwrap();
            f.sync_data().unwrap();
        }
        println!(
            "reference, bare write + fdatasync on the same disk: {:.1} µs per batch",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    for (policy, n) in [(FsyncPolicy::Always, 2000u64), (FsyncPolicy::Never, 20000)] {
        let dir = tempfile::tempdir().unwrap();
        let t = fill(dir.path(), n, policy);
        println!(
            "append, fsync {policy:?}: {:.1} µs per batch ({n} batches, {:.0} batches/s)",
            t.as_secs_f64() * 1e6 / n as f64,
            n as f64 / t.as_secs_f64()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let n = 20000u64;
    fill(dir.path(), n, FsyncPolicy::Never);
    let t = Instant::now();
    let (spool, report) =
        Spool::open(spool_cfg(dir.path(), FsyncPolicy::Never), vec![0], Metrics::new(&[]).unwrap()).unwrap();
    let open = t.elapsed();
    assert_eq!(report.pending as u64, n);
    println!(
        "open with {n} unsent batches ({:.0} MB): {:.1} ms",
        (n as usize * size) as f64 / 1e6,
        open.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    while let Some((id, _)) = spool.next_backlog(0) {
        let b = spool.read(id).unwrap().unwrap();
        assert!(b.len() >= size);
        spool.ack(0, id);
    }
    let replay = t.elapsed();
    println!(
        "replay through the spool (read, check, acknowledge): {:.0} batches/s, {:.0} MB/s",
        n as f64 / replay.as_secs_f64(),
        (n as usize * size) as f64 / 1e6 / replay.as_secs_f64()
    );

    journal_cost();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(end_to_end(3000));
}

/// What durable outcomes cost: each measurement appended to the open
/// batch's journal as it is taken, one group commit (fdatasync of the
/// journal and the segment) per second.
fn journal_cost() {
    use tierwatch_agent::spool::journal::{fragment, Journal};
    let b = typical_batch(1);
    // One ICMP target's outcome: its 12 series.
    let outcome: Vec<_> = b.series.iter().filter(|s| s.labels.iter().any(|l| l.value == "target-0")).cloned().collect();
    let frag = fragment(&outcome, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::create(dir.path(), 1, b"envelope", 0).unwrap();
    let n = 20_000u32;
    let t = Instant::now();
    for _ in 0..n {
        j.add(&frag, 0).unwrap();
    }
    let append = t.elapsed() / n;
    let handle = j.handle().unwrap();
    let commits = 200u32;
    let t = Instant::now();
    for _ in 0..commits {
        j.add(&frag, 0).unwrap();
        handle.sync_data().unwrap();
    }
    let commit = t.elapsed() / commits;
    println!(
        "journal: one ICMP outcome ({} series, {} bytes) appended in {:.1} µs; a group commit (one outcome written, fdatasync) {:.1} µs",
        outcome.len(),
        frag.len(),
        append.as_secs_f64() * 1e6,
        commit.as_secs_f64() * 1e6
    );
    for (what, per_second) in [("10 targets every 5 s", 2.0), ("1,000 ICMP targets every 60 s", 1000.0 / 60.0)] {
        let cost = per_second * append.as_secs_f64() + commit.as_secs_f64();
        println!(
            "  {what}: {per_second:.1} outcomes/s + 1 commit/s = {:.2} ms a second in the spool threads (the fdatasync mostly waiting on the disk)",
            cost * 1000.0
        );
    }
}

async fn end_to_end(n: u64) {
    use tierwatch_collector::pki::{self, Usage};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p = root.join("pki");
    pki::init(&p, "bench CA", 2, false).unwrap();
    let id = |s: &str| tierwatch_protocol::NodeId::new(s).unwrap();
    pki::issue(&p, &id("collector"), &Usage::Server { sans: vec!["127.0.0.1".into()] }, 2, false).unwrap();
    pki::issue(&p, &id("nui-cam"), &Usage::Client, 2, false).unwrap();
    std::fs::write(root.join("topology.yaml"), "nodes:\n  - id: an-giang\n    tier: province\n    name: P\n  - id: nui-cam\n    tier: commune\n    name: C\n    parent: an-giang\n").unwrap();
    std::fs::write(
        root.join("collector.yaml"),
        "log_level: warn\ntopology: topology.yaml\ningest:\n  listen: 127.0.0.1:0\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\nhttp:\n  listen: 127.0.0.1:0\nstate_dir: state\n",
    )
    .unwrap();
    let cconf = tierwatch_collector::config::Config::load(&root.join("collector.yaml")).unwrap();
    let collector = tierwatch_collector::server::start(cconf, CancellationToken::new()).await.unwrap();
    let aconf = Config::parse(
        &root.join("agent.yaml"),
        &format!(
            "node: nui-cam\ncollector:\n  endpoints: [\"https://{}\"]\n  ca: pki/ca.crt\n  cert: pki/nui-cam.crt\n  key: pki/nui-cam.key\n  replay_bytes_per_second: 0\nspool:\n  dir: spool\n  fsync: never\n",
            collector.ingest_addr
        ),
    )
    .unwrap();
    let metrics = Metrics::new(&["any".into()]).unwrap();
    let (spool, _) = Spool::open(aconf.spool.clone(), vec![0], metrics.clone()).unwrap();
    // Fresh batches (the collector refuses none as too old); distinct sequences.
    let now = tierwatch_protocol::now_ms();
    for s in 1..=n {
        let mut b = typical_batch(1);
        b.sequence = s;
        b.node_id = "nui-cam".into();
        spool.append(Bytes::from(b.encode_to_vec()), now);
    }
    let spool = Arc::new(spool);
    let tls = client_config(&aconf.ca, &aconf.cert, &aconf.key).unwrap();
    let token = CancellationToken::new();
    let dest = Destination {
        index: 0,
        name: "any".into(),
        pusher: Pusher::new(aconf.endpoints.clone(), aconf.server_name.as_deref(), aconf.push_timeout, tls),
        push_interval: aconf.push_interval,
    };
    let t = Instant::now();
    // The newest batch goes first as "live", then the backlog.
    let task = tokio::spawn(deliver::run(dest, spool.clone(), 0, metrics, token.clone()));
    while !spool.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    token.cancel();
    let _ = task.await;
    collector.shutdown().await;
    println!(
        "end-to-end replay to a collector over mTLS (loopback, one connection, fsynced ledger): {:.0} batches/s ({n} batches in {:.2} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
}
