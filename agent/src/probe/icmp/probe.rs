//! The ICMP probe: one round through the engine as series, the target's
//! round-trip estimate, and the early report of a target that fell silent.

use std::net::IpAddr;
use std::time::Duration;

use tierwatch_protocol::catalogue;

use super::super::outcome::{EarlyReport, Outcome};
use super::{Icmp, Watch};

/// Smoothed round-trip time and its variation (RFC 6298), and from them the
/// time after which a reply is overdue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RttEstimate {
    srtt: f64,
    rttvar: f64,
    /// The link's own round trip at its quickest: follows a lower RTT at
    /// once, a higher one by 1/64 per reply.
    base: f64,
    /// The link's recent peak: the largest RTT, decaying towards the
    /// present by 1/16 per reply (about the last 30 replies). Replies held
    /// far beyond the base (more than half the stall tolerance) are stalls,
    /// which the stall tolerance covers, not the link's round trip: left out.
    peak: f64,
    samples: u64,
    /// The link's recent loss ratio while it works: an average over rounds
    /// that ended answering (1/4 weight each), so an outage does not make
    /// the next cut slow to see.
    loss: f64,
    /// The last such round's own loss: a link that just turned lossy is
    /// judged by it before the average catches up.
    last_loss: f64,
}

/// Unanswered requests in a row needed at loss ratio `p` (see
/// [`RttEstimate::evidence`]).
pub(crate) fn evidence_at(p: f64) -> u32 {
    let p = if p.is_finite() { p.clamp(1e-3, 0.999) } else { 1e-3 };
    let k = (CHANCE_OF_A_FALSE_CUT.ln() / p.ln()).ceil();
    (k as u32).clamp(MIN_EVIDENCE, MAX_EVIDENCE)
}

/// How unlikely a run of losses must be before a lossy link is called
/// silent: a chance of 1 in 10,000 per suspicion.
const CHANCE_OF_A_FALSE_CUT: f64 = 1e-4;
/// The most unanswered requests a silence needs (a link losing 56 % or more).
const MAX_EVIDENCE: u32 = 16;
/// The fewest, on a clean link: a link that starts losing 44 % of its
/// exchanges this moment (no history yet) loses 8 in a row by chance 1.4
/// times in 1,000; the floor holds 8 requests at the evidence pace anyway.
const MIN_EVIDENCE: u32 = 8;

/// Below this a reply is never called overdue: scheduling on a busy host,
/// and the WAN's own queueing, take that much now and then.
const MIN_RTO: Duration = Duration::from_millis(250);

impl RttEstimate {
    /// Takes one measured round trip; `stall` is the target's stall tolerance.
    pub(crate) fn add(&mut self, rtt: Duration, stall: Duration) {
        let r = rtt.as_secs_f64();
        if self.samples == 0 {
            self.srtt = r;
            self.rttvar = r / 2.0;
            (self.base, self.peak) = (r, r);
        } else {
            self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
            self.srtt = 0.875 * self.srtt + 0.125 * r;
            self.base = if r < self.base { r } else { self.base + (r - self.base) / 64.0 };
            if r <= self.base + stall.as_secs_f64() / 2.0 {
                self.peak = if r >= self.peak { r } else { self.peak - (self.peak - r) / 16.0 };
            }
        }
        self.samples += 1;
    }

    /// Takes the loss ratio of a round that ended with the target answering.
    pub(crate) fn add_loss(&mut self, ratio: f64) {
        if ratio.is_finite() {
            self.last_loss = ratio.clamp(0.0, 1.0);
            self.loss = 0.75 * self.loss + 0.25 * self.last_loss;
        }
    }

    /// Unanswered requests in a row needed to call the target silent: the
    /// fewest whose chance of all being lost at the link's recent loss is
    /// below 1 in 10,000, at least [`MIN_EVIDENCE`]: a clean link needs
    /// no more than the floor brings; 25 % loss each way (44 % of
    /// exchanges) needs 12, so a lossy link is degraded, not down, while a
    /// cut of it is still seen (12 requests 100 ms apart after the reply
    /// is overdue: within the floor and 0.3 s).
    pub(crate) fn evidence(&self) -> u32 {
        evidence_at(self.loss.max(self.last_loss))
    }

    /// When a reply is overdue: SRTT + 4 RTTVAR, within [250 ms, `timeout`];
    /// `None` before any round trip was measured.
    pub(crate) fn rto(&self, timeout: Duration) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_secs_f64(self.srtt + 4.0 * self.rttvar).max(MIN_RTO).min(timeout))
    }

    /// The silence floor: `stall` plus the link's recent peak round trip
    /// (a held reply comes back at most that much after the hold ends;
    /// stalls themselves do not raise it).
    pub(crate) fn floor(&self, stall: Duration) -> Duration {
        stall + Duration::from_secs_f64(self.peak.max(0.0))
    }
}

/// What one ICMP round sends.
pub(in crate::probe) struct IcmpRound {
    pub ip: IpAddr,
    pub count: u32,
    pub spacing: Duration,
    pub timeout: Duration,
    /// The target's stall tolerance.
    pub stall: Duration,
    /// The probe's timestamp.
    pub ts: i64,
}

/// How the watch judges silence in a round.
pub(in crate::probe) struct Early<'a> {
    pub rto: Duration,
    pub floor: Duration,
    /// Unanswered requests in a row a silence needs (from the link's loss).
    pub evidence: u32,
    /// The longest gap without a request in flight (keepalives); `None`: none.
    pub keepalive: Option<Duration>,
    pub report: &'a EarlyReport,
}

/// Runs one round; with `early`, a silent target
/// is reported at once as a failed probe. Returns when that report was
/// taken (ms); `None` when there was none or it could not be delivered
/// (then the round's own result is the news).
pub(in crate::probe) async fn icmp_round(
    out: &mut Outcome,
    icmp: &Icmp,
    r: IcmpRound,
    early: Option<Early<'_>>,
    rtt: &mut RttEstimate,
) -> Option<i64> {
    let IcmpRound { ip, count, spacing, timeout, stall, ts } = r;
    let engine = match icmp {
        Icmp::Ready(e) => e,
        Icmp::Unavailable(why) => {
            out.error = Some(why.to_string());
            return None;
        }
    };
    out.note(|| {
        format!("{count} echo requests {spacing:?} apart, timeout {timeout:?}, {} socket", engine.kind().as_str())
    });
    let (silent_tx, silent_rx) = tokio::sync::oneshot::channel();
    let watch = early.as_ref().map(|e| Watch {
        rto: e.rto,
        floor: e.floor,
        evidence: e.evidence,
        gap: e.keepalive,
        silent: silent_tx,
    });
    let running = engine.round(ip, count, spacing, timeout, watch);
    tokio::pin!(running);
    let mut early_ts = None;
    let result = tokio::select! {
        r = &mut running => r,
        Ok(i) = silent_rx => {
            let now = tierwatch_protocol::now_ms();
            if let Some(Early { floor, report, .. }) = &early {
                let mut e = Outcome::new(out.target.clone(), out.kind, false);
                e.error = Some(format!(
                    "no reply for {floor:?} (stall tolerance and the link's peak round trip) to request {i} nor to anything sent after it"
                ));
                // Only a target that was up is watched: this is a flip.
                (e.early, e.flipped) = (true, true);
                e.push(&catalogue::PROBE_SUCCESS, &[("probe", out.kind.as_str())], 0.0, now);
                tracing::info!(target = %out.target, probe = "icmp", floor_ms = floor.as_millis() as u64, "target fell silent; reported before the round ends");
                if report(e) {
                    early_ts = Some(now);
                }
            }
            running.await
        }
    };
    let round = match result {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return early_ts;
        }
    };
    for d in round.rtts.iter().flatten() {
        rtt.add(*d, stall);
    }
    for (i, rtt) in round.rtts.iter().enumerate() {
        out.note(|| match rtt {
            Some(d) => format!("  seq {i}: reply in {:.3} ms", d.as_secs_f64() * 1000.0),
            None => format!("  seq {i}: no reply"),
        });
    }
    out.push(&catalogue::ICMP_SENT, &[], round.sent() as f64, ts);
    for (purpose, n) in [("confirm", round.confirmations), ("keepalive", round.keepalives)] {
        out.push(&catalogue::ICMP_WATCH_SENT, &[("purpose", purpose)], n as f64, ts);
    }
    out.push(&catalogue::ICMP_DUPLICATE, &[], round.duplicates as f64, ts);
    out.push(&catalogue::ICMP_LATE, &[], round.late as f64, ts);
    out.note(|| {
        format!(
            "kernel receive timestamps for {} of the replies; {} duplicate, {} late",
            round.kernel_timestamps, round.duplicates, round.late
        )
    });
    match round.stats() {
        Some(s) => {
            for (def, v) in [
                (&catalogue::ICMP_RECEIVED, s.received as f64),
                (&catalogue::ICMP_LOSS, s.loss_ratio),
                (&catalogue::ICMP_RTT_MEAN, s.mean.as_secs_f64()),
                (&catalogue::ICMP_RTT_STDDEV, s.stddev.as_secs_f64()),
                (&catalogue::ICMP_JITTER, s.jitter.as_secs_f64()),
                (&catalogue::ICMP_RTT_MIN, s.min.as_secs_f64()),
                (&catalogue::ICMP_RTT_MEDIAN, s.median.as_secs_f64()),
                (&catalogue::ICMP_RTT_P90, s.p90.as_secs_f64()),
                (&catalogue::ICMP_RTT_MAX, s.max.as_secs_f64()),
            ] {
                out.push(def, &[], v, ts);
            }
            out.success = round.reachable_at_end();
            if out.success {
                // Replies that came back late were held, not lost: a stall
                // must not make the next cut slow to call.
                let lost = (s.sent - s.received).saturating_sub(round.late);
                rtt.add_loss(f64::from(lost) / f64::from(s.sent.max(1)));
            }
            if !out.success {
                out.error = Some(format!(
                    "silent since request {}: no reply to it or after it",
                    round.silent_from.unwrap_or_default()
                ));
            }
        }
        None => {
            out.push(&catalogue::ICMP_RECEIVED, &[], 0.0, ts);
            out.push(&catalogue::ICMP_LOSS, &[], 1.0, ts);
            // Every request of the round lost, but the watch's answered: a
            // lossy link, not a cut (its loss is the news).
            out.success = round.reachable_at_end();
            if out.success {
                rtt.add_loss(1.0);
                out.note(|| format!("{} of the watch's requests answered", round.watch_answered));
            } else {
                out.error = Some(
                    round.first_error.clone().unwrap_or_else(|| format!("no reply to {} echo requests", round.sent())),
                );
            }
        }
    }
    early_ts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_follows_the_link_and_stays_within_bounds() {
        let mut e = RttEstimate::default();
        let timeout = Duration::from_secs(1);
        assert_eq!(e.rto(timeout), None, "no estimate before a reply");
        // A steady 20 ms link: the floor applies.
        for _ in 0..50 {
            e.add(Duration::from_millis(20), STALL);
        }
        assert_eq!(e.rto(timeout), Some(MIN_RTO));
        // A jittery 200 ± 100 ms link: SRTT + 4 RTTVAR, well above any reply seen.
        let mut e = RttEstimate::default();
        for i in 0..200 {
            e.add(Duration::from_millis(if i % 2 == 0 { 100 } else { 300 }), STALL);
        }
        let rto = e.rto(timeout).unwrap();
        assert!(rto > Duration::from_millis(450) && rto < timeout, "{rto:?}");
        // Never beyond the probe's own timeout.
        e.add(Duration::from_secs(5), STALL);
        assert_eq!(e.rto(timeout), Some(timeout));
    }

    const STALL: Duration = Duration::from_secs(1);

    #[test]
    fn the_floor_follows_jitter_but_not_stalls() {
        let mut e = RttEstimate::default();
        for i in 0..100 {
            e.add(Duration::from_millis(if i % 2 == 0 { 20 } else { 140 }), STALL);
        }
        let jittery = e.floor(STALL);
        assert!(jittery >= Duration::from_millis(1130) && jittery <= Duration::from_millis(1141), "{jittery:?}");
        // Held replies (a stalled path) leave it where it was.
        for _ in 0..5 {
            e.add(Duration::from_millis(950), STALL);
        }
        assert!(e.floor(STALL) <= jittery, "{:?}", e.floor(STALL));
        // A link whose own round trip is long keeps its margin.
        let mut sat = RttEstimate::default();
        for i in 0..100 {
            sat.add(Duration::from_millis(if i % 3 == 0 { 750 } else { 600 }), STALL);
        }
        assert!(sat.floor(STALL) >= Duration::from_millis(1740), "{:?}", sat.floor(STALL));
    }
}
