//! RULER's `string_match_all`: the fraction of expected values found in the answer.

/// Fraction of `expected` strings that occur in `answer`, ignoring case (RULER's metric for
/// every synthetic task). 1.0 when nothing is expected.
pub fn string_match(answer: &str, expected: &[String]) -> f64 {
    if expected.is_empty() {
        return 1.0;
    }
    let answer = answer.to_lowercase();
    let found = expected
        .iter()
        .filter(|value| answer.contains(&value.to_lowercase()))
        .count();
    found as f64 / expected.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_values_present() {
        let expected = vec!["7340912".to_string(), "Ocean".to_string()];
        assert_eq!(
            string_match("The number is 7340912 for ocean.", &expected),
            1.0
        );
        assert_eq!(string_match("The number is 734.", &expected), 0.0);
        assert_eq!(string_match("ocean", &expected), 0.5);
        assert_eq!(string_match("anything", &[]), 1.0);
    }
}
