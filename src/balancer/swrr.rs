//! Smooth weighted round robin (nginx's algorithm).
//!
//! Pingora's `Weighted<RoundRobin>` repeats each backend `weight` times in a row (3:1 gives
//! A,A,A,B); smooth WRR interleaves them (A,A,B,A) and gives exactly `weight` picks per
//! `sum(weights)` consecutive picks, which is what APISIX users see and test for.

use std::sync::Mutex;

pub struct SmoothWrr {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    /// Weights of 0 are never picked, unless every weight is 0: then all are equal (APISIX
    /// examples use `weight: 0` everywhere to mean "no preference").
    pub fn new(weights: &[u32]) -> SmoothWrr {
        let all_zero = weights.iter().all(|w| *w == 0);
        let weights: Vec<i64> = weights
            .iter()
            .map(|w| if all_zero { 1 } else { *w as i64 })
            .collect();
        SmoothWrr {
            current: Mutex::new(vec![0; weights.len()]),
            weights,
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The next pick among the members `eligible` accepts, or None if it accepts none.
    pub fn next_where(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            let w = self.weights[i];
            if w == 0 || !eligible(i) {
                continue;
            }
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cur[b] -= total;
        Some(b)
    }

    pub fn next(&self) -> Option<usize> {
        self.next_where(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_exactly() {
        let s = SmoothWrr::new(&[8, 2]);
        for _ in 0..5 {
            let picks: Vec<usize> = (0..10).map(|_| s.next().unwrap()).collect();
            assert_eq!(picks.iter().filter(|p| **p == 0).count(), 8);
            // never 8 in a row: the two B picks are spread out
            let first_b = picks.iter().position(|p| *p == 1).unwrap();
            assert!(first_b < 8, "{picks:?}");
        }
        let s = SmoothWrr::new(&[3, 1]);
        let picks: Vec<usize> = (0..4).map(|_| s.next().unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0]);
    }

    #[test]
    fn zero_weights() {
        let s = SmoothWrr::new(&[0, 0]);
        let picks: Vec<usize> = (0..4).map(|_| s.next().unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        let s = SmoothWrr::new(&[0, 5]);
        assert!((0..5).all(|_| s.next() == Some(1)));
    }

    #[test]
    fn skips_ineligible() {
        let s = SmoothWrr::new(&[5, 1]);
        assert!((0..6).all(|_| s.next_where(|i| i != 0) == Some(1)));
        assert_eq!(s.next_where(|_| false), None);
    }
}
