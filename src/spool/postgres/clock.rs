//! The database's clock, as the spool's (see [`crate::spool::clock`]): how far it is
//! from this machine's, measured by the events writer on each connection and every
//! minute, and said in the log when this machine's clock is a second or more off.
//!
//! A measurement asks for `clock_timestamp()` three times and keeps the answer with the
//! shortest round trip, taking the database's reading to be at its middle: the error is
//! at most half that round trip.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::connect::error_text;
use crate::spool::clock::{offset_ms, set_offset_ms, system_ms};

/// How often the offset is measured again while connected.
const EVERY: Duration = Duration::from_secs(60);
/// An offset from this (ms) on is said in the log: machines kept by NTP are within
/// milliseconds of each other.
const WARN_FROM_MS: i64 = 1_000;
/// Readings per measurement.
const READINGS: usize = 3;

/// When the offset was last measured, and the offset the log last said was off.
#[derive(Default)]
pub(super) struct ClockWatch {
    last: Option<Instant>,
    said: Option<i64>,
}

impl ClockWatch {
    /// Measures the offset on `client` if a minute has passed since the last time
    /// (or `now` asks for it: a new connection), sets it as the spool's, and logs a
    /// change across a second. A failed reading keeps the last offset: the commit that
    /// follows finds the connection's fault.
    pub(super) async fn keep(&mut self, client: &Client, now: bool) {
        if !now && self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        match measure(client).await {
            Ok(offset) => {
                set_offset_ms(offset);
                self.say(offset);
            }
            Err(e) => {
                debug!(error = %e, "cannot read the database's clock; keeping the last offset")
            }
        }
    }

    /// Logs an offset of a second or more, again when it has moved by a second since
    /// it was last said, and its return within a second.
    fn say(&mut self, offset: i64) {
        let offset_s = format!("{:.3}", offset as f64 / 1000.0);
        if offset.abs() < WARN_FROM_MS {
            if self.said.take().is_some() {
                info!(offset_s = %offset_s, "this machine's clock agrees with the database's again");
            }
            return;
        }
        if self
            .said
            .is_some_and(|said| (offset - said).abs() < WARN_FROM_MS)
        {
            return;
        }
        self.said = Some(offset);
        let seconds = format!("{:.1}", offset.abs() as f64 / 1000.0);
        let side = if offset > 0 { "behind" } else { "ahead of" };
        warn!(offset_s = %offset_s, "this machine's clock is {seconds} s {side} the database's; the spool's times (leases, retries, the dedup window) follow the database's clock. Set this machine's clock right (NTP): the log's own times are this machine's");
    }
}

/// The database's clock less this machine's, in milliseconds, from the reading with the
/// shortest round trip.
async fn measure(client: &Client) -> Result<i64, String> {
    let statement = client
        .prepare("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        .await
        .map_err(|e| error_text(&e))?;
    let mut best: Option<(Duration, i64)> = None;
    for _ in 0..READINGS {
        let sent = Instant::now();
        let before = system_ms();
        let row = client
            .query_one(&statement, &[])
            .await
            .map_err(|e| error_text(&e))?;
        let round_trip = sent.elapsed();
        let after = system_ms();
        let database: i64 = row.try_get(0).map_err(|e| error_text(&e))?;
        let offset = database - (before + (after - before) / 2);
        if best.is_none_or(|(rt, _)| round_trip < rt) {
            best = Some((round_trip, offset));
        }
    }
    Ok(best.map_or_else(offset_ms, |(_, offset)| offset))
}
