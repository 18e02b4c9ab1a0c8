//! Load generator for `bench/run.sh`: a closed-loop HTTP/1.1 client that, unlike wrk,
//! speaks HTTPS with a client certificate (mutual TLS), so the shipped Nginx site can be
//! loaded as it runs in production.
//!
//! Each of `--connections` connections (keep-alive, one TLS session each) POSTs a
//! distinct JSON body built like `bench/sign.lua`'s (`"id"` is `<connection>-<counter>`,
//! padded to `--body-bytes`), signed as Meta signs webhooks (`X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body>`, keyed with `BENCH_APP_SECRET`), waits for the
//! answer and records its latency, then sends the next one. It stops after `--duration`
//! (requests in flight are finished and counted) or, with `--requests N`, once N
//! requests were sent. A connection that fails is counted as a connect, read, write or
//! timeout error and opened again.
//!
//! At the end it prints, on stdout, one line in the format of `bench/sign.lua`'s done():
//!   WRKSTATS requests=N duration_us=N status=N connect=N read=N write=N timeout=N
//!            p50_us=N p90_us=N p99_us=N max_us=N
//! where status counts answers with a status of 400 or more.
//!
//! Usage: `BENCH_APP_SECRET=s bench-load [-c 64] [-d 10s] [--body-bytes 1024]
//!         [--cert client.pem --key client.key] [--cacert ca.pem] URL`
//! (`cargo run --release --example bench-load -- --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use xhubd::webhook::signature;

#[derive(Parser)]
#[command(
    name = "bench-load",
    about = "Closed-loop load of signed webhook POSTs (HTTP or HTTPS with a client certificate)"
)]
struct Args {
    /// http://HOST:PORT/PATH or https://HOST:PORT/PATH
    url: String,
    /// Connections kept open, each with one request in flight
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// How long to load (10, 10s, 2m, 1h); with --requests, an upper bound
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop once this many requests were sent (over all connections)
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Size of each request body in bytes (the JSON is padded up to it)
    #[arg(long, env = "BODY_BYTES", default_value_t = 1024)]
    body_bytes: usize,
    /// Key of the HMAC that signs every body
    #[arg(long, env = "BENCH_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// Client certificate chain (PEM) presented to the server
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for the server's certificate (default: the system's)
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// A request unanswered after this long counts as a timeout (its connection is
    /// opened again)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Worker threads of the runtime
    #[arg(short, long, default_value_t = 2)]
    threads: usize,
}

/// A duration as wrk takes it: a bare number of seconds, or one with a unit (`2s`,
/// `5m`, `1h`, as xhubd's own options take them).
fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => xhubd::duration::parse_duration(s),
    }
}

/// Latencies in microseconds, bucketed: exact below 1024 µs, then 512 buckets per power
/// of two (at most 0.2 % off), in constant memory however long the load.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u32,
}

const EXACT: u32 = 1024;
const SUB_BUCKETS: u32 = 512;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; Self::index(u32::MAX) + 1],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u32) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let shift = (31 - v.leading_zeros()) - 9;
        let mantissa = v >> shift;
        (EXACT + (shift - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < u64::from(EXACT) {
            return i;
        }
        let j = i - u64::from(EXACT);
        let shift = j / u64::from(SUB_BUCKETS) + 1;
        let mantissa = j % u64::from(SUB_BUCKETS) + u64::from(SUB_BUCKETS);
        (mantissa << shift) + ((1 << shift) >> 1)
    }

    fn record(&mut self, micros: u32) {
        self.counts[Self::index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The smallest recorded value (to the bucket) at or below which `p` percent of the
    /// values lie.
    fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let target = ((p / 100.0 * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return Self::value(i).min(u64::from(self.max));
            }
        }
        u64::from(self.max)
    }
}

/// What one connection task counted.
struct Stats {
    requests: u64,
    status: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    latency: Histogram,
}

impl Stats {
    fn new() -> Self {
        Stats {
            requests: 0,
            status: 0,
            connect: 0,
            read: 0,
            write: 0,
            timeout: 0,
            latency: Histogram::new(),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.status += other.status;
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
        self.latency.merge(&other.latency);
    }
}

/// Shared, read-only after start, except the ticket counter of `--requests`.
struct Shared {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    host: HeaderValue,
    path: Uri,
    secret: Vec<u8>,
    body_bytes: usize,
    pad: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    limit: Option<u64>,
    tickets: AtomicU64,
}

impl Shared {
    /// Whether another request may be sent.
    fn take_ticket(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        match self.limit {
            None => true,
            Some(limit) => self.tickets.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }

    fn stopped(&self) -> bool {
        Instant::now() >= self.deadline
            || self
                .limit
                .is_some_and(|limit| self.tickets.load(Ordering::Relaxed) >= limit)
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

enum Failure {
    Read,
    Write,
}

fn classify(error: &hyper::Error) -> Failure {
    if error.is_body_write_aborted() || error.is_user() {
        return Failure::Write;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return Failure::Write;
            }
        }
        source = e.source();
    }
    Failure::Read
}

/// Sends one request and reads the whole answer; returns its status.
async fn exchange(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<u16, Failure> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| classify(&e))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| Failure::Read)?;
    }
    Ok(status)
}

/// The body for request `counter` of connection `conn`, shaped like sign.lua's. The
/// buffer's allocation is reused once the previous body has been dropped.
fn build_body(shared: &Shared, buf: &mut BytesMut, conn: usize, counter: u64) -> Bytes {
    use std::fmt::Write as _;
    buf.reserve(shared.body_bytes.max(192));
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Writing to a BytesMut cannot fail.
    let _ = write!(
        buf,
        r#"{{"object":"user","entry":[{{"id":"{conn}-{counter}","time":{time},"changed_fields":["photos"]}}],"pad":""#
    );
    let pad = shared.body_bytes.saturating_sub(buf.len() + 2);
    buf.extend_from_slice(&shared.pad[..pad.min(shared.pad.len())]);
    buf.extend_from_slice(b"\"}");
    buf.split().freeze()
}

fn build_request(shared: &Shared, body: Bytes) -> Request<Full<Bytes>> {
    let signature = signature::sign(&shared.secret, &body);
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = shared.path.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, shared.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::try_from(signature) {
        headers.insert(HeaderName::from_static("x-hub-signature-256"), value);
    }
    request
}

/// How a connection ended.
enum End {
    /// The load is over.
    Stop,
    /// Open another one.
    Reconnect,
}

/// What a connection task carries from one connection to the next.
struct Client {
    shared: Arc<Shared>,
    stats: Stats,
    conn: usize,
    counter: u64,
    buf: BytesMut,
}

impl Client {
    /// The closed loop of one connection task, until the deadline or the last ticket.
    async fn run(mut self) -> Stats {
        let shared = Arc::clone(&self.shared);
        while !shared.stopped() {
            let tcp = match TcpStream::connect(shared.addr).await {
                Ok(tcp) => tcp,
                Err(_) => {
                    self.connect_failed().await;
                    continue;
                }
            };
            // No request held back waiting for an acknowledgement (Nagle).
            let _ = tcp.set_nodelay(true);
            let end = match &shared.tls {
                Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
                    Ok(tls) => self.session(tls).await,
                    Err(_) => {
                        self.connect_failed().await;
                        continue;
                    }
                },
                None => self.session(tcp).await,
            };
            if let End::Stop = end {
                break;
            }
        }
        self.stats
    }

    async fn connect_failed(&mut self) {
        self.stats.connect += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// One HTTP/1.1 connection over `io`, driven by this task (no task of its own), until
    /// it fails or the load is over.
    async fn session<S>(&mut self, io: S) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(io)).await else {
            self.connect_failed().await;
            return End::Reconnect;
        };
        let mut conn = Box::pin(conn);
        let requests = self.requests(&mut sender);
        tokio::pin!(requests);
        tokio::select! {
            biased;
            end = &mut requests => end,
            _ = &mut conn => {
                // The connection ended (closed by the server, or an error). Dropping it
                // closes the sender's channel: the request in flight, if any, fails
                // now, and the loop sees it.
                drop(conn);
                requests.await
            }
        }
    }

    /// Sends requests one after the other on one connection.
    async fn requests(&mut self, sender: &mut Sender) -> End {
        let mut fresh = true;
        loop {
            if sender.ready().await.is_err() {
                // Closed by the server between answers (e.g. keepalive_requests): open
                // another one, an error only if it never carried a request.
                if fresh {
                    self.connect_failed().await;
                }
                return End::Reconnect;
            }
            if !self.shared.take_ticket() {
                return End::Stop;
            }
            fresh = false;
            self.counter += 1;
            let body = build_body(&self.shared, &mut self.buf, self.conn, self.counter);
            let request = build_request(&self.shared, body);
            let start = Instant::now();
            let answer = tokio::time::timeout(self.shared.timeout, exchange(sender, request)).await;
            let stats = &mut self.stats;
            match answer {
                Ok(Ok(status)) => {
                    let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                    stats.latency.record(micros);
                    stats.requests += 1;
                    if status >= 400 {
                        stats.status += 1;
                    }
                }
                Ok(Err(Failure::Read)) => {
                    stats.read += 1;
                    return End::Reconnect;
                }
                Ok(Err(Failure::Write)) => {
                    stats.write += 1;
                    return End::Reconnect;
                }
                Err(_) => {
                    stats.timeout += 1;
                    return End::Reconnect;
                }
            }
        }
    }
}

fn tls_connector(args: &Args, host: &str) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    match &args.cacert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("reading {}", path.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!("no CA certificate to trust the server with");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.threads == 0 {
        bail!("--connections and --threads must be at least 1");
    }
    if args.secret.is_empty() {
        bail!("BENCH_APP_SECRET is empty");
    }
    let url = url::Url::parse(&args.url).with_context(|| format!("URL {}", args.url))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => bail!("unsupported scheme {other} (http or https)"),
    };
    let host = url.host_str().context("URL without a host")?.to_owned();
    let port = url.port_or_known_default().context("URL without a port")?;
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let tls = if https {
        Some(tls_connector(&args, &host)?)
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let stats = runtime.block_on(async {
        let addr =
            tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
                .await?
                .next()
                .with_context(|| format!("{host} has no address"))?;
        let shared = Arc::new(Shared {
            addr,
            tls,
            host: HeaderValue::try_from(format!("{host}:{port}"))?,
            path: path.parse()?,
            secret: args.secret.as_bytes().to_vec(),
            body_bytes: args.body_bytes,
            pad: vec![b'x'; args.body_bytes],
            deadline: Instant::now() + args.duration,
            timeout: args.timeout,
            limit: args.requests,
            tickets: AtomicU64::new(0),
        });
        let start = Instant::now();
        let tasks: Vec<_> = (1..=args.connections)
            .map(|conn| {
                let client = Client {
                    shared: Arc::clone(&shared),
                    stats: Stats::new(),
                    conn,
                    counter: 0,
                    buf: BytesMut::with_capacity(args.body_bytes.max(192)),
                };
                tokio::spawn(client.run())
            })
            .collect();
        let mut total = Stats::new();
        for task in tasks {
            match task.await {
                Ok(stats) => total.merge(&stats),
                Err(e) => bail!("a connection task failed: {e}"),
            }
        }
        Ok((total, start.elapsed()))
    });
    let (total, elapsed) = stats?;
    let h = &total.latency;
    println!(
        "WRKSTATS requests={} duration_us={} status={} connect={} read={} write={} timeout={} \
         p50_us={} p90_us={} p99_us={} max_us={}",
        total.requests,
        elapsed.as_micros(),
        total.status,
        total.connect,
        total.read,
        total.write,
        total.timeout,
        h.percentile(50.0),
        h.percentile(90.0),
        h.percentile(99.0),
        h.max
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_continuous_and_close() {
        let mut previous = 0;
        for v in (0..1 << 22).chain((u32::MAX - 5_000_000)..=u32::MAX) {
            let i = Histogram::index(v);
            assert!(
                v > 1 << 22 || i == previous || i == previous + 1,
                "{v}: {i} after {previous}"
            );
            previous = i;
            let middle = Histogram::value(i) as f64;
            assert!(
                (middle - f64::from(v)).abs() <= f64::from(v) * 0.002 + 0.5,
                "{v}"
            );
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.max, 100);
    }

    #[test]
    fn durations_like_wrk() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("x").is_err());
    }
}
