//! What a web page says, as a reader would see it and as a spam filter
//! must: HTML entities decoded, tags dropped (an inline tag inside a word
//! joins its halves, as the browser shows them), text of hidden elements
//! kept apart, and every word in two forms: *exact* (lower case, Vietnamese
//! letters in one canonical decomposition, so NFC and NFD pages read the
//! same) and *folded* (diacritics dropped, `đ` as `d`: "nha cai", the way
//! gambling spam is usually written). Bounded: at most [`MAX_WORDS`] words.

/// Words read from a page, at most.
pub const MAX_WORDS: usize = 200_000;

/// A page's words.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text {
    /// The visible words, exact form.
    pub exact: Vec<String>,
    /// The same words, folded.
    pub folded: Vec<String>,
    /// Words inside hidden elements (`display:none`, `visibility:hidden`,
    /// `hidden`, zero font size, pushed off screen), folded.
    pub hidden: Vec<String>,
    /// The title, as shown (whitespace collapsed, lower case).
    pub title: Option<String>,
}

/// The precomposed Vietnamese letters: base, modifier (breve, circumflex,
/// horn), tone (grave, acute, hook, tilde, dot below).
const VIETNAMESE: &[(char, char, Option<char>, Option<char>)] = &[
    ('à', 'a', None, Some('\u{0300}')),
    ('á', 'a', None, Some('\u{0301}')),
    ('ả', 'a', None, Some('\u{0309}')),
    ('ã', 'a', None, Some('\u{0303}')),
    ('ạ', 'a', None, Some('\u{0323}')),
    ('ă', 'a', Some('\u{0306}'), None),
    ('ằ', 'a', Some('\u{0306}'), Some('\u{0300}')),
    ('ắ', 'a', Some('\u{0306}'), Some('\u{0301}')),
    ('ẳ', 'a', Some('\u{0306}'), Some('\u{0309}')),
    ('ẵ', 'a', Some('\u{0306}'), Some('\u{0303}')),
    ('ặ', 'a', Some('\u{0306}'), Some('\u{0323}')),
    ('â', 'a', Some('\u{0302}'), None),
    ('ầ', 'a', Some('\u{0302}'), Some('\u{0300}')),
    ('ấ', 'a', Some('\u{0302}'), Some('\u{0301}')),
    ('ẩ', 'a', Some('\u{0302}'), Some('\u{0309}')),
    ('ẫ', 'a', Some('\u{0302}'), Some('\u{0303}')),
    ('ậ', 'a', Some('\u{0302}'), Some('\u{0323}')),
    ('è', 'e', None, Some('\u{0300}')),
    ('é', 'e', None, Some('\u{0301}')),
    ('ẻ', 'e', None, Some('\u{0309}')),
    ('ẽ', 'e', None, Some('\u{0303}')),
    ('ẹ', 'e', None, Some('\u{0323}')),
    ('ê', 'e', Some('\u{0302}'), None),
    ('ề', 'e', Some('\u{0302}'), Some('\u{0300}')),
    ('ế', 'e', Some('\u{0302}'), Some('\u{0301}')),
    ('ể', 'e', Some('\u{0302}'), Some('\u{0309}')),
    ('ễ', 'e', Some('\u{0302}'), Some('\u{0303}')),
    ('ệ', 'e', Some('\u{0302}'), Some('\u{0323}')),
    ('ì', 'i', None, Some('\u{0300}')),
    ('í', 'i', None, Some('\u{0301}')),
    ('ỉ', 'i', None, Some('\u{0309}')),
    ('ĩ', 'i', None, Some('\u{0303}')),
    ('ị', 'i', None, Some('\u{0323}')),
    ('ò', 'o', None, Some('\u{0300}')),
    ('ó', 'o', None, Some('\u{0301}')),
    ('ỏ', 'o', None, Some('\u{0309}')),
    ('õ', 'o', None, Some('\u{0303}')),
    ('ọ', 'o', None, Some('\u{0323}')),
    ('ô', 'o', Some('\u{0302}'), None),
    ('ồ', 'o', Some('\u{0302}'), Some('\u{0300}')),
    ('ố', 'o', Some('\u{0302}'), Some('\u{0301}')),
    ('ổ', 'o', Some('\u{0302}'), Some('\u{0309}')),
    ('ỗ', 'o', Some('\u{0302}'), Some('\u{0303}')),
    ('ộ', 'o', Some('\u{0302}'), Some('\u{0323}')),
    ('ơ', 'o', Some('\u{031b}'), None),
    ('ờ', 'o', Some('\u{031b}'), Some('\u{0300}')),
    ('ớ', 'o', Some('\u{031b}'), Some('\u{0301}')),
    ('ở', 'o', Some('\u{031b}'), Some('\u{0309}')),
    ('ỡ', 'o', Some('\u{031b}'), Some('\u{0303}')),
    ('ợ', 'o', Some('\u{031b}'), Some('\u{0323}')),
    ('ù', 'u', None, Some('\u{0300}')),
    ('ú', 'u', None, Some('\u{0301}')),
    ('ủ', 'u', None, Some('\u{0309}')),
    ('ũ', 'u', None, Some('\u{0303}')),
    ('ụ', 'u', None, Some('\u{0323}')),
    ('ư', 'u', Some('\u{031b}'), None),
    ('ừ', 'u', Some('\u{031b}'), Some('\u{0300}')),
    ('ứ', 'u', Some('\u{031b}'), Some('\u{0301}')),
    ('ử', 'u', Some('\u{031b}'), Some('\u{0309}')),
    ('ữ', 'u', Some('\u{031b}'), Some('\u{0303}')),
    ('ự', 'u', Some('\u{031b}'), Some('\u{0323}')),
    ('ỳ', 'y', None, Some('\u{0300}')),
    ('ý', 'y', None, Some('\u{0301}')),
    ('ỷ', 'y', None, Some('\u{0309}')),
    ('ỹ', 'y', None, Some('\u{0303}')),
    ('ỵ', 'y', None, Some('\u{0323}')),
];

/// Canonical combining classes of the marks above (Unicode: horn 216, dot below 220, the rest 230).
fn ccc(c: char) -> u8 {
    match c {
        '\u{031b}' => 216,
        '\u{0323}' => 220,
        '\u{0300}'..='\u{036f}' => 230,
        _ => 0,
    }
}

fn is_mark(c: char) -> bool {
    ('\u{0300}'..='\u{036f}').contains(&c)
}

/// One word in its exact form: lower case, letters decomposed, each run of
/// marks in canonical order (what NFD does, for the letters that matter here).
pub fn exact(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 4);
    let mut marks: Vec<char> = Vec::new();
    let flush = |out: &mut String, marks: &mut Vec<char>| {
        marks.sort_by_key(|m| ccc(*m));
        out.extend(marks.drain(..));
    };
    for c in word.chars().flat_map(char::to_lowercase) {
        if is_mark(c) {
            marks.push(c);
            continue;
        }
        flush(&mut out, &mut marks);
        match VIETNAMESE.iter().find(|v| v.0 == c) {
            Some(&(_, base, modifier, tone)) => {
                out.push(base);
                marks.extend(modifier);
                marks.extend(tone);
            }
            None => out.push(c),
        }
    }
    flush(&mut out, &mut marks);
    out
}

/// One word without diacritics: "nhà cái" and "nha cai" fold alike.
pub fn folded(word: &str) -> String {
    exact(word).chars().filter(|c| !is_mark(*c)).map(|c| if c == 'đ' { 'd' } else { c }).collect()
}

/// The character an entity (`amp`, `#7855`, `#x1ea1`) stands for.
fn entity(name: &str) -> Option<char> {
    if let Some(n) = name.strip_prefix('#') {
        let code = match n.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => n.parse().ok()?,
        };
        return char::from_u32(code);
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "shy" | "zwj" | "zwnj" => '\u{200b}',
        "agrave" => 'à',
        "aacute" => 'á',
        "acirc" => 'â',
        "atilde" => 'ã',
        "egrave" => 'è',
        "eacute" => 'é',
        "ecirc" => 'ê',
        "igrave" => 'ì',
        "iacute" => 'í',
        "ograve" => 'ò',
        "oacute" => 'ó',
        "ocirc" => 'ô',
        "otilde" => 'õ',
        "ugrave" => 'ù',
        "uacute" => 'ú',
        "yacute" => 'ý',
        "Agrave" => 'À',
        "Aacute" => 'Á',
        "Acirc" => 'Â',
        "Atilde" => 'Ã',
        "Egrave" => 'È',
        "Eacute" => 'É',
        "Ecirc" => 'Ê',
        "Igrave" => 'Ì',
        "Iacute" => 'Í',
        "Ograve" => 'Ò',
        "Oacute" => 'Ó',
        "Ocirc" => 'Ô',
        "Otilde" => 'Õ',
        "Ugrave" => 'Ù',
        "Uacute" => 'Ú',
        "Yacute" => 'Ý',
        _ => return None,
    })
}

/// Tags that do not break a word: a spammer's `nh<b>à</b>` reads "nhà".
const INLINE: &[&str] = &[
    "a", "abbr", "b", "bdi", "bdo", "cite", "code", "em", "font", "i", "kbd", "mark", "q", "s", "samp", "small",
    "span", "strong", "sub", "sup", "u", "wbr",
];
/// Elements whose content is never text.
const RAW: &[&str] = &["script", "style", "noscript", "template"];

/// Whether a start tag's attributes hide its content.
fn hides(attrs: &str) -> bool {
    let a: String = attrs.to_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
    a.contains("display:none")
        || a.contains("visibility:hidden")
        || a.contains("font-size:0")
        || a.contains("left:-")
        || a.contains("text-indent:-")
        || a.contains("opacity:0;")
        || a.ends_with("opacity:0\"")
        || attrs
            .split_whitespace()
            .any(|w| w.eq_ignore_ascii_case("hidden") || w.to_ascii_lowercase().starts_with("hidden="))
        || a.contains("aria-hidden=\"true\"")
}

/// Reads the words of an HTML body.
pub fn read(body: &[u8]) -> Text {
    let html = String::from_utf8_lossy(body);
    // Lower-cased once: finding the end of each script must not copy the page each time.
    let lower = html.to_ascii_lowercase();
    let mut t = Text::default();
    // Element stack: (name, hidden), for hidden text; bounded depth.
    let mut stack: Vec<(String, bool)> = Vec::new();
    let mut hidden_depth = 0usize;
    let mut word = String::new();
    let mut title: Option<String> = None;
    let mut in_title = false;
    let mut words = 0usize;
    let push = |t: &mut Text, word: &mut String, hidden: bool, words: &mut usize| {
        if word.is_empty() {
            return;
        }
        // Visible and hidden words have a cap each: a hidden block of
        // filler cannot crowd the visible spam out.
        if hidden {
            if t.hidden.len() < MAX_WORDS {
                t.hidden.push(folded(word));
            }
        } else if *words < MAX_WORDS {
            *words += 1;
            t.exact.push(exact(word));
            t.folded.push(folded(word));
        }
        word.clear();
    };
    let mut rest: &str = &html;
    while let Some(c) = rest.chars().next() {
        match c {
            // A tag starts only where HTML5 starts one: `<` then a letter, `/`, `!` or `?`
            // (`x < nhà cái` is text in a browser, and here).
            '<' if rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?')) => {
                let end = rest.find('>').unwrap_or(rest.len());
                let tag = &rest[1..end];
                rest = rest.get(end + 1..).unwrap_or("");
                if tag.starts_with('!') || tag.starts_with('?') {
                    continue;
                }
                let closing = tag.starts_with('/');
                let body = tag.trim_start_matches('/');
                let name_end = body.find(|c: char| c.is_whitespace() || c == '/').unwrap_or(body.len());
                let name = body[..name_end].to_ascii_lowercase();
                if !INLINE.contains(&name.as_str()) {
                    push(&mut t, &mut word, hidden_depth > 0, &mut words);
                }
                if name == "title" {
                    // The first title is the page's (an inline SVG has titles too).
                    in_title = !closing && title.is_none();
                    if in_title {
                        title = Some(String::new());
                    }
                    continue;
                }
                if !closing && RAW.contains(&name.as_str()) {
                    // Skip to the matching end tag.
                    let close = format!("</{name}");
                    let offset = html.len() - rest.len();
                    let at = lower[offset..].find(&close).unwrap_or(rest.len());
                    rest = &rest[at..];
                    continue;
                }
                let void = body.ends_with('/')
                    || matches!(name.as_str(), "br" | "img" | "meta" | "link" | "input" | "hr" | "wbr" | "source");
                if closing {
                    if let Some(i) = stack.iter().rposition(|(n, _)| *n == name) {
                        for (_, h) in stack.drain(i..) {
                            hidden_depth -= usize::from(h);
                        }
                    }
                } else if !void && stack.len() < 256 {
                    let h = hides(&body[name_end..]);
                    hidden_depth += usize::from(h);
                    stack.push((name, h));
                }
            }
            '&' => {
                let end =
                    rest[1..].find(|c: char| c == ';' || c.is_whitespace() || c == '<' || c == '&').map(|i| i + 1);
                let decoded = end
                    .filter(|e| rest[*e..].starts_with(';') && *e <= 10)
                    .and_then(|e| entity(&rest[1..e]).map(|ch| (ch, e)));
                match decoded {
                    Some((ch, e)) => {
                        rest = &rest[e + 1..];
                        feed(ch, &mut t, &mut word, &mut title, in_title, hidden_depth > 0, &mut words, push);
                    }
                    None => {
                        rest = &rest[1..];
                        feed('&', &mut t, &mut word, &mut title, in_title, hidden_depth > 0, &mut words, push);
                    }
                }
            }
            _ => {
                rest = &rest[c.len_utf8()..];
                feed(c, &mut t, &mut word, &mut title, in_title, hidden_depth > 0, &mut words, push);
            }
        }
    }
    push(&mut t, &mut word, hidden_depth > 0, &mut words);
    t.title = title.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase());
    t
}

/// One character of text.
#[allow(clippy::too_many_arguments)]
fn feed(
    c: char,
    t: &mut Text,
    word: &mut String,
    title: &mut Option<String>,
    in_title: bool,
    hidden: bool,
    words: &mut usize,
    push: impl Fn(&mut Text, &mut String, bool, &mut usize),
) {
    if in_title {
        if let Some(s) = title.as_mut().filter(|s| s.len() < 1024) {
            s.push(c);
        }
    }
    // Zero-width characters split nothing: spammers put them inside words.
    if matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}' | '\u{ad}') {
        return;
    }
    if c.is_alphanumeric() || is_mark(c) {
        if word.len() < 256 {
            word.push(c);
        }
    } else {
        push(t, word, hidden, words);
    }
}

/// True when `phrase` (words, in the form of `words`) occurs in `words` in order.
pub fn contains(words: &[String], phrase: &[String]) -> bool {
    !phrase.is_empty() && words.windows(phrase.len()).any(|w| w == phrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn nfc_nfd_and_no_diacritics_read_alike() {
        let nfc = read("Nhà cái uy tín".as_bytes());
        let nfd = read("Nha\u{300} ca\u{301}i uy ti\u{301}n".as_bytes());
        assert_eq!(nfc.exact, nfd.exact);
        assert_eq!(nfc.folded, w("nha cai uy tin"));
        assert_eq!(read(b"NHA CAI uy tin").folded, nfc.folded);
        // Marks in another order (dot below before circumflex or after) are one letter.
        assert_eq!(exact("\u{1ec7}"), exact("e\u{302}\u{323}"));
        assert_eq!(folded("Đánh bạc"), "danh bac");
    }

    #[test]
    fn entities_tags_and_hidden_text() {
        let t = read(b"<p>Nh&agrave; c&#225;i <b>t&#xE0;i</b> x<span>\xe1\xbb\x89</span>u</p><div style=\"display: none\">kubet jun88</div><p>tin t\xe1\xbb\xa9c</p>");
        assert_eq!(t.folded, w("nha cai tai xiu tin tuc"));
        assert_eq!(t.hidden, w("kubet jun88"));
        let t = read(b"<script>var casino = 1;</script><title> Trang  Chu </title><p hidden>sunwin</p>ok");
        assert_eq!(
            (t.folded.clone(), t.hidden.clone(), t.title.as_deref()),
            (w("trang chu ok"), w("sunwin"), Some("trang chu"))
        );
        assert!(contains(&t.hidden, &w("sunwin")));
        // Zero-width characters inside a word join it.
        assert_eq!(read("ca\u{200b}sino".as_bytes()).folded, w("casino"));
    }

    #[test]
    fn bounded_on_hostile_pages() {
        let many = "a ".repeat(MAX_WORDS + 10);
        assert_eq!(read(many.as_bytes()).folded.len(), MAX_WORDS);
        let deep = "<div>".repeat(100_000);
        let _ = read(deep.as_bytes());
        let _ = read(b"<<<&&&;&#xffffffff;&#99999999999;<title>");
        let long = "x".repeat(1 << 20);
        assert_eq!(read(long.as_bytes()).folded[0].len(), 256);
    }
}
