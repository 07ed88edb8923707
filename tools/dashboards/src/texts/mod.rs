//! Every text a dashboard shows, one table per language; the compiler
//! checks that each language has the same fields, and a test that each
//! names the same dashboard elements.

mod en;
mod vi;

/// A language the dashboards are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Vi,
}

impl Language {
    /// Every language, each written into `dashboards/<code>/`.
    pub const ALL: [Language; 2] = [Language::En, Language::Vi];

    /// `en`, `vi`: as in the collector's `language:` and the directory name.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Vi => "vi",
        }
    }

    /// The language of `code`.
    pub fn from_code(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }

    /// Its texts.
    pub fn texts(self) -> &'static Texts {
        match self {
            Language::En => &en::TEXTS,
            Language::Vi => &vi::TEXTS,
        }
    }
}

/// The texts of one language.
pub struct Texts {
    /// `up`, `down`, `unknown` (as the collector's status page says them).
    pub status_words: [&'static str; 3],
    /// (id, title, description) of each dashboard, panel, variable and column.
    pub dashboards: &'static [(&'static str, &'static str, &'static str)],
}

impl Texts {
    /// Title and description of dashboard element `id`; the id itself when missing.
    pub fn dashboard(&self, id: &'static str) -> (&'static str, &'static str) {
        self.dashboards.iter().find(|(k, _, _)| *k == id).map_or((id, ""), |(_, t, d)| (*t, *d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_names_the_same_dashboard_elements() {
        let ids = |l: Language| {
            let mut v: Vec<&str> = l.texts().dashboards.iter().map(|(k, _, _)| *k).collect();
            v.sort();
            v
        };
        assert_eq!(ids(Language::En), ids(Language::Vi));
        let mut seen = std::collections::HashSet::new();
        for (k, t, _) in Language::En.texts().dashboards {
            assert!(seen.insert(*k), "{k} twice");
            assert!(!t.is_empty(), "{k} has no title");
        }
    }
}
