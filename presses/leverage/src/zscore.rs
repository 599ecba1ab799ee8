//! kvpress's z-normalisation of a layer's scores: one mean and one standard deviation over all
//! heads (and batch entries) together, not per head.

/// `(x - mean) / max(std, 1e-6)` over every element, `std` with Bessel's correction as
/// `torch.std`, rounded to f32. A single element (where torch's `std` is NaN) gives 0.
pub(crate) fn z_normalise(values: &[f64]) -> Vec<f32> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let variance = if n > 1 {
        values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let std = variance.sqrt().max(1e-6);
    values.iter().map(|v| ((v - mean) / std) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_scores_have_zero_mean_and_unit_unbiased_std() {
        let z = z_normalise(&[1.0, 2.0, 3.0, 4.0]);
        let std = (5.0f64 / 3.0).sqrt();
        for (got, x) in z.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((f64::from(*got) - (x - 2.5) / std).abs() < 1e-6);
        }
        assert_eq!(z_normalise(&[7.0, 7.0]), vec![0.0, 0.0]);
        assert_eq!(z_normalise(&[7.0]), vec![0.0]);
    }
}
