//! Samples in memory (`--in-memory`): a bounded ring per line and tier.
//!
//! Bounded twice: each line keeps at most [`CAP`] buckets per tier (fewer
//! for per-worker lines), and at most [`MAX_LINES`] lines exist at once
//! (samples of new lines beyond that are dropped), so memory stays under
//! about `MAX_LINES * (sum of caps) * 48` bytes whatever the pool does.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::rollup::{bucket, Agg, Plan, Retention, Row, Tier};
use super::series::SERIES;
use super::thread::Backend;
use super::Point;

/// Buckets kept per tier of a pool line: 4 h raw at 10 s, 1 day of
/// minutes, 60 days of hours.
const CAP: [usize; 3] = [1_440, 1_440, 1_440];
/// Per-worker lines: 2 h of minutes, 2 days of hours.
const WORKER_CAP: [usize; 3] = [0, 120, 48];
/// Lines kept at most (each worker has two).
pub const MAX_LINES: usize = 20_000;

type Rings = [VecDeque<(i64, Agg)>; 3];

#[derive(Default)]
pub struct Memory {
    /// (series, worker) -> label -> rings.
    lines: HashMap<(u8, String), BTreeMap<String, Rings>>,
    n_lines: usize,
    /// Samples dropped because [`MAX_LINES`] was reached.
    pub dropped: u64,
}

fn put(ring: &mut VecDeque<(i64, Agg)>, cap: usize, ts: i64, agg: Agg, merge: bool) {
    if cap == 0 {
        return;
    }
    match ring.back_mut() {
        Some((t, a)) if *t == ts => {
            if merge {
                a.merge(&agg)
            } else {
                *a = agg
            }
        }
        // A sample older than the newest bucket (a clock step back) is
        // not inserted in the middle: rings stay sorted.
        Some((t, _)) if *t > ts => {}
        _ => {
            ring.push_back((ts, agg));
            while ring.len() > cap {
                ring.pop_front();
            }
        }
    }
}

impl Backend for Memory {
    fn write(&mut self, points: &[Point]) -> Result<(), String> {
        for p in points {
            let per_worker = SERIES[p.series as usize].per_worker;
            let caps = if per_worker { WORKER_CAP } else { CAP };
            let key = (p.series, p.worker.clone());
            let known = self
                .lines
                .get(&key)
                .is_some_and(|by_label| by_label.contains_key(&p.label));
            // Past the cap a new line is dropped before anything is
            // allocated for it (not even an empty map).
            if !known {
                if self.n_lines >= MAX_LINES {
                    self.dropped += 1;
                    continue;
                }
                self.n_lines += 1;
            }
            let rings = self
                .lines
                .entry(key)
                .or_default()
                .entry(p.label.clone())
                .or_default();
            let one = Agg::one(p.value);
            put(&mut rings[0], caps[0], p.ts, one, false);
            put(&mut rings[1], caps[1], bucket(p.ts, 60), one, true);
            put(&mut rings[2], caps[2], bucket(p.ts, 3600), one, true);
        }
        Ok(())
    }

    fn prune(&mut self, now: i64, keep: &Retention) -> Result<(), String> {
        let mut n_lines = 0;
        self.lines.retain(|(series, _), by_label| {
            let per_worker = SERIES[*series as usize].per_worker;
            by_label.retain(|_, rings| {
                for t in Tier::ALL {
                    let ring = &mut rings[t as usize];
                    let horizon = now - keep.of(t, per_worker);
                    while ring.front().is_some_and(|(ts, _)| *ts < horizon) {
                        ring.pop_front();
                    }
                }
                rings.iter().any(|r| !r.is_empty())
            });
            n_lines += by_label.len();
            !by_label.is_empty()
        });
        self.n_lines = n_lines;
        Ok(())
    }

    fn read(&mut self, series: usize, worker: &str, plan: &Plan) -> Result<Vec<Row>, String> {
        let Some(by_label) = self.lines.get(&(series as u8, worker.to_string())) else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        for (label, rings) in by_label {
            let ring = &rings[plan.tier as usize];
            let first = ring.partition_point(|(ts, _)| *ts < plan.start);
            for (ts, agg) in ring.iter().skip(first) {
                if *ts > plan.end {
                    break;
                }
                rows.push(Row {
                    label: label.clone(),
                    ts: *ts,
                    agg: *agg,
                });
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::series::id;
    use super::*;

    fn point(series: u8, label: &str, worker: &str, ts: i64, value: f64) -> Point {
        Point {
            series,
            label: label.into(),
            worker: worker.into(),
            ts,
            value,
        }
    }

    fn plan(tier: Tier, start: i64, end: i64) -> Plan {
        Plan {
            tier,
            step: tier.width(10),
            start,
            end,
        }
    }

    #[test]
    fn rolls_up_into_minutes_and_hours_and_stays_bounded() {
        let mut m = Memory::default();
        let pts: Vec<Point> = (0..2_000)
            .map(|i| point(id::REQUESTS, "all", "", i * 10, i as f64))
            .collect();
        m.write(&pts).unwrap();
        let raw = m
            .read(id::REQUESTS as usize, "", &plan(Tier::Raw, 0, 1 << 40))
            .unwrap();
        assert_eq!(raw.len(), CAP[0]);
        assert_eq!(raw.last().unwrap().agg.last, 1999.0);
        let minutes = m
            .read(id::REQUESTS as usize, "", &plan(Tier::Minute, 0, 59))
            .unwrap();
        assert_eq!(minutes.len(), 1);
        let a = minutes[0].agg;
        assert_eq!(
            (a.min, a.max, a.n, a.last, a.avg()),
            (0.0, 5.0, 6, 5.0, 2.5)
        );
        // Per-worker lines have no raw tier.
        m.write(&[point(id::WORKER_LOAD, "", "w1", 30, 0.5)])
            .unwrap();
        let r = m
            .read(id::WORKER_LOAD as usize, "w1", &plan(Tier::Raw, 0, 100))
            .unwrap();
        assert!(r.is_empty());
        let r = m
            .read(id::WORKER_LOAD as usize, "w1", &plan(Tier::Minute, 0, 100))
            .unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn line_count_is_capped_and_prune_frees_lines() {
        let mut m = Memory::default();
        let pts: Vec<Point> = (0..MAX_LINES + 10)
            .map(|i| point(id::WORKER_LOAD, "", &format!("w{i}"), 60, 1.0))
            .collect();
        m.write(&pts).unwrap();
        assert_eq!(m.n_lines, MAX_LINES);
        assert_eq!(m.dropped, 10);
        assert_eq!(
            m.lines.len(),
            MAX_LINES,
            "no empty entries for dropped lines"
        );
        m.prune(10 * 86_400 * 400, &Retention::default()).unwrap();
        assert_eq!(m.n_lines, 0);
        assert!(m.lines.is_empty());
    }
}
