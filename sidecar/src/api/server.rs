//! The HTTP/1.1 server loop: one task per connection, a deadline for request headers, and a
//! graceful shutdown that lets in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long the accept loop pauses after an error such as EMFILE (too many open files), as
/// axum's own loop does, so that a full file table does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` turns true. Then the listener is closed, idle
/// connections are closed, and requests in flight are answered (with `Connection: close`)
/// before this returns.
///
/// `header_timeout` bounds how long a connection may keep the server waiting: a new connection
/// is closed if it sends nothing for that long, a request head must be complete within that
/// long of the server starting to read it (however steadily bytes trickle in: slowloris), and
/// a keep-alive connection is closed after that long without a new request.
///
/// Until a new connection sends its first byte it holds only its socket, not yet any HTTP
/// state or buffers, so that many idle connections cost little memory.
pub async fn serve(
    listener: TcpListener,
    app: super::Gate,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let http = Arc::new(http);
    // Every connection task holds a receiver; the loop waits for all of them to be dropped.
    let (done_tx, done_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The tail of an answer goes out at once, not held back by Nagle's
                    // algorithm until the client acknowledges the rest (Go's servers, daprd's
                    // among them, set this too).
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) if connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}; pausing for {ACCEPT_ERROR_PAUSE:?}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let (app, http) = (app.clone(), http.clone());
        let mut stop = stop.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let _done = done;
            let mut first_byte = [0u8; 1];
            // `biased`: a request that has already arrived is served even when the stop
            // signal comes at the same moment (then with `Connection: close`).
            tokio::select! {
                biased;
                first = tokio::time::timeout(header_timeout, stream.peek(&mut first_byte)) => {
                    // Nothing within the timeout, the client closed, or an error.
                    if !matches!(first, Ok(Ok(1..))) {
                        return;
                    }
                }
                () = stopped(&mut stop) => return,
            }
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                app.handle(req.map(Body::new))
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // `biased`: on stop, the connection reads a request head already received before
            // it is told to shut down, so that request is answered rather than dropped.
            tokio::select! {
                biased;
                result = conn.as_mut() => log_connection_end(result),
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    log_connection_end(conn.await);
                }
            }
        });
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!("connection closed: {e}");
    }
}

fn connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
