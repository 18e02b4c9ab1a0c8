//! The database's clock, as the spool's (see [`crate::spool::clock`]): read by the
//! events writer on each connection and every few seconds (and by `xhubd events` on
//! connecting), and said in the log when this machine's wall clock is a second or more
//! off it.
//!
//! A reading asks for `clock_timestamp()` three times and keeps the answer with the
//! shortest round trip, taking the database's reading to be at its middle: the error is
//! at most half that round trip.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::connect::error_text;
use crate::spool::clock::{anchor, boottime_ms, off_by, offset_ms};

/// How often the clock is read again while connected.
const EVERY: Duration = Duration::from_secs(15);
/// How soon a failed reading is tried again.
const AGAIN_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// An offset from this (ms) on is said in the log: machines kept by NTP are within
/// milliseconds of each other.
const WARN_FROM_MS: i64 = 1_000;
/// Readings per measurement.
const READINGS: usize = 3;

/// When the clock is next read, and the offset the log last said was off.
#[derive(Default)]
pub(super) struct ClockWatch {
    next: Option<Instant>,
    said: Option<i64>,
}

impl ClockWatch {
    /// Reads the database's clock on `client` (a new connection) and makes it the
    /// spool's; an error when it cannot, and the connection is not to be used: nothing
    /// may be written or claimed by another clock.
    pub(super) async fn read(&mut self, client: &Client) -> Result<(), String> {
        follow(client).await?;
        self.read_at_last();
        Ok(())
    }

    /// Reads it again when it is time to. A failed reading keeps the last one (the
    /// commit that follows finds the connection's fault) and is tried again a second
    /// later.
    pub(super) async fn keep(&mut self, client: &Client) {
        if self.next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match follow(client).await {
            Ok(()) => self.read_at_last(),
            Err(e) => {
                self.next = Some(Instant::now() + AGAIN_AFTER_FAILURE);
                debug!(error = %e, "cannot read the database's clock; counting on from the last reading");
            }
        }
    }

    /// After a reading: the next one's time, and a line when the offset changed.
    fn read_at_last(&mut self) {
        self.next = Some(Instant::now() + EVERY);
        if let Some(line) = self.say(offset_ms()) {
            line.log();
        }
    }

    /// What the log says of `offset` (ms), if anything: an offset of a second or more,
    /// again when it has moved by a second since it was last said, and its return
    /// within a second.
    fn say(&mut self, offset: i64) -> Option<Said> {
        if offset.abs() < WARN_FROM_MS {
            return self.said.take().map(|_| Said::Agrees(offset));
        }
        if self
            .said
            .is_some_and(|said| (offset - said).abs() < WARN_FROM_MS)
        {
            return None;
        }
        self.said = Some(offset);
        Some(Said::Off(offset))
    }
}

/// A line about the clock.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    /// This machine's wall clock is this far (ms) from the database's.
    Off(i64),
    /// It agrees again (within a second).
    Agrees(i64),
}

impl Said {
    fn log(&self) {
        match *self {
            Said::Off(offset) => {
                warn!(offset_s = %format!("{:.3}", offset as f64 / 1000.0), "this machine's clock is {} the database's; the spool's times (leases, retries, the dedup window) follow the database's clock. Set this machine's clock right (NTP): the log's own times are this machine's", off_by(offset));
            }
            Said::Agrees(offset) => {
                info!(offset_s = %format!("{:.3}", offset as f64 / 1000.0), "this machine's clock agrees with the database's again");
            }
        }
    }
}

/// Reads the database's clock on `client` and makes it the spool's: the reading with the
/// shortest round trip, tied to this machine's `CLOCK_BOOTTIME` at its middle.
pub async fn follow(client: &Client) -> Result<(), String> {
    let statement = client
        .prepare("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        .await
        .map_err(|e| error_text(&e))?;
    let mut best: Option<(i64, i64, i64)> = None;
    for _ in 0..READINGS {
        let before = boottime_ms();
        let row = client
            .query_one(&statement, &[])
            .await
            .map_err(|e| error_text(&e))?;
        let after = boottime_ms();
        let database: i64 = row.try_get(0).map_err(|e| error_text(&e))?;
        let round_trip = after - before;
        if best.is_none_or(|(rt, _, _)| round_trip < rt) {
            best = Some((round_trip, database, before + round_trip / 2));
        }
    }
    if let Some((_, database, at)) = best {
        anchor(database, at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ClockWatch, Said};

    #[test]
    fn an_offset_is_said_once_again_when_it_moves_a_second_and_when_it_is_gone() {
        let mut watch = ClockWatch::default();
        assert_eq!(watch.say(200), None);
        assert_eq!(watch.say(90_000), Some(Said::Off(90_000)));
        assert_eq!(watch.say(90_400), None);
        assert_eq!(watch.say(-90_000), Some(Said::Off(-90_000)));
        assert_eq!(watch.say(-89_500), None);
        assert_eq!(watch.say(300), Some(Said::Agrees(300)));
        assert_eq!(watch.say(100), None);
    }
}
