//! `kvpress inspect`: pictures of what a press kept, so a user sees why a method won or lost.

use std::fmt::Write;

use kvpress_hooks::LayerRecord;

/// Colour of a fraction in `[0, 1]`: white (nothing kept) to dark blue (everything kept).
fn shade(fraction: f64) -> String {
    let f = fraction.clamp(0.0, 1.0);
    let channel = |from: f64, to: f64| (from + (to - from) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        channel(255.0, 8.0),
        channel(255.0, 48.0),
        channel(255.0, 107.0)
    )
}

fn svg_header(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"16\">{title}</text>\n"
    )
}

/// Budgets: one cell per (layer, KV head), shaded by the fraction of the context it keeps, with
/// the count written in the cell.
pub fn budgets_svg(layers: &[LayerRecord], title: &str) -> String {
    let n_heads = layers.first().map_or(0, |l| l.selection.heads().len());
    let (cell_w, cell_h, left, top) = (44.0, 16.0, 60.0, 40.0);
    let width = left + cell_w * n_heads as f64 + 20.0;
    let height = top + cell_h * layers.len() as f64 + 20.0;
    let mut svg = svg_header(width, height, title);
    for h in 0..n_heads {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">head {h}</text>",
            left + cell_w * (h as f64 + 0.5),
            top - 6.0
        );
    }
    for (row, layer) in layers.iter().enumerate() {
        let y = top + cell_h * row as f64;
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\">layer {}</text>",
            y + 12.0,
            layer.layer_idx
        );
        let n_tokens = layer.selection.n_tokens().max(1);
        for (h, kept) in layer.selection.heads().iter().enumerate() {
            let x = left + cell_w * h as f64;
            let fraction = kept.len() as f64 / n_tokens as f64;
            let text_color = if fraction > 0.5 { "white" } else { "black" };
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell_w}\" height=\"{cell_h}\" fill=\"{}\" \
                 stroke=\"#ccc\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{text_color}\">{}</text>",
                shade(fraction),
                x + cell_w / 2.0,
                y + 12.0,
                kept.len()
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Kept-token map: one row per (layer, KV head), the context in `bins` columns, each shaded by
/// the fraction of its tokens kept.
pub fn kept_map_svg(layers: &[LayerRecord], bins: usize, title: &str) -> String {
    let rows: Vec<(usize, usize, &Vec<u32>, usize)> = layers
        .iter()
        .flat_map(|l| {
            l.selection
                .heads()
                .iter()
                .enumerate()
                .map(move |(h, kept)| (l.layer_idx, h, kept, l.selection.n_tokens()))
        })
        .collect();
    let bins = bins.max(1);
    let (cell_w, cell_h, left, top) = (4.0, 4.0, 70.0, 30.0);
    let width = left + cell_w * bins as f64 + 20.0;
    let height = top + cell_h * rows.len() as f64 + 30.0;
    let mut svg = svg_header(width, height, title);
    for (r, (layer, head, kept, n_tokens)) in rows.iter().enumerate() {
        let y = top + cell_h * r as f64;
        if *head == 0 && layer % 5 == 0 {
            let _ = writeln!(svg, "<text x=\"10\" y=\"{}\">layer {layer}</text>", y + 4.0);
        }
        let mut counts = vec![0usize; bins];
        for &t in kept.iter() {
            counts[(t as usize * bins / (*n_tokens).max(1)).min(bins - 1)] += 1;
        }
        for (b, &count) in counts.iter().enumerate() {
            let bin_size = ((b + 1) * n_tokens / bins)
                .saturating_sub(b * n_tokens / bins)
                .max(1);
            let _ = writeln!(
                svg,
                "<rect x=\"{}\" y=\"{y}\" width=\"{cell_w}\" height=\"{cell_h}\" fill=\"{}\"/>",
                left + cell_w * b as f64,
                shade(count as f64 / bin_size as f64)
            );
        }
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{}\">context start</text><text x=\"{}\" y=\"{}\" \
         text-anchor=\"end\">context end</text>",
        height - 10.0,
        left + cell_w * bins as f64,
        height - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpress_core::press::Selection;

    fn record(layer_idx: usize, kept: Vec<Vec<u32>>) -> LayerRecord {
        LayerRecord {
            layer_idx,
            selection: Selection::new(kept, 1, 2, 10).unwrap(),
            scores: None,
            cache_len: 0,
            bytes_before: 0,
            bytes_after: 0,
            seconds: 0.0,
            notes: Vec::new(),
        }
    }

    #[test]
    fn pictures_show_budgets_and_kept_tokens() {
        let layers = vec![
            record(0, vec![vec![0, 1, 2], (0..10).collect()]),
            record(1, vec![vec![9], vec![]]),
        ];
        let budgets = budgets_svg(&layers, "t");
        // One cell per (layer, head), labelled with its count; everything kept is darkest.
        assert_eq!(budgets.matches("<rect x=").count(), 4);
        assert!(budgets.contains(">3</text>") && budgets.contains(">10</text>"));
        assert!(budgets.contains(&shade(1.0)) && budgets.contains(&shade(0.0)));
        let map = kept_map_svg(&layers, 5, "t");
        assert_eq!(map.matches("<rect x=").count(), 4 * 5);
        assert_eq!(shade(0.0), "#ffffff");
    }
}
