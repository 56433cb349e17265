//! Per gate and stream, which `seq` numbers have arrived: the contiguous
//! mark, the highest seen, and the holes between them. Pure: no I/O, `now`
//! is an argument. The ingest keeps one [`SeqState`] per `seq_streams` row
//! and applies each batch to it under that row's lock, so the result does
//! not depend on the order in which replicas receive a gate's messages.

use serde_json::{Value, json};

/// One open range of missing numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub from: u64,
    pub to: u64,
    /// When the platform first saw the hole (Unix ms).
    pub opened_at_ms: i64,
    /// Set once the hole outlived the gap timeout and became a `gaps` row;
    /// the pieces of a split hole keep it.
    pub gap_id: Option<i64>,
}

/// The bookkeeping of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeqState {
    /// Every number up to this one arrived (or was explained).
    pub contiguous: u64,
    /// The highest number seen.
    pub max_seq: u64,
    /// Disjoint, ascending, all within `contiguous+1..max_seq`.
    pub holes: Vec<Hole>,
}

impl SeqState {
    /// The state of a stream first seen with `seqs`: the platform may start
    /// long after the gate, so numbers below the first one seen are not
    /// holes.
    pub fn first_seen(seqs: &[u64]) -> Self {
        let base = seqs.iter().copied().min().unwrap_or(1).saturating_sub(1);
        SeqState { contiguous: base, max_seq: base, holes: Vec::new() }
    }

    /// Records arrived numbers (duplicates and numbers at or below the
    /// contiguous mark change nothing).
    pub fn apply(&mut self, seqs: &[u64], now_ms: i64) {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for s in sorted {
            if s <= self.contiguous {
                continue;
            }
            if s > self.max_seq {
                if s > self.max_seq + 1 {
                    self.holes.push(Hole { from: self.max_seq + 1, to: s - 1, opened_at_ms: now_ms, gap_id: None });
                }
                self.max_seq = s;
            } else {
                self.fill(s, s);
            }
        }
        self.settle();
    }

    /// Removes `from..=to` from the holes (arrived, or explained by the gate
    /// as dropped): the pieces keep their opening time and gap.
    pub fn fill(&mut self, from: u64, to: u64) {
        let mut kept = Vec::with_capacity(self.holes.len() + 1);
        for h in self.holes.drain(..) {
            if h.to < from || h.from > to {
                kept.push(h);
                continue;
            }
            if h.from < from {
                kept.push(Hole { to: from - 1, ..h.clone() });
            }
            if h.to > to {
                kept.push(Hole { from: to + 1, ..h });
            }
        }
        self.holes = kept;
    }

    /// Moves the contiguous mark up to the first hole.
    fn settle(&mut self) {
        self.contiguous = self.holes.first().map_or(self.max_seq, |h| h.from - 1);
    }

    /// Explains `from..=to` as dropped by the gate: no longer missing.
    pub fn explain(&mut self, from: u64, to: u64) {
        self.fill(from, to);
        if to > self.max_seq {
            self.max_seq = to;
        }
        self.settle();
    }

    /// Holes open for at least `timeout_ms` that are not gaps yet.
    pub fn due(&self, now_ms: i64, timeout_ms: i64) -> Vec<usize> {
        (0..self.holes.len())
            .filter(|&i| self.holes[i].gap_id.is_none() && now_ms - self.holes[i].opened_at_ms >= timeout_ms)
            .collect()
    }

    /// The gaps still (partly) open.
    pub fn open_gaps(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.holes.iter().filter_map(|h| h.gap_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Missing numbers in all.
    pub fn missing(&self) -> u64 {
        self.holes.iter().map(|h| h.to - h.from + 1).sum()
    }

    pub fn holes_json(&self) -> Value {
        Value::Array(
            self.holes
                .iter()
                .map(|h| json!({"from": h.from, "to": h.to, "opened_at_ms": h.opened_at_ms, "gap_id": h.gap_id}))
                .collect(),
        )
    }

    /// From the stored columns; a malformed hole is dropped (it can only
    /// come from a hand edit) rather than stopping the ingest.
    pub fn from_row(contiguous: i64, max_seq: i64, holes: &Value) -> Self {
        let holes = holes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| {
                        Some(Hole {
                            from: h.get("from")?.as_u64()?,
                            to: h.get("to")?.as_u64()?,
                            opened_at_ms: h.get("opened_at_ms")?.as_i64()?,
                            gap_id: h.get("gap_id").and_then(Value::as_i64),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        SeqState { contiguous: contiguous.max(0) as u64, max_seq: max_seq.max(0) as u64, holes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(s: &SeqState) -> Vec<(u64, u64)> {
        s.holes.iter().map(|h| (h.from, h.to)).collect()
    }

    #[test]
    fn in_order_numbers_advance_the_mark() {
        let mut s = SeqState::first_seen(&[1]);
        s.apply(&[1, 2, 3], 0);
        assert_eq!((s.contiguous, s.max_seq, ranges(&s)), (3, 3, vec![]));
    }

    #[test]
    fn a_platform_started_late_sees_no_hole_below_the_first_number() {
        let mut s = SeqState::first_seen(&[1000, 1001]);
        s.apply(&[1001, 1000], 0);
        assert_eq!((s.contiguous, s.max_seq, s.missing()), (1001, 1001, 0));
    }

    #[test]
    fn holes_open_split_and_close_in_any_order() {
        type Step = (&'static [u64], u64, &'static [(u64, u64)]);
        let table: &[Step] = &[
            (&[1, 2, 6], 2, &[(3, 5)]),
            (&[4], 2, &[(3, 3), (5, 5)]),
            (&[9, 5], 2, &[(3, 3), (7, 8)]),
            (&[3], 6, &[(7, 8)]),
            (&[8, 7, 7], 9, &[]),
            (&[2, 9], 9, &[]),
        ];
        let mut s = SeqState::first_seen(&[1]);
        for (i, (seqs, contiguous, holes)) in table.iter().enumerate() {
            s.apply(seqs, i as i64);
            assert_eq!((s.contiguous, ranges(&s)), (*contiguous, holes.to_vec()), "step {i}");
        }
    }

    #[test]
    fn split_pieces_keep_their_age_and_gap() {
        let mut s = SeqState::first_seen(&[1]);
        s.apply(&[1, 10], 1_000);
        s.holes[0].gap_id = Some(7);
        s.apply(&[5], 9_000);
        assert_eq!(ranges(&s), vec![(2, 4), (6, 9)]);
        assert!(s.holes.iter().all(|h| h.opened_at_ms == 1_000 && h.gap_id == Some(7)));
        assert_eq!(s.open_gaps(), vec![7]);
        s.apply(&[2, 3, 4, 6, 7, 8, 9], 9_500);
        assert!(s.open_gaps().is_empty());
    }

    #[test]
    fn due_holes_wait_for_the_timeout_and_become_gaps_once() {
        let mut s = SeqState::first_seen(&[1]);
        s.apply(&[1, 5], 1_000);
        assert!(s.due(1_000 + 299_999, 300_000).is_empty());
        assert_eq!(s.due(1_000 + 300_000, 300_000), vec![0]);
        s.holes[0].gap_id = Some(1);
        assert!(s.due(1_000_000, 300_000).is_empty());
    }

    #[test]
    fn an_explained_range_is_no_longer_missing() {
        let mut s = SeqState::first_seen(&[1]);
        s.apply(&[1, 2, 10], 0);
        s.explain(3, 9);
        assert_eq!((s.contiguous, s.missing()), (10, 0));
    }

    #[test]
    fn the_stored_form_round_trips() {
        let mut s = SeqState::first_seen(&[1]);
        s.apply(&[1, 4, 9], 77);
        s.holes[1].gap_id = Some(3);
        let back = SeqState::from_row(s.contiguous as i64, s.max_seq as i64, &s.holes_json());
        assert_eq!(back, s);
    }
}
