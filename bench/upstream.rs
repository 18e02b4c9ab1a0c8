//! Upstream for the load benchmark (`bench/run.sh`): a minimal HTTP/1.1 server that
//! answers 200 with an empty body to every request and counts the POSTs it received.
//! `GET /count` returns that count as text.
//!
//! Usage: `bench-upstream [ADDR] [UNIX_SOCKET]` (default `127.0.0.1:0`); it prints the
//! address it listens on. With UNIX_SOCKET it also answers there (Nginx's upstream in
//! the ceiling load of `bench/run.sh --nginx`), counting both together. With
//! `BENCH_UPSTREAM_DELAY_MS=N` in its environment, it answers each POST N ms after
//! reading it, as a backend that does some work would.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

static POSTS: AtomicU64 = AtomicU64::new(0);
/// How long to wait before answering a POST (ms; `BENCH_UPSTREAM_DELAY_MS`).
static DELAY_MS: AtomicU64 = AtomicU64::new(0);

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == Method::GET && req.uri().path() == "/count" {
        let count = POSTS.load(Ordering::Relaxed).to_string();
        return Ok(Response::new(Full::new(Bytes::from(count))));
    }
    let post = req.method() == Method::POST;
    // Read the whole body, as a real backend would, before answering.
    req.into_body().collect().await?;
    if post {
        let delay = DELAY_MS.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        POSTS.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

/// Serves one connection until the client closes it.
fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) {
    tokio::spawn(async move {
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service_fn(handle))
            .await;
    });
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let unix_path = args.next();
    if let Ok(ms) = std::env::var("BENCH_UPSTREAM_DELAY_MS") {
        let ms = ms.parse().map_err(|_| {
            std::io::Error::other(format!("BENCH_UPSTREAM_DELAY_MS={ms:?} is not a number"))
        })?;
        DELAY_MS.store(ms, Ordering::Relaxed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        if let Some(path) = unix_path {
            let _ = std::fs::remove_file(&path);
            let unix = UnixListener::bind(&path)?;
            println!("listening on unix:{path}");
            tokio::spawn(async move {
                loop {
                    if let Ok((stream, _)) = unix.accept().await {
                        serve(stream);
                    }
                }
            });
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            serve(stream);
        }
    })
}
