//! Patroni's `/failover` key as early evidence of a demotion.
//!
//! Patroni keeps the leader key while its PostgreSQL shuts down for a switchover, and `/primary`
//! answers 200 until PostgreSQL has stopped — so the leader key alone hands new connections to a
//! node that is going away (its pgbouncer answers "server login has been failing"). The request
//! itself is in the DCS earlier: `patronictl switchover` / `failover` make the leader's REST API
//! write `<namespace>/<cluster>/failover` (JSON: `leader` = the member to leave, `member` = the
//! candidate, `scheduled_at` = ISO 8601 with a zone) and wake its HA loop, which demotes at once
//! (`Ha.process_manual_failover_from_leader` → `demote('graceful')`: CHECKPOINT, `pg_ctl stop -m
//! fast`, then the leader key is released). A request Patroni refuses is cleaned up by writing
//! `{}`; so is every request once a new leader holds the key.
//!
//! [`step_down`] mirrors Patroni's own test of whether the holder is asked to demote: the key names
//! the holder as `leader` (or names no leader and another member as candidate), the candidate is not
//! the holder, a paused cluster names a candidate, and `scheduled_at` is absent or past. The member
//! key (`members/<name>`) is no earlier evidence: it is rewritten at the end of an HA cycle, and the
//! demoting leader's says `demoted` only once PostgreSQL reports a clean shutdown.

use std::time::{Duration, SystemTime};

/// The `/failover` key, parsed as Patroni parses it (`Failover.from_node`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// The member asked to step down (switchover), if named.
    pub leader: Option<String>,
    /// The candidate to promote, if named.
    pub member: Option<String>,
    /// When, for a scheduled switchover: `Ok(time)`, or `Err(text)` when it does not parse.
    pub scheduled_at: Option<Result<SystemTime, String>>,
}

/// Whether the key's holder is asked to step down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// No (no request, one for another member, or one Patroni refuses).
    No,
    /// Yes, now: a description of the request for logs and status.
    Now(String),
    /// At this time (a scheduled switchover): ask again then.
    At(SystemTime),
}

impl Failover {
    /// Parses the key's value: JSON, or Patroni's legacy `leader:candidate`. `None`: no request
    /// (empty, `{}`, or JSON that is not an object).
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        if text.is_empty() {
            return None;
        }
        let f = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(o)) => {
                let field = |k: &str| {
                    o.get(k)
                        .and_then(serde_json::Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                };
                Self {
                    leader: field("leader"),
                    member: field("member"),
                    scheduled_at: field("scheduled_at").map(|s| parse_iso8601(&s).ok_or(s)),
                }
            }
            Ok(_) => return None,
            Err(_) => {
                let mut parts = text.split(':').map(str::trim);
                let name = |p: Option<&str>| p.filter(|s| !s.is_empty()).map(str::to_owned);
                Self {
                    leader: name(parts.next()),
                    member: name(parts.next()),
                    scheduled_at: None,
                }
            }
        };
        (f.leader.is_some() || f.member.is_some() || f.scheduled_at.is_some()).then_some(f)
    }
}

/// Whether `holder` (the leader key's value) is asked to step down by `failover` at `now`, the
/// cluster `paused` or not.
#[must_use]
pub fn step_down(
    failover: Option<&Failover>,
    holder: Option<&str>,
    paused: bool,
    now: SystemTime,
) -> StepDown {
    let (Some(f), Some(holder)) = (failover, holder) else {
        return StepDown::No;
    };
    // Patroni: "leader name does not match" (also the request a new leader has not cleaned yet).
    if f.leader.as_deref().is_some_and(|l| l != holder) {
        return StepDown::No;
    }
    match f.member.as_deref() {
        // "I am already the leader".
        Some(m) if m == holder => return StepDown::No,
        // Without a candidate: a switchover names the leader; paused, Patroni refuses.
        None if f.leader.is_none() || paused => return StepDown::No,
        _ => {}
    }
    match &f.scheduled_at {
        Some(Ok(at)) if *at > now => StepDown::At(*at),
        // A time Patroni's dateutil may read but this parser cannot: today's behaviour (no fence)
        // rather than a fence of unknown length.
        Some(Err(_)) => StepDown::No,
        _ => StepDown::Now(match (&f.leader, &f.member) {
            (_, Some(m)) => {
                format!("{holder} is asked to step down for {m} (Patroni's failover key)")
            }
            _ => format!("{holder} is asked to step down (Patroni's failover key)"),
        }),
    }
}

/// An ISO 8601 date and time with a zone (`2026-12-02T01:30:00.5+00:00`, `…Z`, `…+0100`, a space
/// for the `T`), as Python's `isoformat()` writes it. `None` without a zone or when malformed.
#[must_use]
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    // The zone: the last 'Z', '+' or '-' (the date's dashes are gone).
    let zpos = rest.rfind(['Z', 'z', '+', '-'])?;
    let (time, zone) = rest.split_at(zpos);
    let offset = match zone {
        "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let hm = z[1..].replace(':', "");
            let (h, m) = match hm.len() {
                2 => (num(&hm)?, 0),
                4 => (num(&hm[..2])?, num(&hm[2..])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let (hms, frac) = time.split_once(['.', ',']).unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let sec = t.next().map_or(Some(0), num)?;
    if t.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits = &frac[..frac.len().min(9)];
        num(digits)? * 10_i64.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    let secs = days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let nanos = u32::try_from(nanos).ok()?;
    if secs >= 0 {
        Some(SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
    } else {
        None
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn f(value: &str) -> Option<Failover> {
        Failover::parse(value.as_bytes())
    }

    #[test]
    fn iso8601_as_python_writes_it() {
        // 2026-12-02T01:30:00Z = 1_796_175_000 (`date -u -d 2026-12-02T01:30:00Z +%s`).
        let base = at(1_796_175_000);
        for s in [
            "2026-12-02T01:30:00+00:00",
            "2026-12-02T01:30:00Z",
            "2026-12-02 01:30:00+00:00",
            "2026-12-02T02:30:00+01:00",
            "2026-12-02T02:30:00+0100",
            "2026-12-01T23:30:00-02:00",
            "2026-12-02T01:30+00:00",
        ] {
            assert_eq!(parse_iso8601(s), Some(base), "{s}");
        }
        assert_eq!(
            parse_iso8601("2026-12-02T01:30:00.250000+00:00"),
            Some(base + Duration::from_millis(250))
        );
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(at(0)));
        assert_eq!(parse_iso8601("2000-03-01T00:00:00Z"), Some(at(951_868_800)));
        for bad in [
            "2026-12-02T01:30:00",
            "2026-13-02T01:30:00Z",
            "2026-12-02T25:30:00Z",
            "tomorrow",
            "2026-12-02",
            "",
            "2026-12-02T01:30:00+1",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_key_parses_as_patroni_parses_it() {
        assert_eq!(f(""), None);
        assert_eq!(f("{}"), None);
        assert_eq!(f("[1]"), None);
        assert_eq!(f(r#"{"leader":"","member":""}"#), None);
        let sw = f(r#"{"leader":"pg-test-1","member":"pg-test-2"}"#).expect("switchover");
        assert_eq!(sw.leader.as_deref(), Some("pg-test-1"));
        assert_eq!(sw.member.as_deref(), Some("pg-test-2"));
        assert_eq!(sw.scheduled_at, None);
        let legacy = f("pg-test-1:pg-test-2").expect("legacy");
        assert_eq!(legacy.leader.as_deref(), Some("pg-test-1"));
        assert_eq!(legacy.member.as_deref(), Some("pg-test-2"));
        let sched =
            f(r#"{"leader":"a","scheduled_at":"2026-12-02T01:30:00+00:00"}"#).expect("scheduled");
        assert_eq!(sched.scheduled_at, Some(Ok(at(1_796_175_000))));
        let bad = f(r#"{"leader":"a","scheduled_at":"soon"}"#).expect("bad time");
        assert_eq!(bad.scheduled_at, Some(Err("soon".to_owned())));
    }

    #[test]
    fn the_holder_steps_down_when_patroni_would_demote_it() {
        let now = at(1_000);
        let now_for = |v: &str, holder: &str, paused: bool| {
            step_down(f(v).as_ref(), Some(holder), paused, now)
        };
        let yes = |s: StepDown| matches!(s, StepDown::Now(_));
        // patronictl switchover (with or without a candidate) and failover.
        assert!(yes(now_for(
            r#"{"leader":"n1","member":"n2"}"#,
            "n1",
            false
        )));
        assert!(yes(now_for(r#"{"leader":"n1"}"#, "n1", false)));
        assert!(yes(now_for(r#"{"member":"n2"}"#, "n1", false)));
        assert!(yes(now_for(r#"{"member":"n2"}"#, "n1", true)));
        assert!(yes(now_for("n1:n2", "n1", false)));
        // A request for another leader, a new holder the request has not been cleaned from yet,
        // the holder as candidate, nothing named, a paused cluster without a candidate.
        assert_eq!(
            now_for(r#"{"leader":"n3","member":"n2"}"#, "n1", false),
            StepDown::No
        );
        assert_eq!(
            now_for(r#"{"leader":"n1","member":"n2"}"#, "n2", false),
            StepDown::No
        );
        assert_eq!(now_for(r#"{"member":"n1"}"#, "n1", false), StepDown::No);
        assert_eq!(
            now_for(r#"{"leader":"n1","member":"n1"}"#, "n1", false),
            StepDown::No
        );
        assert_eq!(now_for(r#"{"leader":"n1"}"#, "n1", true), StepDown::No);
        assert_eq!(now_for("{}", "n1", false), StepDown::No);
        // No request, no holder.
        assert_eq!(step_down(None, Some("n1"), false, now), StepDown::No);
        let sw = f(r#"{"leader":"n1","member":"n2"}"#);
        assert_eq!(step_down(sw.as_ref(), None, false, now), StepDown::No);
        // Scheduled: later → ask again then; due or past → now; unreadable → no fence.
        let sched = |t: &str| format!(r#"{{"leader":"n1","scheduled_at":"{t}"}}"#);
        assert_eq!(
            now_for(&sched("1970-01-01T00:20:00Z"), "n1", false),
            StepDown::At(at(1_200))
        );
        assert!(yes(now_for(&sched("1970-01-01T00:16:40Z"), "n1", false)));
        assert!(yes(now_for(&sched("1970-01-01T00:10:00Z"), "n1", false)));
        assert_eq!(now_for(&sched("at noon"), "n1", false), StepDown::No);
    }
}
