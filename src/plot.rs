//! Line charts for the length probe, as SVG or PNG, with no plotting crate:
//! the SVG is written as text, the PNG is drawn here (antialiased lines and
//! a bitmap of DejaVu Sans made by `scripts/gen_plot_font.py`) and encoded
//! by the `image` crate. No system fonts or libraries are needed.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

const WIDTH: usize = 760;
const HEIGHT: usize = 470;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 52.0;
const PALETTE: [[u8; 3]; 6] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75]];

/// One line of the chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// Index into the palette: one color per model.
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A chart with y from 0 to 100 and x from 0 to the largest x.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dashed vertical line with its label (77 tokens, CLIP's limit).
    pub marker: Option<(f64, String)>,
}

impl Chart {
    /// Writes `.svg` or `.png`, chosen by the extension.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        let bytes = match ext.as_str() {
            "svg" => self.to_svg().into_bytes(),
            "png" => self.to_png()?,
            _ => bail!("{}: the plot is written as .svg or .png", path.display()),
        };
        crate::export::write_atomic(path, &bytes)
    }

    fn x_max(&self) -> f64 {
        let max = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
        let step = tick_step(max);
        (max / step).ceil() * step
    }

    fn to_screen(&self, x: f64, y: f64) -> (f64, f64) {
        let w = WIDTH as f64 - LEFT - RIGHT;
        let h = HEIGHT as f64 - TOP - BOTTOM;
        (LEFT + x / self.x_max() * w, TOP + (1.0 - y / 100.0) * h)
    }

    fn x_ticks(&self) -> Vec<f64> {
        let (max, step) = (self.x_max(), tick_step(self.x_max()));
        (0..).map(|i| i as f64 * step).take_while(|&x| x <= max + 1e-9).collect()
    }

    pub fn to_svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let (x0, y0) = self.to_screen(0.0, 0.0);
        let (x1, y1) = self.to_screen(self.x_max(), 100.0);
        for y in (0..=100).step_by(20) {
            let (_, sy) = self.to_screen(0.0, y as f64);
            let _ = writeln!(s, r##"<line x1="{x0:.1}" y1="{sy:.1}" x2="{x1:.1}" y2="{sy:.1}" stroke="#e4e4e4"/>"##);
            let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{y}</text>"#, x0 - 6.0, sy + 4.5);
        }
        for x in self.x_ticks() {
            let (sx, _) = self.to_screen(x, 0.0);
            let _ = writeln!(s, r##"<line x1="{sx:.1}" y1="{y0:.1}" x2="{sx:.1}" y2="{:.1}" stroke="#444"/>"##, y0 + 4.0);
            let _ = writeln!(s, r#"<text x="{sx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, y0 + 18.0, fmt_num(x));
        }
        let _ = writeln!(s, r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##, x1 - x0, y0 - y1);
        if let Some((mx, label)) = &self.marker {
            let (sx, _) = self.to_screen(*mx, 0.0);
            let _ = writeln!(s, r##"<line x1="{sx:.1}" y1="{y0:.1}" x2="{sx:.1}" y2="{y1:.1}" stroke="#777" stroke-dasharray="4 4"/>"##);
            let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##, sx + 4.0, y0 - 8.0, xml(label));
        }
        for series in &self.series {
            let [r, g, b] = PALETTE[series.color % PALETTE.len()];
            let pts: Vec<String> = series.points.iter().map(|&(x, y)| {
                let (sx, sy) = self.to_screen(x, y);
                format!("{sx:.1},{sy:.1}")
            }).collect();
            let dash = if series.dashed { r#" stroke-dasharray="7 4""# } else { "" };
            let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="rgb({r},{g},{b})" stroke-width="2"{dash}/>"#, pts.join(" "));
            for &(x, y) in &series.points {
                let (sx, sy) = self.to_screen(x, y);
                let _ = writeln!(s, r#"<circle cx="{sx:.1}" cy="{sy:.1}" r="3" fill="rgb({r},{g},{b})"/>"#);
            }
        }
        for (i, series) in self.series.iter().enumerate() {
            let [r, g, b] = PALETTE[series.color % PALETTE.len()];
            let (lx, ly) = (x0 + 12.0, y1 + 16.0 + 18.0 * i as f64);
            let dash = if series.dashed { r#" stroke-dasharray="7 4""# } else { "" };
            let _ = writeln!(s, r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="rgb({r},{g},{b})" stroke-width="2"{dash}/>"#, ly - 4.0, lx + 26.0, ly - 4.0);
            let _ = writeln!(s, r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#, lx + 32.0, xml(&series.label));
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="15">{}</text>"#, WIDTH as f64 / 2.0, xml(&self.title));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, (x0 + x1) / 2.0, HEIGHT as f64 - 12.0, xml(&self.x_label));
        let (cx, cy) = (18.0, (y0 + y1) / 2.0);
        let _ = writeln!(s, r#"<text x="{cx}" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 {cx} {cy:.1})">{}</text>"#, xml(&self.y_label));
        s.push_str("</svg>\n");
        s
    }

    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut c = Canvas::new(WIDTH, HEIGHT);
        let (x0, y0) = self.to_screen(0.0, 0.0);
        let (x1, y1) = self.to_screen(self.x_max(), 100.0);
        let (grid, axis, ink) = ([228, 228, 228], [68, 68, 68], [0, 0, 0]);
        for y in (0..=100).step_by(20) {
            let (_, sy) = self.to_screen(0.0, y as f64);
            c.line(x0, sy, x1, sy, 1.0, grid, None);
            c.text(x0 - 6.0, sy + 4.5, &y.to_string(), ink, Anchor::End, false);
        }
        for x in self.x_ticks() {
            let (sx, _) = self.to_screen(x, 0.0);
            c.line(sx, y0, sx, y0 + 4.0, 1.0, axis, None);
            c.text(sx, y0 + 18.0, &fmt_num(x), ink, Anchor::Middle, false);
        }
        for (a, b, cc, d) in [(x0, y0, x1, y0), (x0, y1, x1, y1), (x0, y0, x0, y1), (x1, y0, x1, y1)] {
            c.line(a, b, cc, d, 1.0, axis, None);
        }
        if let Some((mx, label)) = &self.marker {
            let (sx, _) = self.to_screen(*mx, 0.0);
            c.line(sx, y0, sx, y1, 1.0, [119, 119, 119], Some((4.0, 4.0)));
            // At the bottom: the legend takes the top left.
            c.text(sx + 4.0, y0 - 8.0, label, [85, 85, 85], Anchor::Start, false);
        }
        for series in &self.series {
            let color = PALETTE[series.color % PALETTE.len()];
            let dash = series.dashed.then_some((7.0, 4.0));
            let pts: Vec<(f64, f64)> = series.points.iter().map(|&(x, y)| self.to_screen(x, y)).collect();
            c.polyline(&pts, 2.0, color, dash);
            for &(sx, sy) in &pts {
                c.disc(sx, sy, 3.0, color);
            }
        }
        for (i, series) in self.series.iter().enumerate() {
            let color = PALETTE[series.color % PALETTE.len()];
            let (lx, ly) = (x0 + 12.0, y1 + 16.0 + 18.0 * i as f64);
            c.line(lx, ly - 4.0, lx + 26.0, ly - 4.0, 2.0, color, series.dashed.then_some((7.0, 4.0)));
            c.text(lx + 32.0, ly, &series.label, ink, Anchor::Start, false);
        }
        c.text(WIDTH as f64 / 2.0, 26.0, &self.title, ink, Anchor::Middle, false);
        c.text((x0 + x1) / 2.0, HEIGHT as f64 - 12.0, &self.x_label, ink, Anchor::Middle, false);
        c.text(22.0, (y0 + y1) / 2.0, &self.y_label, ink, Anchor::Middle, true);
        c.encode_png()
    }
}

/// 1, 2 or 5 times a power of ten, giving about 5 to 10 ticks.
fn tick_step(max: f64) -> f64 {
    let raw = max / 6.0;
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|&s| s >= raw).unwrap_or(10.0 * power)
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x}") }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[derive(Clone, Copy)]
enum Anchor {
    Start,
    Middle,
    End,
}

struct Glyph {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    x_off: i32,
    y_off: i32,
    advance: f64,
}

struct Font {
    atlas: image::GrayImage,
    glyphs: Vec<Glyph>,
}

fn font() -> &'static Font {
    static FONT: OnceLock<Font> = OnceLock::new();
    FONT.get_or_init(|| {
        let atlas = image::load_from_memory(include_bytes!("../assets/plot_font.png")).expect("bundled font atlas").to_luma8();
        let glyphs = include_str!("../assets/plot_font.txt")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let v: Vec<i64> = l.split_whitespace().map(|x| x.parse().expect("font metrics")).collect();
                Glyph { x: v[1] as usize, y: v[2] as usize, w: v[3] as usize, h: v[4] as usize, x_off: v[5] as i32, y_off: v[6] as i32, advance: v[7] as f64 }
            })
            .collect();
        Font { atlas, glyphs }
    })
}

/// A white RGB canvas with alpha-blended drawing.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![[255.0; 3]; w * h] }
    }

    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f64) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0) as f32;
        let p = &mut self.px[y as usize * self.w + x as usize];
        for c in 0..3 {
            p[c] = p[c] * (1.0 - a) + color[c] as f32 * a;
        }
    }

    /// A segment of `width` pixels; `dash` = (on, off) lengths along it.
    fn line(&mut self, ax: f64, ay: f64, bx: f64, by: f64, width: f64, color: [u8; 3], dash: Option<(f64, f64)>) {
        self.segment(ax, ay, bx, by, width, color, dash, 0.0);
    }

    fn polyline(&mut self, pts: &[(f64, f64)], width: f64, color: [u8; 3], dash: Option<(f64, f64)>) {
        let mut along = 0.0;
        for w in pts.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            self.segment(ax, ay, bx, by, width, color, dash, along);
            along += ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn segment(&mut self, ax: f64, ay: f64, bx: f64, by: f64, width: f64, color: [u8; 3], dash: Option<(f64, f64)>, start: f64) {
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-12);
        let r = width / 2.0 + 1.0;
        let (xmin, xmax) = ((ax.min(bx) - r).floor() as i64, (ax.max(bx) + r).ceil() as i64);
        let (ymin, ymax) = ((ay.min(by) - r).floor() as i64, (ay.max(by) + r).ceil() as i64);
        for y in ymin..=ymax {
            for x in xmin..=xmax {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
                if let Some((on, off)) = dash {
                    if (start + t * len2.sqrt()) % (on + off) > on {
                        continue;
                    }
                }
                let d = ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt();
                self.blend(x, y, color, width / 2.0 + 0.5 - d);
            }
        }
    }

    fn disc(&mut self, cx: f64, cy: f64, r: f64, color: [u8; 3]) {
        for y in (cy - r - 1.0).floor() as i64..=(cy + r + 1.0).ceil() as i64 {
            for x in (cx - r - 1.0).floor() as i64..=(cx + r + 1.0).ceil() as i64 {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                self.blend(x, y, color, r + 0.5 - d);
            }
        }
    }

    /// Text on a baseline at `y` (or, vertical, reading upwards centred on `x`).
    fn text(&mut self, x: f64, y: f64, s: &str, color: [u8; 3], anchor: Anchor, vertical: bool) {
        let f = font();
        let glyph = |ch: char| f.glyphs.get((ch as usize).wrapping_sub(32)).unwrap_or(&f.glyphs['?' as usize - 32]);
        let width: f64 = s.chars().map(|ch| glyph(ch).advance).sum();
        let shift = match anchor {
            Anchor::Start => 0.0,
            Anchor::Middle => width / 2.0,
            Anchor::End => width,
        };
        let mut pen = -shift;
        for ch in s.chars() {
            let g = glyph(ch);
            for gy in 0..g.h {
                for gx in 0..g.w {
                    let a = f.atlas.get_pixel((g.x + gx) as u32, (g.y + gy) as u32).0[0] as f64 / 255.0;
                    // Offsets from the pen on the baseline, y growing down.
                    let (u, v) = (pen + g.x_off as f64 + gx as f64, gy as f64 - g.y_off as f64);
                    let (px, py) = if vertical { (x + v, y - u) } else { (x + u, y + v) };
                    self.blend(px.round() as i64, py.round() as i64, color, a);
                }
            }
            pen += g.advance;
        }
    }

    fn encode_png(&self) -> Result<Vec<u8>> {
        let raw: Vec<u8> = self.px.iter().flat_map(|p| p.map(|c| c.round().clamp(0.0, 255.0) as u8)).collect();
        let img = image::RgbImage::from_raw(self.w as u32, self.h as u32, raw).context("canvas size")?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)?;
        Ok(out.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "R@1 by caption length".into(),
            x_label: "length (tokens)".into(),
            y_label: "R@1 (%)".into(),
            series: vec![Series { label: "model T2I".into(), color: 0, dashed: false, points: vec![(5.0, 10.0), (77.0, 50.0), (248.0, 90.0)] }],
            marker: Some((77.0, "77".into())),
        }
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(248.0), 50.0);
        assert_eq!(tick_step(60.0), 10.0);
        assert_eq!(chart().x_max(), 250.0);
        assert_eq!(chart().x_ticks(), [0.0, 50.0, 100.0, 150.0, 200.0, 250.0]);
    }

    #[test]
    fn svg_has_the_lines_and_the_marker() {
        let svg = chart().to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("stroke-dasharray=\"4 4\"") && svg.contains(">77</text>"));
        assert!(svg.contains("R@1 (%)"));
    }

    #[test]
    fn png_draws_the_series_where_it_belongs() {
        let png = chart().to_png().unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH as u32, HEIGHT as u32));
        let c = chart();
        let (sx, sy) = c.to_screen(77.0, 50.0);
        assert_eq!(img.get_pixel(sx as u32, sy as u32).0, PALETTE[0], "data point at ({sx}, {sy})");
        // The top-right corner is background.
        assert_eq!(img.get_pixel(WIDTH as u32 - 2, 2).0, [255, 255, 255]);
    }
}
