//! DNS probe: one query over UDP (TCP when the answer is truncated) to a
//! given server; rcode, latency, the answer set, and whether it equals the
//! expected set. The wire format is small enough to encode and parse here;
//! the parser is bounded (compression loops, lengths) for hostile answers.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use serde::{Deserialize, Serialize};
use tierwatch_protocol::catalogue;

use super::outcome::Outcome;

/// DNS record types a DNS probe asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Txt,
}

impl RecordType {
    /// The numeric type on the wire.
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Ns => 2,
            RecordType::Cname => 5,
            RecordType::Mx => 15,
            RecordType::Txt => 16,
            RecordType::Aaaa => 28,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Mx => "MX",
            RecordType::Ns => "NS",
            RecordType::Txt => "TXT",
        })
    }
}

/// Response codes by number, for labels and messages.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

/// Every rcode label the probe reports.
pub const RCODES: [&str; 7] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER"];

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    /// Answers of the asked type, as text (addresses, names without the final dot, MX as "pref name").
    pub answers: BTreeSet<String>,
}

/// Encodes a recursive query for `name`/`qtype` with id `id`.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a valid domain name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]); // IN
    Ok(q)
}

fn u16_at(m: &[u8], i: usize) -> Result<u16, String> {
    m.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "truncated message".to_string())
}

/// Reads a (possibly compressed) name at `i`; returns it and the offset after it.
fn read_name(m: &[u8], mut i: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    // A name has at most 127 labels; more jumps than that is a loop.
    for _ in 0..128 {
        let len = *m.get(i).ok_or("truncated name")? as usize;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(i + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let ptr = (u16_at(m, i)? & 0x3FFF) as usize;
                end.get_or_insert(i + 2);
                i = ptr;
            }
            l if l <= 63 => {
                let label = m.get(i + 1..i + 1 + l).ok_or("truncated label")?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                if name.len() > 255 {
                    return Err("name longer than 255 bytes".into());
                }
                i += 1 + l;
            }
            _ => return Err("bad label length".into()),
        }
    }
    Err("name compression loop".into())
}

/// Parses a response, keeping answers of type `qtype`.
pub fn parse_response(m: &[u8], qtype: u16) -> Result<Response, String> {
    if m.len() < 12 {
        return Err("response shorter than a DNS header".into());
    }
    let id = u16_at(m, 0)?;
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = read_name(m, i)?.1 + 4;
    }
    let mut answers = BTreeSet::new();
    for _ in 0..an {
        let (_, after) = read_name(m, i)?;
        let rtype = u16_at(m, after)?;
        let rdlen = u16_at(m, after + 8)? as usize;
        let start = after + 10;
        let rdata = m.get(start..start + rdlen).ok_or("truncated record")?;
        if rtype == qtype {
            let text = match rtype {
                1 if rdlen == 4 => Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string(),
                28 if rdlen == 16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(rdata);
                    Ipv6Addr::from(b).to_string()
                }
                2 | 5 => read_name(m, start)?.0,
                15 => format!("{} {}", u16_at(m, start)?, read_name(m, start + 2)?.0),
                16 => {
                    let mut s = String::new();
                    let mut j = 0;
                    while j < rdata.len() {
                        let l = rdata[j] as usize;
                        s.push_str(&String::from_utf8_lossy(rdata.get(j + 1..j + 1 + l).ok_or("truncated TXT")?));
                        j += 1 + l;
                    }
                    s
                }
                _ => return Err(format!("malformed record of type {rtype}")),
            };
            answers.insert(text);
        }
        i = start + rdlen;
    }
    Ok(Response { id, rcode: (flags & 0x000F) as u8, truncated: flags & 0x0200 != 0, answers })
}

/// The outcome of one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub response: Response,
    pub latency: Duration,
    pub over_tcp: bool,
}

/// Asks `server` for `name`/`rtype` within `timeout`.
pub async fn query(server: SocketAddr, name: &str, rtype: RecordType, timeout: Duration) -> Result<Lookup, String> {
    let id: u16 = rand::random();
    let msg = encode_query(id, name, rtype.code())?;
    let started = Instant::now();
    let work = async {
        let bind: SocketAddr = match server.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).await.map_err(|e| format!("UDP socket: {e}"))?;
        sock.connect(server).await.map_err(|e| format!("UDP connect {server}: {e}"))?;
        sock.send(&msg).await.map_err(|e| format!("sending to {server}: {e}"))?;
        let mut buf = vec![0u8; 4096];
        // Ignore stray datagrams whose id is not ours (spoofing, late answers).
        let response = loop {
            let n = sock.recv(&mut buf).await.map_err(|e| format!("receiving from {server}: {e}"))?;
            if let Ok(r) = parse_response(&buf[..n], rtype.code()) {
                if r.id == id {
                    break r;
                }
            }
        };
        if !response.truncated {
            return Ok(Lookup { response, latency: started.elapsed(), over_tcp: false });
        }
        let mut tcp = TcpStream::connect(server).await.map_err(|e| format!("TCP to {server}: {e}"))?;
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&msg);
        tcp.write_all(&framed).await.map_err(|e| format!("TCP send: {e}"))?;
        let len = tcp.read_u16().await.map_err(|e| format!("TCP read: {e}"))? as usize;
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).await.map_err(|e| format!("TCP read: {e}"))?;
        let response = parse_response(&body, rtype.code())?;
        Ok(Lookup { response, latency: started.elapsed(), over_tcp: true })
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| format!("no answer from {server} within {timeout:?}"))?
}

/// A lookup as series, against the expected answers.
pub(super) fn outcome(
    out: &mut Outcome,
    l: &Lookup,
    query: &str,
    rtype: RecordType,
    expect: Option<&std::collections::BTreeSet<String>>,
    ts: i64,
) {
    let r = &l.response;
    let rcode = rcode_name(r.rcode);
    out.push(&catalogue::DNS_LOOKUP, &[], l.latency.as_secs_f64(), ts);
    out.push_state(&catalogue::DNS_RCODE, "rcode", &RCODES, rcode, ts);
    out.push(&catalogue::DNS_ANSWERS, &[], r.answers.len() as f64, ts);
    let answers: Vec<&str> = r.answers.iter().map(String::as_str).collect();
    out.note(|| {
        format!(
            "{query} {rtype}: {rcode} in {:.3} ms{}: [{}]",
            l.latency.as_secs_f64() * 1000.0,
            if l.over_tcp { " (over TCP)" } else { "" },
            answers.join(", ")
        )
    });
    let matched = expect.map(|e| e == &r.answers);
    if let Some(m) = matched {
        out.push(&catalogue::DNS_MATCH, &[], m as u8 as f64, ts);
    }
    if r.rcode != 0 {
        out.error = Some(format!("{query} {rtype}: {rcode}"));
    } else if matched == Some(false) {
        let want: Vec<&str> = expect.map(|e| e.iter().map(String::as_str).collect()).unwrap_or_default();
        out.error = Some(format!("answers [{}] differ from the expected [{}]", answers.join(", "), want.join(", ")));
    } else {
        out.success = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A response to `encode_query(7, "portal.lab", A)` with two A records,
    /// the second owner name compressed to the question.
    fn response() -> Vec<u8> {
        let mut m = encode_query(7, "portal.lab", 1).unwrap();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2; // ANCOUNT
        for last in [10u8, 11] {
            m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, last]);
        }
        m
    }

    #[test]
    fn parses_answers_with_compression() {
        let r = parse_response(&response(), 1).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.rcode, 0);
        let want: BTreeSet<String> = ["10.0.0.10", "10.0.0.11"].iter().map(|s| s.to_string()).collect();
        assert_eq!(r.answers, want);
    }

    #[test]
    fn compression_loops_and_truncation_are_errors() {
        let mut m = response();
        m[12 + 12] = 0xC0; // question name points at itself
        let n = m.len();
        let _ = parse_response(&m, 1);
        assert!(parse_response(&m[..n - 3], 1).is_err());
        let mut looped = encode_query(1, "a", 1).unwrap();
        looped[2] = 0x80;
        looped[12] = 0xC0;
        looped[13] = 12;
        assert!(parse_response(&looped, 1).unwrap_err().contains("loop"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), qtype in prop_oneof![Just(1u16), Just(5), Just(15), Just(16), Just(28)]) {
            let _ = parse_response(&bytes, qtype);
        }

        #[test]
        fn mutated_responses_never_panic(i in 0usize..44, b in any::<u8>()) {
            let mut m = response();
            let j = i % m.len();
            m[j] = b;
            let _ = parse_response(&m, 1);
        }
    }
}
