//! Results of an evaluation: the Markdown table and the accuracy-vs-ratio plot (SVG).

mod plot;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

pub use plot::svg_plots;

use crate::results::{unique_rows, RatioKey, ResultRow};
use crate::Setting;

/// Name of the full-cache rows.
pub const FULL_CACHE: &str = "full cache";

/// A cell of the results: a press at a ratio on a task, in a setting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CellKey {
    setting: Setting,
    press: String,
    ratio: RatioKey,
    task: String,
}

/// Mean score per (setting, press, ratio, task).
fn means(rows: &[ResultRow]) -> BTreeMap<CellKey, f64> {
    let mut sums: BTreeMap<CellKey, (f64, usize)> = BTreeMap::new();
    for row in rows {
        let key = CellKey {
            setting: row.setting,
            press: row.press.clone(),
            ratio: RatioKey::new(row.compression_ratio),
            task: row.task.clone(),
        };
        let entry = sums.entry(key).or_default();
        entry.0 += row.score;
        entry.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// One Markdown table per setting: a row per (press, ratio), a column per task, and the
/// average over tasks, the full cache first; then, when the rows span several context lengths,
/// the mean per press, ratio and length. A row repeated (same [`crate::RowKey`]) counts once.
pub fn markdown(rows: &[ResultRow]) -> String {
    let unique: Vec<ResultRow> = unique_rows(rows).into_iter().cloned().collect();
    let rows = unique.as_slice();
    let means = means(rows);
    let tasks: BTreeSet<&String> = rows.iter().map(|r| &r.task).collect();
    let settings: BTreeSet<Setting> = rows.iter().map(|r| r.setting).collect();
    let mut out = String::new();
    for setting in settings {
        let _ = writeln!(out, "### {setting}\n");
        let header: Vec<&str> = tasks.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(out, "| press | ratio | {} | average |", header.join(" | "));
        let _ = writeln!(out, "|---|---:|{}---:|", "---:|".repeat(tasks.len()));
        let mut configs: Vec<(String, RatioKey)> = means
            .keys()
            .filter(|k| k.setting == setting)
            .map(|k| (k.press.clone(), k.ratio))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        configs.sort_by_key(|(press, ratio)| (press != FULL_CACHE, press.clone(), *ratio));
        for (press, ratio) in configs {
            let scores: Vec<Option<f64>> = tasks
                .iter()
                .map(|t| {
                    let key = CellKey {
                        setting,
                        press: press.clone(),
                        ratio,
                        task: (*t).clone(),
                    };
                    means.get(&key).copied()
                })
                .collect();
            let present: Vec<f64> = scores.iter().flatten().copied().collect();
            let average = present.iter().sum::<f64>() / present.len().max(1) as f64;
            let cells: Vec<String> = scores
                .iter()
                .map(|s| s.map_or("–".to_string(), |v| format!("{v:.2}")))
                .collect();
            let _ = writeln!(
                out,
                "| {press} | {ratio} | {} | {average:.2} |",
                cells.join(" | ")
            );
        }
        out.push('\n');
        by_context_length(&mut out, rows, setting);
    }
    out
}

/// Mean score (over tasks and samples) per press and ratio and context length, when the rows
/// span several lengths.
fn by_context_length(out: &mut String, rows: &[ResultRow], setting: Setting) {
    let rows: Vec<&ResultRow> = rows.iter().filter(|r| r.setting == setting).collect();
    let lengths: BTreeSet<usize> = rows.iter().map(|r| r.context_length).collect();
    if lengths.len() < 2 {
        return;
    }
    let mut sums: BTreeMap<(bool, String, RatioKey, usize), (f64, usize)> = BTreeMap::new();
    for row in &rows {
        let key = (
            row.press != FULL_CACHE,
            row.press.clone(),
            RatioKey::new(row.compression_ratio),
            row.context_length,
        );
        let entry = sums.entry(key).or_default();
        entry.0 += row.score;
        entry.1 += 1;
    }
    let header: Vec<String> = lengths.iter().map(|l| format!("{l} tokens")).collect();
    let _ = writeln!(out, "By context length (mean over tasks and samples):\n");
    let _ = writeln!(out, "| press | ratio | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|---:|{}", "---:|".repeat(lengths.len()));
    let configs: BTreeSet<(bool, String, RatioKey)> =
        sums.keys().map(|k| (k.0, k.1.clone(), k.2)).collect();
    for (compressed, press, ratio) in configs {
        let cells: Vec<String> = lengths
            .iter()
            .map(|&l| {
                sums.get(&(compressed, press.clone(), ratio, l))
                    .map_or("–".to_string(), |(s, n)| format!("{:.2}", s / *n as f64))
            })
            .collect();
        let _ = writeln!(out, "| {press} | {ratio} | {} |", cells.join(" | "));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(press: &str, ratio: f64, length: usize, task: &str, score: f64) -> ResultRow {
        ResultRow {
            task: task.to_string(),
            setting: Setting::QuestionAgnostic,
            context_length: length,
            sample: 0,
            question: 0,
            press: press.to_string(),
            compression_ratio: ratio,
            score,
            answer: String::new(),
            context_tokens: length,
            fingerprint: None,
        }
    }

    #[test]
    fn tables_average_tasks_and_lengths() {
        let rows = [
            row(FULL_CACHE, 0.0, 2048, "a", 1.0),
            row(FULL_CACHE, 0.0, 4096, "a", 0.5),
            row(FULL_CACHE, 0.0, 2048, "b", 1.0),
            row("knorm", 0.5, 2048, "a", 0.0),
            row("knorm", 0.5, 4096, "a", 1.0),
            row("knorm", 0.5, 4096, "b", 0.5),
        ];
        let table = markdown(&rows);
        // Per task over lengths: full cache a = 0.75, b = 1.0; knorm a = 0.5, b = 0.5.
        assert!(
            table.contains("| full cache | 0.000 | 0.75 | 1.00 | 0.88 |"),
            "{table}"
        );
        assert!(
            table.contains("| knorm | 0.500 | 0.50 | 0.50 | 0.50 |"),
            "{table}"
        );
        // Per length over tasks and samples: full cache 2048 = 1.0, 4096 = 0.5; knorm 0.0, 0.75.
        assert!(
            table.contains("| press | ratio | 2048 tokens | 4096 tokens |"),
            "{table}"
        );
        assert!(
            table.contains("| full cache | 0.000 | 1.00 | 0.50 |"),
            "{table}"
        );
        assert!(table.contains("| knorm | 0.500 | 0.00 | 0.75 |"), "{table}");
        let mut twice = rows.to_vec();
        twice.push(rows[3].clone());
        assert_eq!(markdown(&twice), table, "a repeated row counts once");
        let one_length = markdown(&rows[..1]);
        assert!(!one_length.contains("By context length"), "{one_length}");
    }
}
