//! Choosing a worker for a request: a pure function of the candidates, the
//! request's model / session / pins, and a random source (so tests can fix
//! it). No IO, no clock: the caller says which workers are cooling down.
//!
//! Order of preference, each step narrowing the set when it can:
//! 1. not already tried for this request (failover goes elsewhere);
//! 2. pinned by an admin (model pin first, else service pin), when any
//!    pinned worker is a candidate;
//! 3. not in cooldown (unless every candidate is: then cooling ones are
//!    better than a 503);
//! 4. has the requested model loaded (when any has);
//! 5. with `X-Session-Id`: the rendezvous-hash winner, so a session sticks
//!    to one worker while it stays in the set and moves (only its own
//!    sessions) when it leaves;
//! 6. otherwise least outstanding: coordinator in-flight on this shard plus
//!    the worker's reported `active_requests`, with `current_load` as the
//!    tie-breaker between two random equals (power of two choices), which
//!    spreads load without herding when every shard sees the same numbers.

/// What routing needs to know about one healthy worker. Borrowed from the
/// cached worker list: building the candidates copies no strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub worker_id: &'a str,
    pub loaded_models: &'a [String],
    /// Requests this shard has in flight to the worker.
    pub inflight: u32,
    /// Reported by the worker's last heartbeat.
    pub active_requests: u64,
    pub current_load: f64,
    pub cooling: bool,
}

impl Candidate<'_> {
    fn outstanding(&self) -> u64 {
        self.inflight as u64 + self.active_requests
    }
}

/// The request's routing inputs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ask<'a> {
    pub model: Option<&'a str>,
    pub session: Option<&'a str>,
    /// Workers an admin pinned this service/model to (empty = no pin).
    pub pinned: &'a [String],
    /// Workers already tried for this request.
    pub exclude: &'a [&'a str],
}

/// Picks one of `cands`; `rand(n)` returns a number in `0..n`.
pub fn choose(
    cands: &[Candidate<'_>],
    ask: &Ask<'_>,
    rand: &mut dyn FnMut(usize) -> usize,
) -> Option<usize> {
    let mut set: Vec<usize> = (0..cands.len())
        .filter(|&i| !ask.exclude.contains(&cands[i].worker_id))
        .collect();
    narrow(&mut set, |i| {
        ask.pinned.iter().any(|p| p == cands[i].worker_id)
    });
    narrow(&mut set, |i| !cands[i].cooling);
    if let Some(m) = ask.model {
        narrow(&mut set, |i| cands[i].loaded_models.iter().any(|x| x == m));
    }
    if set.is_empty() {
        return None;
    }
    if let Some(s) = ask.session {
        return set
            .iter()
            .copied()
            .max_by_key(|&i| (rendezvous(s, cands[i].worker_id), std::cmp::Reverse(i)));
    }
    let least = set.iter().map(|&i| cands[i].outstanding()).min()?;
    let mut equals = set;
    equals.retain(|&i| cands[i].outstanding() == least);
    if equals.len() == 1 {
        return Some(equals[0]);
    }
    let a = equals[rand(equals.len())];
    let mut b = equals[rand(equals.len() - 1)];
    if b == a {
        // Two distinct draws: map the collision onto the last slot.
        b = equals[equals.len() - 1];
    }
    Some(if cands[b].current_load < cands[a].current_load {
        b
    } else {
        a
    })
}

/// Keeps only the members passing `keep`, unless none does.
fn narrow(set: &mut Vec<usize>, keep: impl Fn(usize) -> bool) {
    if set.iter().any(|&i| keep(i)) {
        set.retain(|&i| keep(i));
    }
}

/// Highest-random-weight score of (key, worker): stable across processes
/// and shards (fixed seeds), independent of the other workers.
pub(crate) fn rendezvous(key: &str, worker: &str) -> u64 {
    let h = ahash::RandomState::with_seeds(1, 2, 3, 4);
    h.hash_one((key, worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> Candidate<'_> {
        Candidate {
            worker_id: id,
            loaded_models: &[],
            inflight: 0,
            active_requests: 0,
            current_load: 0.0,
            cooling: false,
        }
    }

    fn rng(seed: u64) -> impl FnMut(usize) -> usize {
        let mut r = fastrand::Rng::with_seed(seed);
        move |n| r.usize(..n)
    }

    fn pick(cands: &[Candidate<'_>], ask: &Ask<'_>) -> Option<String> {
        choose(cands, ask, &mut rng(7)).map(|i| cands[i].worker_id.to_string())
    }

    #[test]
    fn empty_and_all_excluded_give_none() {
        assert_eq!(pick(&[], &Ask::default()), None);
        let ex = ["a"];
        let ask = Ask {
            exclude: &ex,
            ..Default::default()
        };
        assert_eq!(pick(&[c("a")], &ask), None);
    }

    #[test]
    fn least_outstanding_wins() {
        let mut a = c("a");
        a.inflight = 2;
        let mut b = c("b");
        b.active_requests = 1;
        let mut d = c("d");
        d.inflight = 1;
        d.active_requests = 3;
        assert_eq!(pick(&[a, b, d], &Ask::default()).as_deref(), Some("b"));
    }

    #[test]
    fn equals_are_spread_and_load_breaks_ties() {
        let cands = vec![c("a"), c("b"), c("d"), c("e")];
        let mut counts = [0u32; 4];
        let mut r = rng(1);
        for _ in 0..4000 {
            counts[choose(&cands, &Ask::default(), &mut r).unwrap()] += 1;
        }
        for n in counts {
            assert!((800..1200).contains(&n), "{counts:?}");
        }
        // With two candidates, p2c always sees both: the lighter one wins.
        let mut a = c("a");
        a.current_load = 0.9;
        let b = c("b");
        for seed in 0..20 {
            let i = choose(&[a.clone(), b.clone()], &Ask::default(), &mut rng(seed));
            assert_eq!(i, Some(1));
        }
    }

    #[test]
    fn model_aware_then_fallback() {
        let llama3 = ["llama3".to_string()];
        let mut a = c("a");
        a.loaded_models = &llama3;
        a.inflight = 5;
        let b = c("b");
        let ask = Ask {
            model: Some("llama3"),
            ..Default::default()
        };
        assert_eq!(pick(&[a.clone(), b.clone()], &ask).as_deref(), Some("a"));
        let ask = Ask {
            model: Some("mistral"),
            ..Default::default()
        };
        // Nobody has it: least outstanding among all.
        assert_eq!(pick(&[a, b], &ask).as_deref(), Some("b"));
    }

    #[test]
    fn cooldown_is_avoided_unless_everyone_cools() {
        let mut a = c("a");
        a.cooling = true;
        let mut b = c("b");
        b.inflight = 9;
        assert_eq!(
            pick(&[a.clone(), b.clone()], &Ask::default()).as_deref(),
            Some("b")
        );
        b.cooling = true;
        assert_eq!(pick(&[a, b], &Ask::default()).as_deref(), Some("a"));
    }

    #[test]
    fn pins_restrict_when_a_pinned_worker_is_there() {
        let cands = vec![c("a"), c("b"), c("d")];
        let pins = vec!["d".to_string(), "gone".to_string()];
        let ask = Ask {
            pinned: &pins,
            ..Default::default()
        };
        for seed in 0..10 {
            let i = choose(&cands, &ask, &mut rng(seed)).unwrap();
            assert_eq!(cands[i].worker_id, "d");
        }
        let pins = vec!["gone".to_string()];
        let ask = Ask {
            pinned: &pins,
            ..Default::default()
        };
        assert!(pick(&cands, &ask).is_some());
    }

    #[test]
    fn sessions_stick_and_only_the_leavers_sessions_move() {
        let all: Vec<Candidate> = ["a", "b", "d", "e"].into_iter().map(c).collect();
        let sessions: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
        let place = |cands: &[Candidate], s: &str| {
            let ask = Ask {
                session: Some(s),
                ..Default::default()
            };
            // Load does not move a session.
            pick(cands, &ask).unwrap()
        };
        let before: Vec<String> = sessions.iter().map(|s| place(&all, s)).collect();
        let mut busy = all.clone();
        busy[0].inflight = 50;
        for (s, w) in sessions.iter().zip(&before) {
            assert_eq!(&place(&busy, s), w);
        }
        let without_b: Vec<Candidate> =
            all.iter().filter(|c| c.worker_id != "b").cloned().collect();
        let mut moved = 0;
        for (s, w) in sessions.iter().zip(&before) {
            let now = place(&without_b, s);
            if w == "b" {
                moved += 1;
            } else {
                assert_eq!(&now, w, "a session not on b moved");
            }
        }
        assert!(moved > 20, "b had {moved} of 200 sessions");
    }
}
