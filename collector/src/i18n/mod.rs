//! Every text a person reads (notifications, incident summaries, the status
//! page, dashboard titles and descriptions), one table per language. The
//! struct makes the compiler check that each language has every text.
//!
//! Templates use the rules' `{{ name }}` syntax (`crate::template::render`).

mod en;
mod vi;

use serde::Deserialize;

/// The language of everything a person reads (`language:` in collector.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Vi,
}

impl Language {
    /// Every language, for generating dashboards in each.
    pub const ALL: [Language; 2] = [Language::En, Language::Vi];

    /// The language's code (`en`, `vi`), as in config and HTML `lang`.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Vi => "vi",
        }
    }

    /// The language's table of texts.
    pub fn texts(self) -> &'static Texts {
        match self {
            Language::En => &en::TEXTS,
            Language::Vi => &vi::TEXTS,
        }
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "en" => Ok(Language::En),
            "vi" => Ok(Language::Vi),
            _ => Err(format!("{s:?} is not a language: use vi or en")),
        }
    }
}

/// How a person reads texts: the language, and the offset of the local
/// time shown in pages and on the status page (`utc_offset: +07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locale {
    pub language: Language,
    pub utc_offset: time::UtcOffset,
}

impl Default for Locale {
    fn default() -> Self {
        Locale { language: Language::default(), utc_offset: time::UtcOffset::UTC }
    }
}

impl Locale {
    /// The language's texts.
    pub fn texts(&self) -> &'static Texts {
        self.language.texts()
    }

    /// `ms` since the epoch as a local time to the second: `2026-11-28 18:32:58 +07:00`.
    pub fn time(&self, ms: i64) -> String {
        let format = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory]:[offset_minute]"
        );
        time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .ok()
            .and_then(|t| t.to_offset(self.utc_offset).format(&format).ok())
            .unwrap_or_else(|| ms.to_string())
    }
}

/// Parses a UTC offset written `+07:00` (or `-03:30`, `Z`).
pub fn parse_utc_offset(s: &str) -> Result<time::UtcOffset, String> {
    if s.trim() == "Z" {
        return Ok(time::UtcOffset::UTC);
    }
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(s.trim(), &format).map_err(|e| format!("{s:?} is not a UTC offset such as +07:00: {e}"))
}

/// The texts of one language.
pub struct Texts {
    // Incident summaries (templates: node, problem, count, names, window).
    /// Several children of one node show the same problem.
    pub incident_children: &'static str,
    /// A node is cut off with everything behind it.
    pub incident_cut_off: &'static str,
    /// A service failing from several of the nodes probing it (also: service, total).
    pub incident_service: &'static str,
    /// A node's problem with no better summary.
    pub incident_plain: &'static str,
    /// A flapping incident.
    pub incident_flapping: &'static str,
    /// Display words of the shipped rules' problem ids; others are shown as written.
    pub problems: &'static [(&'static str, &'static str)],
    /// `critical`, `warning`, `info`.
    pub severities: [&'static str; 3],
    /// Unit word of the `days` template filter.
    pub days: &'static str,

    // Notifications (Telegram, email).
    pub tag_firing: &'static str,
    pub tag_resolved: &'static str,
    pub tag_acknowledged: &'static str,
    pub tag_repeated: &'static str,
    pub tag_flapping: &'static str,
    pub label_incident: &'static str,
    pub label_since: &'static str,
    pub label_ended: &'static str,
    /// Template: duration.
    pub lasted: &'static str,
    /// Template: by, at, comment.
    pub acknowledged_by: &'static str,
    /// Template: count, names.
    pub affected: &'static str,
    /// Template: summary, rule, node.
    pub alert_line: &'static str,
    /// Template: count.
    pub and_more: &'static str,

    // Status page.
    pub page_title: &'static str,
    pub page_updated: &'static str,
    pub page_nodes: &'static str,
    pub page_alerts: &'static str,
    pub page_no_alerts: &'static str,
    pub page_muted: &'static str,
    /// A maintenance window's end: `mw-1 {until} 2026-12-01 22:00:00 +07:00: reason`.
    pub muted_until: &'static str,
    pub page_security: &'static str,
    pub page_no_security: &'static str,
    pub page_col_node: &'static str,
    pub page_col_tier: &'static str,
    pub page_col_status: &'static str,
    pub page_col_last_seen: &'static str,
    pub page_col_probes: &'static str,
    pub page_col_time: &'static str,
    pub page_col_kind: &'static str,
    pub page_col_source: &'static str,
    pub page_col_severity: &'static str,
    pub page_col_summary: &'static str,
    pub page_since: &'static str,
    pub page_acknowledged: &'static str,
    pub page_affected: &'static str,
    pub page_summary_counts: &'static str,
    /// `up`, `down`, `unknown`.
    pub status_words: [&'static str; 3],
    /// `central`, `province`, `commune`.
    pub tier_words: [&'static str; 3],
    /// Template: secs. Age of the last push.
    pub ago: &'static str,
    pub never: &'static str,
    pub probes_failing: &'static str,
    pub api_links: &'static str,
}

impl Texts {
    /// The display word of a problem id.
    pub fn problem<'a>(&self, id: &'a str) -> &'a str {
        self.problems.iter().find(|(k, _)| *k == id).map_or(id, |(_, v)| v)
    }

    /// The display word of a severity, by its label value (`critical`,
    /// `warning`, `info`): texts sit below alerting and name no alert type.
    pub fn severity(&self, name: &str) -> &'static str {
        match name {
            "critical" => self.severities[0],
            "warning" => self.severities[1],
            _ => self.severities[2],
        }
    }

    /// `template` with `{{ name }}` replaced from `vars`.
    pub fn fill(&self, template: &str, vars: &[(&str, &str)]) -> String {
        crate::template::render(template, &|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_carry_their_offset() {
        let l = Locale { language: Language::Vi, utc_offset: parse_utc_offset("+07:00").unwrap() };
        assert_eq!(l.time(1_764_300_000_000), "2025-11-28 10:20:00 +07:00");
        assert_eq!(Locale::default().time(1_764_300_000_999), "2025-11-28 03:20:00 +00:00");
        assert!(parse_utc_offset("7").is_err());
        assert_eq!(parse_utc_offset("Z").unwrap(), time::UtcOffset::UTC);
    }

    #[test]
    fn problems_are_translated_and_others_kept() {
        let vi = Language::Vi.texts();
        assert_eq!(vi.problem("unreachable"), "mất kết nối");
        assert_eq!(vi.problem("my_problem"), "my_problem");
        assert_eq!(Language::En.texts().problem("unreachable"), "unreachable");
    }
}
