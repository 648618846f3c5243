//! Serving gRPC (HTTP/2 only) on a stream of accepted connections.
//!
//! tonic's own server is not used because it cannot turn off hyper's `date` response header,
//! which hyper takes from the system clock. Its bytes change with the wall-clock second, so in
//! the simulator the same seed produced different network traffic (frame sizes, and with them
//! turmoil's random draws) depending on when it ran. gRPC needs no `date` header.
//!
//! What tonic's server did and this loop keeps: no limit on concurrent streams per connection
//! (hyper alone allows 200, and one SDK client multiplexes all its long polls on one
//! connection), and a call ends with `DEADLINE_EXCEEDED` once the client's `grpc-timeout` passes,
//! even when the client's reset never arrives (a partition).

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tonic::codegen::http;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::server::Incoming;

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(5);
/// Longest pause after failed accepts.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves `routes` on every connection from `incoming` until `shutdown` resolves, then asks each
/// connection to finish its calls and waits for them.
pub async fn serve(routes: Routes, incoming: Incoming, shutdown: impl Future<Output = ()>) {
    let mut builder = Builder::new(TokioExecutor::new()).http2_only();
    builder.http2().timer(TokioTimer::new()).auto_date_header(false).max_concurrent_streams(None);
    let routes = routes.prepare();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut incoming = incoming;
    let mut shutdown = pin!(shutdown);
    let mut accept_backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let conn = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            c = incoming.next() => c,
        };
        let conn = match conn {
            None => break,
            Some(Err(e)) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                tracing::warn!(error = %e, backoff = ?accept_backoff, "could not accept a connection; backing off");
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(accept_backoff) => {}
                }
                accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Some(Ok(c)) => {
                accept_backoff = ACCEPT_BACKOFF_MIN;
                c
            }
        };
        let routes = routes.clone();
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let timeout = grpc_timeout(req.headers());
            let call = routes.clone().oneshot(req.map(tonic::body::Body::new));
            async move {
                match timeout {
                    None => call.await,
                    Some(t) => match tokio::time::timeout(t, call).await {
                        Ok(answer) => answer,
                        Err(_) => Ok(tonic::Status::deadline_exceeded("the call's grpc-timeout passed").into_http()),
                    },
                }
            }
        });
        let (builder, svc, mut stop) = (builder.clone(), TowerToHyperService::new(svc), stop_rx.clone());
        tokio::spawn(async move {
            let mut conn = pin!(builder.serve_connection(TokioIo::new(conn), svc));
            let result = tokio::select! {
                biased;
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
}

/// The client's deadline from the `grpc-timeout` header ("<at most 8 digits><H|M|S|m|u|n>");
/// `None` when absent or malformed (the call then runs under the server's own bounds).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok().filter(|v| v.is_ascii())?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_instead_of_spinning() {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulls = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = pulls.clone();
        let incoming: Incoming = futures::stream::repeat_with(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Err(std::io::Error::other("too many open files"))
        })
        .boxed();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(Routes::default(), incoming, async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let _ = stop_tx.send(());
        server.await.unwrap();
        let n = pulls.load(Ordering::Relaxed);
        // 5 ms doubling to 1 s: about a dozen tries in 5 s, where a spin would make millions.
        assert!(n < 20, "{n} accepts tried in 5 s");
        assert!(n >= 5, "it kept trying ({n})");
    }

    fn timeout_of(v: &str) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", http::HeaderValue::from_str(v).ok()?);
        grpc_timeout(&h)
    }

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        assert_eq!(timeout_of("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout_of("70000m"), Some(Duration::from_secs(70)));
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S", "1.5S", "é"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
