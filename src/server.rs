//! The accept loop shared by the webhook and admin listeners: a connection permit
//! before each accept (backpressure), HTTP/1.1 with keep-alive and a header read
//! timeout, and a graceful shutdown bounded in time.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::listener::{Listener, Stream};
use crate::webhook::Answer;

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
    let graceful = GracefulShutdown::new();
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
        match stream {
            Ok(Stream::Tcp(s)) => connection(s, service.clone(), settings, &graceful, permit),
            Ok(Stream::Unix(s)) => connection(s, service.clone(), settings, &graceful, permit),
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections closed"),
        _ = tokio::time::sleep(settings.shutdown_timeout) => {
            info!("shutdown timeout reached; closing the remaining connections");
        }
    }
}

fn connection<IO, S, F>(
    io: IO,
    service: S,
    settings: ServerSettings,
    graceful: &GracefulShutdown,
    permit: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answer = service(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "connection ended with an error");
        }
        drop(permit);
    });
}
