//! The statistics the load generator and the benchmark report, computed one way in both.

use std::time::Duration;

/// The `p`th percentile of `sorted` (in increasing order) by nearest rank; None when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = ((p / 100.0) * last as f64).round() as usize;
    Some(sorted[i.min(last)])
}

/// The `p`th percentile of `v`, in milliseconds (nearest rank); NaN when empty.
pub fn percentile_ms(v: &[Duration], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    s.sort_by(f64::total_cmp);
    nearest_rank(&s, p).unwrap_or(f64::NAN)
}

/// The median of `v`, NaNs left out (NaN when nothing is left).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_rounds_to_the_closest_index() {
        let v: Vec<u32> = (0..=10).collect();
        assert_eq!(nearest_rank(&v, 0.0), Some(0));
        assert_eq!(nearest_rank(&v, 50.0), Some(5));
        assert_eq!(nearest_rank(&v, 99.0), Some(10));
        assert_eq!(nearest_rank(&v, 100.0), Some(10));
        assert_eq!(nearest_rank::<u32>(&[], 50.0), None);
    }

    #[test]
    fn percentile_ms_sorts_and_converts() {
        let v = [30, 10, 20].map(Duration::from_millis);
        assert_eq!(percentile_ms(&v, 50.0), 20.0);
        assert_eq!(percentile_ms(&v, 99.0), 30.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    #[test]
    fn median_skips_nan() {
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0]), 2.0, "upper median of an even count");
        assert!(median(&[f64::NAN]).is_nan());
    }
}
