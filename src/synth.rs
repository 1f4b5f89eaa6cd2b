//! A procedurally generated long-caption benchmark: scenes of nine shapes in
//! a 3 x 3 grid, read in reading order, each with a long caption that names
//! every shape (one sentence each) after a short first sentence.
//!
//! Scenes come in hard groups that share their first `SHARED` shapes and
//! differ only in the bottom row. The caption's first 77 tokens end before
//! the bottom row is named, so a model that reads 77 tokens cannot tell a
//! group apart; one that reads 248 can. Everything is a function of (seed,
//! scene index), so a set is the same on every machine.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::rng::SplitMix;

/// Cells per side of the grid; cell k (reading order) holds object k.
pub const GRID: usize = 3;
pub const OBJECTS: usize = GRID * GRID;
/// Objects shared by the scenes of a hard group (the top two rows).
pub const SHARED: usize = 6;

const CELLS: [&str; OBJECTS] =
    ["top left", "top middle", "top right", "middle left", "centre", "middle right", "bottom left", "bottom middle", "bottom right"];
const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];
const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 30]),
    ("purple", [140, 40, 180]),
    ("orange", [250, 140, 20]),
    ("cyan", [40, 210, 220]),
    ("pink", [250, 130, 190]),
];
const BACKGROUNDS: [(&str, [u8; 3]); 3] = [("white", [250, 250, 250]), ("grey", [128, 128, 128]), ("black", [10, 10, 10])];
const SIZES: [&str; 2] = ["small", "large"];
const TEXTURES: [&str; 2] = ["plain", "striped"];

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub n: usize,
    pub seed: u64,
    /// Image side in pixels (a multiple of 3 keeps the cells equal).
    pub size: usize,
    /// Scenes per hard group (consecutive indices).
    pub group: usize,
    /// Share of scenes that belong to hard groups (the rest stand alone).
    pub hard: f64,
    /// When > 0, hard scenes take their shared top rows from a pool of this
    /// many, so shuffled training batches still hold many siblings.
    pub pool: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { n: 1000, seed: 0, size: 96, group: 4, hard: 0.8, pool: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    pub shape: usize,
    pub colour: usize,
    pub size: usize,
    pub texture: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scene {
    pub background: usize,
    pub objects: [Object; OBJECTS],
}

/// The generator of one stream (`stream`) of one item (`index`) under `seed`.
fn rng(seed: u64, stream: u64, index: u64) -> SplitMix {
    let mut r = SplitMix(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64();
    r
}

fn random_object(rng: &mut SplitMix) -> Object {
    Object {
        shape: rng.below(SHAPES.len()),
        colour: rng.below(COLOURS.len()),
        size: rng.below(SIZES.len()),
        texture: rng.below(TEXTURES.len()),
    }
}

/// The shared part of a hard group: background and top two rows.
fn prefix(seed: u64, key: u64) -> (usize, [Object; SHARED]) {
    let mut rng = rng(seed, 1, key);
    let background = rng.below(BACKGROUNDS.len());
    (background, std::array::from_fn(|_| random_object(&mut rng)))
}

/// Whether `group` (of consecutive scenes) is a hard group.
fn is_hard(seed: u64, group: usize, hard: f64) -> bool {
    rng(seed, 2, group as u64).unit() < hard
}

/// Scene `index` of a set: a function of the options and the index only.
pub fn scene(opts: &SynthOptions, index: usize) -> Scene {
    let group = index / opts.group.max(1);
    let mut rng = rng(opts.seed, 3, index as u64);
    let mut objects: [Object; OBJECTS] = std::array::from_fn(|_| random_object(&mut rng));
    let mut background = rng.below(BACKGROUNDS.len());
    let key = if opts.pool > 0 {
        // Pool draws are per scene: the whole set mixes hard and free scenes.
        (rng.unit() < opts.hard).then(|| rng.below(opts.pool) as u64)
    } else {
        is_hard(opts.seed, group, opts.hard).then_some(group as u64)
    };
    if let Some(key) = key {
        let (bg, shared) = prefix(opts.seed, key);
        background = bg;
        objects[..SHARED].copy_from_slice(&shared);
    }
    Scene { background, objects }
}

/// Whether scene `index` shares its top rows with the rest of its group.
pub fn in_hard_group(opts: &SynthOptions, index: usize) -> bool {
    opts.pool == 0 && is_hard(opts.seed, index / opts.group.max(1), opts.hard)
}

fn number_word(n: usize) -> &'static str {
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][n]
}

impl Scene {
    /// The short caption: how many shapes and the background.
    pub fn short_caption(&self) -> String {
        format!("{} shapes on a {} background", capitalize(number_word(OBJECTS)), BACKGROUNDS[self.background].0)
    }

    /// The long caption: the short one, then one sentence per object in
    /// reading order. Its first ". " ends the short caption.
    pub fn long_caption(&self) -> String {
        let mut text = format!("{}.", self.short_caption());
        for (cell, o) in CELLS.iter().zip(&self.objects) {
            text.push_str(&format!(
                " At the {cell} there is a {} {} {} {}.",
                SIZES[o.size], COLOURS[o.colour].0, TEXTURES[o.texture], SHAPES[o.shape]
            ));
        }
        text
    }

    pub fn render(&self, size: usize) -> RgbImage {
        let bg = BACKGROUNDS[self.background].1;
        let mut img = RgbImage::from_pixel(size as u32, size as u32, Rgb(bg));
        let cell = size as f64 / GRID as f64;
        for (k, o) in self.objects.iter().enumerate() {
            let (cx, cy) = ((k % GRID) as f64 * cell + cell / 2.0, (k / GRID) as f64 * cell + cell / 2.0);
            let r = cell * if o.size == 1 { 0.42 } else { 0.25 };
            let stripe = (cell / 8.0).max(1.0);
            for y in (cy - r).floor().max(0.0) as usize..((cy + r).ceil() as usize).min(size) {
                for x in (cx - r).floor().max(0.0) as usize..((cx + r).ceil() as usize).min(size) {
                    let (dx, dy) = ((x as f64 + 0.5 - cx) / r, (y as f64 + 0.5 - cy) / r);
                    if !inside(o.shape, dx, dy) {
                        continue;
                    }
                    // Stripes: every other horizontal band shows the background.
                    let band = ((y as f64 - (cy - r)) / stripe).floor() as i64;
                    let colour = if o.texture == 1 && band % 2 == 1 { bg } else { COLOURS[o.colour].1 };
                    img.put_pixel(x as u32, y as u32, Rgb(colour));
                }
            }
        }
        img
    }
}

/// Whether (dx, dy), in units of the radius from the centre, is inside the shape.
fn inside(shape: usize, dx: f64, dy: f64) -> bool {
    match shape {
        0 => dx * dx + dy * dy <= 1.0,
        1 => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        // Apex up: the half-width grows from 0 at the top to 1 at the bottom.
        2 => (-1.0..=1.0).contains(&dy) && dx.abs() <= (dy + 1.0) / 2.0,
        _ => dx.abs() + dy.abs() <= 1.0,
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// Writes `image/N.png` and `caption/N.txt` (N from 0) under `out`: the
/// Urban1k layout that `eval`, `probe`, `index build` and `finetune` read.
pub fn write_set(out: &Path, opts: &SynthOptions, progress: bool) -> Result<()> {
    if opts.n == 0 || opts.group == 0 || opts.size < GRID * 4 {
        bail!("synth: --n and --group must be positive and --size at least {}", GRID * 4);
    }
    if !(0.0..=1.0).contains(&opts.hard) {
        bail!("synth: --hard is a share between 0 and 1, got {}", opts.hard);
    }
    let (image_dir, caption_dir) = (out.join("image"), out.join("caption"));
    for dir in [&image_dir, &caption_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let bar = progress_bar(opts.n as u64, progress);
    (0..opts.n).into_par_iter().try_for_each(|i| -> Result<()> {
        let s = scene(opts, i);
        let png = image_dir.join(format!("{i}.png"));
        s.render(opts.size).save(&png).with_context(|| format!("{}: cannot write", png.display()))?;
        let txt = caption_dir.join(format!("{i}.txt"));
        std::fs::write(&txt, s.long_caption() + "\n").with_context(|| format!("{}: cannot write", txt.display()))?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Side of the COCO layout's images and how many captions each has.
#[derive(Clone, Copy, Debug)]
pub struct CocoShape {
    /// Pixels; the scene is drawn as a `height` square in the middle.
    pub width: usize,
    pub height: usize,
    /// Captions per image: caption k holds the first 2(k + 1) sentences of
    /// the long caption (the last ones hold it all), so lengths vary.
    pub captions: usize,
}

/// Writes the official COCO layout that `eval --dataset coco` reads:
/// `annotations/captions_val2017.json` and `val2017/<id:012>.jpg` (ids from
/// 1), JPEG quality 90, with photo-like pixel noise so decoding costs about
/// what it costs for a photo of that size.
/// Errors: sizes below 12 pixels, no captions, a file that cannot be written (named).
pub fn write_coco(out: &Path, opts: &SynthOptions, shape: CocoShape, progress: bool) -> Result<()> {
    if opts.n == 0 || opts.group == 0 || shape.height < GRID * 4 || shape.width < shape.height || shape.captions == 0 {
        bail!("synth: COCO layout needs --n, --group and --captions positive and --width >= --height >= {}", GRID * 4);
    }
    let (image_dir, ann_dir) = (out.join("val2017"), out.join("annotations"));
    for dir in [&image_dir, &ann_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let bar = progress_bar(opts.n as u64, progress);
    (0..opts.n).into_par_iter().try_for_each(|i| -> Result<()> {
        let path = image_dir.join(format!("{:012}.jpg", i + 1));
        write_jpeg(&coco_image(opts, i, shape), &path)?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let images: Vec<serde_json::Value> = (0..opts.n)
        .map(|i| serde_json::json!({"id": i + 1, "file_name": format!("{:012}.jpg", i + 1), "width": shape.width, "height": shape.height}))
        .collect();
    let mut annotations = Vec::with_capacity(opts.n * shape.captions);
    for i in 0..opts.n {
        for caption in coco_captions(&scene(opts, i), shape.captions) {
            annotations.push(serde_json::json!({"id": annotations.len() + 1, "image_id": i + 1, "caption": caption}));
        }
    }
    let path = ann_dir.join("captions_val2017.json");
    let text = serde_json::to_string(&serde_json::json!({"images": images, "annotations": annotations}))?;
    crate::export::write_atomic(&path, text.as_bytes())
}

/// The captions of one COCO image: the long caption's first 2, 4, 6, ... sentences.
pub fn coco_captions(scene: &Scene, n: usize) -> Vec<String> {
    let long = scene.long_caption();
    let sentences: Vec<&str> = long.split_inclusive(". ").collect();
    (0..n).map(|k| sentences[..(2 * (k + 1)).min(sentences.len())].concat().trim_end().to_string()).collect()
}

/// Scene `index` drawn as a `height` square centred on a `width` x `height`
/// canvas of its background, with noise of +-12 levels per channel.
fn coco_image(opts: &SynthOptions, index: usize, shape: CocoShape) -> RgbImage {
    let s = scene(opts, index);
    let square = s.render(shape.height);
    let bg = BACKGROUNDS[s.background].1;
    let mut img = RgbImage::from_pixel(shape.width as u32, shape.height as u32, Rgb(bg));
    image::imageops::overlay(&mut img, &square, ((shape.width - shape.height) / 2) as i64, 0);
    let mut noise = rng(opts.seed, 9, index as u64);
    for p in img.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = (*c as i32 + noise.below(25) as i32 - 12).clamp(0, 255) as u8;
        }
    }
    img
}

/// Encoded in memory, then written and renamed: an interrupted run leaves no half JPEG.
fn write_jpeg(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(img)
        .with_context(|| format!("{}: cannot encode JPEG", path.display()))?;
    crate::export::write_atomic(path, &bytes)
}

fn progress_bar(len: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} scenes ({per_sec}, ETA {eta})").expect("valid template");
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_share_the_top_rows_and_differ_below() {
        let opts = SynthOptions { n: 400, hard: 1.0, ..Default::default() };
        let (a, b) = (scene(&opts, 4), scene(&opts, 7));
        assert_eq!(a.objects[..SHARED], b.objects[..SHARED]);
        assert_eq!(a.background, b.background);
        assert_ne!(a.objects[SHARED..], b.objects[SHARED..]);
        assert_ne!(scene(&opts, 3).objects[..SHARED], a.objects[..SHARED]);
    }

    #[test]
    fn the_short_caption_is_the_first_sentence() {
        let s = scene(&SynthOptions::default(), 5);
        let long = s.long_caption();
        assert_eq!(crate::finetune::data::first_sentence(&long), s.short_caption());
        assert_eq!(long.matches(" there is a ").count(), OBJECTS);
    }

    #[test]
    fn siblings_are_equal_at_77_tokens_and_differ_at_248() {
        let opts = SynthOptions { n: 40, hard: 1.0, ..Default::default() };
        let tok = crate::tokenizer::Tokenizer::global();
        for g in 0..10 {
            let captions: Vec<String> = (0..4).map(|k| scene(&opts, g * 4 + k).long_caption()).collect();
            let at = |ctx| tok.encode_batch(&captions, ctx).unwrap().into_iter().map(|e| e.ids).collect::<Vec<_>>();
            let (short, long) = (at(77), at(248));
            assert!(short.iter().all(|ids| ids.len() == 77 && *ids == short[0]), "group {g}: 77-token ids differ");
            assert!(long.iter().all(|ids| ids.len() < 248), "group {g}: a caption is cut at 248");
            for a in 0..4 {
                for b in a + 1..4 {
                    assert_ne!(long[a], long[b], "group {g}: scenes {a} and {b} have one caption");
                }
            }
        }
    }

    #[test]
    fn shapes_are_drawn_in_their_cells() {
        let mut s = scene(&SynthOptions::default(), 0);
        s.objects = [Object { shape: 1, colour: 0, size: 1, texture: 0 }; OBJECTS];
        s.objects[8].colour = 2;
        let img = s.render(96);
        assert_eq!(img.get_pixel(16, 16).0, COLOURS[0].1);
        assert_eq!(img.get_pixel(80, 80).0, COLOURS[2].1);
        assert_eq!(img.get_pixel(0, 0).0, BACKGROUNDS[s.background].1);
    }
}
