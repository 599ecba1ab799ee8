//! PNG copies of the SVG plots and heatmaps, rendered with resvg and an embedded DejaVu Sans (so
//! the text is the same on machines without fonts).

use resvg::{tiny_skia, usvg};

use crate::error::{Error, Result};

/// Pixels per SVG unit in the PNG.
const SCALE: f32 = 2.0;

/// Renders `svg` to PNG bytes at twice its size.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>> {
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_font_data(dejavu::sans::regular().to_vec());
    fonts.set_sans_serif_family("DejaVu Sans");
    options.font_family = "DejaVu Sans".to_string();
    let tree = usvg::Tree::from_str(svg, &options).map_err(Error::Svg)?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(SCALE)
        .ok_or(Error::SvgSize)?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or(Error::ImageSize {
            width: size.width(),
            height: size.height(),
        })?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(SCALE, SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| Error::PngEncoding(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_shapes_and_text() {
        let svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"20\" \
                   font-family=\"sans-serif\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
                   <text x=\"2\" y=\"15\" font-size=\"14\">Ag</text></svg>";
        let png = svg_to_png(svg).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let image = tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert_eq!((image.width(), image.height()), (80, 40));
        let dark = image.pixels().iter().filter(|p| p.red() < 128).count();
        assert!(dark > 20, "the text is drawn ({dark} dark pixels)");
        let no_text = svg.replace("Ag", "");
        let blank = tiny_skia::Pixmap::decode_png(&svg_to_png(&no_text).unwrap()).unwrap();
        assert!(blank.pixels().iter().all(|p| p.red() == 255));
    }

    #[test]
    fn bad_svg_is_an_error() {
        assert!(matches!(svg_to_png("<svg"), Err(Error::Svg(_))));
    }
}
