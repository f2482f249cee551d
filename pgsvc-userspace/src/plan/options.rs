//! Server timers and limits: HAProxy `default-server` syntax and Pigsty's `pg_rto` plans.
//!
//! A service's `options` string replaces the whole `default-server` line, as in Pigsty's template;
//! without one, the line comes from `pg_rto_plan[pg_rto]` (inter, fastinter, downinter, rise, fall)
//! followed by Pigsty's fixed tail. Keywords pgsvc does not implement are reported, never dropped
//! silently.

use std::time::Duration;

use super::model::ServerOptions;

/// The five health-check values a `pg_rto_plan` entry sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtoPlan {
    pub inter: Duration,
    pub fastinter: Duration,
    pub downinter: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Pigsty's built-in plans (`roles/pgsql/defaults/main.yml`, v4): entries 5..=9 of each
/// `[ttl, loop, retry, start, margin, inter, fastinter, downinter, rise, fall]`.
pub const BUILTIN_RTO_PLANS: [(&str, RtoPlan); 4] = [
    ("fast", rto(1000, 500, 1000)),
    ("norm", rto(2000, 1000, 2000)),
    ("safe", rto(3000, 1500, 3000)),
    ("wide", rto(4000, 2000, 4000)),
];

const fn rto(inter_ms: u64, fastinter_ms: u64, downinter_ms: u64) -> RtoPlan {
    RtoPlan {
        inter: Duration::from_millis(inter_ms),
        fastinter: Duration::from_millis(fastinter_ms),
        downinter: Duration::from_millis(downinter_ms),
        rise: 3,
        fall: 3,
    }
}

/// The part of Pigsty's `default-server` line that no RTO plan changes.
pub const FIXED_TAIL: &str =
    "on-marked-down shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100";

/// The `default-server` line Pigsty renders for an RTO plan.
pub fn rto_options_line(plan: &RtoPlan) -> String {
    format!(
        "inter {} fastinter {} downinter {} rise {} fall {} {FIXED_TAIL}",
        haproxy_time(plan.inter),
        haproxy_time(plan.fastinter),
        haproxy_time(plan.downinter),
        plan.rise,
        plan.fall,
    )
}

/// A duration the way HAProxy reads it. Pigsty writes `0.5s`, which HAProxy 2.x rejects
/// ("unexpected character '.'"), so sub-second values are written in milliseconds.
pub fn haproxy_time(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if d.as_micros().is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Why a time value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTime(pub String);

/// Parses an HAProxy time (`3s`, `500ms`, `1m`; bare numbers are milliseconds). Returns whether the
/// value had a fraction (`0.5s`), which pgsvc accepts but HAProxy 2.x does not.
///
/// # Errors
/// [`BadTime`] with the reason.
pub fn parse_time(text: &str) -> Result<(Duration, bool), BadTime> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(BadTime(format!("`{text}` is not a time (e.g. 3s, 500ms)")));
    }
    let scale_us: f64 = match unit {
        "us" => 1.0,
        "" | "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        "d" => 86_400e6,
        _ => {
            return Err(BadTime(format!(
                "`{text}` has an unknown unit `{unit}` (us, ms, s, m, h, d)"
            )));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| BadTime(format!("`{text}` is not a time (e.g. 3s, 500ms)")))?;
    let micros = value * scale_us;
    if !micros.is_finite() || micros > 1e15 {
        return Err(BadTime(format!("`{text}` is too large")));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "finite, non-negative and bounded above"
    )]
    let micros = micros.round() as u64;
    Ok((Duration::from_micros(micros), number.contains('.')))
}

/// What reading a `default-server` line noticed without failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionNote {
    /// A keyword pgsvc does not implement (with the argument it swallowed, if any).
    Unknown { keyword: String },
    /// A fractional time HAProxy 2.x would reject.
    FractionalTime { keyword: String, value: String },
}

/// A `default-server` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub keyword: String,
    pub reason: String,
}

/// Parses a `default-server` line into typed options, starting from HAProxy's own defaults
/// (inter 2s, fastinter and downinter = inter, rise 2, fall 3, no limits).
///
/// # Errors
/// The first keyword with a missing or invalid value.
pub fn parse_default_server(line: &str) -> Result<(ServerOptions, Vec<OptionNote>), OptionError> {
    let mut opts = ServerOptions {
        inter: Duration::from_secs(2),
        fastinter: Duration::ZERO,
        downinter: Duration::ZERO,
        rise: 2,
        fall: 3,
        shutdown_sessions: false,
        slowstart: Duration::ZERO,
        maxconn: 0,
        maxqueue: 0,
        weight: None,
        check_timeout: Duration::from_secs(3),
    };
    let (mut fastinter, mut downinter) = (None, None);
    let mut notes = Vec::new();
    let mut tokens = line.split_whitespace().peekable();
    while let Some(keyword) = tokens.next() {
        let mut arg = || {
            tokens.next().ok_or_else(|| OptionError {
                keyword: keyword.to_owned(),
                reason: "needs a value".to_owned(),
            })
        };
        match keyword {
            "inter" | "fastinter" | "downinter" | "slowstart" => {
                let value = arg()?;
                let (d, fractional) = parse_time(value).map_err(|BadTime(reason)| OptionError {
                    keyword: keyword.to_owned(),
                    reason,
                })?;
                if d.is_zero() && keyword != "slowstart" {
                    return Err(OptionError {
                        keyword: keyword.to_owned(),
                        reason: "must be greater than zero".to_owned(),
                    });
                }
                if fractional {
                    notes.push(OptionNote::FractionalTime {
                        keyword: keyword.to_owned(),
                        value: value.to_owned(),
                    });
                }
                match keyword {
                    "inter" => opts.inter = d,
                    "fastinter" => fastinter = Some(d),
                    "downinter" => downinter = Some(d),
                    _ => opts.slowstart = d,
                }
            }
            "rise" | "fall" => {
                let n = parse_count(keyword, arg()?, 1, u32::MAX)?;
                if keyword == "rise" {
                    opts.rise = n;
                } else {
                    opts.fall = n;
                }
            }
            "maxconn" => opts.maxconn = parse_count(keyword, arg()?, 0, u32::MAX)?,
            "maxqueue" => opts.maxqueue = parse_count(keyword, arg()?, 0, u32::MAX)?,
            "weight" => opts.weight = Some(parse_count(keyword, arg()?, 0, 256)?),
            "on-marked-down" => match arg()? {
                "shutdown-sessions" => opts.shutdown_sessions = true,
                other => notes.push(OptionNote::Unknown {
                    keyword: format!("on-marked-down {other}"),
                }),
            },
            _ => {
                // Without a keyword table we cannot know the arity; a following number or time is
                // taken as this keyword's argument so it is not reported as a keyword itself.
                let mut keyword = keyword.to_owned();
                if let Some(next) = tokens.next_if(|t| t.starts_with(|c: char| c.is_ascii_digit()))
                {
                    keyword = format!("{keyword} {next}");
                }
                notes.push(OptionNote::Unknown { keyword });
            }
        }
    }
    opts.fastinter = fastinter.unwrap_or(opts.inter);
    opts.downinter = downinter.unwrap_or(opts.inter);
    Ok((opts, notes))
}

fn parse_count(keyword: &str, value: &str, min: u32, max: u32) -> Result<u32, OptionError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| OptionError {
            keyword: keyword.to_owned(),
            reason: format!("`{value}` is not an integer in {min}..={max}"),
        })
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn norm_plan_line_parses_to_the_model_default() {
        let line = rto_options_line(&BUILTIN_RTO_PLANS[1].1);
        assert_eq!(
            line,
            "inter 2s fastinter 1s downinter 2s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100"
        );
        let (opts, notes) = parse_default_server(&line).unwrap();
        assert_eq!(opts, ServerOptions::default());
        assert!(notes.is_empty());
    }

    #[test]
    fn fast_plan_writes_milliseconds_haproxy_accepts() {
        let line = rto_options_line(&BUILTIN_RTO_PLANS[0].1);
        assert!(
            line.starts_with("inter 1s fastinter 500ms downinter 1s rise 3 fall 3 "),
            "{line}"
        );
    }

    #[test]
    fn legacy_pigsty_line() {
        let (opts, notes) = parse_default_server(
            "inter 3s fastinter 1s downinter 5s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100",
        )
        .unwrap();
        assert_eq!(
            (opts.inter, opts.fastinter, opts.downinter),
            (secs(3.0), secs(1.0), secs(5.0))
        );
        assert_eq!(
            (opts.rise, opts.fall, opts.maxconn, opts.maxqueue),
            (3, 3, 3000, 128)
        );
        assert_eq!(
            (opts.slowstart, opts.weight, opts.shutdown_sessions),
            (secs(30.0), Some(100), true)
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn haproxy_defaults_when_keywords_are_absent() {
        let (opts, _) = parse_default_server("inter 4s").unwrap();
        assert_eq!((opts.fastinter, opts.downinter), (secs(4.0), secs(4.0)));
        assert_eq!(
            (opts.rise, opts.fall, opts.maxconn, opts.weight),
            (2, 3, 0, None)
        );
        assert!(!opts.shutdown_sessions);
        assert_eq!(opts.slowstart, Duration::ZERO);
    }

    #[test]
    fn times_and_units() {
        assert_eq!(parse_time("250").unwrap(), (secs(0.25), false));
        assert_eq!(parse_time("1500ms").unwrap(), (secs(1.5), false));
        assert_eq!(parse_time("0.5s").unwrap(), (secs(0.5), true));
        assert_eq!(parse_time("2m").unwrap(), (secs(120.0), false));
        assert_eq!(parse_time("24h").unwrap(), (secs(86_400.0), false));
        for bad in ["", "s", "3x", "1..2s", ".5s", "-1s"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_keywords_are_noted_with_their_argument() {
        let (_, notes) = parse_default_server(
            "inter 1s agent-port 9000 init-addr none on-marked-up shutdown-backup-sessions",
        )
        .unwrap();
        let names: Vec<String> = notes
            .into_iter()
            .map(|n| match n {
                OptionNote::Unknown { keyword } => keyword,
                OptionNote::FractionalTime { keyword, .. } => keyword,
            })
            .collect();
        assert_eq!(
            names,
            [
                "agent-port 9000",
                "init-addr",
                "none",
                "on-marked-up",
                "shutdown-backup-sessions"
            ]
        );
    }

    #[test]
    fn bad_values_are_errors() {
        for (line, keyword) in [
            ("rise 0", "rise"),
            ("fall x", "fall"),
            ("inter", "inter"),
            ("inter 0", "inter"),
            ("weight 300", "weight"),
            ("slowstart 5q", "slowstart"),
        ] {
            let err = parse_default_server(line).unwrap_err();
            assert_eq!(err.keyword, keyword, "{line}");
        }
    }
}
