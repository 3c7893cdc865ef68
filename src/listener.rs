//! The HTTP listener of the daemon and of the standalone recorder: accepts connections up to a
//! cap, gives each request's headers and each whole request a deadline, and stops gracefully.
//!
//! `axum::serve` has none of these: a client that never finishes its headers, or trickles a
//! body a byte a minute, keeps its connection (and its task and buffers) forever, and a
//! flood of connections is accepted without limit. Here:
//! - at most `max_connections` are served at once; one more gets a short `503` written without
//!   waiting and is closed, so it costs no task and never slows the connections already served;
//! - a request's headers must arrive within `header_timeout` of the connection going idle
//!   (hyper's own header-read timer, which also closes idle keep-alive connections);
//! - its body must arrive, and the handler must answer, within `request_timeout` of the
//!   headers: past it the body read fails and the client gets `408` and a closed connection.
//!   A response that is already streaming (a log, a live follow) is not cut.
//!
//! Implementation note: HTTP/1.1 only. Browsers, the CLI (reqwest) and pony-build clients all
//! speak it over plain TCP; HTTP/2 would need its own slow-client limits.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How the listener bounds its clients; the daemon's come from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A request's headers must arrive within this (an idle keep-alive connection is closed
    /// after it too).
    pub header_timeout: Duration,
    /// A request's body must arrive and its response start within this after its headers.
    pub request_timeout: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig { header_timeout: Duration::from_secs(15), request_timeout: Duration::from_secs(60), max_connections: 1024 }
    }
}

/// Per connection, the most hyper buffers in either direction (request headers must fit).
const MAX_BUF: usize = 64 * 1024;

/// After the shutdown signal, open connections get this long to finish before they are dropped.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// (at most [`DRAIN`]). Each request carries `ConnectInfo<SocketAddr>` of its peer.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep
                    // listening, after a pause so a persistent error does not spin.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, config.max_connections);
            crate::metrics::http_connection_refused();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req| handle(app.clone(), req, peer, config.request_timeout));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            // What hyper buffers per connection, read or write (default ~400 KiB): a client that
            // does not read its stream holds at most this much of it here.
            .max_buf_size(MAX_BUF)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        debug!("connections still open after the drain time are dropped");
    }
    Ok(())
}

/// Tells a client past the cap why, without waiting on it: one non-blocking write, then close.
fn refuse(stream: TcpStream, max: usize) {
    let body = format!("{max} connections are open, the limit (limits.http_connections); try again later\n");
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(msg.as_bytes());
}

async fn handle(
    app: Router,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Response<Body>, Infallible> {
    let deadline = tokio::time::Instant::now() + timeout;
    let cut = Arc::new(AtomicBool::new(false));
    let mut req = req
        .map(|b| Body::new(DeadlineBody { inner: b, deadline: Box::pin(tokio::time::sleep_until(deadline)), timeout, cut: cut.clone() }));
    req.extensions_mut().insert(ConnectInfo(peer));
    match tokio::time::timeout_at(deadline, app.oneshot(req)).await {
        // A handler that saw its body cut answers whatever it makes of a failed read; the
        // client is told the one thing that happened.
        Ok(_) if cut.load(Ordering::SeqCst) => Ok(timed_out(timeout)),
        Ok(r) => r,
        Err(_) => Ok(timed_out(timeout)),
    }
}

fn timed_out(timeout: Duration) -> Response<Body> {
    let body = format!("the request was not received and answered within {}s (limits.http_request_timeout)\n", timeout.as_secs());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// A request body that fails once the request's deadline has passed, so a trickling client
/// cannot hold a handler that reads its body.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// Set when the deadline cut the body.
    cut: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s (limits.http_request_timeout)", .0.as_secs())]
struct BodyTimedOut(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.cut.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
