//! The system process's choice of sources (RFC 5905 section 11.2): the
//! intersection algorithm finds the largest group whose correctness
//! intervals agree and marks the rest falsetickers, clustering prunes the
//! outliers of that group, and combining averages the survivors weighted by
//! their root distance.
//!
//! All arithmetic is integer (nanoseconds, i128 where products are formed):
//! the engine also runs in a guest where we do not rely on an FPU, and
//! results are the same bits everywhere.

use alloc::vec::Vec;

use crate::source::isqrt_i64;

/// RFC 5905 section 11.2.2 NMIN: clustering stops at this many survivors.
pub const MIN_CLUSTER_SURVIVORS: usize = 3;

/// One selectable source, as the system process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Local minus the source's clock.
    pub offset_ns: i64,
    /// Root distance: half-width of the correctness interval.
    pub distance_ns: i64,
    /// The source's own jitter (clock filter).
    pub jitter_ns: i64,
    pub stratum: u8,
}

/// What selection made of a list of candidates (indexes into it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Candidates whose interval meets the majority's intersection.
    pub truechimers: Vec<usize>,
    /// Truechimers kept by clustering, best first (the first is the
    /// system peer).
    pub survivors: Vec<usize>,
    /// Combined offset (local minus reference) and jitter, when at least
    /// `min_agreeing` truechimers were found.
    pub estimate: Option<Estimate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub offset_ns: i64,
    /// System jitter: the survivors' spread and the system peer's own
    /// jitter (RFC 5905 section 11.2.3).
    pub jitter_ns: i64,
}

/// Intersection, clustering and combining in one, requiring
/// `min_agreeing` truechimers for an estimate.
pub fn select(candidates: &[Candidate], min_agreeing: usize) -> Selection {
    let truechimers = intersect(candidates);
    if truechimers.len() < min_agreeing.max(1) {
        return Selection {
            truechimers,
            ..Selection::default()
        };
    }
    let survivors = cluster(candidates, &truechimers);
    let estimate = combine(candidates, &survivors);
    Selection {
        truechimers,
        survivors,
        estimate,
    }
}

/// The truechimers (RFC 5905 section 11.2.1 and appendix A.5.5.1, after
/// Marzullo and DTS): for `allow` = 0, 1, ... falsetickers while they are a
/// minority, find the lowest point covered by at least n - allow intervals
/// and the highest such point; accept when the intersection is not empty
/// and no more than `allow` midpoints lie outside it. A candidate is a
/// truechimer when its interval meets the intersection (as ntpd decides).
/// Empty when no majority agrees.
pub fn intersect(candidates: &[Candidate]) -> Vec<usize> {
    let n = candidates.len();
    // (edge, kind): -1 lower end, 0 midpoint, +1 upper end. Sorting by
    // (edge, kind) puts lower ends first at a tie, so touching intervals
    // count as meeting.
    let mut edges: Vec<(i64, i8)> = Vec::with_capacity(3 * n);
    for c in candidates {
        let d = c.distance_ns.max(0);
        edges.push((c.offset_ns.saturating_sub(d), -1));
        edges.push((c.offset_ns, 0));
        edges.push((c.offset_ns.saturating_add(d), 1));
    }
    edges.sort_unstable();
    let mut allow = 0;
    while 2 * allow < n {
        let need = (n - allow) as i64;
        let (mut low, mut high) = (None, None);
        let mut outside = 0;
        let mut chime = 0i64;
        for &(edge, kind) in &edges {
            chime -= i64::from(kind);
            if chime >= need {
                low = Some(edge);
                break;
            }
            if kind == 0 {
                outside += 1;
            }
        }
        chime = 0;
        for &(edge, kind) in edges.iter().rev() {
            chime += i64::from(kind);
            if chime >= need {
                high = Some(edge);
                break;
            }
            if kind == 0 {
                outside += 1;
            }
        }
        if let (Some(low), Some(high)) = (low, high)
            && outside <= allow
            && low <= high
        {
            return (0..n)
                .filter(|&i| {
                    let c = &candidates[i];
                    let d = c.distance_ns.max(0);
                    c.offset_ns.saturating_sub(d) <= high && c.offset_ns.saturating_add(d) >= low
                })
                .collect();
        }
        allow += 1;
    }
    Vec::new()
}

/// RFC 5905 section 11.2.2: order by merit (stratum, then distance), then
/// while more than [`MIN_CLUSTER_SURVIVORS`] remain, drop the one whose
/// offset sits furthest from the others (largest selection jitter), unless
/// that spread is already smaller than the best source's own jitter.
pub fn cluster(candidates: &[Candidate], truechimers: &[usize]) -> Vec<usize> {
    let mut survivors = truechimers.to_vec();
    survivors.sort_by_key(|&i| (candidates[i].stratum, candidates[i].distance_ns, i));
    while survivors.len() > MIN_CLUSTER_SURVIVORS {
        let spread = |i: usize| -> i64 {
            let sum: u128 = survivors
                .iter()
                .map(|&j| {
                    (i128::from(candidates[i].offset_ns) - i128::from(candidates[j].offset_ns)).unsigned_abs()
                })
                .map(|d| d * d)
                .sum();
            isqrt_i64(sum / (survivors.len() as u128 - 1))
        };
        let (worst_pos, worst) = survivors
            .iter()
            .enumerate()
            .map(|(pos, &i)| (pos, spread(i)))
            .max_by_key(|&(pos, s)| (s, pos))
            .unwrap_or((0, 0));
        let least_jitter = survivors
            .iter()
            .map(|&i| candidates[i].jitter_ns)
            .min()
            .unwrap_or(0);
        if worst <= least_jitter {
            break;
        }
        survivors.remove(worst_pos);
    }
    survivors
}

/// RFC 5905 section 11.2.3: offsets averaged with weights 1/distance;
/// jitter from the survivors' spread around the system peer, combined
/// with the peer's own.
pub fn combine(candidates: &[Candidate], survivors: &[usize]) -> Option<Estimate> {
    let peer = candidates.get(*survivors.first()?)?;
    // Weights 2^60 / distance keep the precision of the sums in integers
    // (a distance is at least 5 ms, MINDISP / 2, so a weight is under 2^38
    // and a weighted offset under 2^102).
    let weight = |c: &Candidate| (1i128 << 60) / i128::from(c.distance_ns.max(1));
    let (mut total, mut weighted, mut spread) = (0i128, 0i128, 0u128);
    for c in survivors.iter().filter_map(|&i| candidates.get(i)) {
        let w = weight(c);
        total = total.saturating_add(w);
        weighted = weighted.saturating_add(w.saturating_mul(i128::from(c.offset_ns)));
        let d = (i128::from(c.offset_ns) - i128::from(peer.offset_ns)).unsigned_abs();
        spread = spread.saturating_add((w as u128).saturating_mul(d.saturating_mul(d)));
    }
    let offset = i64::try_from(weighted / total).ok()?;
    let select_jitter_sq = spread / total as u128;
    let peer_jitter = i128::from(peer.jitter_ns).unsigned_abs();
    let jitter = isqrt_i64(select_jitter_sq.saturating_add(peer_jitter * peer_jitter));
    Some(Estimate {
        offset_ns: offset,
        jitter_ns: jitter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const MS: i64 = 1_000_000;

    fn c(offset_ms: i64, distance_ms: i64) -> Candidate {
        Candidate {
            offset_ns: offset_ms * MS,
            distance_ns: distance_ms * MS,
            jitter_ns: MS / 10,
            stratum: 2,
        }
    }

    #[test]
    fn three_agree_and_the_fourth_ten_seconds_off_is_a_falseticker() {
        let cands = [c(1, 20), c(-2, 20), c(10_000, 20), c(3, 20)];
        let s = select(&cands, 3);
        assert_eq!(s.truechimers, vec![0, 1, 3]);
        assert!(!s.survivors.contains(&2));
        let e = s.estimate.unwrap();
        assert!((0..=MS).contains(&e.offset_ns), "{e:?}");
    }

    #[test]
    fn no_majority_means_no_truechimers() {
        // Two pairs far apart: neither is a majority.
        assert!(intersect(&[c(0, 10), c(1, 10), c(5000, 10), c(5001, 10)]).is_empty());
        // Two sources that disagree: nothing, rather than flip-flopping.
        assert!(intersect(&[c(0, 10), c(500, 10)]).is_empty());
        assert_eq!(select(&[c(0, 10), c(500, 10)], 1).estimate, None);
        assert!(intersect(&[]).is_empty());
    }

    #[test]
    fn one_source_is_its_own_majority_and_quorum_decides() {
        assert_eq!(intersect(&[c(42, 10)]), vec![0]);
        assert_eq!(select(&[c(42, 10)], 1).estimate.unwrap().offset_ns, 42 * MS);
        assert_eq!(select(&[c(42, 10)], 2).estimate, None);
        // Two that agree pass a quorum of two.
        assert!(select(&[c(1, 10), c(2, 10)], 2).estimate.is_some());
    }

    #[test]
    fn a_wide_interval_still_meets_the_intersection() {
        // The third is 60 ms off but claims 100 ms of error: it is correct by
        // its own bound, so it is a truechimer (combining weights it down).
        let cands = [c(0, 10), c(2, 10), c(60, 100)];
        assert_eq!(intersect(&cands), vec![0, 1, 2]);
        let e = combine(&cands, &[0, 1, 2]).unwrap();
        assert!(e.offset_ns < 10 * MS, "{e:?}");
    }

    #[test]
    fn clustering_drops_the_outlier_down_to_three() {
        let cands = [c(0, 50), c(1, 50), c(-1, 50), c(40, 50), c(2, 50)];
        let t = intersect(&cands);
        assert_eq!(t.len(), 5);
        let s = cluster(&cands, &t);
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&3));
        // Nothing is dropped once the spread is under the best jitter.
        let mut tight = cands;
        for x in &mut tight {
            x.jitter_ns = 100 * MS;
        }
        assert_eq!(cluster(&tight, &t).len(), 5);
    }

    #[test]
    fn combining_weights_by_distance() {
        let cands = [c(0, 10), c(30, 30)];
        // Weights 1/10 and 1/30: (0*3 + 30*1) / 4 = 7.5 ms.
        let e = combine(&cands, &[0, 1]).unwrap();
        assert!((e.offset_ns - 7_500_000).abs() < 10, "{e:?}");
        assert_eq!(combine(&cands, &[]), None);
    }
}
