//! A destination's last hour as a small inline SVG: accepted, delivered and failed
//! deliveries per minute, three thin bars side by side for each minute (the oldest on
//! the left, the minute under way on the right), scaled to the busiest. No script, no
//! external asset; every number is ours (nothing from a payload reaches it).

use std::fmt::Write as _;

use maud::{html, Markup, PreEscaped};

use crate::metrics::Flow;

/// Pixels per minute: one bar of each flow.
const SLOT: usize = 3;
/// The drawing's height in CSS pixels (its width: [`SLOT`] per minute).
const HEIGHT: u32 = 40;

/// The colour of each flow's bars, in [`Flow::ALL`]'s order.
const COLOURS: [&str; 3] = ["#0969da", "#1a7f37", "#cf222e"];

/// The chart of `minutes` (the oldest first, counts in [`Flow::ALL`]'s order), with a
/// caption of the hour's totals; screen readers get the same totals as its title.
pub fn last_hour(minutes: &[[u64; 3]]) -> Markup {
    let totals: Vec<(Flow, u64)> = Flow::ALL
        .iter()
        .enumerate()
        .map(|(i, f)| (*f, minutes.iter().map(|m| m[i]).sum()))
        .collect();
    let summary = totals
        .iter()
        .map(|(f, n)| format!("{n} {}", f.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let peak = minutes
        .iter()
        .flat_map(|m| m.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let width = SLOT * minutes.len();
    let room = f64::from(HEIGHT - 2);
    let mut bars = String::new();
    for (x, m) in minutes.iter().enumerate() {
        for (i, colour) in COLOURS.iter().enumerate() {
            if m[i] == 0 {
                continue;
            }
            // At least a pixel, so that one event in a busy hour still shows.
            let h = (room * m[i] as f64 / peak as f64).round().max(1.0);
            let _ = write!(
                bars,
                r#"<rect x="{}" y="{:.0}" width="1" height="{h:.0}" fill="{colour}"/>"#,
                x * SLOT + i,
                f64::from(HEIGHT - 1) - h
            );
        }
    }
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" role="img" class="chart"><title>last hour per minute: {summary} (peak {peak} a minute)</title><rect width="{width}" height="{HEIGHT}" fill="#f6f8fa"/>{bars}</svg>"##
    );
    html! {
        (PreEscaped(svg))
        br;
        span.muted.legend {
            @for (i, (flow, n)) in totals.iter().enumerate() {
                span style={ "color:" (COLOURS[i]) } { "■ " } (n) " " (flow.as_str()) " "
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_busiest_minute_and_totals_are_told() {
        let mut minutes = vec![[0u64; 3]; 60];
        minutes[59] = [10, 5, 2];
        minutes[0] = [1, 0, 0];
        let html = last_hour(&minutes).into_string();
        assert!(html.contains(r#"width="180""#), "{html}");
        // The background, then one bar per count that is not zero.
        assert_eq!(html.matches("<rect").count(), 1 + 4, "{html}");
        assert!(
            html.contains("11 accepted, 5 delivered, 2 failed"),
            "{html}"
        );
        // The busiest bar is as tall as the drawing allows, at the right edge.
        assert!(
            html.contains(r##"<rect x="177" y="1" width="1" height="38" fill="#0969da"/>"##),
            "{html}"
        );
        // The oldest minute's one event, a tenth as tall, at the left edge.
        assert!(
            html.contains(r#"<rect x="0" y="35" width="1" height="4""#),
            "{html}"
        );
        assert!(!html.contains("<script"));
    }
}
