//! Parsers of the numeric options (clap `value_parser`s): each refuses a value outside its
//! range with a message naming the valid range, so that `--max-new-tokens -1` says what is
//! valid instead of how it failed to parse.

/// A whole number of at least `MIN` (`usize`).
pub fn at_least<const MIN: usize>(text: &str) -> Result<usize, String> {
    let valid = || format!("must be a whole number of at least {MIN}");
    let trimmed = text.trim();
    match trimmed.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(n) => Err(format!("{n} is too small: {}", valid())),
        Err(_) if trimmed.starts_with('-') && is_number(trimmed) => {
            Err(format!("it is negative: {}", valid()))
        }
        Err(_) if is_whole(trimmed) => Err(format!("it is too large: {}", valid())),
        Err(_) => Err(format!("not a whole number: {}", valid())),
    }
}

/// A seed: a whole number from 0 to 2^64 - 1.
pub fn seed(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    trimmed.parse::<u64>().map_err(|_| {
        let what = if trimmed.starts_with('-') && is_number(trimmed) {
            "it is negative"
        } else {
            "not a whole number in range"
        };
        format!("{what}: a seed is a whole number from 0 to {}", u64::MAX)
    })
}

/// A sampling temperature: 0 (greedy decoding) or a positive finite number.
pub fn temperature(text: &str) -> Result<f64, String> {
    let valid = "temperature must be positive (or 0 for greedy decoding) and finite";
    match text.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("{valid}, got {t}")),
        Err(_) => Err(format!("not a number: {valid}")),
    }
}

/// A nucleus mass in `(0, 1]`.
pub fn top_p(text: &str) -> Result<f64, String> {
    let valid = "top-p is the probability mass sampled from, in (0, 1] (1 samples from all tokens)";
    match text.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        Ok(p) => Err(format!("{p} is outside (0, 1]: {valid}")),
        Err(_) => Err(format!("not a number: {valid}")),
    }
}

fn is_whole(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_number(text: &str) -> bool {
    is_whole(text) || text.parse::<f64>().is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_their_minimum() {
        assert_eq!(at_least::<1>("3"), Ok(3));
        assert_eq!(at_least::<0>("0"), Ok(0));
        for (text, phrase) in [
            ("0", "0 is too small: must be a whole number of at least 1"),
            ("-1", "it is negative: must be a whole number of at least 1"),
            ("-2.5", "it is negative"),
            ("1.5", "not a whole number"),
            ("x", "not a whole number"),
            ("99999999999999999999999", "too large"),
        ] {
            let error = at_least::<1>(text).unwrap_err();
            assert!(error.contains(phrase), "{text}: {error}");
        }
    }

    #[test]
    fn floats_refuse_nan_negative_and_out_of_range() {
        assert_eq!(temperature("0"), Ok(0.0));
        assert_eq!(temperature("0.7"), Ok(0.7));
        for text in ["-1", "nan", "inf", "NaN", "warm"] {
            let error = temperature(text).unwrap_err();
            assert!(
                error.contains("temperature must be positive"),
                "{text}: {error}"
            );
        }
        assert_eq!(top_p("1"), Ok(1.0));
        for text in ["0", "-0.5", "1.5", "nan", "x"] {
            assert!(top_p(text).unwrap_err().contains("(0, 1]"), "{text}");
        }
        assert_eq!(seed("7"), Ok(7));
        assert!(seed("-3").unwrap_err().contains("it is negative"));
    }
}
