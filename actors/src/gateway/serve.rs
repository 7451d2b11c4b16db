//! The gateway's HTTP server: hyper (HTTP/1.1 and HTTP/2) around the axum router, with the
//! timeouts a server on the open network needs. A connection has `gateway.header_timeout` to send
//! a request's headers, counted from when it opened or from the end of its last response, so the
//! same limit closes kept-alive connections that sit idle; bodies have `gateway.body_timeout`
//! (read in `http.rs`). Each request learns its peer address (`ConnectInfo`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tower_service::Service;

/// Serve `app` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) -> std::io::Error {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(header_timeout));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                tracing::warn!("gateway: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return e,
        };
        let _ = tcp.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut router = router.clone();
            async move { router.call(req.map(axum::body::Body::new)).await }
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

/// Accept errors that pass (out of descriptors, a connection reset before it was accepted).
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock) || e.raw_os_error() == Some(24)
}
