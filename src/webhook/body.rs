//! Reading a request body within `--max-body-bytes` and `--body-timeout`: a declared
//! `Content-Length` over the limit is refused before anything is read; otherwise the
//! stream is capped, and a body that does not arrive whole in time is given up.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (413).
    TooLarge,
    /// The client went away or sent a broken body.
    Read(String),
    /// The whole body did not arrive within the time allowed (408).
    TimedOut,
}

/// Reads the whole body if it fits in `limit` bytes and arrives within `timeout`.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_elapsed) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}
