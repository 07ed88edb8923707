//! Link impairments the lab's userspace bridge applies to one direction of a link.

use std::fmt;
use std::time::Duration;

/// What a link does to the frames it carries in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Added to every frame.
    pub delay: Duration,
    /// Each frame's delay is drawn uniformly from `delay ± jitter`.
    pub jitter: Duration,
    /// Share of frames dropped (0..1).
    pub loss: f64,
    /// Share of frames sent at once, ahead of delayed ones (netem-style reordering).
    pub reorder: f64,
    /// When true, jitter alone may reorder frames; by default the link keeps FIFO order.
    pub allow_reorder_by_jitter: bool,
}

impl Impairment {
    /// No impairment: frames pass as they come.
    pub fn none() -> Self {
        Self::default()
    }

    /// A delay with jitter.
    pub fn delay(delay: Duration, jitter: Duration) -> Self {
        Impairment { delay, jitter, ..Self::default() }
    }

    /// Adds random loss.
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// Adds reordering.
    pub fn with_reorder(mut self, reorder: f64) -> Self {
        self.reorder = reorder;
        self
    }

    /// Parses `delay_us=N jitter_us=N loss=F reorder=F jitter_reorders=0|1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut imp = Impairment::default();
        for word in s.split_whitespace() {
            let (k, v) = word.split_once('=').ok_or_else(|| format!("{word:?} is not key=value"))?;
            let bad = |_| format!("{k}: bad value {v:?}");
            match k {
                "delay_us" => imp.delay = Duration::from_micros(v.parse().map_err(bad)?),
                "jitter_us" => imp.jitter = Duration::from_micros(v.parse().map_err(bad)?),
                "loss" => imp.loss = v.parse().map_err(|_| format!("loss: bad value {v:?}"))?,
                "reorder" => imp.reorder = v.parse().map_err(|_| format!("reorder: bad value {v:?}"))?,
                "jitter_reorders" => imp.allow_reorder_by_jitter = v == "1",
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        if !(0.0..=1.0).contains(&imp.loss) || !(0.0..=1.0).contains(&imp.reorder) {
            return Err("loss and reorder are shares between 0 and 1".into());
        }
        if imp.jitter > imp.delay {
            return Err("jitter larger than delay would need negative delays".into());
        }
        Ok(imp)
    }
}

impl fmt::Display for Impairment {
    /// The command form [`Impairment::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay_us={} jitter_us={} loss={} reorder={} jitter_reorders={}",
            self.delay.as_micros(),
            self.jitter.as_micros(),
            self.loss,
            self.reorder,
            self.allow_reorder_by_jitter as u8
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parses_back() {
        let i =
            Impairment::delay(Duration::from_millis(40), Duration::from_millis(10)).with_loss(0.05).with_reorder(0.01);
        assert_eq!(Impairment::parse(&i.to_string()), Ok(i));
        assert!(Impairment::parse("loss=2").is_err());
        assert!(Impairment::parse("delay_us=1 jitter_us=5").is_err());
        assert!(Impairment::parse("speed=9").is_err());
    }
}
