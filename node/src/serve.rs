//! Serving gRPC (HTTP/2 only) on a stream of accepted connections.
//!
//! tonic's own server is not used because it cannot turn off hyper's `date` response header,
//! which hyper takes from the system clock. Its bytes change with the wall-clock second, so in
//! the simulator the same seed produced different network traffic (frame sizes, and with them
//! turmoil's random draws) depending on when it ran. gRPC needs no `date` header.

use std::future::Future;
use std::pin::pin;

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tonic::service::Routes;

use crate::server::Incoming;

/// Serves `routes` on every connection from `incoming` until `shutdown` resolves, then asks each
/// connection to finish its calls and waits for them.
pub async fn serve(routes: Routes, incoming: Incoming, shutdown: impl Future<Output = ()>) {
    let mut builder = Builder::new(TokioExecutor::new()).http2_only();
    builder.http2().timer(TokioTimer::new()).auto_date_header(false);
    let routes = routes.prepare();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut incoming = incoming;
    let mut shutdown = pin!(shutdown);
    loop {
        let conn = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            c = incoming.next() => c,
        };
        let conn = match conn {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "could not accept a connection");
                continue;
            }
            Some(Ok(c)) => c,
        };
        let (builder, svc, mut stop) = (builder.clone(), TowerToHyperService::new(routes.clone()), stop_rx.clone());
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
