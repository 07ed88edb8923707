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

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::{ConfigError, Problems};

use super::flap::FlapPolicy;
use super::model::Severity;
use crate::i18n::{Language, Locale};

/// A threshold written as a number or, for time values, a duration (`14d`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub f64);

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
pub struct RawRules {
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
pub struct RawFlapping {
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

fn default_flap_opens() -> usize {
    FlapPolicy::default().opens
}
fn default_flap_window() -> Duration {
    FlapPolicy::default().window
}
fn default_flap_quiet() -> Duration {
    FlapPolicy::default().quiet
}

/// How alerts are grouped by the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrouping {
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

fn default_min_children() -> usize {
    3
}
fn default_group_wait() -> Duration {
    Duration::from_secs(10)
}

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

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
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
    #[serde(default, rename = "for", with = "duration::serde_opt")]
    pub for_: Option<Duration>,
    #[serde(default, with = "duration::serde_opt")]
    pub clear_for: Option<Duration>,
    /// Label naming the node the alert is about (default: the reporting node).
    #[serde(default)]
    pub subject: Option<String>,
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
pub enum Localized {
    One(String),
    PerLanguage(std::collections::BTreeMap<Language, String>),
}

impl Localized {
    /// The text in `lang`; else the English one; else any.
    fn pick(&self, lang: Language) -> String {
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
pub struct RawHeartbeat {
    pub missed: u32,
}

/// Which security events an event rule takes, and for how long one counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventRule {
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

fn default_hold() -> Duration {
    Duration::from_secs(900)
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
    Threshold { metric: String, condition: Condition, until_now: bool },
    Heartbeat { missed: u32 },
    Event { kind: Option<String>, severity: Option<Severity>, hold: Duration, group_by: Vec<String> },
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
    pub problem: String,
    pub severity: Severity,
    pub summary: String,
    pub description: Option<String>,
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

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Rules {
    /// Loads and validates `file`, every problem with its line.
    pub fn load(file: &Path, locale: Locale) -> Result<Rules, ConfigError> {
        let (raw, text) = tierwatch_yamlconf::load::<RawRules>(file)?;
        Self::from_raw(raw, file, &text, locale)
    }

    /// Parses and validates rules text (`file` names it in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Rules, ConfigError> {
        let raw = tierwatch_yamlconf::parse::<RawRules>(file, text)?;
        Self::from_raw(raw, file, text, Locale::default())
    }

    fn from_raw(raw: RawRules, file: &Path, text: &str, locale: Locale) -> Result<Rules, ConfigError> {
        let language = locale.language;
        let mut p = Problems::default();
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::new();
        if raw.grouping.min_children < 2 {
            p.push("grouping.min_children", "must be at least 2");
        }
        if raw.flapping.opens == 1 {
            p.push("flapping.opens", "1 would make every incident flapping; use 2 or more, or 0 to turn it off");
        }
        if raw.flapping.opens > 0 && raw.flapping.window.is_zero() {
            p.push("flapping.window", "must be longer than 0s");
        }
        for (i, r) in raw.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            if !name_ok(&r.name) {
                p.push(key("name"), format!("{:?}: use 1-64 of a-z, A-Z, 0-9, _ and -", r.name));
            } else if !names.insert(r.name.clone()) {
                p.push(key("name"), format!("{:?} is used by another rule", r.name));
            }
            if matches!(&r.summary, Localized::PerLanguage(m) if m.is_empty()) {
                p.push(key("summary"), "give the text, or one per language: {en: ..., vi: ...}");
            }
            if !name_ok(&r.problem) {
                p.push(key("problem"), format!("{:?}: use 1-64 of a-z, A-Z, 0-9, _ and -", r.problem));
            }
            for (field, m) in [("match", &r.matchers), ("not_match", &r.not_match)] {
                for (k, v) in m {
                    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        p.push(key(field), format!("{k:?} is not a label name"));
                    }
                    if matches!(v, Values::Any(list) if list.is_empty()) {
                        p.push(key(&format!("{field}.{k}")), "give at least one value");
                    }
                }
            }
            let kinds = [r.metric.is_some(), r.heartbeat.is_some(), r.event.is_some()];
            if kinds.iter().filter(|&&k| k).count() > 1 {
                p.push(key("metric"), "a rule is one of a metric threshold, a heartbeat or an event rule");
                continue;
            }
            if let Some(e) = &r.event {
                if e.hold.is_zero() {
                    p.push(key("event.hold"), "must be longer than 0s");
                }
                for (k, set) in [
                    ("above", r.above.is_some()),
                    ("below", r.below.is_some()),
                    ("for", r.for_.is_some()),
                    ("subject", r.subject.is_some()),
                ] {
                    if set {
                        p.push(key(k), "event rules take no threshold, for or subject");
                    }
                }
                rules.push(Rule {
                    name: r.name.clone(),
                    kind: RuleKind::Event {
                        kind: e.kind.clone(),
                        severity: e.severity,
                        hold: e.hold,
                        group_by: e.group_by.clone(),
                    },
                    matchers: r.matchers.clone(),
                    not_match: r.not_match.clone(),
                    for_: Duration::ZERO,
                    clear_for: Duration::ZERO,
                    subject: None,
                    problem: r.problem.clone(),
                    severity: r.severity,
                    summary: r.summary.pick(language),
                    description: r.description.as_ref().map(|d| d.pick(language)),
                });
                continue;
            }
            let kind = match (&r.metric, &r.heartbeat) {
                (Some(_), Some(_)) | (None, None) => {
                    p.push(key("metric"), "give a metric (threshold rule), heartbeat: {missed: N} or event: {...}");
                    continue;
                }
                (None, Some(h)) => {
                    if h.missed == 0 {
                        p.push(key("heartbeat.missed"), "must be at least 1");
                    }
                    for k in ["above", "below", "clear_below", "clear_above"] {
                        let set = match k {
                            "above" => r.above.is_some(),
                            "below" => r.below.is_some(),
                            "clear_below" => r.clear_below.is_some(),
                            _ => r.clear_above.is_some(),
                        };
                        if set {
                            p.push(key(k), "heartbeat rules take no threshold");
                        }
                    }
                    RuleKind::Heartbeat { missed: h.missed }
                }
                (Some(metric), None) => {
                    if tierwatch_protocol::validate::check_metric_name(metric, 200).is_err() {
                        p.push(key("metric"), format!("{metric:?} is not a metric name"));
                    }
                    let condition = match (r.above, r.below) {
                        (Some(a), None) => {
                            if r.clear_above.is_some() {
                                p.push(key("clear_above"), "with above, the clear threshold is clear_below");
                            }
                            let clear = r.clear_below.map_or(a.0, |c| c.0);
                            if clear > a.0 {
                                p.push(key("clear_below"), format!("must not be above the firing threshold {}", a.0));
                            }
                            Condition::Above { fire: a.0, clear }
                        }
                        (None, Some(b)) => {
                            if r.clear_below.is_some() {
                                p.push(key("clear_below"), "with below, the clear threshold is clear_above");
                            }
                            let clear = r.clear_above.map_or(b.0, |c| c.0);
                            if clear < b.0 {
                                p.push(key("clear_above"), format!("must not be below the firing threshold {}", b.0));
                            }
                            Condition::Below { fire: b.0, clear }
                        }
                        _ => {
                            p.push(key("above"), "a threshold rule takes exactly one of above and below");
                            continue;
                        }
                    };
                    RuleKind::Threshold { metric: metric.clone(), condition, until_now: r.until_now }
                }
            };
            rules.push(Rule {
                name: r.name.clone(),
                kind,
                matchers: r.matchers.clone(),
                not_match: r.not_match.clone(),
                for_: r.for_.unwrap_or_default(),
                clear_for: r.clear_for.unwrap_or_default(),
                subject: r.subject.clone(),
                problem: r.problem.clone(),
                severity: r.severity,
                summary: r.summary.pick(language),
                description: r.description.as_ref().map(|d| d.pick(language)),
            });
        }
        p.into_result(file, text)?;
        let flapping = FlapPolicy { opens: raw.flapping.opens, window: raw.flapping.window, quiet: raw.flapping.quiet };
        Ok(Rules {
            locale,
            min_children: raw.grouping.min_children,
            group_wait: raw.grouping.group_wait,
            flapping,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rules_are_valid() {
        let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml"));
        let r =
            Rules::load(file, Locale { language: Language::Vi, ..Locale::default() }).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = r.rules.iter().map(|r| r.name.as_str()).collect();
        for want in [
            "node_down",
            "wan_link_down",
            "wan_loss_high",
            "wan_latency_high",
            "wan_jitter_high",
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
                until_now: true
            }
        );
        let RuleKind::Threshold { condition, .. } = &r.rules[1].kind else { panic!() };
        assert!(condition.fires(0.21) && !condition.fires(0.2));
        assert!(!condition.clears(0.1) && condition.clears(0.05));
    }
}
