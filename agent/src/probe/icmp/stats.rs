//! A round's outcome and its SmokePing-style statistics.

use std::net::IpAddr;
use std::time::Duration;

/// Outcome of one round of echo requests to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub dest: IpAddr,
    /// One entry per request, in send order: the round-trip time, or `None` when lost.
    pub rtts: Vec<Option<Duration>>,
    /// Requests the kernel refused to send (for example no route).
    pub send_errors: u32,
    /// First send error, for the log and the `probe` command.
    pub first_error: Option<String>,
    /// Second and further replies to one request.
    pub duplicates: u32,
    /// Replies that came after their request's timeout, while the round was open.
    pub late: u32,
    /// RTTs measured with kernel receive timestamps (the others with the receiver's clock).
    pub kernel_timestamps: u32,
    /// Set when the watch found the target silent after this request.
    pub silent_from: Option<usize>,
    /// Echo requests the watch added: confirmations of an overdue reply.
    pub confirmations: u32,
    /// Echo requests the watch added: keepalives between the round's own.
    pub keepalives: u32,
    /// Of the watch's requests, those answered: the target was there even
    /// when every one of the round's own requests was lost.
    pub watch_answered: u32,
    /// The round's sequence numbers, held until the watch is done too.
    pub(super) seqs: Vec<u16>,
}

/// Statistics of a round, SmokePing-style.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub sent: u32,
    pub received: u32,
    pub loss_ratio: f64,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub max: Duration,
    pub mean: Duration,
    pub stddev: Duration,
    /// Mean absolute difference of consecutive received RTTs.
    pub jitter: Duration,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    // Linear interpolation between closest ranks (numpy's default, R type 7).
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo].mul_f64(1.0 - frac) + sorted[hi].mul_f64(frac)
}

impl Round {
    /// A round to `dest` of `count` requests with nothing sent yet.
    pub fn new(dest: IpAddr, count: usize) -> Round {
        Round {
            dest,
            rtts: Vec::with_capacity(count),
            send_errors: 0,
            first_error: None,
            duplicates: 0,
            late: 0,
            kernel_timestamps: 0,
            silent_from: None,
            confirmations: 0,
            keepalives: 0,
            watch_answered: 0,
            seqs: Vec::new(),
        }
    }

    /// True unless the watch found the target silent and nothing sent after
    /// that was answered; without a silence, any answer counts, the watch's too.
    pub fn reachable_at_end(&self) -> bool {
        match self.silent_from {
            None => self.rtts.iter().any(Option::is_some) || self.watch_answered > 0,
            Some(i) => self.rtts.iter().skip(i + 1).any(Option::is_some),
        }
    }

    /// Requests sent (including ones the kernel refused).
    pub fn sent(&self) -> u32 {
        self.rtts.len() as u32
    }

    /// Statistics of the round; `None` when no reply came back.
    pub fn stats(&self) -> Option<Stats> {
        let received: Vec<Duration> = self.rtts.iter().flatten().copied().collect();
        if received.is_empty() {
            return None;
        }
        let mut sorted = received.clone();
        sorted.sort();
        let n = received.len() as f64;
        let mean_s = received.iter().map(Duration::as_secs_f64).sum::<f64>() / n;
        let var = received.iter().map(|d| (d.as_secs_f64() - mean_s).powi(2)).sum::<f64>() / n;
        let jitter = if received.len() < 2 {
            0.0
        } else {
            received.windows(2).map(|w| (w[1].as_secs_f64() - w[0].as_secs_f64()).abs()).sum::<f64>() / (n - 1.0)
        };
        let sent = self.sent();
        Some(Stats {
            sent,
            received: received.len() as u32,
            loss_ratio: 1.0 - received.len() as f64 / sent as f64,
            min: sorted[0],
            median: quantile(&sorted, 0.5),
            p90: quantile(&sorted, 0.9),
            max: sorted[sorted.len() - 1],
            mean: Duration::from_secs_f64(mean_s),
            stddev: Duration::from_secs_f64(var.sqrt()),
            jitter: Duration::from_secs_f64(jitter),
        })
    }
}
