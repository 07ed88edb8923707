//! Sends one receiver's queue, oldest first, per the remote write 1.0 spec:
//! protobuf `WriteRequest`, snappy block compression, the version header;
//! 5xx, 429 and network errors are retried with backoff (honouring
//! `Retry-After`), other 4xx are dropped (retrying cannot succeed).
//! Delivery to the receiver is at least once: a request cut by a restart is
//! sent again, and a TSDB ignores a sample identical to one it has.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, StatusCode};
use rusqlite::Connection;
use tierwatch_runtime::backoff::Backoff;
use tierwatch_runtime::http_client::HttpConn;
use tokio_util::sync::CancellationToken;

use super::queue::{self, QueueState, Row};
use super::RemoteWrite;
use crate::metrics::Metrics;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors preparing a sender.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("remote_write {name}: reading {source}")]
    Secret { name: String, source: tierwatch_runtime::secret::SecretError },
    #[error("remote_write {name}: {reason}")]
    Other { name: String, reason: String },
}

/// Everything a request needs, prepared once.
pub struct Prepared {
    remote: RemoteWrite,
    conn: HttpConn,
    auth: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn secret(name: &str, path: &std::path::Path) -> Result<String, SenderError> {
    tierwatch_runtime::secret::from_file(path).map_err(|source| SenderError::Secret { name: name.to_string(), source })
}

impl Prepared {
    /// Reads secrets and builds the TLS client of `remote`.
    pub fn new(remote: RemoteWrite) -> Result<Prepared, SenderError> {
        let name = remote.name.clone();
        let other = |reason: String| SenderError::Other { name: name.clone(), reason };
        let tls = if remote.https {
            Some(crate::outbound::client_tls(&remote.host, remote.ca.as_deref()).map_err(other)?)
        } else {
            None
        };
        let auth = if let Some(f) = &remote.bearer_token_file {
            Some(format!("Bearer {}", secret(&name, f)?))
        } else if let Some(b) = &remote.basic_auth {
            let pass = secret(&name, &b.password_file)?;
            Some(format!("Basic {}", base64(format!("{}:{pass}", b.username).as_bytes())))
        } else {
            None
        };
        let auth = auth
            .map(|a| {
                HeaderValue::from_str(&a)
                    .map_err(|_| other("credentials contain characters not allowed in a header".into()))
            })
            .transpose()?;
        let mut headers = Vec::new();
        for (k, v) in &remote.headers {
            let k = HeaderName::from_bytes(k.as_bytes()).map_err(|e| other(format!("header {k}: {e}")))?;
            let v = HeaderValue::from_str(v).map_err(|e| other(format!("header {k}: {e}")))?;
            headers.push((k, v));
        }
        let conn = HttpConn::new(remote.host.clone(), remote.port, tls);
        Ok(Prepared { remote, conn, auth, headers })
    }

    fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::post(self.remote.path.as_str())
            .header(HOST, self.conn.authority())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(USER_AGENT, concat!("tierwatch-collector/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req.body(Full::new(body)).map_err(|e| format!("building request: {e}"))
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How one send ended.
enum Sent {
    Ok,
    /// Refused for good (4xx other than 429).
    Dropped(StatusCode, String),
    /// Worth retrying, after at least this long.
    Retry(String, Option<Duration>),
}

async fn send_once(p: &mut Prepared, body: Bytes, metrics: &Metrics) -> Sent {
    let req = match p.request(body) {
        Ok(r) => r,
        Err(e) => return Sent::Dropped(StatusCode::BAD_REQUEST, e),
    };
    let started = Instant::now();
    let result = tokio::time::timeout(p.remote.timeout, p.conn.send(req)).await;
    metrics.remote_write_send_seconds(&p.remote.name, started.elapsed().as_secs_f64());
    let reply = match result {
        Err(_) => {
            p.conn.reset();
            metrics.remote_write_request(&p.remote.name, "timeout");
            return Sent::Retry(format!("no response within {:?}", p.remote.timeout), None);
        }
        Ok(Err(e)) => {
            metrics.remote_write_request(&p.remote.name, "error");
            return Sent::Retry(e, None);
        }
        Ok(Ok(r)) => r,
    };
    metrics.remote_write_request(&p.remote.name, reply.status.as_str());
    let text = String::from_utf8_lossy(&reply.body).trim().chars().take(500).collect::<String>();
    if reply.status.is_success() {
        Sent::Ok
    } else if reply.status.is_server_error() || reply.status == StatusCode::TOO_MANY_REQUESTS {
        let after = reply
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        Sent::Retry(format!("{}: {text}", reply.status), after)
    } else {
        Sent::Dropped(reply.status, text)
    }
}

async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Sends the queue of `p` until `token` is cancelled; what is unsent stays queued.
pub async fn run(
    mut p: Prepared,
    conn: Connection,
    state: Arc<QueueState>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let conn = Arc::new(Mutex::new(conn));
    let name = p.remote.name.clone();
    let max = p.remote.max_samples_per_send;
    tracing::info!(remote = %name, url = %p.remote.url, queued_rows = state.rows.load(Ordering::Relaxed), "remote_write sender started");
    loop {
        metrics.remote_write_queue(&name, state.bytes.load(Ordering::Relaxed), state.rows.load(Ordering::Relaxed));
        let n = name.clone();
        let rows: Vec<Row> = match blocking(&conn, move |c| queue::peek(c, &n, max)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(remote = %name, error = %e, "remote_write: reading the queue failed");
                if tierwatch_runtime::shutdown::sleep_or_cancelled(MAX_BACKOFF, &token).await {
                    return;
                }
                continue;
            }
        };
        if rows.is_empty() {
            tokio::select! {
                _ = state.added.notified() => continue,
                // Rows written by a previous run are found by polling too.
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = token.cancelled() => return,
            }
        }
        let samples: u64 = rows.iter().map(|r| r.samples).sum();
        let mut raw = Vec::with_capacity(rows.iter().map(|r| r.body.len()).sum());
        for r in &rows {
            raw.extend_from_slice(&r.body);
        }
        let body = match snap::raw::Encoder::new().compress_vec(&raw) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(remote = %name, error = %e, "remote_write: snappy compression failed; rows dropped");
                metrics.remote_write_samples(&name, "dropped", samples);
                let _ = blocking(&conn, {
                    let s = state.clone();
                    move |c| queue::remove(c, &rows, &s)
                })
                .await;
                continue;
            }
        };
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let outcome = loop {
            let sent = tokio::select! {
                s = send_once(&mut p, body.clone(), &metrics) => s,
                _ = token.cancelled() => return,
            };
            match sent {
                Sent::Retry(reason, after) => {
                    metrics.remote_write_samples(&name, "retried", samples);
                    let wait = match after {
                        Some(after) => {
                            backoff.failed_without_waiting();
                            after
                        }
                        None => backoff.next_wait(),
                    };
                    tracing::warn!(remote = %name, samples, error = %reason, retry_in_ms = wait.as_millis() as u64, "remote_write failed");
                    if tierwatch_runtime::shutdown::sleep_or_cancelled(wait, &token).await {
                        return;
                    }
                }
                other => break other,
            }
        };
        match outcome {
            Sent::Ok => {
                metrics.remote_write_samples(&name, "sent", samples);
                metrics.remote_write_success(&name);
                let oldest = rows.first().map_or(0, |r| r.created_ms);
                tracing::debug!(remote = %name, rows = rows.len(), samples, oldest_ms = oldest, "remote_write sent");
            }
            Sent::Dropped(status, text) => {
                metrics.remote_write_samples(&name, "dropped", samples);
                tracing::error!(remote = %name, samples, status = status.as_u16(), response = %text, "remote_write refused the samples; dropped");
            }
            Sent::Retry(..) => {}
        }
        let s = state.clone();
        if let Err(e) = blocking(&conn, move |c| queue::remove(c, &rows, &s)).await {
            tracing::error!(remote = %name, error = %e, "remote_write: removing sent rows failed; they will be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pa55"), "dXNlcjpwYTU1");
    }
}
