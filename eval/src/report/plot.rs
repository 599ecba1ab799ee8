//! The accuracy-vs-ratio plot (SVG).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{means, FULL_CACHE};
use crate::results::{unique_rows, RatioKey, ResultRow};
use crate::Setting;

/// Line colours of the presses, in order.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 50.0;
const TOP: f64 = 30.0;
const RIGHT: f64 = 180.0;

/// Horizontal position of compression ratio `r`.
fn x(r: f64) -> f64 {
    LEFT + r * (WIDTH - LEFT - RIGHT)
}

/// Vertical position of accuracy `a`.
fn y(a: f64) -> f64 {
    TOP + (1.0 - a) * (HEIGHT - TOP - BOTTOM)
}

/// Per-task mean scores of each press at each ratio.
type PressScores = BTreeMap<String, BTreeMap<RatioKey, Vec<f64>>>;

/// Accuracy (averaged over tasks) against compression ratio, one line per press, the full
/// cache as a dashed line; one SVG per setting, keyed by setting. A row repeated (same
/// [`crate::RowKey`]) counts once.
pub fn svg_plots(rows: &[ResultRow]) -> BTreeMap<String, String> {
    let unique: Vec<ResultRow> = unique_rows(rows).into_iter().cloned().collect();
    let mut per_setting: BTreeMap<Setting, PressScores> = BTreeMap::new();
    for (key, score) in &means(&unique) {
        per_setting
            .entry(key.setting)
            .or_default()
            .entry(key.press.clone())
            .or_default()
            .entry(key.ratio)
            .or_default()
            .push(*score);
    }
    per_setting
        .into_iter()
        .map(|(setting, presses)| (setting.as_str().to_string(), plot(setting, &presses)))
        .collect()
}

/// The plot of one setting.
fn plot(setting: Setting, presses: &PressScores) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"18\">accuracy vs compression ratio \
         ({setting})</text>\n"
    );
    axes(&mut svg);
    for (i, (press, ratios)) in presses.iter().enumerate() {
        let color = if press == FULL_CACHE {
            "#000"
        } else {
            COLORS[i % COLORS.len()]
        };
        let points: Vec<(f64, f64)> = ratios
            .iter()
            .map(|(r, scores)| (r.value(), scores.iter().sum::<f64>() / scores.len() as f64))
            .collect();
        if press == FULL_CACHE {
            full_cache_line(&mut svg, &points);
        } else {
            press_line(&mut svg, &points, color);
        }
        let ly = TOP + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" \
             y=\"{}\">{press}</text>",
            WIDTH - RIGHT + 15.0,
            ly + 4.0,
            WIDTH - RIGHT + 32.0,
            ly + 9.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Grid lines, tick labels and the axis title.
fn axes(svg: &mut String) {
    for i in 0..=4 {
        let v = i as f64 / 4.0;
        let (x1, y0, x0) = (x(1.0), y(v), x(v));
        let (label_y, tick_y) = (y(v) + 4.0, HEIGHT - BOTTOM + 18.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/><text x=\"20\" \
             y=\"{label_y}\">{v:.2}</text><text x=\"{x0}\" y=\"{tick_y}\" text-anchor=\"middle\">{v:.2}</text>"
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">compression ratio</text>",
        x(0.5),
        HEIGHT - 10.0
    );
}

/// The full cache's accuracy (its first point) as a dashed line across the plot.
fn full_cache_line(svg: &mut String, points: &[(f64, f64)]) {
    let a = points.first().map_or(0.0, |p| p.1);
    let (x0, x1, y0) = (x(0.0), x(1.0), y(a));
    let _ = writeln!(
        svg,
        "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#000\" \
         stroke-dasharray=\"6 4\"/>"
    );
}

/// A press's accuracy at its ratios: a line through dots.
fn press_line(svg: &mut String, points: &[(f64, f64)], color: &str) {
    let path: Vec<String> = points
        .iter()
        .map(|(r, a)| format!("{:.1},{:.1}", x(*r), y(*a)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for (r, a) in points {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
            x(*r),
            y(*a)
        );
    }
}
