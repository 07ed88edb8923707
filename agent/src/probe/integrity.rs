//! Integrity of a public service beyond its page (defacement is in
//! `deface.rs`): a certificate that stops being trusted or is replaced by
//! one from another issuer (an intercepting proxy, a hijacked domain that
//! got itself a certificate), a DNS answer with an address outside the
//! expected set (a hijacked record). Each becomes a security event with the
//! evidence when it starts or changes; the probe's metrics carry the state
//! in between, so a long outage is one event, not one per round.

use std::collections::{BTreeMap, BTreeSet};

use tierwatch_protocol::{Event, Severity};

use super::tls::{TlsFacts, VerifyFailure};

fn event(kind: &str, severity: Severity, now_ms: i64, attrs: Vec<(&str, String)>) -> Event {
    Event {
        kind: kind.into(),
        severity: severity as i32,
        timestamp_ms: now_ms,
        attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
    }
}

/// What one target's certificate looked like when last judged.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    fingerprint: String,
    issuer: Option<String>,
    /// Why it was not trusted; `None` when it was.
    failure: Option<&'static str>,
}

/// The certificate of one TLS-speaking target, round after round.
#[derive(Debug, Default)]
pub struct CertWatch {
    last: Option<Seen>,
}

impl CertWatch {
    /// Judges the certificate `target` presented; an event when it became
    /// untrusted (or untrusted for another reason, or another untrusted
    /// one), or a trusted one was replaced by one from another issuer.
    pub fn check(&mut self, facts: &TlsFacts, target: &str, now_ms: i64) -> Option<Event> {
        let failure = match &facts.verify {
            Err((why, _)) => Some(why.as_str()),
            Ok(()) if !facts.host_match => Some(VerifyFailure::WrongHost.as_str()),
            Ok(()) => None,
        };
        let now = Seen { fingerprint: facts.leaf_sha256.clone(), issuer: facts.leaf_issuer.clone(), failure };
        let previous = self.last.replace(now.clone());
        let issuer = now.issuer.clone().unwrap_or_default();
        let mut attrs = vec![
            ("src", target.to_string()),
            ("target", target.to_string()),
            ("fingerprint", now.fingerprint.clone()),
            ("issuer", issuer),
        ];
        if let Some(p) = &previous {
            if p.fingerprint != now.fingerprint {
                attrs.push(("previous_fingerprint", p.fingerprint.clone()));
                attrs.push(("previous_issuer", p.issuer.clone().unwrap_or_default()));
            }
        }
        match (failure, &previous) {
            (Some(why), p) => {
                if p.as_ref().is_some_and(|p| p.failure == Some(why) && p.fingerprint == now.fingerprint) {
                    return None;
                }
                // Expiry has its own rules (14 and 3 days ahead); a certificate
                // for another name, from an unknown issuer or not valid yet is
                // what an interception looks like.
                let severity = if why == "expired" { Severity::Info } else { Severity::Critical };
                let detail = match &facts.verify {
                    Err((_, words)) => words.clone(),
                    Ok(()) => "the certificate is not valid for this host name".into(),
                };
                attrs.push(("why", why.to_string()));
                attrs.push(("detail", detail.chars().take(300).collect()));
                Some(event("certificate_invalid", severity, now_ms, attrs))
            }
            (None, Some(p)) if p.failure.is_none() && p.fingerprint != now.fingerprint => {
                // Renewal by the same issuer is routine and listed; another
                // issuer is worth a look.
                let (kind, severity) = if p.issuer == now.issuer {
                    ("certificate_renewed", Severity::Info)
                } else {
                    ("certificate_changed", Severity::Warning)
                };
                Some(event(kind, severity, now_ms, attrs))
            }
            _ => None,
        }
    }
}

/// The answers of one DNS target, round after round.
#[derive(Debug, Default)]
pub struct DnsWatch {
    /// The unexpected answer set last reported, while it lasts.
    reported: Option<BTreeSet<String>>,
}

impl DnsWatch {
    /// Judges a successful (NOERROR) answer against the expected set: an
    /// event when an answer outside it appears, or the answers change again.
    /// Missing answers alone are an outage, not tampering: the metrics have it.
    pub fn check(
        &mut self,
        answers: &BTreeSet<String>,
        expected: &BTreeSet<String>,
        target: &str,
        query: &str,
        server: &str,
        now_ms: i64,
    ) -> Option<Event> {
        let unexpected: Vec<&str> = answers.difference(expected).map(String::as_str).collect();
        if unexpected.is_empty() {
            self.reported = None;
            return None;
        }
        if self.reported.as_ref() == Some(answers) {
            return None;
        }
        self.reported = Some(answers.clone());
        let join = |s: &BTreeSet<String>| s.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        Some(event(
            "dns_mismatch",
            Severity::Critical,
            now_ms,
            vec![
                ("src", target.to_string()),
                ("target", target.to_string()),
                ("query", query.to_string()),
                ("server", server.to_string()),
                ("answers", join(answers)),
                ("expected", join(expected)),
                ("unexpected", unexpected.join(",")),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts(fp: &str, issuer: &str, verify: Result<(), VerifyFailure>, host_match: bool) -> TlsFacts {
        TlsFacts {
            verify: verify.map_err(|w| (w, format!("invalid peer certificate: {}", w.as_str()))),
            host_match,
            leaf_not_after: None,
            chain_not_after: None,
            version: Some("TLSv1.3"),
            handshake: Duration::from_millis(3),
            leaf_sha256: fp.into(),
            leaf_issuer: Some(issuer.into()),
        }
    }

    fn kind(e: Option<Event>) -> Option<(String, i32)> {
        e.map(|e| (e.kind, e.severity))
    }

    #[test]
    fn certificates_untrusted_replaced_and_renewed() {
        let mut w = CertWatch::default();
        let ca = "CN=Tinh An Giang CA";
        assert!(
            w.check(&facts("aa", ca, Ok(()), true), "portal", 0).is_none(),
            "the first trusted one is the baseline"
        );
        assert!(w.check(&facts("aa", ca, Ok(()), true), "portal", 1).is_none());
        // An intercepting proxy: unknown issuer, critical, with the evidence.
        let e = w.check(&facts("ee", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 2).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("certificate_invalid", Severity::Critical as i32));
        assert_eq!(e.attributes["why"], "unknown_issuer");
        assert_eq!((e.attributes["issuer"].as_str(), e.attributes["previous_issuer"].as_str()), ("CN=Evil", ca));
        assert_eq!(e.attributes["previous_fingerprint"], "aa");
        assert!(w.check(&facts("ee", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 3).is_none());
        // Another untrusted certificate is said again.
        let again = w.check(&facts("ff", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 4);
        assert_eq!(kind(again), Some(("certificate_invalid".into(), 3)));
        // Trusted again, then renewed by the same CA: listed; another CA: a warning.
        assert!(w.check(&facts("aa", ca, Ok(()), true), "portal", 5).is_none());
        assert_eq!(kind(w.check(&facts("bb", ca, Ok(()), true), "portal", 6)), Some(("certificate_renewed".into(), 1)));
        let other = w.check(&facts("cc", "CN=Other CA", Ok(()), true), "portal", 7);
        assert_eq!(kind(other), Some(("certificate_changed".into(), 2)));
        // A chain that verifies but names another host; an expired one is only listed.
        assert_eq!(
            kind(w.check(&facts("cc", "CN=Other CA", Ok(()), false), "portal", 8)),
            Some(("certificate_invalid".into(), 3))
        );
        let mut w = CertWatch::default();
        let expired = w.check(&facts("aa", ca, Err(VerifyFailure::Expired), true), "portal", 0).unwrap();
        assert_eq!((expired.severity, expired.attributes["why"].as_str()), (Severity::Info as i32, "expired"));
    }

    #[test]
    fn dns_answers_outside_the_expected_set() {
        let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<String>>();
        let expected = set(&["10.1.0.80", "10.1.0.81"]);
        let mut w = DnsWatch::default();
        assert!(
            w.check(&set(&["10.1.0.80"]), &expected, "dns", "portal", "10.1.0.53", 0).is_none(),
            "a subset is an outage"
        );
        let e = w.check(&set(&["10.1.0.80", "203.0.113.66"]), &expected, "dns", "portal", "10.1.0.53", 1).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("dns_mismatch", Severity::Critical as i32));
        assert_eq!(e.attributes["unexpected"], "203.0.113.66");
        assert_eq!(e.attributes["answers"], "10.1.0.80,203.0.113.66");
        assert_eq!(e.attributes["expected"], "10.1.0.80,10.1.0.81");
        assert!(w.check(&set(&["10.1.0.80", "203.0.113.66"]), &expected, "dns", "portal", "s", 2).is_none(), "once");
        assert!(w.check(&set(&["203.0.113.67"]), &expected, "dns", "portal", "s", 3).is_some(), "changed again");
        assert!(w.check(&expected, &expected, "dns", "portal", "s", 4).is_none());
        assert!(w.check(&set(&["203.0.113.67"]), &expected, "dns", "portal", "s", 5).is_some(), "back after a fix");
    }
}
