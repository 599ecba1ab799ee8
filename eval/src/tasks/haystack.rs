//! What fills a context around the needles: RULER's noise sentences or an essay's sentences,
//! and where the needles go.

use super::Haystack;

/// The noise haystack: one unit of RULER's repeated filler.
pub(super) const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// Haystack units (sentences or noise blocks), cycled to `n`.
pub(super) fn haystack_units(haystack: &Haystack, n: usize) -> Vec<String> {
    match haystack {
        Haystack::Noise => vec![NOISE.to_string(); n],
        Haystack::Essay(text) => {
            let sentences: Vec<&str> = text
                .split_inclusive(['.', '!', '?'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if sentences.is_empty() {
                return vec![NOISE.to_string(); n];
            }
            sentences
                .iter()
                .cycle()
                .take(n)
                .map(|s| s.to_string())
                .collect()
        }
    }
}

/// Inserts `needles` into `units`: the first at `depth`, the others spread after it.
pub(super) fn insert_needles(
    mut units: Vec<String>,
    needles: &[String],
    depth: f64,
) -> Vec<String> {
    let n = units.len();
    let first = ((depth.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    for (i, needle) in needles.iter().enumerate().rev() {
        let at = (first + i * n.saturating_sub(first) / needles.len().max(1)).min(units.len());
        units.insert(at, needle.clone());
    }
    units
}
