//! The HAProxy health counter as a pure state machine: check results in, UP/DOWN transitions and the
//! next check interval out. No I/O and no clock of its own — the caller passes the `Instant` of each
//! result, so every HAProxy scenario is a deterministic table test.
//!
//! Semantics (HAProxy `check.c`/`server.c`, configuration manual §5.2 `rise`/`fall`/`inter`):
//! - `health` runs from 0 to `rise + fall - 1`;
//! - a failure lowers it by one; once it drops below `rise` it is reset to 0 and the server is DOWN;
//! - a success raises it by one; once it reaches `rise` it jumps to the maximum and the server is UP;
//! - the next check comes after `inter` at full health, `downinter` when DOWN with health 0, and
//!   `fastinter` in every state in between.
//!
//! One deliberate deviation (DESIGN.md §3): HAProxy starts every server UP at health `rise`, which sends
//! `/primary` traffic to replicas until their first check fails. Here a server starts [`HealthState::Unknown`]
//! and its first result decides: a pass puts it UP at full health, a failure DOWN at health 0.

use std::fmt;
use std::time::{Duration, Instant};

/// Whether a server may receive traffic, as far as its health checks know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// No check has completed yet (pgsvc start-up, or a server just added to the plan).
    Unknown,
    Up,
    Down,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "UNKNOWN",
            Self::Up => "UP",
            Self::Down => "DOWN",
        })
    }
}

/// The timers and thresholds of one check (a server's `default-server` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterParams {
    pub rise: u32,
    pub fall: u32,
    pub inter: Duration,
    /// Zero means "not set": HAProxy then falls back to `inter`.
    pub fastinter: Duration,
    /// Zero means "not set": HAProxy then falls back to `inter`.
    pub downinter: Duration,
}

impl CounterParams {
    /// The highest health value: `rise + fall - 1` (both clamped to at least 1, as HAProxy refuses 0).
    #[must_use]
    pub fn max_health(&self) -> u32 {
        self.rise() + self.fall() - 1
    }

    fn rise(&self) -> u32 {
        self.rise.max(1)
    }

    fn fall(&self) -> u32 {
        self.fall.max(1)
    }

    fn fastinter(&self) -> Duration {
        if self.fastinter.is_zero() {
            self.inter
        } else {
            self.fastinter
        }
    }

    fn downinter(&self) -> Duration {
        if self.downinter.is_zero() {
            self.inter
        } else {
            self.downinter
        }
    }
}

/// A change of [`HealthState`], reported by [`HealthCounter::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    /// When the deciding check completed.
    pub at: Instant,
}

impl Transition {
    /// The first result of a server (pgsvc's start-up rule). Slowstart never applies to it.
    #[must_use]
    pub fn is_startup(&self) -> bool {
        self.from == HealthState::Unknown
    }
}

/// One server's health counter plus the HAProxy statistics derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCounter {
    params: CounterParams,
    health: u32,
    state: HealthState,
    last_change: Option<Instant>,
    /// Whether the current UP period began with the very first check (no slowstart then).
    up_at_startup: bool,
    checks_total: u64,
    failures_total: u64,
    up_down_total: u64,
}

impl HealthCounter {
    #[must_use]
    pub fn new(params: CounterParams) -> Self {
        Self {
            params,
            health: 0,
            state: HealthState::Unknown,
            last_change: None,
            up_at_startup: false,
            checks_total: 0,
            failures_total: 0,
            up_down_total: 0,
        }
    }

    /// Feeds one check result completed at `now`; returns the transition it caused, if any.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<Transition> {
        self.checks_total += 1;
        let from = self.state;
        let max = self.params.max_health();
        let rise = self.params.rise();
        match (from, passed) {
            (HealthState::Unknown, true) => {
                self.health = max;
                self.state = HealthState::Up;
            }
            (HealthState::Unknown, false) => {
                // HAProxy would have counted this failure against a server it assumed UP.
                self.failures_total += 1;
                self.health = 0;
                self.state = HealthState::Down;
            }
            (_, true) => {
                if self.health < max {
                    self.health += 1;
                    if self.health >= rise {
                        self.health = max;
                        self.state = HealthState::Up;
                    }
                }
            }
            (_, false) => {
                // HAProxy's `chkfail` counts only failures seen while health > 0 (its stats doc:
                // "only counts checks failed when the server is up").
                if self.health > 0 {
                    self.failures_total += 1;
                    self.health -= 1;
                    if self.health < rise {
                        self.health = 0;
                        self.state = HealthState::Down;
                    }
                }
            }
        }
        if self.state == from {
            return None;
        }
        if from == HealthState::Up && self.state == HealthState::Down {
            self.up_down_total += 1;
        }
        self.up_at_startup = from == HealthState::Unknown && self.state == HealthState::Up;
        self.last_change = Some(now);
        Some(Transition {
            from,
            to: self.state,
            at: now,
        })
    }

    /// How long to wait before the next check (HAProxy `srv_getinter`).
    #[must_use]
    pub fn interval(&self) -> Duration {
        match self.state {
            // The first check is run at once; should the caller ask anyway, the counter is in no
            // settled state, which HAProxy would probe at `fastinter`.
            HealthState::Unknown => self.params.fastinter(),
            _ if self.health == self.params.max_health() => self.params.inter,
            HealthState::Down if self.health == 0 => self.params.downinter(),
            _ => self.params.fastinter(),
        }
    }

    #[must_use]
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The raw counter, 0..=`rise + fall - 1`.
    #[must_use]
    pub fn health(&self) -> u32 {
        self.health
    }

    #[must_use]
    pub fn params(&self) -> &CounterParams {
        &self.params
    }

    /// When the state last changed (the start-up decision included).
    #[must_use]
    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }

    /// True while UP since the first check: such a server gets no slowstart.
    #[must_use]
    pub fn up_at_startup(&self) -> bool {
        self.state == HealthState::Up && self.up_at_startup
    }

    #[must_use]
    pub fn checks_total(&self) -> u64 {
        self.checks_total
    }

    /// HAProxy `check_failures_total`: failed checks while health was above 0.
    #[must_use]
    pub fn failures_total(&self) -> u64 {
        self.failures_total
    }

    /// HAProxy `check_up_down_total`: UP → DOWN transitions.
    #[must_use]
    pub fn up_down_total(&self) -> u64 {
        self.up_down_total
    }

    /// HAProxy's "status: 2/3 UP" notation: consecutive failures still tolerated out of `fall` while
    /// UP, successes gathered out of `rise` while DOWN.
    #[must_use]
    pub fn status_string(&self) -> String {
        let rise = self.params.rise();
        match self.state {
            HealthState::Up => format!("{}/{} UP", self.health + 1 - rise, self.params.fall()),
            HealthState::Down => format!("{}/{} DOWN", self.health, rise),
            HealthState::Unknown => "UNKNOWN".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
