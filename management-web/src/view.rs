//! Formatting: times (for pages, and RFC 3339 for the API and the CSV export), sizes,
//! durations, and the dashboard's charts (inline SVG built from numbers only, so it needs no
//! script and no external asset).

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// A time as `2026-11-23 10:00:00` (UTC).
pub(crate) fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// A time as RFC 3339 (UTC, milliseconds): the API's answers and the CSV export.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// An optional time, or a dash.
pub(crate) fn when_opt(ms: Option<i64>) -> String {
    ms.map(when).unwrap_or_else(|| "–".into())
}

/// A byte count for people.
pub(crate) fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

/// A duration in milliseconds for people.
pub(crate) fn millis(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// A bar chart of one value per minute: `values[i]` belongs to minute `i` of `values.len()`,
/// the last being the current one. `percent` labels the axis as a percentage.
pub(crate) fn bar_chart(values: &[f64], percent: bool, class: &str, label: &str) -> String {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const LEFT: f64 = 44.0;
    const BOTTOM: f64 = 18.0;
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    let top = if percent {
        100.0_f64.min((max * 1.1).max(1.0))
    } else {
        (max * 1.1).max(1.0).ceil()
    };
    let n = values.len().max(1) as f64;
    let slot = (W - LEFT) / n;
    let fmt = |v: f64| {
        if percent {
            format!("{v:.0}%")
        } else {
            format!("{v:.0}")
        }
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{label}: peak {peak}">"#,
        peak = fmt(max)
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{y}" x2="{W}" y2="{y}"/>"#,
        y = H - BOTTOM
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="4" x2="{W}" y2="4"/><text x="{x}" y="12" text-anchor="end">{t}</text><text x="{x}" y="{y}" text-anchor="end">0</text>"#,
        x = LEFT - 4.0,
        t = fmt(top),
        y = H - BOTTOM
    );
    for (i, v) in values.iter().enumerate() {
        if *v <= 0.0 {
            continue;
        }
        let h = (v / top).min(1.0) * (H - BOTTOM - 4.0);
        let x = LEFT + i as f64 * slot + slot * 0.15;
        let y = H - BOTTOM - h;
        let minutes_ago = values.len() - 1 - i;
        let _ = write!(
            svg,
            r#"<rect class="bar {class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"><title>{v} ({minutes_ago} min ago)</title></rect>"#,
            w = slot * 0.7,
            v = fmt(*v)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{y}">−{n} min</text><text x="{W}" y="{y}" text-anchor="end">now</text></svg>"#,
        y = H - 4.0,
        n = values.len()
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when_opt(None), "–");
        assert_eq!(rfc3339(1500), "1970-01-01T00:00:01.500Z");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(millis(12), "12 ms");
        assert_eq!(millis(1500), "1.50 s");
    }

    #[test]
    fn chart_has_one_bar_per_nonzero_minute() {
        let svg = bar_chart(&[0.0, 3.0, 0.0, 7.0], false, "", "Requests");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("peak 7"));
        assert!(!svg.contains("style="), "the CSP forbids inline styles");
    }
}
