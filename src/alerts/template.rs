//! The part of Prometheus' alert templates the pack's descriptions use, rendered the way
//! Prometheus renders it, so that an alert the in-process evaluator sends to Alertmanager reads
//! exactly as the same alert from Prometheus and `alerts/redis.rules.yml` (a live test has
//! `promtool test rules` check that, rule by rule).
//!
//! Actions understood:
//! - `{{ $value }}`: Go's `%v` of a float (shortest digits, exponent form from 1e+06 or below
//!   1e-04);
//! - `{{ $value | humanize }}`, `| humanizePercentage`, `| humanizeDuration`: Prometheus'
//!   functions of those names (SI prefixes, `%.4g`);
//! - `{{ $labels.NAME }}`: the label's value, empty when the alert has no such label;
//! - `{{ if $labels.NAME }}` … `{{ end }}` (not nested): the text between only when the label
//!   is set and not empty.
//!
//! Any other action is kept as written ([`unknown_actions`] lets a test hold the pack to this
//! list). Label values are written as they are and never read as template text.

use std::collections::BTreeMap;

/// Renders `text` for an alert with these labels and value.
pub fn render(text: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut shown = true; // false inside an `if` whose label is empty
    for piece in pieces(text) {
        let (written, action) = match piece {
            Piece::Text(t) | Piece::Unclosed(t) => {
                if shown {
                    out.push_str(t);
                }
                continue;
            }
            Piece::Action { written, action } => (written, action),
        };
        match Action::parse(action) {
            Some(Action::End) => shown = true,
            _ if !shown => {}
            Some(Action::If(name)) => shown = labels.get(name).is_some_and(|v| !v.is_empty()),
            Some(Action::Label(name)) => {
                out.push_str(labels.get(name).map(String::as_str).unwrap_or(""))
            }
            Some(Action::Value) => out.push_str(&go_float(value, None)),
            Some(Action::Humanize) => out.push_str(&humanize(value)),
            Some(Action::Percentage) => {
                out.push_str(&go_float(value * 100.0, Some(4)));
                out.push('%');
            }
            Some(Action::Duration) => out.push_str(&humanize_duration(value)),
            None => out.push_str(written),
        }
    }
    out
}

/// The actions in `text` that [`render`] does not understand, and the `if`s it cannot render
/// (nested, or not closed): empty for a template Prometheus and the evaluator render alike.
pub fn unknown_actions(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut open_if = false;
    for piece in pieces(text) {
        let action = match piece {
            Piece::Text(_) => continue,
            Piece::Unclosed(rest) => {
                found.push(rest.to_owned());
                continue;
            }
            Piece::Action { action, .. } => action,
        };
        match Action::parse(action) {
            Some(Action::If(_)) if open_if => found.push(format!("nested {action}")),
            Some(Action::If(_)) => open_if = true,
            Some(Action::End) if !open_if => found.push("end without if".to_owned()),
            Some(Action::End) => open_if = false,
            Some(_) => {}
            None => found.push(action.to_owned()),
        }
    }
    if open_if {
        found.push("if without end".to_owned());
    }
    found
}

/// A template cut into its text and its `{{ … }}` actions.
enum Piece<'a> {
    Text(&'a str),
    /// `written` is the action as it stands in the text, `action` its inside, trimmed.
    Action {
        written: &'a str,
        action: &'a str,
    },
    /// From a `{{` that no `}}` closes to the end.
    Unclosed(&'a str),
}

fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push(Piece::Text(&rest[..open]));
        let Some(len) = rest[open..].find("}}") else {
            out.push(Piece::Unclosed(&rest[open..]));
            return out;
        };
        out.push(Piece::Action {
            written: &rest[open..open + len + 2],
            action: rest[open + 2..open + len].trim(),
        });
        rest = &rest[open + len + 2..];
    }
    out.push(Piece::Text(rest));
    out
}

enum Action<'a> {
    Value,
    Humanize,
    Percentage,
    Duration,
    Label(&'a str),
    If(&'a str),
    End,
}

impl<'a> Action<'a> {
    fn parse(action: &'a str) -> Option<Self> {
        let label = |s: &'a str| {
            s.strip_prefix("$labels.").filter(|n| {
                !n.is_empty() && n.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
            })
        };
        if let Some(cond) = action.strip_prefix("if ") {
            return label(cond.trim()).map(Action::If);
        }
        if let Some(name) = label(action) {
            return Some(Action::Label(name));
        }
        let mut parts = action.split('|').map(str::trim);
        let (Some("$value"), function, None) = (parts.next(), parts.next(), parts.next()) else {
            return (action == "end").then_some(Action::End);
        };
        match function {
            None => Some(Action::Value),
            Some("humanize") => Some(Action::Humanize),
            Some("humanizePercentage") => Some(Action::Percentage),
            Some("humanizeDuration") => Some(Action::Duration),
            Some(_) => None,
        }
    }
}

/// Prometheus' `humanize`: SI prefixes (k … Y, m … y) and four significant digits.
fn humanize(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return go_float(value, Some(4));
    }
    let (scaled, prefix) = scale(value, ["k", "M", "G", "T", "P", "E", "Z", "Y"]);
    format!("{}{prefix}", go_float(scaled, Some(4)))
}

/// Prometheus' `humanizeDuration`: `1d 2h 3m 4s` from a minute up, `%.4g` seconds below, and
/// `ms`, `us`, … under a second.
fn humanize_duration(value: f64) -> String {
    if !value.is_finite() {
        return go_float(value, Some(4));
    }
    if value == 0.0 {
        return format!("{}s", go_float(value, Some(4)));
    }
    if value.abs() >= 1.0 {
        let sign = if value < 0.0 { "-" } else { "" };
        let v = value.abs();
        // Go's int64(v), which on amd64 is the smallest int64 for anything out of range.
        let whole = if v < i64::MAX as f64 {
            v as i64
        } else {
            i64::MIN
        };
        let (seconds, minutes) = (whole % 60, (whole / 60) % 60);
        let (hours, days) = ((whole / 3600) % 24, whole / 86_400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_float(v, Some(4)))
        };
    }
    let (scaled, prefix) = scale(value, []);
    format!("{}{prefix}s", go_float(scaled, Some(4)))
}

/// Divides by 1000 per prefix in `up` while the magnitude is 1000 or more; at or below 1,
/// multiplies by 1000 per small prefix while it is under 1.
fn scale<const N: usize>(mut value: f64, up: [&'static str; N]) -> (f64, &'static str) {
    let mut prefix = "";
    if value.abs() >= 1.0 {
        for p in up {
            if value.abs() < 1000.0 {
                break;
            }
            prefix = p;
            value /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if value.abs() >= 1.0 {
                break;
            }
            prefix = p;
            value *= 1000.0;
        }
    }
    (value, prefix)
}

/// Go's `%g` of a float64: with `Some(p)`, `p` significant digits (`%.4g`); with `None`, the
/// shortest digits that read back as the same float (`%v`). Trailing zeros are dropped, and the
/// exponent form (`1.5e+06`) is used when the exponent is below -4 or at least the precision
/// (6 for the shortest form).
fn go_float(value: f64, precision: Option<usize>) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let sign = if value.is_sign_negative() { "-" } else { "" };
    // Rust's `{:e}` gives the shortest digits, `{:.Ne}` the correctly rounded ones, as Go's
    // strconv does.
    let scientific = match precision {
        None => format!("{:e}", value.abs()),
        Some(p) => format!("{:.*e}", p.max(1) - 1, value.abs()),
    };
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent");
    let mut digits: Vec<u8> = mantissa.bytes().filter(|b| *b != b'.').collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits == b"0" {
        return format!("{sign}0");
    }
    let nd = digits.len() as i32;
    let dp = exponent + 1; // digits before the decimal point
    let eprec = match precision {
        None => 6,
        Some(p) if p as i32 > nd && nd >= dp => nd,
        Some(p) => p as i32,
    };
    let mut out = String::from(sign);
    if exponent < -4 || exponent >= eprec {
        out.push(digits[0] as char);
        if digits.len() > 1 {
            out.push('.');
            out.extend(digits[1..].iter().map(|&d| d as char));
        }
        let esign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{esign}{:02}", exponent.abs()));
        return out;
    }
    let digit = |i: i32| -> char {
        if (0..nd).contains(&i) {
            digits[i as usize] as char
        } else {
            '0'
        }
    };
    if dp > 0 {
        out.extend((0..dp).map(digit));
    } else {
        out.push('0');
    }
    let decimals = (nd - dp).max(0);
    if decimals > 0 {
        out.push('.');
        out.extend((dp..dp + decimals).map(digit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What Prometheus 2.x (Debian's, `promtool test rules`) printed for these values; the live
    /// test checks every rule of the pack the same way against the installed Prometheus.
    #[test]
    fn values_read_as_prometheus_writes_them() {
        #[rustfmt::skip]
        let cases: &[(f64, &str, &str, &str, &str)] = &[
            // value, $value, humanize, humanizePercentage, humanizeDuration
            (0.0, "0", "0", "0%", "0s"),
            (0.5, "0.5", "500m", "50%", "500ms"),
            (1.0, "1", "1", "100%", "1s"),
            (15.0, "15", "15", "1500%", "15s"),
            (5000.0, "5000", "5k", "5e+05%", "1h 23m 20s"),
            (1234567.0, "1.234567e+06", "1.235M", "1.235e+08%", "14d 6h 56m 7s"),
            (1e6, "1e+06", "1M", "1e+08%", "11d 13h 46m 40s"),
            (100000.0, "100000", "100k", "1e+07%", "1d 3h 46m 40s"),
            (0.875, "0.875", "875m", "87.5%", "875ms"),
            (0.75, "0.75", "750m", "75%", "750ms"),
            (899.99, "899.99", "900", "9e+04%", "14m 59s"),
            (3.5, "3.5", "3.5", "350%", "3.5s"),
            (0.0001, "0.0001", "100u", "0.01%", "100us"),
            (0.00001, "1e-05", "10u", "0.001%", "10us"),
            (1e21, "1e+21", "1Z", "1e+23%", "-106751991167300d -15h -30m -8s"),
            (-2.5, "-2.5", "-2.5", "-250%", "-2.5s"),
            (86400.0, "86400", "86.4k", "8.64e+06%", "1d 0h 0m 0s"),
            (0.12345678, "0.12345678", "123.5m", "12.35%", "123.5ms"),
            (99.99999, "99.99999", "100", "1e+04%", "1m 39s"),
            (1e-7, "1e-07", "100n", "1e-05%", "100ns"),
        ];
        let text = "{{ $value }}|{{ $value | humanize }}|{{ $value | humanizePercentage }}|{{ $value | humanizeDuration }}";
        for (value, plain, human, pct, dur) in cases {
            assert_eq!(
                render(text, &BTreeMap::new(), *value),
                format!("{plain}|{human}|{pct}|{dur}"),
                "value {value}"
            );
        }
    }

    #[test]
    fn an_if_shows_its_text_only_for_a_label_that_is_set() {
        let text = "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} is down";
        assert_eq!(
            render(
                text,
                &labels(&[("target", "cache"), ("node", "10.0.0.1:6379")]),
                0.0
            ),
            "cache 10.0.0.1:6379 is down"
        );
        assert_eq!(
            render(text, &labels(&[("target", "cache")]), 0.0),
            "cache is down"
        );
        assert_eq!(
            render(text, &labels(&[("target", "cache"), ("node", "")]), 0.0),
            "cache is down"
        );
        assert!(unknown_actions(text).is_empty());
    }

    #[test]
    fn label_values_are_written_once_and_unknown_actions_kept() {
        let tricky = labels(&[("group", "{{ $labels.group }}"), ("a", "}}")]);
        assert_eq!(
            render("group {{ $labels.group }} stalled", &tricky, 0.0),
            "group {{ $labels.group }} stalled"
        );
        assert_eq!(
            render("{{ $labels.missing }}x{{ $labels.a }}", &tricky, 1.0),
            "x}}"
        );
        assert_eq!(
            render("{{ $value | title }} {{ now }}", &tricky, 1.0),
            "{{ $value | title }} {{ now }}"
        );
        assert_eq!(render("open {{ $value", &tricky, 1.0), "open {{ $value");
        assert_eq!(
            unknown_actions("{{ $value | title }}{{ if $labels.a }}{{ if $labels.b }}{{ end }}"),
            ["$value | title", "nested if $labels.b"]
        );
        assert_eq!(
            unknown_actions("{{ end }}{{ if $labels.a }}"),
            ["end without if", "if without end"]
        );
    }
}
