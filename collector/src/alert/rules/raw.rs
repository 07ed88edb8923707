//! `rules.yaml` as written: serde types straight from the YAML (so every
//! problem keeps its line), validated into [`super::Rules`] by `validate.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_runtime::duration;

use super::Values;
use crate::alert::flap::FlapPolicy;
use crate::alert::model::Severity;
use crate::i18n::Language;

/// A threshold written as a number or, for time values, a duration (`14d`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Threshold(pub f64);

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Threshold(n)),
            Raw::Text(t) => duration::parse(&t)
                .map(|d| Threshold(d.as_secs_f64()))
                .map_err(|e| serde::de::Error::custom(format!("{t:?} is neither a number nor a duration: {e}"))),
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    #[serde(default)]
    pub grouping: RawGrouping,
    #[serde(default)]
    pub flapping: RawFlapping,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// When a bouncing incident becomes one "flapping" incident.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlapping {
    /// Openings within `window` that make an incident flapping; 0 turns detection off.
    #[serde(default = "default_flap_opens")]
    pub opens: usize,
    #[serde(default = "default_flap_window", with = "duration::serde")]
    pub window: Duration,
    /// The flapping incident resolves once its problem held still this long.
    #[serde(default = "default_flap_quiet", with = "duration::serde")]
    pub quiet: Duration,
}

impl Default for RawFlapping {
    fn default() -> Self {
        RawFlapping { opens: default_flap_opens(), window: default_flap_window(), quiet: default_flap_quiet() }
    }
}

pub(super) fn default_flap_opens() -> usize {
    FlapPolicy::default().opens
}
pub(super) fn default_flap_window() -> Duration {
    FlapPolicy::default().window
}
pub(super) fn default_flap_quiet() -> Duration {
    FlapPolicy::default().quiet
}

/// How alerts are grouped by the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrouping {
    /// This many children of one parent with the same problem at once make one
    /// "parent side" alert instead of one per child.
    #[serde(default = "default_min_children")]
    pub min_children: usize,
    /// Alerts of a problem other than `unreachable` wait this long before
    /// paging, to see whether siblings join (unreachable pages at once).
    #[serde(default = "default_group_wait", with = "duration::serde")]
    pub group_wait: Duration,
}

impl Default for RawGrouping {
    fn default() -> Self {
        RawGrouping { min_children: default_min_children(), group_wait: default_group_wait() }
    }
}

pub(super) fn default_min_children() -> usize {
    3
}
pub(super) fn default_group_wait() -> Duration {
    Duration::from_secs(10)
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: String,
    /// Threshold rules: the metric.
    #[serde(default)]
    pub metric: Option<String>,
    /// Heartbeat rules: pushes missed before the node is down.
    #[serde(default)]
    pub heartbeat: Option<RawHeartbeat>,
    /// Event rules: security events the node's sensors reported.
    #[serde(default)]
    pub event: Option<RawEventRule>,
    /// Exact label values, or lists of them (identity labels included: `tier`, `node`, ...).
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, Values>,
    /// Label values that must not match (a list: none of them).
    #[serde(default)]
    pub not_match: BTreeMap<String, Values>,
    /// Compare `value - now` (seconds until a timestamp), for expiry rules.
    #[serde(default)]
    pub until_now: bool,
    #[serde(default)]
    pub above: Option<Threshold>,
    #[serde(default)]
    pub below: Option<Threshold>,
    /// With `above`: the alert clears only at or below this. Default: `above`.
    #[serde(default)]
    pub clear_below: Option<Threshold>,
    /// With `below`: the alert clears only at or above this. Default: `below`.
    #[serde(default)]
    pub clear_above: Option<Threshold>,
    /// Threshold rules: judge the mean of the samples within this window
    /// (a lossy link's per-round loss jumps from 0 to 60 % and back).
    #[serde(default, with = "duration::serde_opt")]
    pub mean_over: Option<Duration>,
    #[serde(default, rename = "for", with = "duration::serde_opt")]
    pub for_: Option<Duration>,
    #[serde(default, with = "duration::serde_opt")]
    pub clear_for: Option<Duration>,
    /// Label naming the node the alert is about (default: the reporting node).
    #[serde(default)]
    pub subject: Option<String>,
    /// Threshold rules: judge a target probed from several nodes across
    /// them (a shared service), not node by node.
    #[serde(default)]
    pub quorum: Option<RawQuorum>,
    pub problem: String,
    pub severity: Severity,
    /// One line; `{{ label }}`, `{{ value }}`, `{{ node_name }}` are replaced.
    /// Either one text or one per language (`{en: ..., vi: ...}`).
    pub summary: Localized,
    #[serde(default)]
    pub description: Option<Localized>,
}

/// A text written once, or once per language.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Localized {
    One(String),
    PerLanguage(std::collections::BTreeMap<Language, String>),
}

impl Localized {
    /// The text in `lang`; else the English one; else any.
    pub(super) fn pick(&self, lang: Language) -> String {
        match self {
            Localized::One(s) => s.clone(),
            Localized::PerLanguage(m) => {
                m.get(&lang).or_else(|| m.get(&Language::En)).or_else(|| m.values().next()).cloned().unwrap_or_default()
            }
        }
    }
}

/// Heartbeat settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeartbeat {
    pub missed: u32,
    /// Only when the node's WAN link answers (`up`: the agent is what is
    /// silent), or does not (`down`: the node is cut off, or nobody probes
    /// it); default `any`.
    #[serde(default)]
    pub link: LinkState,
}

/// What a heartbeat rule requires of the silent node's WAN link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    #[default]
    Any,
    Up,
    Down,
}

/// Which security events an event rule takes, and for how long one counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEventRule {
    /// Only this event kind (`port_scan`, `arp_spoof`, ...); default: every kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only events of this severity; default: every severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// The alert fires with an event and clears this long after the last one.
    #[serde(default = "default_hold", with = "duration::serde")]
    pub hold: Duration,
    /// Event attributes that make separate alerts (`[src]`: one per source); the kind always does.
    #[serde(default)]
    pub group_by: Vec<String>,
}

pub(super) fn default_hold() -> Duration {
    Duration::from_secs(900)
}

/// How many of the nodes probing one service must fail it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuorum {
    /// `majority` (default), a count (`2`) or a share (`"60%"`) of the
    /// nodes whose own path is up and that probe it.
    #[serde(default)]
    pub at_least: Option<RawAtLeast>,
    /// Targets named differently on different nodes that are one service:
    /// `{portal: [dichvucong-angiang, dvc-web]}`. A target not listed is
    /// the service of its own name.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<String>>,
}

/// `at_least` as written: a count or a word (`majority`, `60%`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAtLeast {
    Count(u64),
    Text(String),
}
