//! A misbehaving upstream: a raw HTTP/1.1 server on 127.0.0.1 (keep-alive, one task per
//! connection) whose answer to each request is chosen when the request arrives, from a
//! default [`Mode`] or a script for one body (or for bodies holding a given piece), all
//! switchable while it runs. It answers a
//! status (a 3xx with a `Location`), answers slowly, hangs, or resets the connection,
//! and records every request with what it did.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The path every 3xx answer points to; a client that follows redirects asks for it.
pub const REDIRECT_PATH: &str = "/redirected";

/// What the upstream does with one request, once it has read it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once with this status; a 3xx carries `Location: <REDIRECT_PATH>`.
    Status(u16),
    /// Wait, then answer with the status.
    Slow(Duration, u16),
    /// Never answer: hold the connection until the client closes it, or until
    /// [`FaultyUpstream::release_hung`] chooses again.
    Hang,
    /// Close the connection with a TCP reset (`SO_LINGER` 0), without an answer.
    Reset,
}

/// One request as received, and what was done with it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When it had been read whole.
    pub at: Instant,
    /// The request path and query.
    pub path: String,
    /// `X-Xhubd-Event-Id`.
    pub event_id: String,
    /// `X-Xhubd-Attempt`.
    pub attempt: u32,
    pub body: Vec<u8>,
    /// The mode chosen on arrival.
    pub mode: Mode,
    /// The status answered (recorded as it is written), if any.
    pub answered: Option<u16>,
}

#[derive(Default)]
struct Rules {
    default: Option<Mode>,
    /// Per body: modes used in turn; the last one stays.
    by_body: HashMap<Vec<u8>, VecDeque<Mode>>,
    /// Per piece of a body (the first that a body holds, after `by_body`): the same.
    by_content: Vec<(Vec<u8>, VecDeque<Mode>)>,
    hits: Vec<Hit>,
}

impl Rules {
    fn choose(&mut self, body: &[u8]) -> Mode {
        let modes = match self.by_body.get_mut(body) {
            Some(modes) => Some(modes),
            None => self
                .by_content
                .iter_mut()
                .find(|(piece, _)| contains(body, piece))
                .map(|(_, modes)| modes),
        };
        match modes {
            Some(modes) if modes.len() > 1 => modes.pop_front().unwrap(),
            Some(modes) => modes[0],
            None => self.default.unwrap_or(Mode::Status(200)),
        }
    }
}

/// Whether `piece` occurs in `body`.
pub fn contains(body: &[u8], piece: &[u8]) -> bool {
    !piece.is_empty() && body.windows(piece.len()).any(|w| w == piece)
}

struct Shared {
    addr: SocketAddr,
    rules: Mutex<Rules>,
    /// Bumped by `release_hung`.
    release: watch::Sender<u64>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running server; dropping it stops it and closes every connection.
pub struct FaultyUpstream {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultyUpstream {
    /// Starts on a free port, answering every request with `default`.
    pub fn start(default: Mode) -> FaultyUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let shared = Arc::new(Shared {
            addr: listener.local_addr().unwrap(),
            rules: Mutex::new(Rules {
                default: Some(default),
                ..Rules::default()
            }),
            release: watch::channel(0).0,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        runtime.spawn(async move {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, accepting.clone()));
                }
            }
        });
        FaultyUpstream {
            shared,
            runtime: Some(runtime),
        }
    }

    /// The URL to give xhubd.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.shared.addr)
    }

    /// The mode for every later request whose body has no script.
    pub fn set_default(&self, mode: Mode) {
        self.rules().default = Some(mode);
    }

    /// Requests with exactly this body get `modes` in turn, then the last one for good.
    pub fn for_body(&self, body: &[u8], modes: &[Mode]) {
        assert!(!modes.is_empty());
        self.rules()
            .by_body
            .insert(body.to_vec(), modes.iter().copied().collect());
    }

    /// Requests whose body holds `piece` (and has no script of its own) get `modes` in
    /// turn, then the last one for good: e.g. the first two requests carrying a message
    /// id fail, whatever else the body holds (narrowed, split or batched).
    pub fn for_content(&self, piece: &[u8], modes: &[Mode]) {
        assert!(!modes.is_empty());
        self.rules()
            .by_content
            .push((piece.to_vec(), modes.iter().copied().collect()));
    }

    /// Makes every request now hanging choose its mode again (and so be answered, once
    /// the mode is no longer `Hang`).
    pub fn release_hung(&self) {
        self.shared.release.send_modify(|n| *n += 1);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.rules().hits.clone()
    }

    /// The requests that carried this event id, in order of arrival.
    pub fn hits_for(&self, event_id: &str) -> Vec<Hit> {
        self.rules()
            .hits
            .iter()
            .filter(|h| h.event_id == event_id)
            .cloned()
            .collect()
    }

    /// The event id xhubd gave the event with this body (from its first attempt).
    pub fn event_id_of(&self, body: &[u8]) -> Option<String> {
        self.rules()
            .hits
            .iter()
            .find(|h| h.body == body)
            .map(|h| h.event_id.clone())
    }

    /// Requests read but neither answered nor closed yet.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Starts counting the most requests in flight at once again, from those in flight
    /// now.
    pub fn reset_max_in_flight(&self) {
        self.shared
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().unwrap()
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut release = shared.release.subscribe();
    let mut buffer = Vec::new();
    loop {
        // Seen before the mode is chosen, so a release after that choice is never missed.
        release.borrow_and_update();
        let Some((path, headers, body)) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (index, mut mode) = {
            let mut rules = shared.rules.lock().unwrap();
            let mode = rules.choose(&body);
            rules.hits.push(Hit {
                at: Instant::now(),
                path,
                event_id: header("x-xhubd-event-id"),
                attempt: header("x-xhubd-attempt").parse().unwrap_or(0),
                body: body.clone(),
                mode,
                answered: None,
            });
            (rules.hits.len() - 1, mode)
        };
        let in_flight = InFlight::new(&shared);
        let status = loop {
            match mode {
                Mode::Status(status) => break status,
                Mode::Slow(delay, status) => {
                    tokio::time::sleep(delay).await;
                    break status;
                }
                Mode::Reset => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Mode::Hang => {
                    tokio::select! {
                        _ = wait_closed(&mut stream) => return,
                        _ = release.changed() => {
                            mode = shared.rules.lock().unwrap().choose(&body);
                        }
                    }
                }
            }
        };
        let location = if (300..400).contains(&status) {
            format!("Location: http://{}{REDIRECT_PATH}\r\n", shared.addr)
        } else {
            String::new()
        };
        let reason = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Other");
        let answer = format!("HTTP/1.1 {status} {reason}\r\n{location}Content-Length: 2\r\n\r\nok");
        // Recorded before the client can read the answer, so nothing the client does
        // next is observed ahead of it.
        shared.rules.lock().unwrap().hits[index].answered = Some(status);
        drop(in_flight);
        if stream.write_all(answer.as_bytes()).await.is_err() {
            shared.rules.lock().unwrap().hits[index].answered = None;
            return;
        }
    }
}

/// Reads one request (headers, then a `Content-Length` body); `None` once the client has
/// closed the connection. Bytes past the request stay in `buffer`.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        fill(stream, buffer).await?;
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some((path, headers, body))
}

async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Returns once the client has closed the connection (whatever it sends is dropped).
async fn wait_closed(stream: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}
