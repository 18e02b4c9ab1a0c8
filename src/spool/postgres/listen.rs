//! Wake-ups from other instances: a connection of its own `LISTEN`s on the spool's
//! channel, and each notification (new events, replays, a destination back up, sent by
//! any instance or by `xhubd events replay`) wakes this instance's schedulers. The
//! schedulers' own slow poll is the safety net for a notification missed while the
//! connection was down; after reconnecting it wakes them once as well.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::connect::{back_off, PgTarget};
use super::schema::CHANNEL;

/// Listens until `stop` is cancelled, reconnecting when the connection drops.
pub(super) async fn run(
    target: Arc<PgTarget>,
    wakeups: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let (client, mut connection) = match target.connect_raw().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "cannot listen for wake-ups; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = back_off(&mut delay, Duration::from_secs(5)) => continue,
                }
            }
        };
        // The driver task polls the connection (which the LISTEN below needs) and
        // passes its notifications on; it ends when the connection does.
        let (tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        let ok = tokio::select! {
            r = listen => r.is_ok(),
            _ = stop.cancelled() => return,
        };
        if !ok {
            continue;
        }
        delay = Duration::from_millis(200);
        wakeups.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.recv() => match message {
                    Some(AsyncMessage::Notification(_)) => {
                        wakeups.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
    }
}
