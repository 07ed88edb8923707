//! From `rules.yaml` as written to [`Rules`]: the checks every rule shares
//! (name, problem, matchers, summary), then one function per rule kind.
//! Every problem is collected, each with its key path, and reported at once
//! with its line.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use tierwatch_yamlconf::{ConfigError, Problems};

use super::raw::{RawAtLeast, RawEventRule, RawHeartbeat, RawQuorum, RawRule, RawRules};
use super::{name_ok, AtLeast, Condition, Quorum, Rule, RuleKind, Rules, Values};
use crate::alert::flap::FlapPolicy;
use crate::i18n::{Language, Locale};

/// Validates the whole file.
/// Validates `raw`; `p` holds the file's type errors already.
pub(super) fn rules(
    raw: RawRules,
    file: &Path,
    text: &str,
    locale: Locale,
    mut p: Problems,
) -> Result<Rules, ConfigError> {
    let mut names = HashSet::new();
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
        common(r, &key, &mut names, &mut p);
        let kinds = [r.metric.is_some(), r.heartbeat.is_some(), r.event.is_some()];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            p.push(key("metric"), "a rule is one of a metric threshold, a heartbeat or an event rule");
            continue;
        }
        let kind = match (&r.metric, &r.heartbeat, &r.event) {
            (_, _, Some(e)) => event(r, e, &key, &mut p),
            (None, Some(h), _) => Some(heartbeat(r, h, &key, &mut p)),
            (Some(metric), None, _) => threshold(r, metric, &key, &mut p),
            _ => {
                p.push(key("metric"), "give a metric (threshold rule), heartbeat: {missed: N} or event: {...}");
                None
            }
        };
        let quorum = r.quorum.as_ref().and_then(|q| quorum(r, q, &key, &mut p));
        if let Some(kind) = kind {
            let mut rule = rule(r, kind, locale.language);
            rule.quorum = quorum;
            rules.push(rule);
        }
    }
    p.into_result(file, text)?;
    let flapping = FlapPolicy { opens: raw.flapping.opens, window: raw.flapping.window, quiet: raw.flapping.quiet };
    Ok(Rules { locale, min_children: raw.grouping.min_children, group_wait: raw.grouping.group_wait, flapping, rules })
}

/// What every rule needs: a unique name, a problem, label matchers, a summary.
fn common(r: &RawRule, key: &dyn Fn(&str) -> String, names: &mut HashSet<String>, p: &mut Problems) {
    if !name_ok(&r.name) {
        p.push(key("name"), format!("{:?}: use 1-64 of a-z, A-Z, 0-9, _ and -", r.name));
    } else if !names.insert(r.name.clone()) {
        p.push(key("name"), format!("{:?} is used by another rule", r.name));
    }
    if matches!(&r.summary, super::raw::Localized::PerLanguage(m) if m.is_empty()) {
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
}

/// An event rule: which events, held how long; no threshold, `for` or subject.
fn event(r: &RawRule, e: &RawEventRule, key: &dyn Fn(&str) -> String, p: &mut Problems) -> Option<RuleKind> {
    if e.hold.is_zero() {
        p.push(key("event.hold"), "must be longer than 0s");
    }
    let set = [
        ("above", r.above.is_some()),
        ("below", r.below.is_some()),
        ("for", r.for_.is_some()),
        ("subject", r.subject.is_some()),
        ("mean_over", r.mean_over.is_some()),
    ];
    refuse_set(&set, "event rules take no threshold, for, mean_over or subject", key, p);
    Some(RuleKind::Event { kind: e.kind.clone(), severity: e.severity, hold: e.hold, group_by: e.group_by.clone() })
}

/// Each of `fields` that is set is a problem: that kind of rule takes none.
fn refuse_set(fields: &[(&str, bool)], why: &str, key: &dyn Fn(&str) -> String, p: &mut Problems) {
    for (k, _) in fields.iter().filter(|(_, set)| *set) {
        p.push(key(k), why);
    }
}

/// A heartbeat rule: missed push intervals; no threshold.
fn heartbeat(r: &RawRule, h: &RawHeartbeat, key: &dyn Fn(&str) -> String, p: &mut Problems) -> RuleKind {
    if h.missed == 0 {
        p.push(key("heartbeat.missed"), "must be at least 1");
    }
    let set = [
        ("above", r.above.is_some()),
        ("below", r.below.is_some()),
        ("clear_below", r.clear_below.is_some()),
        ("clear_above", r.clear_above.is_some()),
        ("mean_over", r.mean_over.is_some()),
    ];
    refuse_set(&set, "heartbeat rules take no threshold", key, p);
    RuleKind::Heartbeat { missed: h.missed, link: h.link }
}

/// The longest `mean_over`: the samples it holds are bounded anyway, and
/// a mean over hours is a report, not an alert.
const MAX_MEAN_OVER: Duration = Duration::from_secs(3600);

/// A threshold rule: a metric name, exactly one of `above` and `below`, and
/// a clear threshold on the good side of it.
fn threshold(r: &RawRule, metric: &str, key: &dyn Fn(&str) -> String, p: &mut Problems) -> Option<RuleKind> {
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
            return None;
        }
    };
    if let Some(w) = r.mean_over {
        if w.is_zero() || w > MAX_MEAN_OVER {
            p.push(key("mean_over"), format!("must be longer than 0s and at most {MAX_MEAN_OVER:?}"));
        }
    }
    Some(RuleKind::Threshold { metric: metric.to_string(), condition, until_now: r.until_now, mean_over: r.mean_over })
}

/// A quorum: on a threshold rule about the reporting node, a count or
/// share that can be met, each target in at most one service.
fn quorum(r: &RawRule, q: &RawQuorum, key: &dyn Fn(&str) -> String, p: &mut Problems) -> Option<Quorum> {
    if r.metric.is_none() {
        p.push(key("quorum"), "only threshold rules (metric: ...) are judged across vantage points");
        return None;
    }
    if r.subject.is_some() {
        p.push(key("quorum"), "a rule about the node a label names is judged per node, not by quorum");
        return None;
    }
    let at_least = match &q.at_least {
        None => Some(AtLeast::Majority),
        Some(RawAtLeast::Count(0)) => {
            p.push(key("quorum.at_least"), "must be at least 1");
            None
        }
        Some(RawAtLeast::Count(n)) => Some(AtLeast::Count(usize::try_from(*n).unwrap_or(usize::MAX))),
        Some(RawAtLeast::Text(t)) if t == "majority" => Some(AtLeast::Majority),
        Some(RawAtLeast::Text(t)) => match t.strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()) {
            Some(pct) if pct > 0.0 && pct <= 100.0 => Some(AtLeast::Share(pct / 100.0)),
            _ => {
                p.push(key("quorum.at_least"), format!("{t:?}: give majority, a count (2) or a share (\"60%\")"));
                None
            }
        },
    };
    let mut services = BTreeMap::new();
    for (service, targets) in &q.services {
        if !name_ok(service) {
            p.push(key(&format!("quorum.services.{service}")), "use 1-64 of a-z, A-Z, 0-9, _ and -");
        }
        if targets.is_empty() {
            p.push(key(&format!("quorum.services.{service}")), "give at least one target name");
        }
        for t in targets {
            if let Some(other) = services.insert(t.clone(), service.clone()) {
                p.push(key(&format!("quorum.services.{service}")), format!("target {t:?} is already in {other:?}"));
            }
        }
    }
    Some(Quorum { at_least: at_least?, services })
}

/// The validated rule of `r`, its texts in `language`.
fn rule(r: &RawRule, kind: RuleKind, language: Language) -> Rule {
    // Event rules have no `for`, `clear_for` or subject (refused above).
    let event = matches!(kind, RuleKind::Event { .. });
    Rule {
        name: r.name.clone(),
        kind,
        matchers: r.matchers.clone(),
        not_match: r.not_match.clone(),
        for_: if event { Duration::ZERO } else { r.for_.unwrap_or_default() },
        clear_for: if event { Duration::ZERO } else { r.clear_for.unwrap_or_default() },
        subject: if event { None } else { r.subject.clone() },
        quorum: None,
        problem: r.problem.clone(),
        severity: r.severity,
        summary: r.summary.pick(language),
        description: r.description.as_ref().map(|d| d.pick(language)),
    }
}
