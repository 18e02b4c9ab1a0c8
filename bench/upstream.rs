//! Upstream for the load benchmark (`bench/run.sh`): a minimal HTTP/1.1 server that
//! answers 200 with an empty body to every request and counts the POSTs it received.
//! `GET /count` returns that count as text.
//!
//! Usage: `bench-upstream [ADDR]` (default `127.0.0.1:0`); it prints the address it
//! listens on.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

static POSTS: AtomicU64 = AtomicU64::new(0);

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == Method::GET && req.uri().path() == "/count" {
        let count = POSTS.load(Ordering::Relaxed).to_string();
        return Ok(Response::new(Full::new(Bytes::from(count))));
    }
    let post = req.method() == Method::POST;
    // Read the whole body, as a real backend would, before answering.
    req.into_body().collect().await?;
    if post {
        POSTS.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}
