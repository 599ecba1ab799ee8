//! Results of an evaluation: the Markdown table and the accuracy-vs-ratio plot (SVG).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::runner::ResultRow;

/// Name of the full-cache rows.
pub const FULL_CACHE: &str = "full cache";

fn ratio_key(r: f64) -> String {
    format!("{r:.3}")
}

/// Mean score per (setting, press, ratio, task).
fn means(rows: &[ResultRow]) -> BTreeMap<(String, String, String, String), f64> {
    let mut sums: BTreeMap<(String, String, String, String), (f64, usize)> = BTreeMap::new();
    for row in rows {
        let key = (
            row.setting.clone(),
            row.press.clone(),
            ratio_key(row.compression_ratio),
            row.task.clone(),
        );
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
/// the mean per press, ratio and length.
pub fn markdown(rows: &[ResultRow]) -> String {
    let means = means(rows);
    let tasks: BTreeSet<&String> = rows.iter().map(|r| &r.task).collect();
    let settings: BTreeSet<&String> = rows.iter().map(|r| &r.setting).collect();
    let mut out = String::new();
    for setting in settings {
        let _ = writeln!(out, "### {setting}\n");
        let header: Vec<&str> = tasks.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(out, "| press | ratio | {} | average |", header.join(" | "));
        let _ = writeln!(out, "|---|---:|{}---:|", "---:|".repeat(tasks.len()));
        let mut configs: Vec<(String, String)> = means
            .keys()
            .filter(|k| &k.0 == setting)
            .map(|k| (k.1.clone(), k.2.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        configs.sort_by_key(|(press, ratio)| (press != FULL_CACHE, press.clone(), ratio.clone()));
        for (press, ratio) in configs {
            let scores: Vec<Option<f64>> = tasks
                .iter()
                .map(|t| {
                    means
                        .get(&(setting.clone(), press.clone(), ratio.clone(), (*t).clone()))
                        .copied()
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
fn by_context_length(out: &mut String, rows: &[ResultRow], setting: &str) {
    let rows: Vec<&ResultRow> = rows.iter().filter(|r| r.setting == setting).collect();
    let lengths: BTreeSet<usize> = rows.iter().map(|r| r.context_length).collect();
    if lengths.len() < 2 {
        return;
    }
    let mut sums: BTreeMap<(bool, String, String, usize), (f64, usize)> = BTreeMap::new();
    for row in &rows {
        let key = (
            row.press != FULL_CACHE,
            row.press.clone(),
            ratio_key(row.compression_ratio),
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
    let configs: BTreeSet<(bool, String, String)> = sums
        .keys()
        .map(|k| (k.0, k.1.clone(), k.2.clone()))
        .collect();
    for (compressed, press, ratio) in configs {
        let cells: Vec<String> = lengths
            .iter()
            .map(|&l| {
                sums.get(&(compressed, press.clone(), ratio.clone(), l))
                    .map_or("–".to_string(), |(s, n)| format!("{:.2}", s / *n as f64))
            })
            .collect();
        let _ = writeln!(out, "| {press} | {ratio} | {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// Accuracy (averaged over tasks) against compression ratio, one line per press, the full
/// cache as a dashed line; one SVG per setting, keyed by setting.
pub fn svg_plots(rows: &[ResultRow]) -> BTreeMap<String, String> {
    let means = means(rows);
    let mut per_setting: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>> =
        BTreeMap::new();
    for ((setting, press, ratio, _task), score) in &means {
        per_setting
            .entry(setting.clone())
            .or_default()
            .entry(press.clone())
            .or_default()
            .entry(ratio.clone())
            .or_default()
            .push(*score);
    }
    const COLORS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let (width, height, left, bottom, top, right) = (720.0, 420.0, 60.0, 50.0, 30.0, 180.0);
    let x = |r: f64| left + r * (width - left - right);
    let y = |a: f64| top + (1.0 - a) * (height - top - bottom);
    let mut plots = BTreeMap::new();
    for (setting, presses) in per_setting {
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
             fill=\"white\"/>\n<text x=\"{left}\" y=\"18\">accuracy vs compression ratio \
             ({setting})</text>\n"
        );
        for i in 0..=4 {
            let v = i as f64 / 4.0;
            let (x1, y0, x0) = (x(1.0), y(v), x(v));
            let (label_y, tick_y) = (y(v) + 4.0, height - bottom + 18.0);
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/><text x=\"20\" \
                 y=\"{label_y}\">{v:.2}</text><text x=\"{x0}\" y=\"{tick_y}\" text-anchor=\"middle\">{v:.2}</text>"
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">compression ratio</text>",
            x(0.5),
            height - 10.0
        );
        for (i, (press, ratios)) in presses.iter().enumerate() {
            let color = if press == FULL_CACHE {
                "#000"
            } else {
                COLORS[i % COLORS.len()]
            };
            let points: Vec<(f64, f64)> = ratios
                .iter()
                .map(|(r, scores)| {
                    (
                        r.parse::<f64>().unwrap_or(0.0),
                        scores.iter().sum::<f64>() / scores.len() as f64,
                    )
                })
                .collect();
            if press == FULL_CACHE {
                let a = points.first().map_or(0.0, |p| p.1);
                let (x0, x1, y0) = (x(0.0), x(1.0), y(a));
                let _ = writeln!(
                    svg,
                    "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#000\" \
                     stroke-dasharray=\"6 4\"/>"
                );
            } else {
                let path: Vec<String> = points
                    .iter()
                    .map(|(r, a)| format!("{:.1},{:.1}", x(*r), y(*a)))
                    .collect();
                let _ = writeln!(
                    svg,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                    path.join(" ")
                );
                for (r, a) in &points {
                    let _ = writeln!(
                        svg,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                        x(*r),
                        y(*a)
                    );
                }
            }
            let ly = top + 16.0 * i as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" \
                 y=\"{}\">{press}</text>",
                width - right + 15.0,
                ly + 4.0,
                width - right + 32.0,
                ly + 9.0
            );
        }
        svg.push_str("</svg>\n");
        plots.insert(setting, svg);
    }
    plots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(press: &str, ratio: f64, length: usize, task: &str, score: f64) -> ResultRow {
        ResultRow {
            task: task.to_string(),
            setting: "question_agnostic".to_string(),
            context_length: length,
            sample: 0,
            question: 0,
            press: press.to_string(),
            compression_ratio: ratio,
            score,
            answer: String::new(),
            context_tokens: length,
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
        let one_length = markdown(&rows[..1]);
        assert!(!one_length.contains("By context length"), "{one_length}");
    }
}
