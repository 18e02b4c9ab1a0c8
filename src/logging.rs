//! Log set-up: `tracing` to stderr, text or JSON, level from `XHUBD_LOG` (or
//! `RUST_LOG`), `info` by default.
//!
//! A line is formatted where it happens and written to stderr by a thread of its own
//! (`tracing-appender`'s non-blocking writer), through a buffer written out whenever no
//! line is waiting. Under load many lines leave in one `write(2)` instead of one each,
//! and a request handler never waits on stderr (a pipe to journald under systemd)
//! unless [`LINES_QUEUED`] lines are already waiting: then it waits for room, so no
//! line is dropped while xhubd runs. At exit the lines still waiting are written
//! within a second at most; a line its thread could not write (stderr closed), and
//! what waits when the process is killed, are lost.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Lines formatted and not yet written, at most; a line beyond waits for room.
pub const LINES_QUEUED: usize = 65_536;
/// The writing thread's buffer, in bytes: at most this much goes out per `write(2)`.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The log's writing thread. Dropping it writes out every line logged before, then
/// stops the thread (it waits for that at most a second).
#[must_use = "dropping it stops the log"]
pub struct Logs {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber and starts the writing thread. A second call keeps
/// the first subscriber and returns a handle that holds nothing.
pub fn init(format: LogFormat) -> Logs {
    let filter = std::env::var("XHUBD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LINES_QUEUED)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    Logs {
        _writer: installed.is_ok().then_some(guard),
    }
}
