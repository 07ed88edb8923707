//! The `http[s]://host[:port][/path]` URLs tierwatch talks to: collector
//! endpoints, probed pages, webhooks, remote_write, Alertmanager, the
//! collector's own API. One parser, so every config key reports the same
//! mistakes the same way.

/// A URL split for [`crate::http_client::HttpConn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub https: bool,
    /// The host, IPv6 without its brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl HttpUrl {
    /// `host:port`, IPv6 in brackets: for a `Host` header or a connect.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True when the URL names no path beyond `/` (a server, not a resource).
    pub fn is_root(&self) -> bool {
        self.path == "/"
    }
}

/// Parses `url`; without a port, `default_port`, or else 443 for https and 80 for http.
pub fn parse(url: &str, default_port: Option<u16>) -> Result<HttpUrl, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    // `Uri::port_u16` is `None` for a port that does not fit: read it here,
    // so `:99999` is an error and not the default port.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = hostport.rsplit_once(']').map_or(hostport, |(_, rest)| rest);
    let port = match after_host.rsplit_once(':') {
        Some((_, p)) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("{url:?}: bad port {p:?}"))?,
        None => default_port.unwrap_or(if https { 443 } else { 80 }),
    };
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    Ok(HttpUrl { https, host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            parse("http://127.0.0.1:9090/api/v1/write?x=1", None).unwrap(),
            HttpUrl { https: false, host: "127.0.0.1".into(), port: 9090, path: "/api/v1/write?x=1".into() }
        );
        assert_eq!(parse("https://vm.example/insert/0/prometheus", None).unwrap().port, 443);
        assert_eq!(parse("http://vm.example", None).unwrap().port, 80);
        assert_eq!(parse("https://c.example", Some(7443)).unwrap().port, 7443);
        let v6 = parse("https://[::1]:7443/", None).unwrap();
        assert_eq!((v6.host.as_str(), v6.authority(), v6.is_root()), ("::1", "[::1]:7443".to_string(), true));
        assert_eq!(parse("http://h", None).unwrap().path, "/");
        for bad in ["ftp://x", "http://h:0/", "http://", "h:80", "https://h:99999/", "http://[::1/", "http://h:/"] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever the text, an answer and no panic; a parsed URL names a host and a port.
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            if let Ok(u) = parse(&s, None) {
                proptest::prop_assert!(!u.host.is_empty() && u.port != 0 && u.path.starts_with('/'));
            }
        }
    }
}
