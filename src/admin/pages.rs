//! The status page and the event page: plain server-rendered HTML with the style inline,
//! no external assets, no JavaScript. maud escapes everything spliced in, so payloads
//! (untrusted) are shown as text.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::delivery::status::{Condition, UpstreamSnapshot};
use crate::metrics::RequestOutcome;
use crate::spool::now_ms;
use crate::spool::views::{EventDetail, EventSummary, SpoolStats};

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem;margin:0 0 .5rem} h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
table{border-collapse:collapse;font-size:.9rem} th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} .num{text-align:right} .muted{color:#57606a}
.state-pending{color:#9a6700} .state-delivered{color:#1a7f37} .state-dead{color:#cf222e;font-weight:600}
.ready{color:#1a7f37;font-weight:600} .notready{color:#cf222e;font-weight:600}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:.75rem;overflow:auto;max-height:40rem;white-space:pre-wrap;word-break:break-all}
button{cursor:pointer} .err{min-width:10rem;max-width:30rem;word-break:break-word}
.when time,.when .muted{white-space:nowrap} .url{min-width:8rem;max-width:20rem;overflow-wrap:anywhere} tr.refused td{color:#cf222e}
";

/// Bodies larger than this get no indented view: indentation can multiply a deeply
/// nested body's size many times.
const INDENTED_VIEW_MAX_BYTES: usize = 1024 * 1024;

/// What the status page shows.
pub struct Status<'a> {
    /// Spool counts.
    pub stats: &'a SpoolStats,
    /// The newest events.
    pub recent: &'a [EventSummary],
    /// The newest dead events.
    pub dead: &'a [EventSummary],
    /// Each destination and how it is doing.
    pub destinations: &'a [DestinationRow],
    /// /readyz's verdict.
    pub ready: bool,
    /// Whether something needs attention, and what.
    pub verdict: &'a super::verdict::Verdict,
    /// Requests on the webhook listener over the last hour, by outcome (non-zero only).
    pub requests: &'a [(RequestOutcome, u64)],
    /// The spool, as the log's ready line names it (`sqlite`, or `postgresql (instance
    /// NAME)`).
    pub spool: &'a str,
}

/// One destination's line on the status page.
pub struct DestinationRow {
    /// `route/destination`.
    pub key: String,
    /// Its URL, password removed.
    pub url: String,
    /// Up or down, its last attempts, its rate limit.
    pub status: UpstreamSnapshot,
    /// Accepted, delivered and failed per minute over the last hour (this instance's),
    /// the oldest minute first.
    pub flows: Vec<[u64; 3]>,
}

/// Unix ms as `2026-11-22T21:40:00Z` and how long ago (or from now) that is, never
/// wrapped.
fn time(ms: i64) -> Markup {
    let text = crate::time::rfc3339(ms);
    let now = now_ms();
    html! {
        span.when { time datetime=(text) { (text) } " " span.muted { "(" (relative(ms - now)) ")" } }
    }
}

fn opt_time(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { "never" },
    }
}

/// `-190_000` ms as "3 min ago", `+7_200_000` as "in 2 h": the largest whole unit.
fn relative(delta_ms: i64) -> String {
    let seconds = delta_ms.unsigned_abs() / 1000;
    if seconds < 5 {
        return "just now".into();
    }
    let amount = match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min", seconds / 60),
        3600..=86_399 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    };
    if delta_ms < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

fn requests_table(requests: &[(RequestOutcome, u64)]) -> Markup {
    html! {
        @if !requests.iter().any(|(o, _)| o.refused()) {
            p.muted { "No request refused." }
        }
        @if !requests.is_empty() {
            table {
                tr { th { "outcome" } th { "answer" } th { "requests" } }
                @for (outcome, n) in requests {
                    tr class=[outcome.refused().then_some("refused")] {
                        td { (outcome.as_str()) }
                        td { (outcome.answer()) }
                        td.num { (n) }
                    }
                }
            }
        }
    }
}

fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

fn what(e: &EventSummary) -> String {
    match (e.object.as_str(), e.field.as_str()) {
        ("", "") => "—".into(),
        (o, "") => o.into(),
        ("", f) => f.into(),
        (o, f) => format!("{o} / {f}"),
    }
}

fn replay_form(id: &str) -> Markup {
    html! {
        form method="post" action={ "/events/" (id) "/replay" } {
            button type="submit" { "Replay" }
        }
    }
}

fn events_table(events: &[EventSummary], with_replay: bool) -> Markup {
    html! {
        table {
            tr {
                th { "received (UTC)" } th { "event" } th { "object / field" } th { "size" }
                th { "state" } th { "attempts" } th { "last error" }
                @if with_replay { th {} }
            }
            @for e in events {
                tr {
                    td { (time(e.received_at)) }
                    td { a href={ "/event/" (e.id) } { (e.id) } }
                    td { (what(e)) }
                    td.num { (e.size) }
                    td class={ "state-" (e.state) } { (e.state) }
                    td.num { (e.attempts) }
                    td.err { (e.last_error.as_deref().unwrap_or("")) }
                    @if with_replay { td { (replay_form(&e.id)) } }
                }
            }
        }
    }
}

/// The status page.
pub fn status(s: &Status<'_>) -> String {
    page(
        "xhubd status",
        html! {
            h1 { "xhubd " span.muted { (env!("CARGO_PKG_VERSION")) } }
            p.verdict {
                @if s.verdict.all_well() {
                    span.ready { "All well" } " — nothing dead, no destination failing, delivery keeping up"
                } @else {
                    span.notready { "Needs attention" }
                    ul {
                        @for reason in &s.verdict.reasons { li { (reason) } }
                    }
                }
            }
            p {
                @if s.ready { span.ready { "Ready" } } @else { span.notready { "Not ready" } }
                " — taking and storing events (spool and delivery), as /readyz reports"
            }
            h2 { "Spool" }
            p { "spool: " (s.spool) ". Pending, delivered and dead count deliveries, one per destination that takes an event (per part when it splits), not events." }
            @if let Some(off) = clock_off(crate::spool::clock::offset_ms()) {
                p.notready { (off) }
            }
            table {
                tr { th { "pending deliveries" } th { "delivered" } th { "dead" } th { "oldest pending" } th { "dedup keys" } }
                tr {
                    td.num { (s.stats.pending) }
                    td.num { (s.stats.delivered) }
                    td class={ "num" @if s.stats.dead > 0 { " state-dead" } } { (s.stats.dead) }
                    td.num { (format!("{:.1} s", s.stats.oldest_pending_age_seconds)) }
                    td.num { (s.stats.dedup_keys) }
                }
            }
            @if !s.stats.claims.is_empty() {
                h3 { "Taken by the instances sharing it (live leases)" }
                table {
                    tr { th { "instance" } th { "pending deliveries taken" } }
                    @for c in &s.stats.claims {
                        tr { td { (c.instance) } td.num { (c.deliveries) } }
                    }
                }
            }
            h2 id="requests" { "Requests in the last hour" }
            (requests_table(s.requests))
            h2 { "Destinations" }
            table {
                tr {
                    th { "route/destination" } th { "state" } th { "backlog" }
                    th { "oldest pending" } th { "dead" } th { "last success / failure" }
                    th { "last error" } th { "failures in a row" }
                    th { "last hour (this instance)" }
                }
                @for d in s.destinations {
                    @let u = &d.status;
                    @let backlog = s.stats.destinations.iter().find(|b| format!("{}/{}", b.route, b.destination) == d.key);
                    tr {
                        td { (d.key) br; span.muted.url { (d.url) } }
                        td { (condition(u)) }
                        td.num { (backlog.map_or(0, |b| b.pending)) }
                        td.num { (format!("{:.1} s", backlog.map_or(0.0, |b| b.oldest_pending_age_seconds))) }
                        @let dead = backlog.map_or(0, |b| b.dead);
                        td class={ "num" @if dead > 0 { " state-dead" } } { (dead) }
                        td { "✓ " (opt_time(u.last_success_at)) br; "✗ " (opt_time(u.last_failure_at)) }
                        td.err { (u.last_error.as_deref().unwrap_or("—")) }
                        td.num { (u.consecutive_failures) }
                        td { (super::chart::last_hour(&d.flows)) }
                    }
                }
                @for b in &s.verdict.removed {
                    tr {
                        td { (b.route) "/" (b.destination) br; span.muted { "not in this instance's configuration" } }
                        td { span.notready { "removed" } br; span.muted { "its deliveries wait until it is configured again" } }
                        td.num { (b.pending) }
                        td.num { (format!("{:.1} s", b.oldest_pending_age_seconds)) }
                        td class={ "num" @if b.dead > 0 { " state-dead" } } { (b.dead) }
                        td { "—" } td { "—" } td { "—" } td { "—" }
                    }
                }
            }
            h2 id="dead" { "Dead events" }
            @if s.dead.is_empty() {
                p.muted { "None." }
            } @else {
                (events_table(s.dead, true))
            }
            h2 id="recent" { "Last " (s.recent.len()) " events" }
            @if s.recent.is_empty() {
                p.muted { "No events yet." }
            } @else {
                (events_table(s.recent, false))
            }
            p.muted { "JSON: " a href="/events" { "/events" } " · metrics: " a href="/metrics" { "/metrics" } }
        },
    )
}

/// A destination's state cell: up, rate limited, down since when (and the next
/// probe), or probing.
fn condition(u: &UpstreamSnapshot) -> Markup {
    let now = now_ms();
    let state = u.condition(now);
    html! {
        @match state {
            Condition::Up => span.ready { "up" },
            Condition::RateLimited => span.state-pending { "rate limited" },
            Condition::Down | Condition::Probing => {
                span.notready { (state.as_str()) }
                @if let Some(since) = u.down_since { br; "down since " (time(since)) }
                @if let Some(next) = u.next_probe_at {
                    @if state == Condition::Down { br; span.muted { "next probe " (time(next)) } }
                }
            }
        }
    }
}

/// One event's page: its state, its deliveries and their attempts, the request headers,
/// and the payload as received.
pub fn event(e: &EventDetail) -> String {
    let s = &e.summary;
    let headers: Vec<(String, String)> = e
        .headers
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    page(
        &format!("xhubd event {}", s.id),
        html! {
            p { a href="/" { "← status" } }
            h1 { "Event " (s.id) }
            table {
                tr { th { "state" } td class={ "state-" (s.state) } { (s.state) } }
                tr { th { "received (UTC)" } td { (time(s.received_at)) } }
                tr { th { "object / field" } td { (what(s)) } }
                tr { th { "size" } td { (s.size) " bytes" } }
                tr { th { "attempts" } td { (s.attempts) } }
                @if let Some(instance) = &s.accepted_by { tr { th { "accepted by" } td { "instance " (instance) } } }
                @if let Some(next) = s.next_attempt_at { tr { th { "next attempt" } td { (time(next)) } } }
                @if let Some(done) = s.finished_at { tr { th { "finished" } td { (time(done)) } } }
                tr { th { "last error" } td.err { (s.last_error.as_deref().unwrap_or("—")) } }
            }
            @if s.state != crate::types::EventState::Pending {
                p { (replay_form(&s.id)) }
            }
            h2 { "Deliveries" }
            @for d in &e.deliveries {
                h3 { "to " (d.route) "/" (d.destination) " " span.muted { "part " (d.part) "/" (d.parts) ", " (d.id) } }
                table {
                    tr { th { "attempt at (UTC)" } th { "result" } th { "status" } th { "error or answer" } }
                    @for a in &d.history {
                        tr {
                            td { (time(a.at)) }
                            td class={ "state-" (a.result) } { (a.result) }
                            td.num { (a.status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())) }
                            td.err {
                                @if let Some(instance) = &a.instance { span.muted { "(" (instance) ") " } }
                                (a.detail)
                            }
                        }
                    }
                    @if d.history.is_empty() {
                        tr { td colspan="4" .muted { "no attempt yet" } }
                    }
                }
                @if let Some(next) = d.next_attempt_at {
                    p.muted { "next attempt: " (time(next)) }
                }
                @if let Some(instance) = &d.claimed_by {
                    p.muted { "taken by instance " (instance) " (lease running)" }
                }
            }
            h2 { "Request headers" }
            table {
                @for (name, value) in &headers {
                    tr { th { (name) } td { (value) } }
                }
            }
            h2 { "Payload" }
            p.muted {
                "As received, byte for byte (what was forwarded and signed). "
                a href={ "/events/" (s.id) "/body" } { "Download the raw body" }
            }
            pre.raw { (e.body) }
            @if e.body.len() <= INDENTED_VIEW_MAX_BYTES {
                details {
                    summary { "Indented view (same members, same order, same bytes; whitespace only)" }
                    pre.indented { (super::indent::indent(&e.body)) }
                }
            } @else {
                p.muted { "No indented view above 1 MiB: download the raw body." }
            }
        },
    )
}

/// What the status page says of the spool's clock when this machine's is a second or
/// more off it (on PostgreSQL, the database's); `None` otherwise.
fn clock_off(offset_ms: i64) -> Option<String> {
    if offset_ms.abs() < 1_000 {
        return None;
    }
    Some(format!(
        "This machine's clock is {} the database's: the spool's times follow the database's clock. Set this machine's clock right (NTP).",
        crate::spool::clock::off_by(offset_ms)
    ))
}

#[cfg(test)]
mod tests {
    use super::{clock_off, relative};

    #[test]
    fn the_clock_is_said_off_from_a_second_either_way() {
        assert_eq!(clock_off(999), None);
        assert_eq!(clock_off(-999), None);
        assert!(clock_off(90_000)
            .unwrap()
            .contains("90.0 s behind the database's"));
        assert!(clock_off(-1_500)
            .unwrap()
            .contains("1.5 s ahead of the database's"));
    }

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        assert_eq!(relative(-2_000), "just now");
        assert_eq!(relative(-42_000), "42 s ago");
        assert_eq!(relative(-190_000), "3 min ago");
        assert_eq!(relative(7_200_000), "in 2 h");
        assert_eq!(relative(-3 * 86_400_000), "3 d ago");
    }
}
