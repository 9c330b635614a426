//! Tiers, rollup aggregates and how a query is answered from them. Pure.
//!
//! A sample lands in up to three tiers: raw (every sample interval), one
//! minute and one hour. A rollup row keeps min, max, sum, count and last
//! of the samples in its bucket, so coarser buckets merge exactly (an
//! average of averages would weigh buckets wrongly). A query picks the
//! finest tier that still covers its range and is no finer than its step,
//! then folds the rows into step-sized buckets.

use std::collections::BTreeMap;

use serde::Serialize;

/// A storage tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Raw = 0,
    Minute = 1,
    Hour = 2,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Raw, Tier::Minute, Tier::Hour];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }

    /// Bucket width in seconds (raw: the sample interval).
    pub fn width(self, interval_s: i64) -> i64 {
        match self {
            Tier::Raw => interval_s.max(1),
            Tier::Minute => 60,
            Tier::Hour => 3600,
        }
    }
}

/// How long each tier is kept, seconds (`--history-retention`). Lines of
/// a worker have retentions of their own: there are two per worker, so at
/// a thousand workers they outweigh the pool's lines a hundredfold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: i64,
    pub minute: i64,
    pub hour: i64,
    pub worker_minute: i64,
    pub worker_hour: i64,
}

impl Default for Retention {
    /// Pool: 1 day raw, 30 days of minutes, 400 days of hours; workers:
    /// 2 days of minutes, 30 days of hours.
    fn default() -> Self {
        Retention {
            raw: 86_400,
            minute: 30 * 86_400,
            hour: 400 * 86_400,
            worker_minute: 2 * 86_400,
            worker_hour: 30 * 86_400,
        }
    }
}

impl Retention {
    /// How long tier `t` of a pool line (or a worker's line) is kept.
    pub fn of(&self, t: Tier, per_worker: bool) -> i64 {
        match (t, per_worker) {
            (Tier::Raw, false) => self.raw,
            (Tier::Minute, false) => self.minute,
            (Tier::Hour, false) => self.hour,
            // Worker lines have no raw tier.
            (Tier::Raw, true) => 0,
            (Tier::Minute, true) => self.worker_minute,
            (Tier::Hour, true) => self.worker_hour,
        }
    }

    /// Parses `RAW,MINUTE,HOUR[,WORKER_MINUTE,WORKER_HOUR]` durations such
    /// as `1d,30d,400d,2d,30d` (units s, m, h, d; a bare number is
    /// seconds). Each must be 1 s ..= 10 years; omitted worker retentions
    /// keep their defaults.
    pub fn parse(s: &str) -> Result<Retention, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() != 3 && parts.len() != 5 {
            return Err(format!(
                "history retention needs RAW,MINUTE,HOUR[,WORKER_MINUTE,WORKER_HOUR] (e.g. 1d,30d,400d,2d,30d), got {s:?}"
            ));
        }
        let d: Vec<i64> = parts
            .iter()
            .map(|p| duration(p))
            .collect::<Result<_, _>>()?;
        let def = Retention::default();
        Ok(Retention {
            raw: d[0],
            minute: d[1],
            hour: d[2],
            worker_minute: d.get(3).copied().unwrap_or(def.worker_minute),
            worker_hour: d.get(4).copied().unwrap_or(def.worker_hour),
        })
    }
}

/// Longest a tier may be kept, seconds: ten years.
pub const MAX_RETENTION: i64 = 10 * 366 * 86_400;

fn duration(s: &str) -> Result<i64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (use e.g. 36h or 30d)"))?;
    let secs = n.saturating_mul(mult);
    if !(1..=MAX_RETENTION).contains(&secs) {
        return Err(format!("duration {s:?} must be between 1s and 10 years"));
    }
    Ok(secs)
}

/// The aggregate of the samples in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub n: u32,
    pub last: f64,
}

impl Agg {
    pub fn one(v: f64) -> Agg {
        Agg {
            min: v,
            max: v,
            sum: v,
            n: 1,
            last: v,
        }
    }

    /// Adds `o`, which is later in time than everything in `self`.
    pub fn merge(&mut self, o: &Agg) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.n = self.n.saturating_add(o.n);
        self.last = o.last;
    }

    pub fn avg(&self) -> f64 {
        if self.n == 0 {
            self.last
        } else {
            self.sum / self.n as f64
        }
    }
}

/// Start of the `width`-second bucket holding `ts`.
pub fn bucket(ts: i64, width: i64) -> i64 {
    ts.div_euclid(width) * width
}

/// Most buckets one answer holds; a longer range gets a coarser step.
pub const MAX_POINTS: i64 = 2_000;

/// A query, its values already clamped by the HTTP layer.
#[derive(Debug, Clone)]
pub struct Query {
    pub series: usize,
    /// Per-worker series: the worker; empty otherwise.
    pub worker: String,
    pub from: i64,
    pub to: i64,
    /// Requested bucket width (None: chosen from the range).
    pub step: Option<i64>,
}

/// What the store reads for a query: one tier, one time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub tier: Tier,
    pub step: i64,
    /// First bucket start (a multiple of `step`) and the range end.
    pub start: i64,
    pub end: i64,
}

/// Chooses the tier and step: the finest tier whose width is at most the
/// step and whose retention still reaches back to `from`, never raw for a
/// per-worker series; the step is at least that tier's width, a multiple
/// of it, and large enough for at most [`MAX_POINTS`] buckets.
pub fn plan(q: &Query, per_worker: bool, now: i64, interval_s: i64, keep: &Retention) -> Plan {
    let span = (q.to - q.from).max(1);
    let wanted = q.step.unwrap_or_else(|| (span / 360).max(1)).max(1);
    let wanted = wanted.max((span + MAX_POINTS - 1) / MAX_POINTS);
    let candidates = Tier::ALL
        .into_iter()
        .filter(|t| !(per_worker && *t == Tier::Raw));
    let covers = |t: Tier| q.from >= now - keep.of(t, per_worker);
    let tier = candidates
        .clone()
        .find(|t| t.width(interval_s) <= wanted && covers(*t))
        .or_else(|| candidates.clone().find(|t| covers(*t)))
        .unwrap_or(Tier::Hour);
    let width = tier.width(interval_s);
    let step = ((wanted + width - 1) / width).max(1) * width;
    Plan {
        tier,
        step,
        start: bucket(q.from, step),
        end: q.to,
    }
}

/// One stored row: a line's label value, the bucket start and aggregate.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub ts: i64,
    pub agg: Agg,
}

/// One line of an answer; arrays align with [`Answer::timestamps`].
#[derive(Debug, Serialize, PartialEq)]
pub struct Line {
    pub labels: BTreeMap<&'static str, String>,
    pub avg: Vec<Option<f64>>,
    pub min: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
    pub last: Vec<Option<f64>>,
}

/// The answer to a query.
#[derive(Debug, Serialize, PartialEq)]
pub struct Answer {
    pub series: &'static str,
    pub worker_id: Option<String>,
    pub from: i64,
    pub to: i64,
    pub step: i64,
    pub tier: &'static str,
    pub timestamps: Vec<i64>,
    pub lines: Vec<Line>,
}

/// Folds `rows` (any order) into the plan's buckets, one line per label
/// value, lines sorted by label.
pub fn assemble(q: &Query, plan: &Plan, rows: Vec<Row>) -> Answer {
    let def = &super::series::SERIES[q.series];
    let n = ((plan.end - plan.start) / plan.step + 1).clamp(1, MAX_POINTS + 1) as usize;
    let timestamps: Vec<i64> = (0..n as i64).map(|i| plan.start + i * plan.step).collect();
    let mut by_label: BTreeMap<String, Vec<Option<(i64, Agg)>>> = BTreeMap::new();
    for r in rows {
        if r.ts < plan.start || r.ts > plan.end {
            continue;
        }
        let i = ((r.ts - plan.start) / plan.step) as usize;
        if i >= n {
            continue;
        }
        let slots = by_label.entry(r.label).or_insert_with(|| vec![None; n]);
        match &mut slots[i] {
            // Rows of one bucket may come in any order: keep `last` the
            // latest one's.
            Some((ts, agg)) => {
                if r.ts >= *ts {
                    agg.merge(&r.agg);
                    *ts = r.ts;
                } else {
                    let mut earlier = r.agg;
                    earlier.merge(agg);
                    *agg = earlier;
                }
            }
            slot @ None => *slot = Some((r.ts, r.agg)),
        }
    }
    let lines = by_label
        .into_iter()
        .map(|(label, slots)| {
            let pick = |f: fn(&Agg) -> f64| -> Vec<Option<f64>> {
                slots.iter().map(|s| s.map(|(_, a)| f(&a))).collect()
            };
            Line {
                labels: def.labels.iter().map(|k| (*k, label.clone())).collect(),
                avg: pick(Agg::avg),
                min: pick(|a| a.min),
                max: pick(|a| a.max),
                last: pick(|a| a.last),
            }
        })
        .collect();
    Answer {
        series: def.name,
        worker_id: def.per_worker.then(|| q.worker.clone()),
        from: q.from,
        to: q.to,
        step: plan.step,
        tier: plan.tier.name(),
        timestamps,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: i64, to: i64, step: Option<i64>) -> Query {
        Query {
            series: 3,
            worker: String::new(),
            from,
            to,
            step,
        }
    }

    #[test]
    fn the_plan_takes_the_finest_tier_that_covers_the_range() {
        let keep = Retention::default();
        let now = 1_000_000_000;
        // Last hour, default step: raw at 10 s.
        let p = plan(&q(now - 3600, now, None), false, now, 10, &keep);
        assert_eq!((p.tier, p.step), (Tier::Raw, 10));
        // A step of 95 s on raw data: rounded up to a multiple of the width.
        let p = plan(&q(now - 3600, now, Some(95)), false, now, 10, &keep);
        assert_eq!((p.tier, p.step), (Tier::Raw, 100));
        // Two days back: raw is gone, minutes cover it.
        let p = plan(&q(now - 2 * 86_400, now, Some(10)), false, now, 10, &keep);
        assert_eq!((p.tier, p.step), (Tier::Minute, 120));
        // A year: hours, and at most MAX_POINTS buckets.
        let p = plan(&q(now - 365 * 86_400, now, Some(1)), false, now, 10, &keep);
        assert_eq!(p.tier, Tier::Hour);
        assert!((now - (now - 365 * 86_400)) / p.step <= MAX_POINTS);
        // Per-worker series never read raw.
        let p = plan(&q(now - 600, now, Some(10)), true, now, 10, &keep);
        assert_eq!((p.tier, p.step), (Tier::Minute, 60));
        assert_eq!(p.start % p.step, 0);
    }

    #[test]
    fn rows_fold_into_buckets_per_label_with_gaps_as_null() {
        let query = q(0, 59, Some(20));
        let p = Plan {
            tier: Tier::Raw,
            step: 20,
            start: 0,
            end: 59,
        };
        let row = |label: &str, ts, v| Row {
            label: label.into(),
            ts,
            agg: Agg::one(v),
        };
        let a = assemble(
            &query,
            &p,
            vec![
                row("b", 10, 4.0),
                row("a", 0, 1.0),
                row("b", 0, 2.0),
                row("a", 45, 7.0),
                row("a", 999, 9.0),
            ],
        );
        assert_eq!(a.timestamps, [0, 20, 40]);
        assert_eq!(a.lines.len(), 2);
        assert_eq!(a.lines[0].labels["route"], "a");
        assert_eq!(a.lines[0].avg, [Some(1.0), None, Some(7.0)]);
        assert_eq!(a.lines[1].avg, [Some(3.0), None, None]);
        assert_eq!(a.lines[1].min, [Some(2.0), None, None]);
        assert_eq!(a.lines[1].max, [Some(4.0), None, None]);
        // `last` is the latest sample's, whatever order rows came in.
        assert_eq!(a.lines[1].last, [Some(4.0), None, None]);
    }

    #[test]
    fn retention_parses_units_and_refuses_nonsense() {
        assert_eq!(
            Retention::parse("1d, 30d,400d").unwrap(),
            Retention::default()
        );
        assert_eq!(Retention::parse("90m,36h,3600").unwrap().raw, 5400);
        let r = Retention::parse("1d,30d,400d,3h,7d").unwrap();
        assert_eq!((r.worker_minute, r.worker_hour), (3 * 3600, 7 * 86_400));
        assert_eq!(r.of(Tier::Minute, true), 3 * 3600);
        assert_eq!(r.of(Tier::Raw, true), 0);
        for bad in [
            "1d,30d",
            "1d,1d,1d,1d",
            "x,1d,1d",
            "0s,1d,1d",
            "1d,1d,99999d",
            "-5,1d,1d",
        ] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
