//! The open-loop schedule: when each request is due.
//!
//! The total rate R is split evenly over C connections; connection c sends
//! its request i at `t0 + phase(c) + i * C / R`. The phases stagger the
//! connections evenly over one interval so the aggregate stream is smooth
//! rather than C requests at once. Latency is measured from this due time,
//! never from when the request actually went out, so a stalled server (or
//! a stalled client) shows up in the figures instead of silently lowering
//! the offered load (coordinated omission).

use std::time::Duration;

/// Per-connection schedule, in nanoseconds after the run's t0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnSchedule {
    /// Nanoseconds between two requests of this connection.
    pub interval_ns: f64,
    /// Offset of request 0.
    pub phase_ns: f64,
}

impl ConnSchedule {
    /// Connection `index` of `connections` sharing `rate` requests/s.
    pub fn new(rate: f64, connections: usize, index: usize) -> Self {
        let c = connections.max(1) as f64;
        let interval_ns = 1e9 * c / rate;
        Self {
            interval_ns,
            phase_ns: interval_ns * index as f64 / c,
        }
    }

    /// When request `i` is due, after t0.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((self.phase_ns + i as f64 * self.interval_ns) as u64)
    }

    /// How many requests are due strictly before `t` (after t0): the number
    /// a connection sends in a window, used for the planned count.
    pub fn count_before(&self, t: Duration) -> u64 {
        let t = t.as_nanos() as f64;
        if t <= self.phase_ns {
            return 0;
        }
        ((t - self.phase_ns) / self.interval_ns).ceil() as u64
    }
}

/// Splits `connections` over `threads` as evenly as possible; returns the
/// connection indices each thread drives.
pub fn split_connections(connections: usize, threads: usize) -> Vec<Vec<usize>> {
    let threads = threads.max(1);
    let mut out = vec![Vec::new(); threads];
    for c in 0..connections {
        out[c % threads].push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_rate_is_kept_and_connections_are_staggered() {
        let rate = 10_000.0;
        let conns = 4;
        let s: Vec<ConnSchedule> = (0..conns)
            .map(|c| ConnSchedule::new(rate, conns, c))
            .collect();
        // Each connection: one request every 400 us, offsets 0/100/200/300 us.
        assert_eq!(s[0].due(1), Duration::from_micros(400));
        assert_eq!(s[1].due(0), Duration::from_micros(100));
        assert_eq!(s[3].due(2), Duration::from_micros(1100));
        // Merged, the stream is one request every 100 us.
        let mut all: Vec<Duration> = s.iter().flat_map(|c| (0..5).map(|i| c.due(i))).collect();
        all.sort();
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_micros(100));
        }
    }

    #[test]
    fn planned_count_in_a_window() {
        let s = ConnSchedule::new(1000.0, 1, 0);
        // Due at 0, 1, 2, ... ms: strictly before 10 ms are 0..=9.
        assert_eq!(s.count_before(Duration::from_millis(10)), 10);
        assert_eq!(s.count_before(Duration::from_micros(10_500)), 11);
        assert_eq!(s.count_before(Duration::ZERO), 0);
        let total: u64 = (0..7)
            .map(|c| ConnSchedule::new(7000.0, 7, c).count_before(Duration::from_secs(2)))
            .sum();
        assert_eq!(total, 14_000);
    }

    #[test]
    fn connections_split_over_threads() {
        assert_eq!(split_connections(5, 2), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(split_connections(1, 3), vec![vec![0], vec![], vec![]]);
    }
}
