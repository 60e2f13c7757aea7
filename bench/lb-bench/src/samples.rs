//! Figures of repeated measurements: median, min, max, percentiles.

/// Measurements of one quantity, in one unit.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    /// Adds one measurement.
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    /// `self[i] / reference[i]` for each round `i`.
    pub fn ratios(&self, reference: &Samples) -> Samples {
        self.0
            .iter()
            .zip(&reference.0)
            .map(|(a, b)| a / b)
            .collect()
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// The nearest-rank `q`-th percentile (`q` in 0 to 100): the smallest
    /// value that at least `q`% of the measurements do not exceed.
    pub fn percentile(&self, q: f64) -> f64 {
        let values = self.sorted();
        let rank = (q / 100.0 * values.len() as f64).ceil() as usize;
        values
            .get(rank.clamp(1, values.len().max(1)) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// The smallest.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The largest.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

impl FromIterator<f64> for Samples {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let odd: Samples = [3.0, 1.0, 2.0].into_iter().collect();
        assert_eq!((odd.median(), odd.min(), odd.max()), (2.0, 1.0, 3.0));
        let even: Samples = [4.0, 1.0, 3.0, 2.0].into_iter().collect();
        assert_eq!(even.median(), 2.5);
        assert!(Samples::default().median().is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Samples = (1..=100).rev().map(f64::from).collect();
        assert_eq!(hundred.percentile(50.0), 50.0);
        assert_eq!(hundred.percentile(99.0), 99.0);
        let thirty: Samples = (1..=30).map(f64::from).collect();
        assert_eq!(thirty.percentile(99.0), 30.0);
        assert!(Samples::default().percentile(99.0).is_nan());
    }
}
