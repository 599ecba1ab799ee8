//! Where DuoAttention's calibration texts come from: given in the config, read from a file, or
//! the bundled default, cut into pieces the way kvpress-rs's reference fixtures cut a text.

use std::path::Path;

use kvpress_core::{Error, Result};

/// The offline default calibration text: the preamble and first sections of the GNU GPL v3
/// (English prose that may be copied verbatim), a stand-in for the 50 BookSum chapters kvpress
/// downloads.
pub const DEFAULT_TEXT: &str = include_str!("default_calibration.txt");

/// `text` cut into `n` consecutive pieces at spaces, each stripped, as the reference fixture's
/// generator cuts its calibration context: the `i`-th cut is the first space at or after
/// character `round(i * chars / n)` (ties to even, as Python rounds). An error when the text has
/// too few spaces for `n` pieces.
pub fn cut_at_spaces(text: &str, n: usize) -> Result<Vec<String>> {
    let chars: Vec<char> = text.chars().collect();
    let mut bounds = vec![0usize];
    for i in 1..n {
        let from = (i as f64 * chars.len() as f64 / n as f64).round_ties_even() as usize;
        let space = (from..chars.len()).find(|&c| chars[c] == ' ');
        match space {
            Some(b) if b > *bounds.last().unwrap_or(&0) => bounds.push(b),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "duo_attention: the calibration text ({} characters) has too few spaces to \
                     be cut into num_samples = {n} pieces; give a longer text or fewer samples",
                    chars.len()
                )))
            }
        }
    }
    bounds.push(chars.len());
    Ok(bounds
        .windows(2)
        .map(|w| {
            chars[w[0]..w[1]]
                .iter()
                .collect::<String>()
                .trim()
                .to_string()
        })
        .collect())
}

/// The texts of a calibration file: a `.json` file holds an array of strings (used as they
/// are); any other file is one text, cut into `n` pieces ([`cut_at_spaces`]).
pub fn read_file(path: &Path, n: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "duo_attention: cannot read calibration_file {}: {e}",
            path.display()
        ))
    })?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return serde_json::from_str(&text).map_err(|e| {
            Error::InvalidArgument(format!(
                "duo_attention: calibration_file {} is not a JSON array of strings: {e}",
                path.display()
            ))
        });
    }
    cut_at_spaces(&text, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_and_cut_at_spaces() -> Result<()> {
        let pieces = cut_at_spaces("aa bb cc dd ee ff", 3)?;
        // Cuts at the first space at or after characters 6 and 11 (of 17): 8 and 11.
        assert_eq!(pieces, ["aa bb cc", "dd", "ee ff"]);
        assert_eq!(cut_at_spaces(DEFAULT_TEXT, 50)?.len(), 50);
        assert!(cut_at_spaces("nospaces", 2).is_err());
        Ok(())
    }
}
