//! Defacement of a public page, judged against the first page the probe
//! saw (its baseline): gambling and SEO-spam words or hacker slogans that
//! were not there before (`defacement`, critical), the title and most of
//! the text replaced (`defacement`, critical), most of the text replaced
//! under the same title (`content_changed`, warning), the title alone
//! changed (`title_changed`, warning). Similarity is the Jaccard index of
//! the pages' word 3-shingles, estimated from bottom-128 sketches, so a
//! news item added to a portal is not a defacement and a replaced page is.
//!
//! Words are matched on the page as a reader sees it ([`super::text`]):
//! entities decoded, tags dropped, NFC or NFD alike, with and without
//! diacritics; words only in hidden elements (SEO spam for crawlers) are
//! evidence of their own. The vocabulary is data: the shipped
//! `config/defacement-words.txt`, built in, plus the operator's file.

use std::collections::{BTreeMap, BTreeSet};

use tierwatch_protocol::{Event, Severity};

use super::text;

/// The shipped vocabulary (`config/defacement-words.txt`).
pub const SHIPPED: &str = include_str!("../../../config/defacement-words.txt");

/// One phrase of the vocabulary.
#[derive(Debug, Clone, PartialEq)]
struct Phrase {
    /// As written (the evidence names it so).
    text: String,
    /// Matched with its diacritics only.
    exact: bool,
    /// Its words in the form it is matched in.
    words: Vec<String>,
    /// A single ASCII word of letters and digits (a brand), looked for in the raw HTML too.
    raw: Option<String>,
}

/// What defacement words are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vocabulary {
    phrases: Vec<Phrase>,
}

/// A line of a vocabulary file that is not a phrase.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct VocabularyError {
    pub line: usize,
    pub why: String,
}

impl Vocabulary {
    /// The shipped vocabulary.
    pub fn shipped() -> Vocabulary {
        let mut v = Vocabulary::default();
        // The shipped file is tested to parse; a bad line there is skipped, not fatal.
        let _ = v.extend(SHIPPED);
        v
    }

    /// Adds the phrases of a vocabulary file's `text`; every bad line is reported.
    pub fn extend(&mut self, text: &str) -> Result<(), Vec<VocabularyError>> {
        let mut errors = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (exact, phrase) = match line.strip_prefix('=') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let parsed = text::read(phrase.as_bytes());
            if parsed.folded.is_empty() || phrase.contains('<') || phrase.chars().count() > 100 {
                errors.push(VocabularyError {
                    line: n + 1,
                    why: format!("{phrase:?} is not a phrase of words (at most 100 characters, no markup)"),
                });
                continue;
            }
            let words = if exact { parsed.exact } else { parsed.folded };
            let raw = (words.len() == 1 && words[0].bytes().all(|b| b.is_ascii_alphanumeric()) && words[0].len() >= 4)
                .then(|| words[0].clone());
            if !self.phrases.iter().any(|p| p.words == words && p.exact == exact) {
                self.phrases.push(Phrase { text: phrase.to_lowercase(), exact, words, raw });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Phrases known.
    pub fn len(&self) -> usize {
        self.phrases.len()
    }

    /// True when it has no phrase.
    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }
}

const SKETCH: usize = 128;

/// What the probe keeps of a page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub title: Option<String>,
    /// The smallest shingle hashes of the visible text.
    pub sketch: BTreeSet<u64>,
    /// The vocabulary's phrases it shows.
    pub spam: BTreeSet<String>,
    /// Phrases found only in hidden elements.
    pub hidden_spam: BTreeSet<String>,
}

impl Page {
    /// The phrases it shows or hides.
    fn all_spam(&self) -> BTreeSet<String> {
        self.spam.union(&self.hidden_spam).cloned().collect()
    }
}

/// Reads what defacement is judged on from an HTML body.
pub fn page(body: &[u8], vocabulary: &Vocabulary) -> Page {
    let t = text::read(body);
    let words = &t.folded;
    let mut sketch = BTreeSet::new();
    for w in words.windows(3.min(words.len().max(1))) {
        let d = ring::digest::digest(&ring::digest::SHA256, w.join(" ").as_bytes());
        let h = u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap_or_default());
        sketch.insert(h);
        if sketch.len() > SKETCH {
            sketch.pop_last();
        }
    }
    // Links and attributes carry brands too: those are looked for in the whole page.
    let raw = String::from_utf8_lossy(body).to_ascii_lowercase();
    let mut spam = BTreeSet::new();
    let mut hidden_spam = BTreeSet::new();
    for p in &vocabulary.phrases {
        let shown = if p.exact { text::contains(&t.exact, &p.words) } else { text::contains(&t.folded, &p.words) };
        let hidden = !p.exact && text::contains(&t.hidden, &p.words);
        let linked = p.raw.as_ref().is_some_and(|r| raw.contains(r.as_str()));
        if shown || (linked && !hidden) {
            spam.insert(p.text.clone());
        } else if hidden {
            hidden_spam.insert(p.text.clone());
        }
    }
    Page { title: t.title, sketch, spam, hidden_spam }
}

/// Estimated Jaccard similarity of two pages' shingles (1.0: same text).
pub fn similarity(a: &Page, b: &Page) -> f64 {
    if a.sketch.is_empty() && b.sketch.is_empty() {
        return 1.0;
    }
    let union: Vec<&u64> = a.sketch.union(&b.sketch).take(SKETCH).collect();
    let both = union.iter().filter(|h| a.sketch.contains(h) && b.sketch.contains(h)).count();
    both as f64 / union.len() as f64
}

/// The baseline of one target and what was reported.
#[derive(Debug, Default)]
pub struct Watch {
    baseline: Option<Page>,
    reported_spam: BTreeSet<String>,
    reported_cloaking: BTreeSet<String>,
}

impl Watch {
    /// Judges the page a crawler was served (`crawler`) against the one a
    /// reader was (`reader`): spam words shown only to crawlers are a
    /// defacement (cloaking), reported once per set of words.
    pub fn cloaking(&mut self, reader: &Page, crawler: &Page, url: &str, now_ms: i64) -> Option<Event> {
        let only: Vec<String> = crawler.all_spam().difference(&reader.all_spam()).cloned().collect();
        if only.is_empty() {
            self.reported_cloaking.clear();
            return None;
        }
        if only.iter().all(|w| self.reported_cloaking.contains(w)) {
            return None;
        }
        self.reported_cloaking.extend(only.iter().cloned());
        let attributes = BTreeMap::from([
            ("src".to_string(), url.to_string()),
            ("why".to_string(), "gambling or spam words served to search-engine crawlers only (cloaking)".to_string()),
            ("crawler_words".to_string(), only.join(",")),
            ("similarity".to_string(), format!("{:.2}", similarity(reader, crawler))),
            ("title".to_string(), reader.title.clone().unwrap_or_default().chars().take(200).collect()),
            ("crawler_title".to_string(), crawler.title.clone().unwrap_or_default().chars().take(200).collect()),
        ]);
        Some(Event::new("defacement", Severity::Critical, now_ms, attributes))
    }

    /// Judges `now` (fetched from `url`) against the baseline.
    pub fn check(&mut self, now: Page, url: &str, now_ms: i64) -> Option<Event> {
        let Some(base) = &self.baseline else {
            self.baseline = Some(now);
            return None;
        };
        let sim = similarity(base, &now);
        let new_spam: Vec<String> = now.all_spam().difference(&base.all_spam()).cloned().collect();
        let hidden: Vec<&String> = new_spam.iter().filter(|w| now.hidden_spam.contains(*w)).collect();
        let title_changed = base.title != now.title;
        let (kind, severity, why) = if !new_spam.is_empty() {
            // Reported once per set of words; the baseline stays, so cleaning up shows.
            if new_spam.iter().all(|w| self.reported_spam.contains(w)) {
                return None;
            }
            self.reported_spam.extend(new_spam.iter().cloned());
            if hidden.len() == new_spam.len() {
                (
                    "defacement",
                    Severity::Critical,
                    "gambling or spam words hidden from readers (shown to search engines)",
                )
            } else {
                ("defacement", Severity::Critical, "gambling, spam or defacer words that were not there")
            }
        } else if title_changed && sim < 0.5 {
            ("defacement", Severity::Critical, "the title and most of the text were replaced")
        } else if sim < 0.3 {
            ("content_changed", Severity::Warning, "most of the text was replaced")
        } else if title_changed {
            ("title_changed", Severity::Warning, "the title changed")
        } else {
            if new_spam.is_empty() && now.all_spam().is_subset(&base.all_spam()) {
                self.reported_spam.clear();
            }
            return None;
        };
        let mut attributes = BTreeMap::from([
            ("src".to_string(), url.to_string()),
            ("why".to_string(), why.to_string()),
            ("similarity".to_string(), format!("{sim:.2}")),
            ("title".to_string(), now.title.clone().unwrap_or_default().chars().take(200).collect()),
            ("previous_title".to_string(), base.title.clone().unwrap_or_default().chars().take(200).collect()),
        ]);
        if !new_spam.is_empty() {
            let shown: Vec<&str> =
                new_spam.iter().filter(|w| !now.hidden_spam.contains(*w)).map(String::as_str).collect();
            if !shown.is_empty() {
                attributes.insert("words".into(), shown.join(","));
            }
            if !hidden.is_empty() {
                attributes
                    .insert("hidden_words".into(), hidden.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(","));
            }
        }
        // A changed page that is not spam becomes the new baseline: reported once.
        if kind != "defacement" || new_spam.is_empty() {
            self.baseline = Some(now);
        }
        Some(Event::new(kind, severity, now_ms, attributes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTAL: &str = "<html><head><title>Cổng dịch vụ công tỉnh An Giang</title></head><body><h1>Dịch vụ công trực tuyến</h1><p>Tra cứu hồ sơ, nộp hồ sơ trực tuyến, thanh toán phí và lệ phí, đánh giá sự hài lòng của người dân và doanh nghiệp đối với cơ quan hành chính nhà nước các cấp.</p></body></html>";

    #[test]
    fn news_is_not_defacement_spam_and_replacement_are() {
        let mut w = Watch::default();
        assert!(
            w.check(page(PORTAL.as_bytes(), &Vocabulary::shipped()), "http://portal/", 0).is_none(),
            "the baseline"
        );
        let news = PORTAL.replace("</body>", "<p>Thông báo lịch nghỉ Tết.</p></body>");
        assert!(w.check(page(news.as_bytes(), &Vocabulary::shipped()), "http://portal/", 1).is_none(), "an item added");
        let spam = PORTAL.replace("</body>", "<a href=\"https://x.example\">Nhà cái uy tín FB88</a></body>");
        let e = w.check(page(spam.as_bytes(), &Vocabulary::shipped()), "http://portal/", 2).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("defacement", Severity::Critical as i32));
        assert_eq!(e.attributes["words"], "fb88,nhà cái,nhà cái uy tín");
        assert!(w.check(page(spam.as_bytes(), &Vocabulary::shipped()), "http://portal/", 3).is_none(), "reported once");
        let hacked =
            "<html><head><title>Hacked by xX</title></head><body>Your security is low. Greetz to all.</body></html>";
        let e = w.check(page(hacked.as_bytes(), &Vocabulary::shipped()), "http://portal/", 4).unwrap();
        assert_eq!(e.kind, "defacement");
        assert!(e.attributes["words"].contains("hacked by"), "{:?}", e.attributes);
    }

    #[test]
    fn replaced_text_and_titles() {
        let base = page(PORTAL.as_bytes(), &Vocabulary::shipped());
        assert_eq!(base.title.as_deref(), Some("cổng dịch vụ công tỉnh an giang"));
        assert!((similarity(&base, &base) - 1.0).abs() < 1e-9);
        let mut w = Watch::default();
        w.check(base, "u", 0);
        let other = "<html><head><title>Trang tạm ngừng</title></head><body>Trang web đang bảo trì, vui lòng quay lại sau.</body></html>";
        let e = w.check(page(other.as_bytes(), &Vocabulary::shipped()), "u", 1).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("defacement", Severity::Critical as i32));
        assert!(w.check(page(other.as_bytes(), &Vocabulary::shipped()), "u", 2).is_none(), "now the baseline");
        let retitled = other.replace("Trang tạm ngừng", "Bảo trì");
        assert_eq!(w.check(page(retitled.as_bytes(), &Vocabulary::shipped()), "u", 3).unwrap().kind, "title_changed");
    }

    #[test]
    fn spam_spelled_to_hide_is_found() {
        let v = Vocabulary::shipped();
        let found = |html: &str| page(html.as_bytes(), &v).spam.into_iter().collect::<Vec<_>>();
        // The usual spelling: no diacritics, upper case.
        assert_eq!(found("<p>NHA CAI uy tin so 1</p>"), ["nhà cái", "nhà cái uy tín"]);
        // NFD, entities, tags splitting words.
        assert_eq!(found("<p>ta\u{300}i xi\u{309}u</p>"), ["tài xỉu"]);
        assert_eq!(found("<p>t&agrave;i x&#7881;u</p>"), ["tài xỉu"]);
        assert_eq!(found("<p>t<b>à</b>i <span>xỉu</span></p>"), ["tài xỉu"]);
        // A brand in a link only.
        assert_eq!(found("<a href=\"https://kubet.example/\">.</a>"), ["kubet"]);
        // Words whose unaccented spelling is ordinary need their diacritics.
        assert!(found("<p>Ghi nhan 3 ca do virus gay ra</p>").is_empty());
        assert_eq!(found("<p>cá độ bóng đá</p>"), ["cá độ", "cá độ bóng đá"]);
        // Hidden from readers, shown to crawlers: its own evidence.
        let p = page(b"<p>Tin tuc</p><div style=\"position:absolute;left:-9999px\">nha cai fb88</div>", &v);
        assert!(p.spam.is_empty(), "{p:?}");
        assert_eq!(p.hidden_spam.into_iter().collect::<Vec<_>>(), ["fb88", "nhà cái"]);
        let mut w = Watch::default();
        w.check(page(b"<p>Tin tuc tinh</p>", &v), "u", 0);
        let e = w.check(page(b"<p>Tin tuc tinh</p><p hidden>nha cai jun88</p>", &v), "u", 1).unwrap();
        assert_eq!(e.kind, "defacement");
        assert_eq!(e.attributes["hidden_words"], "jun88,nhà cái");
        assert!(!e.attributes.contains_key("words"));
    }

    #[test]
    fn the_vocabulary_is_data() {
        let mut v = Vocabulary::default();
        assert!(v.extend(SHIPPED).is_ok(), "the shipped list parses");
        let shipped = v.len();
        assert!(shipped > 100);
        let err = v.extend("# the province's own\nbắn cá rồng\n<b>x</b>\n\n=xổ số").unwrap_err();
        assert_eq!(
            err,
            [VocabularyError {
                line: 3,
                why: "\"<b>x</b>\" is not a phrase of words (at most 100 characters, no markup)".into()
            }]
        );
        assert_eq!(v.len(), shipped + 2);
        let found = page("<p>ban ca rong</p>".as_bytes(), &v).spam;
        assert!(found.contains("bắn cá rồng"), "{found:?}");
    }

    #[test]
    fn spam_served_to_crawlers_only_is_cloaking() {
        let v = Vocabulary::shipped();
        let reader = page("<title>Cổng</title><p>Tin tức tỉnh</p>".as_bytes(), &v);
        let crawler = page("<title>Nhà cái uy tín</title><p>Tin tức tỉnh. Nha cai hi88</p>".as_bytes(), &v);
        let mut w = Watch::default();
        assert!(w.cloaking(&reader, &reader, "u", 0).is_none());
        let e = w.cloaking(&reader, &crawler, "u", 1).unwrap();
        assert_eq!(e.kind, "defacement");
        assert_eq!(e.attributes["crawler_words"], "hi88,nhà cái,nhà cái uy tín");
        assert!(w.cloaking(&reader, &crawler, "u", 2).is_none(), "once");
    }
}
