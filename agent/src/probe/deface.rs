//! Defacement of a public page, judged against the first page the probe
//! saw (its baseline): gambling and SEO-spam words or hacker slogans that
//! were not there before (`defacement`, critical), the title and most of
//! the text replaced (`defacement`, critical), most of the text replaced
//! under the same title (`content_changed`, warning), the title alone
//! changed (`title_changed`, warning). Similarity is the Jaccard index of
//! the pages' word 3-shingles, estimated from bottom-128 sketches, so a
//! news item added to a portal is not a defacement and a replaced page is.

use std::collections::{BTreeMap, BTreeSet};

use tierwatch_protocol::{Event, Severity};

/// Words injected into defaced Vietnamese government pages: gambling and
/// betting brands and terms, SEO spam, and defacers' signatures.
pub const SPAM: &[&str] = &[
    "nhà cái",
    "cá cược",
    "cá độ",
    "casino",
    "bắn cá",
    "tài xỉu",
    "nổ hũ",
    "game bài đổi thưởng",
    "đánh bạc",
    "lô đề",
    "soi cầu",
    "kèo nhà cái",
    "tỷ lệ kèo",
    "slot game",
    "sòng bạc",
    "xóc đĩa",
    "baccarat",
    "sbobet",
    "fb88",
    "188bet",
    "789bet",
    "kubet",
    "jun88",
    "hi88",
    "new88",
    "shbet",
    "f8bet",
    "8kbet",
    "okvip",
    "fun88",
    "bong88",
    "vn88",
    "sv388",
    "sunwin",
    "rikvip",
    "hitclub",
    "viagra",
    "cialis",
    "hacked by",
    "defaced by",
    "owned by",
    "h4ck3d",
    "pwned by",
    "greetz",
    "was here",
    "we are anonymous",
];

const SKETCH: usize = 128;

/// What the probe keeps of a page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub title: Option<String>,
    /// The smallest shingle hashes of the visible text.
    pub sketch: BTreeSet<u64>,
    /// The words of [`SPAM`] it contains.
    pub spam: BTreeSet<&'static str>,
}

/// Reads what defacement is judged on from an HTML body.
pub fn page(body: &[u8]) -> Page {
    let html = String::from_utf8_lossy(body).to_lowercase();
    let title = html.find("<title").and_then(|i| {
        let start = i + html[i..].find('>')? + 1;
        let end = start + html[start..].find("</title")?;
        Some(html[start..end].split_whitespace().collect::<Vec<_>>().join(" "))
    });
    // Visible text, roughly: tags dropped, words kept.
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let mut sketch = BTreeSet::new();
    for w in words.windows(3.min(words.len().max(1))) {
        let d = ring::digest::digest(&ring::digest::SHA256, w.join(" ").as_bytes());
        let h = u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap_or_default());
        sketch.insert(h);
        if sketch.len() > SKETCH {
            sketch.pop_last();
        }
    }
    // Links and attributes carry spam too: look at the whole page.
    let spam = SPAM.iter().copied().filter(|k| html.contains(k)).collect();
    Page { title, sketch, spam }
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
    reported_spam: BTreeSet<&'static str>,
}

impl Watch {
    /// Judges `now` (fetched from `url`) against the baseline.
    pub fn check(&mut self, now: Page, url: &str, now_ms: i64) -> Option<Event> {
        let Some(base) = &self.baseline else {
            self.baseline = Some(now);
            return None;
        };
        let sim = similarity(base, &now);
        let new_spam: Vec<&'static str> = now.spam.difference(&base.spam).copied().collect();
        let title_changed = base.title != now.title;
        let (kind, severity, why) = if !new_spam.is_empty() {
            // Reported once per set of words; the baseline stays, so cleaning up shows.
            if new_spam.iter().all(|w| self.reported_spam.contains(w)) {
                return None;
            }
            self.reported_spam.extend(new_spam.iter().copied());
            ("defacement", Severity::Critical, "gambling, spam or defacer words that were not there")
        } else if title_changed && sim < 0.5 {
            ("defacement", Severity::Critical, "the title and most of the text were replaced")
        } else if sim < 0.3 {
            ("content_changed", Severity::Warning, "most of the text was replaced")
        } else if title_changed {
            ("title_changed", Severity::Warning, "the title changed")
        } else {
            if new_spam.is_empty() && now.spam.is_subset(&base.spam) {
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
            attributes.insert("words".into(), new_spam.join(","));
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
        assert!(w.check(page(PORTAL.as_bytes()), "http://portal/", 0).is_none(), "the baseline");
        let news = PORTAL.replace("</body>", "<p>Thông báo lịch nghỉ Tết.</p></body>");
        assert!(w.check(page(news.as_bytes()), "http://portal/", 1).is_none(), "an item added");
        let spam = PORTAL.replace("</body>", "<a href=\"https://x.example\">Nhà cái uy tín FB88</a></body>");
        let e = w.check(page(spam.as_bytes()), "http://portal/", 2).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("defacement", Severity::Critical as i32));
        assert_eq!(e.attributes["words"], "fb88,nhà cái");
        assert!(w.check(page(spam.as_bytes()), "http://portal/", 3).is_none(), "reported once");
        let hacked =
            "<html><head><title>Hacked by xX</title></head><body>Your security is low. Greetz to all.</body></html>";
        let e = w.check(page(hacked.as_bytes()), "http://portal/", 4).unwrap();
        assert_eq!(e.kind, "defacement");
        assert!(e.attributes["words"].contains("hacked by"), "{:?}", e.attributes);
    }

    #[test]
    fn replaced_text_and_titles() {
        let base = page(PORTAL.as_bytes());
        assert_eq!(base.title.as_deref(), Some("cổng dịch vụ công tỉnh an giang"));
        assert!((similarity(&base, &base) - 1.0).abs() < 1e-9);
        let mut w = Watch::default();
        w.check(base, "u", 0);
        let other = "<html><head><title>Trang tạm ngừng</title></head><body>Trang web đang bảo trì, vui lòng quay lại sau.</body></html>";
        let e = w.check(page(other.as_bytes()), "u", 1).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("defacement", Severity::Critical as i32));
        assert!(w.check(page(other.as_bytes()), "u", 2).is_none(), "now the baseline");
        let retitled = other.replace("Trang tạm ngừng", "Bảo trì");
        assert_eq!(w.check(page(retitled.as_bytes()), "u", 3).unwrap().kind, "title_changed");
    }
}
