//! `rules.yaml`: what raises an alert. Two kinds of rule:
//!
//! - **threshold**: a metric of the collector's series, selected by label
//!   matchers, compared with `above` / `below`, with a separate clear
//!   threshold (hysteresis) and `for` / `clear_for` durations;
//! - **heartbeat**: a node that missed N of its push intervals.
//!
//! Every rule names the `problem` it reports (`unreachable`, `degraded`,
//! `service`, `certificate`, `dns`, ...) and the node it is about (the
//! reporting node, or the node named by a label: the province's probe of a
//! commune's WAN end is about that commune). The engine groups alerts by
//! (node, problem) and by the topology into incidents, one page each.

mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_yamlconf::ConfigError;

use super::flap::FlapPolicy;
use super::model::Severity;
use crate::i18n::Locale;
pub use raw::LinkState;
use raw::{default_group_wait, default_min_children, RawRules};

/// A matcher's value: one, or any of a list (`kind: [dns_mismatch, certificate_invalid]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Any(Vec<String>),
}

impl Values {
    /// True when `v` is the value or one of the list.
    pub fn contains(&self, v: &str) -> bool {
        match self {
            Values::One(one) => one == v,
            Values::Any(list) => list.iter().any(|x| x == v),
        }
    }
}

/// What a rule compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `value > fire` fires; `value <= clear` clears.
    Above { fire: f64, clear: f64 },
    /// `value < fire` fires; `value >= clear` clears.
    Below { fire: f64, clear: f64 },
}

impl Condition {
    /// True when `v` breaches the firing threshold.
    pub fn fires(&self, v: f64) -> bool {
        match *self {
            Condition::Above { fire, .. } => v > fire,
            Condition::Below { fire, .. } => v < fire,
        }
    }

    /// True when `v` is back on the good side of the clear threshold.
    pub fn clears(&self, v: f64) -> bool {
        match *self {
            Condition::Above { clear, .. } => v <= clear,
            Condition::Below { clear, .. } => v >= clear,
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// `mean_over`: the condition holds for the mean of the series' samples
    /// within this window, not for its latest value.
    Threshold {
        metric: String,
        condition: Condition,
        until_now: bool,
        mean_over: Option<Duration>,
    },
    /// `link`: what the node's WAN link must be doing for this rule: a
    /// link answers when a reachability rule about the node (the
    /// province's probe of its WAN end) reads clear.
    Heartbeat {
        missed: u32,
        link: LinkState,
    },
    Event {
        kind: Option<String>,
        severity: Option<Severity>,
        hold: Duration,
        group_by: Vec<String>,
    },
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub matchers: BTreeMap<String, Values>,
    pub not_match: BTreeMap<String, Values>,
    pub for_: Duration,
    pub clear_for: Duration,
    pub subject: Option<String>,
    /// Judged across the nodes probing one service (threshold rules only).
    pub quorum: Option<Quorum>,
    pub problem: String,
    pub severity: Severity,
    pub summary: String,
    pub description: Option<String>,
}

/// How many vantage points must fail a service for it to be down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AtLeast {
    /// More than half.
    Majority,
    Count(usize),
    /// This share (0 < s <= 1), rounded up.
    Share(f64),
}

/// A rule judged across the nodes probing one service: down when at least
/// `at_least` of those whose own path is up fail it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quorum {
    pub at_least: AtLeast,
    /// Target name to service name, for targets named differently on
    /// different nodes.
    pub services: BTreeMap<String, String>,
}

impl Quorum {
    /// The service a series is about: its target's declared service, else
    /// the target's name; `None` without a `target` label.
    pub fn service_of(&self, labels: &[tierwatch_protocol::Label]) -> Option<String> {
        let target = labels.iter().find(|l| l.name == "target")?;
        Some(self.services.get(&target.value).cloned().unwrap_or_else(|| target.value.clone()))
    }

    /// How many of `n` vantage points must fail (at least 1).
    pub fn needed(&self, n: usize) -> usize {
        let k = match self.at_least {
            AtLeast::Majority => n / 2 + 1,
            AtLeast::Count(c) => c,
            AtLeast::Share(s) => (s * n as f64 - 1e-9).ceil() as usize,
        };
        k.max(1)
    }
}

impl Rule {
    /// True when `labels` satisfy every matcher.
    pub fn matches<'a>(&self, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.matchers.iter().all(|(k, v)| label(k).is_some_and(|l| v.contains(l)))
            && self.not_match.iter().all(|(k, v)| !label(k).is_some_and(|l| v.contains(l)))
    }
}

/// The validated rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// The language summaries were picked in, and that incident texts use.
    pub locale: Locale,
    pub min_children: usize,
    pub group_wait: Duration,
    pub flapping: FlapPolicy,
    pub rules: Vec<Rule>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            locale: Locale::default(),
            min_children: default_min_children(),
            group_wait: default_group_wait(),
            flapping: FlapPolicy::default(),
            rules: Vec::new(),
        }
    }
}

pub(super) fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Rules {
    /// Loads and validates `file`, every problem with its line.
    pub fn load(file: &Path, locale: Locale) -> Result<Rules, ConfigError> {
        let (raw, text, p) = tierwatch_yamlconf::load_all::<RawRules>(file)?;
        validate::rules(raw, file, &text, locale, p)
    }

    /// Parses and validates rules text (`file` names it in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Rules, ConfigError> {
        let (raw, p) = tierwatch_yamlconf::parse_all::<RawRules>(file, text)?;
        validate::rules(raw, file, text, Locale::default(), p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::Language;
    use raw::Localized;

    #[test]
    fn shipped_rules_are_valid() {
        let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml"));
        let r =
            Rules::load(file, Locale { language: Language::Vi, ..Locale::default() }).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = r.rules.iter().map(|r| r.name.as_str()).collect();
        for want in [
            "node_down",
            "agent_down",
            "wan_link_down",
            "wan_loss_high",
            "wan_latency_high",
            "wan_jitter_high",
            "wan_link_loss_high",
            "wan_link_latency_high",
            "wan_link_jitter_high",
            "uplink_loss_high",
            "uplink_latency_high",
            "uplink_jitter_high",
            "service_down",
            "certificate_expiring_14d",
            "certificate_expiring_3d",
            "dns_answer_mismatch",
        ] {
            assert!(names.contains(&want), "default rule {want} missing: {names:?}");
        }
        // The province reads Vietnamese: every shipped summary has its own Vietnamese text.
        let raw: RawRules = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        for rule in &raw.rules {
            match &rule.summary {
                Localized::PerLanguage(m) => {
                    assert!(m.contains_key(&Language::Vi) && m.contains_key(&Language::En), "{}", rule.name)
                }
                Localized::One(_) => panic!("rule {} has one summary for both languages", rule.name),
            }
        }
        let en = Rules::load(file, Locale::default()).unwrap();
        assert_ne!(en.rules[0].summary, r.rules[0].summary);
    }

    #[test]
    fn problems_are_located() {
        let text = "rules:\n  - name: a\n    metric: tierwatch_x\n    above: 0.2\n    clear_below: 0.5\n    problem: degraded\n    severity: warning\n    summary: s\n  - name: a\n    heartbeat: {missed: 0}\n    problem: unreachable\n    severity: loud\n    summary: s\n";
        let err = Rules::parse(Path::new("rules.yaml"), text).unwrap_err().to_string();
        assert!(err.contains("rules.yaml:12:15: rules[1].severity: unknown variant `loud`"), "{err}");
        let text = text.replace("severity: loud", "severity: critical");
        let err = Rules::parse(Path::new("rules.yaml"), &text).unwrap_err().to_string();
        assert!(
            err.contains("rules.yaml:5:5: rules[0].clear_below: must not be above the firing threshold 0.2"),
            "{err}"
        );
        assert!(err.contains("rules[1].name: \"a\" is used by another rule"), "{err}");
        assert!(err.contains("rules[1].heartbeat.missed: must be at least 1"), "{err}");
    }

    #[test]
    fn a_quorum_is_checked_where_written() {
        let text = "rules:\n  - name: svc\n    metric: tierwatch_probe_success\n    below: 1\n    quorum: {at_least: \"60%\", services: {portal: [a, b]}}\n    problem: service\n    severity: critical\n    summary: s\n";
        let r = Rules::parse(Path::new("r.yaml"), text).unwrap();
        let q = r.rules[0].quorum.as_ref().unwrap();
        assert_eq!(q.at_least, AtLeast::Share(0.6));
        assert_eq!(q.service_of(&[tierwatch_protocol::Label::new("target", "b")]).as_deref(), Some("portal"));
        assert_eq!(q.service_of(&[tierwatch_protocol::Label::new("target", "c")]).as_deref(), Some("c"));
        let bad = text.replace("\"60%\"", "most").replace("[a, b]}", "[a, b], web: [b]}");
        let err = Rules::parse(Path::new("r.yaml"), &bad).unwrap_err().to_string();
        assert!(
            err.contains("rules[0].quorum.at_least: \"most\": give majority, a count (2) or a share (\"60%\")"),
            "{err}"
        );
        assert!(err.contains("rules[0].quorum.services.web: target \"b\" is already in \"portal\""), "{err}");
        let hb = "rules:\n  - name: hb\n    heartbeat: {missed: 3}\n    quorum: {}\n    problem: unreachable\n    severity: critical\n    summary: s\n";
        let err = Rules::parse(Path::new("r.yaml"), hb).unwrap_err().to_string();
        assert!(err.contains("r.yaml:4:5: rules[0].quorum: only threshold rules"), "{err}");
    }

    #[test]
    fn matchers_take_one_value_or_a_list() {
        let text = "rules:\n  - name: sec\n    event: {hold: 1m}\n    match: {severity: [warning, critical]}\n    not_match: {kind: [dns_mismatch, certificate_invalid], src: 10.0.0.5}\n    problem: security\n    severity: warning\n    summary: s\n";
        let r = Rules::parse(Path::new("r.yaml"), text).unwrap();
        let labels = |kind: &'static str, severity: &'static str, src: &'static str| {
            move |k: &str| match k {
                "kind" => Some(kind),
                "severity" => Some(severity),
                "src" => Some(src),
                _ => None,
            }
        };
        let rule = &r.rules[0];
        assert!(rule.matches(labels("port_scan", "critical", "10.2.1.50")));
        assert!(!rule.matches(labels("port_scan", "info", "10.2.1.50")), "not in the list");
        assert!(!rule.matches(labels("dns_mismatch", "critical", "10.2.1.50")), "excluded by the list");
        assert!(!rule.matches(labels("port_scan", "critical", "10.0.0.5")), "excluded by the one value");
        let err = Rules::parse(Path::new("r.yaml"), &text.replace("[warning, critical]", "[]")).unwrap_err();
        assert!(err.to_string().contains("rules[0].match.severity: give at least one value"), "{err}");
    }

    #[test]
    fn durations_as_thresholds_and_hysteresis() {
        let text = "rules:\n  - name: cert\n    metric: tierwatch_tls_leaf_expiry_timestamp_seconds\n    until_now: true\n    below: 14d\n    problem: certificate\n    severity: warning\n    summary: s\n  - name: loss\n    metric: tierwatch_icmp_loss_ratio\n    above: 0.2\n    clear_below: 0.05\n    problem: degraded\n    severity: warning\n    summary: s\n";
        let r = Rules::parse(Path::new("r.yaml"), text).unwrap();
        assert_eq!(
            r.rules[0].kind,
            RuleKind::Threshold {
                metric: "tierwatch_tls_leaf_expiry_timestamp_seconds".into(),
                condition: Condition::Below { fire: 1_209_600.0, clear: 1_209_600.0 },
                until_now: true,
                mean_over: None
            }
        );
        let RuleKind::Threshold { condition, .. } = &r.rules[1].kind else { panic!() };
        assert!(condition.fires(0.21) && !condition.fires(0.2));
        assert!(!condition.clears(0.1) && condition.clears(0.05));
    }
}
