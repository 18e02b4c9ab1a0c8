//! The accept loop shared by the webhook and admin listeners: a connection permit
//! before each accept (backpressure), HTTP/1.1 with keep-alive and a header read
//! timeout, and a graceful shutdown bounded in time that drops no request already on
//! its way.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::listener::{Listener, Stream};
use crate::webhook::Answer;

/// At shutdown, how long a connection with no request in progress may still start one.
/// A connection accepted just before the signal (or an idle keep-alive connection Nginx
/// is just reusing) has its request on the way; closing it at once would drop it.
const LAST_REQUEST_GRACE: Duration = Duration::from_millis(250);

/// Largest read buffer of a connection (hyper's default is about 400 KiB). Headers
/// must fit in it (larger ones get 431); a body streams through it in pieces. With 64
/// connections each receiving a 300 KiB batch, hyper's own buffers grew to about 1 MiB
/// per connection.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time allowed for a request's headers (and for an idle keep-alive connection).
    pub header_timeout: Duration,
    /// Time allowed for requests in flight after shutdown begins.
    pub shutdown_timeout: Duration,
}

/// Serves `listener` with `service` until `shutdown` is cancelled, then stops
/// accepting, lets requests in flight finish (up to `shutdown_timeout`) and returns.
pub async fn serve<S, F>(
    listener: Listener,
    service: S,
    settings: ServerSettings,
    shutdown: CancellationToken,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = listener.accept() => s,
        };
        let conn = Conn {
            settings,
            shutdown: shutdown.clone(),
            permit,
        };
        match stream {
            Ok(Stream::Tcp(s)) => connections.spawn(conn.run(s, service.clone())),
            Ok(Stream::Unix(s)) => connections.spawn(conn.run(s, service.clone())),
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => debug!("all connections closed"),
        _ = tokio::time::sleep(settings.shutdown_timeout) => {
            info!(open = connections.len(), "shutdown timeout reached; closing the remaining connections");
        }
    }
}

/// One accepted connection.
struct Conn {
    settings: ServerSettings,
    shutdown: CancellationToken,
    /// Held for the connection's lifetime: one of `max_connections`.
    permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn run<IO, S, F>(self, io: IO, service: S)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        // Requests started on this connection, and those not yet answered.
        let started = Arc::new(AtomicU64::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let service = {
            let (started, active) = (started.clone(), active.clone());
            hyper::service::service_fn(move |request| {
                started.fetch_add(1, Ordering::SeqCst);
                active.fetch_add(1, Ordering::SeqCst);
                let answer = service(request);
                let active = active.clone();
                async move {
                    let answer = answer.await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(answer)
                }
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .max_buf_size(READ_BUFFER_MAX)
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = self.shutdown.cancelled() => None,
        };
        let result = match result {
            Some(r) => r,
            None => {
                if active.load(Ordering::SeqCst) == 0 {
                    // Let a request already on its way start before closing.
                    let seen = started.load(Ordering::SeqCst);
                    let grace =
                        tokio::time::sleep(LAST_REQUEST_GRACE.min(self.settings.shutdown_timeout));
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            r = conn.as_mut() => return finish(r, self.permit),
                            _ = &mut grace => break,
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                                if started.load(Ordering::SeqCst) != seen {
                                    break;
                                }
                            }
                        }
                    }
                }
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        finish(result, self.permit);
    }
}

fn finish(result: Result<(), hyper::Error>, permit: OwnedSemaphorePermit) {
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
    drop(permit);
}
