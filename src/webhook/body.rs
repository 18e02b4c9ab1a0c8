//! Reading a request body within `--max-body-bytes`: a declared `Content-Length` over the
//! limit is refused before anything is read; otherwise the stream is capped.

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
}

/// Reads the whole body if it fits in `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}
