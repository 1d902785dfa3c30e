//! The accept loop, with bounds on what one client can hold: a request's headers (and a kept-alive
//! connection's wait for its next request) must arrive within the header-read timeout, else hyper
//! closes the connection; at most `max_connections` are open, beyond which new ones wait in the
//! kernel's backlog until one closes (so `/health` answers again as soon as a slot frees). On the stop
//! signal it stops accepting, closes idle connections and lets running requests finish. With TLS,
//! the handshake must also finish within the header-read timeout.
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// A request's headers, and an idle kept-alive connection's next request, must arrive within this.
    pub header_read_timeout: Duration,
    /// Connections open at once at most; more wait to be accepted.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` turns true, then waits for the open connections to end
/// (the caller bounds that wait with its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<Arc<super::tls::Tls>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // A free slot first: while every slot is taken, new connections stay in the backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        // The peer address travels with each request (the audit trail records it).
        let with_peer = app
            .clone()
            .layer(axum::Extension(super::audit_trail::ClientAddr(peer)));
        let service = TowerToHyperService::new(with_peer);
        match &tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "inhaus::http", %peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(target: "inhaus::http", %peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return, // the handshake took too long
                    };
                    let conn =
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "inhaus::http", %peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
        }
    }
    // No new connections; idle ones close now, busy ones after their running request.
    drop(listener);
    graceful.shutdown().await;
}

/// Resolves once the stop signal is given (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A failed accept: a connection that went away before it was accepted is nothing; anything else
/// (such as running out of file descriptors) is logged and retried after a pause.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
