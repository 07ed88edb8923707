//! TCP connect: time to a completed handshake, with refused, timed out and
//! unreachable told apart.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::outcome::Outcome;
use tierwatch_protocol::catalogue;

/// How a connect attempt ended; the `result` label of `tierwatch_tcp_connect_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResult {
    Ok,
    Refused,
    Timeout,
    Unreachable,
    Error,
}

impl ConnectResult {
    /// Every outcome, so each round reports all of them (1 for the one that happened).
    pub const ALL: [ConnectResult; 5] = [
        ConnectResult::Ok,
        ConnectResult::Refused,
        ConnectResult::Timeout,
        ConnectResult::Unreachable,
        ConnectResult::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectResult::Ok => "ok",
            ConnectResult::Refused => "refused",
            ConnectResult::Timeout => "timeout",
            ConnectResult::Unreachable => "unreachable",
            ConnectResult::Error => "error",
        }
    }
}

/// Result of one connect.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub result: ConnectResult,
    pub elapsed: Duration,
    /// The OS error, when there was one.
    pub error: Option<String>,
}

fn classify(e: &std::io::Error) -> ConnectResult {
    match e.kind() {
        ErrorKind::ConnectionRefused => ConnectResult::Refused,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable | ErrorKind::AddrNotAvailable => {
            ConnectResult::Unreachable
        }
        ErrorKind::TimedOut => ConnectResult::Timeout,
        _ => ConnectResult::Error,
    }
}

/// Connects to `addr` within `timeout` and closes the connection at once.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Connect {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let elapsed = start.elapsed();
            drop(stream);
            Connect { result: ConnectResult::Ok, elapsed, error: None }
        }
        Ok(Err(e)) => Connect { result: classify(&e), elapsed: start.elapsed(), error: Some(e.to_string()) },
        Err(_) => Connect {
            result: ConnectResult::Timeout,
            elapsed: start.elapsed(),
            error: Some(format!("no answer within {timeout:?}")),
        },
    }
}

/// The TCP probe: one connect to `addr`, as series.
pub(super) async fn outcome(out: &mut Outcome, addr: SocketAddr, timeout: Duration, ts: i64) {
    let c = connect(addr, timeout).await;
    let labels: Vec<&str> = ConnectResult::ALL.iter().map(|r| r.as_str()).collect();
    out.push_state(&catalogue::TCP_RESULT, "result", &labels, c.result.as_str(), ts);
    out.note(|| format!("connect to {addr}: {} in {:.3} ms", c.result.as_str(), c.elapsed.as_secs_f64() * 1000.0));
    if c.result == ConnectResult::Ok {
        out.push(&catalogue::TCP_CONNECT, &[], c.elapsed.as_secs_f64(), ts);
        out.success = true;
    } else {
        out.error = Some(format!("{}: {}", c.result.as_str(), c.error.unwrap_or_default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_and_refused_ports_are_told_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let c = connect(open, Duration::from_secs(1)).await;
        assert_eq!(c.result, ConnectResult::Ok, "{c:?}");
        drop(listener);
        let c = connect(open, Duration::from_secs(1)).await;
        assert_eq!(c.result, ConnectResult::Refused, "{c:?}");
    }
}
