//! A bare relay for the load benchmark (A-relay in `bench/run.sh --nginx`): the honest ceiling for
//! xhubd behind Nginx, with the same hops and nothing durable. It answers every POST
//! `200` as soon as its body is read, then forwards the body to one upstream over a
//! pooled keep-alive HTTP/1.1 client, from CONCURRENCY senders (xhubd's
//! `--upstream-concurrency`), taken off in the order received. Between the two, a queue of
//! QUEUE bodies: when it is full, the answer waits for room, so the relay accepts no
//! faster than it forwards (as xhubd's accepted events are all delivered by the end of
//! a load) and its memory stays bounded. No signature check, no storage, no
//! de-duplication, no retries: a body the upstream does not take is lost (and counted).
//!
//! Usage: `bench-relay UNIX_SOCKET UPSTREAM_URL [CONCURRENCY]` (default 8).
//! `GET /count` answers `<forwarded> <failed>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Mutex};

static FORWARDED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Bodies read and not yet sent.
const QUEUE: usize = 1024;

type Queue = mpsc::Sender<Bytes>;

async fn handle(
    req: Request<Incoming>,
    queue: Queue,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == Method::GET && req.uri().path() == "/count" {
        let count = format!(
            "{} {}",
            FORWARDED.load(Ordering::Relaxed),
            FAILED.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(count))));
    }
    let post = req.method() == Method::POST;
    let body = req.into_body().collect().await?.to_bytes();
    if post && queue.send(body).await.is_err() {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

/// One sender: takes the next body off the queue and POSTs it, until the queue closes.
async fn send(
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    queue: Arc<Mutex<mpsc::Receiver<Bytes>>>,
) {
    loop {
        let Some(body) = queue.lock().await.recv().await else {
            return;
        };
        let request = Request::post(upstream.clone())
            .header("content-type", "application/json")
            .body(Full::new(body));
        let sent = match request {
            Ok(request) => match client.request(request).await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    response.into_body().collect().await.is_ok() && ok
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        let counter = if sent { &FORWARDED } else { &FAILED };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bench-relay UNIX_SOCKET UPSTREAM_URL [CONCURRENCY]".into());
    };
    let upstream: Uri = upstream.parse()?;
    let concurrency: usize = args.next().map_or(Ok(8), |c| c.parse())?;
    // The same runtime as xhubd's: one worker thread per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build(connector);
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..concurrency {
            tokio::spawn(send(client.clone(), upstream.clone(), receiver.clone()));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        println!("listening on unix:{path}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: try again shortly rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let queue = queue.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, queue.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
