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

/// The most header bytes (names, values and their separators) a request may send; more is a
/// 431 in the API's error shape (`auth::header_limits`).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most headers a request may send.
pub const MAX_HEADERS: usize = 100;
/// What hyper itself reads before it gives up with a bare 431 and no body: far enough above the
/// limits above that a request over them still reaches the router and gets a JSON answer.
const HYPER_HEADER_BUFFER: usize = 1024 * 1024;
const HYPER_MAX_HEADERS: usize = 4 * MAX_HEADERS;

/// Serve `app` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) -> std::io::Error {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HYPER_HEADER_BUFFER)
        .max_headers(HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout))
        .max_header_list_size(HYPER_HEADER_BUFFER as u32);
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
