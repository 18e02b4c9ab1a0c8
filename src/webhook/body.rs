//! Reading a request body within `--max-body-bytes` and `--body-timeout`, and reading
//! the rest of a body that was refused, so the refusal reaches the client.
//!
//! A declared `Content-Length` over the limit is refused before the body is stored;
//! otherwise the stream is capped, and a body that does not arrive whole in time is
//! given up. When xhubd answers before it has read a body (a refused client subject,
//! a method not allowed, a body over the limit), the client may still be writing it:
//! closing the connection then would make its writes fail (`EPIPE` on a Unix socket,
//! a reset on TCP) before it reads the answer, and Nginx would answer Meta `502`. So,
//! like Nginx's `lingering_close`, the rest is read and dropped first, up to
//! [`LINGER_BYTES`] past the limit and within [`LINGER_TIME`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

/// Bytes of a refused body read and dropped beyond the limit, at most.
pub const LINGER_BYTES: u64 = 1024 * 1024;
/// Time spent reading and dropping a refused body, at most.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Bytes reserved for a body from its `Content-Length` before they arrive, at most;
/// a larger body's buffer grows as it arrives.
const PRESIZE_MAX: u64 = 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (413). `drained`: the rest was read, so the connection can carry
    /// another request.
    TooLarge {
        /// Whether the body was read to its end.
        drained: bool,
    },
    /// The client went away or sent a broken body.
    Read(String),
    /// The whole body did not arrive within the time allowed (408).
    TimedOut,
}

/// Reads the whole body if it fits in `limit` bytes and arrives within `timeout`.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit) {
        let drained = discard(headers, body, limit, timeout).await;
        return Err(BodyError::TooLarge { drained });
    }
    let deadline = Instant::now() + timeout;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut size: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        size += data.len() as u64;
        if size > limit {
            // What was read already counts towards the bound.
            let drained = discard(headers, body, limit.saturating_sub(size), timeout).await;
            return Err(BodyError::TooLarge { drained });
        }
        // One chunk (the usual case behind Nginx) is kept as it is, without a copy.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                // Room for the declared body at once (within the limit, checked above;
                // hyper never yields more than it): growing by doubling would copy it
                // again and again and leave up to half of the buffer unused while it
                // is kept. At most PRESIZE_MAX up front, whatever a client declares.
                let so_far = head.len() + data.len();
                let declared = declared.map_or(0, |n| n.min(PRESIZE_MAX) as usize);
                let mut joined = BytesMut::with_capacity(so_far.max(declared));
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => joined.freeze(),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}

/// Reads and drops what is left of a body that will not be used, so that the answer
/// reaches the client. Gives up beyond `limit` + [`LINGER_BYTES`] more bytes, after
/// `timeout` or [`LINGER_TIME`] (the shorter), and at once when the client waits for
/// `100 Continue` (it then sends no body unless asked). Returns whether the body was
/// read to its end, so that the connection may carry another request.
pub async fn discard(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: u64,
    timeout: Duration,
) -> bool {
    if body.is_end_stream() {
        return true;
    }
    let bound = limit.saturating_add(LINGER_BYTES);
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || declared_length(headers).is_some_and(|n| n > bound) {
        return false;
    }
    let deadline = Instant::now() + timeout.min(LINGER_TIME);
    let mut read: u64 = 0;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > bound {
                    return false;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// The `Content-Length` the client declared, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
