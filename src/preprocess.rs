//! The official CLIP / Long-CLIP image transform, reproduced bit for bit.
//!
//! Long-CLIP (`model/longclip.py::_transform`) runs, on `Image.open(path)`:
//!
//! ```text
//! Resize(n, BICUBIC) -> CenterCrop(n) -> convert("RGB") -> ToTensor() -> Normalize(mean, std)
//! ```
//!
//! Every step here copies what Pillow and torchvision really do, so lossless
//! images (PNG, GIF, BMP, TIFF, lossless WebP) give the same floats as Python:
//!
//! * The resize is a port of Pillow's `ImagingResample` for 8-bit images:
//!   bicubic (a = -0.5) with the support widened by the downscale factor,
//!   fixed-point weights (22 fraction bits), a horizontal pass whose result
//!   is rounded to `u8`, then a vertical pass.
//! * The image keeps the mode PIL would give it until `convert("RGB")`, because
//!   the mode changes the resize: "P" and "1" images are resized NEAREST;
//!   "RGBA"/"LA" are premultiplied first ("RGBa"/"La") and divided back after;
//!   16-bit grey ("I;16") uses Pillow's 16-bit resampler and then
//!   `convert("RGB")` clips every value above 255 to 255 (so a typical 16-bit
//!   photo comes out nearly white: that is what PIL does, and we copy it).
//! * Pillow 11 and 12 always run the horizontal pass first, and so do we.
//!   Pillow 13 runs the vertical pass first when the height shrinks by more
//!   than twice as many pixels as the width (tall images, over about 2:1);
//!   for those images Pillow 13 differs from Pillow 12 (and from us) by a few
//!   levels. The reference data (`scripts/gen_preprocess_cases.py`) is made
//!   with Pillow 12.
//! * We only compute the pixels the center crop keeps; each output pixel of
//!   the separable resize depends only on its own row and column, so this is
//!   exact and keeps very thin images from blowing up memory.
//!
//! JPEGs (greyscale and RGB) are decoded by libjpeg-turbo's code, as Pillow
//! does (see [`crate::jpeg`]), so they match Python exactly too.
//!
//! Known differences from Python: lossy WebP goes through another decoder
//! (image-webp), so it can differ by a few levels; CMYK JPEGs (zune-jpeg) are
//! converted to RGB by the decoder before the resize, where PIL resizes CMYK;
//! and with `exif: true` (the default) we apply the EXIF orientation, which the
//! official code does not.

use std::io::Cursor;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use rayon::prelude::*;

/// CLIP's per-channel mean (RGB), as in the official `Normalize`.
#[allow(clippy::excessive_precision)] // the official digits
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel standard deviation (RGB).
#[allow(clippy::excessive_precision)] // the official digits
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];
/// Larger images are refused, like PIL's `DecompressionBombError`
/// (2 × `Image.MAX_IMAGE_PIXELS`).
pub const MAX_PIXELS: u64 = 178_956_970;

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];
/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Where the image goes before it is normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// Resize the short side to `size` (the long side to
    /// `int(size * long / short)`), then center crop `size`×`size`.
    ShortSideCrop(CropOffset),
    /// Resize to `size`×`size` whatever the aspect ratio (FG-CLIP's
    /// `image.resize((S, S))`).
    Square,
}

/// How a center crop places its window when the excess is odd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropOffset {
    /// torchvision `CenterCrop`: `int(round((size - n) / 2.0))` ([`center_crop_offset`]).
    Round,
    /// HF `CLIPImageProcessor.center_crop`: `(size - n) // 2`.
    Floor,
}

/// The image transform: resize (and crop) to `size`, normalize.
#[derive(Clone, Debug)]
pub struct Transform {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Apply the EXIF orientation before resizing (the official code does not).
    pub exif: bool,
    pub geometry: Geometry,
    /// `convert("RGB")` before the resize (HF processors, FG-CLIP), not after
    /// it (torchvision): alpha is dropped instead of premultiplied and
    /// palette images are resized bicubic instead of nearest.
    pub rgb_first: bool,
}

impl Transform {
    /// The official CLIP transform at `size` pixels, with EXIF orientation on.
    pub fn clip(size: usize) -> Transform {
        Transform { size, mean: CLIP_MEAN, std: CLIP_STD, exif: true, geometry: Geometry::ShortSideCrop(CropOffset::Round), rgb_first: false }
    }

    /// HF `CLIPImageProcessor` (transformers 4, PIL): `convert("RGB")`,
    /// shortest edge to `size` (bicubic), center crop with the offset floored.
    pub fn hf_clip(size: usize) -> Transform {
        Transform { geometry: Geometry::ShortSideCrop(CropOffset::Floor), rgb_first: true, ..Transform::clip(size) }
    }

    /// FG-CLIP's `Image.open(p).convert("RGB").resize((S, S))` (bicubic),
    /// after which `CLIPImageProcessor`'s resize and crop change nothing.
    pub fn square(size: usize) -> Transform {
        Transform { geometry: Geometry::Square, rgb_first: true, ..Transform::clip(size) }
    }

    /// Reads and transforms one image file: `3 * size * size` floats, CHW.
    pub fn from_path(&self, path: &Path) -> Result<Vec<f32>> {
        let name = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{name}: file not found"),
            Err(e) => bail!("{name}: cannot read file: {e}"),
        };
        self.from_bytes(&bytes, &name)
    }

    /// Transforms an encoded image held in memory; `name` is used in errors.
    pub fn from_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        if self.size == 0 {
            bail!("{name}: transform size must be at least 1");
        }
        // The decoders are third-party code: a panic on hostile bytes becomes an error.
        let run = AssertUnwindSafe(|| -> Result<Vec<f32>> {
            let raster = decode(bytes, name, self.exif)?;
            Ok(self.apply(&raster))
        });
        match catch_unwind(run) {
            Ok(result) => result,
            Err(_) => Err(anyhow!("{name}: decoder failed on malformed image data")),
        }
    }

    /// Transforms many files in parallel (rayon); results are in input order.
    pub fn batch_from_paths(&self, paths: &[PathBuf]) -> Vec<Result<Vec<f32>>> {
        paths.par_iter().map(|path| self.from_path(path)).collect()
    }

    /// Resize, crop and normalize an already decoded image.
    fn apply(&self, raster: &Raster) -> Vec<f32> {
        let rgb;
        let raster = match self.rgb_first {
            true => {
                rgb = raster.to_rgb();
                &rgb
            }
            false => raster,
        };
        let n = self.size;
        let (width, height) = raster.dimensions();
        let (new_w, new_h, cols, rows) = match self.geometry {
            Geometry::Square => (n, n, 0..n, 0..n),
            Geometry::ShortSideCrop(offset) => {
                let (new_w, new_h) = resized_size(width, height, n);
                (new_w, new_h, crop_range(new_w, n, offset), crop_range(new_h, n, offset))
            }
        };
        match raster {
            Raster::Bytes { pixels, resample } => {
                let out = resize_window(pixels, *resample, new_w, new_h, cols, rows);
                self.normalize(&out)
            }
            Raster::Wide(pixels) => {
                let out = resize_window_16(pixels, new_w, new_h, cols, rows);
                self.normalize(&clip_16_to_8(&out))
            }
        }
    }

    /// `convert("RGB")`, `ToTensor()` (u8 / 255) and `Normalize`, as CHW f32.
    fn normalize(&self, pixels: &Plane<u8>) -> Vec<f32> {
        let area = pixels.width * pixels.height;
        // The same f32 operations torch does, precomputed per byte value.
        let table: Vec<[f32; 256]> = (0..3)
            .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c]))
            .collect();
        let mut out = vec![0f32; 3 * area];
        let ch = pixels.channels;
        for (i, px) in pixels.data.chunks_exact(ch).enumerate() {
            // Grey (+alpha) repeats L; RGBA drops alpha.
            let rgb = if ch < 3 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
            for c in 0..3 {
                out[c * area + i] = table[c][rgb[c] as usize];
            }
        }
        out
    }
}

/// True when the file extension is one we decode (jpg jpeg png webp gif bmp tif tiff).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .map(|ext| IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known)))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Decoded images, kept in the mode PIL would use.

/// Interleaved pixels: `channels` samples per pixel, rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane<T> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<T>,
}

/// How PIL resizes an image of a given mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// "L" and "RGB": plain bicubic.
    Bicubic,
    /// "LA" and "RGBA" (alpha last): bicubic on premultiplied samples.
    Premultiplied,
    /// "P" (stored here already mapped through the palette) and "1": nearest.
    Nearest,
}

/// A decoded image: 8-bit samples, or 16-bit grey ("I;16").
enum Raster {
    Bytes { pixels: Plane<u8>, resample: Resample },
    Wide(Plane<u16>),
}

impl Raster {
    fn dimensions(&self) -> (usize, usize) {
        match self {
            Raster::Bytes { pixels, .. } => (pixels.width, pixels.height),
            Raster::Wide(pixels) => (pixels.width, pixels.height),
        }
    }

    /// PIL's `convert("RGB")`: grey repeated, alpha dropped, 16-bit grey
    /// clipped to 255; the result resizes bicubic.
    fn to_rgb(&self) -> Raster {
        let pixels = match self {
            Raster::Bytes { pixels, .. } => rgb_plane(pixels),
            Raster::Wide(pixels) => rgb_plane(&clip_16_to_8(pixels)),
        };
        Raster::bytes(pixels, Resample::Bicubic)
    }

    fn bytes(pixels: Plane<u8>, resample: Resample) -> Raster {
        Raster::Bytes { pixels, resample }
    }

    fn oriented(self, orientation: Orientation) -> Raster {
        match self {
            Raster::Bytes { pixels, resample } => {
                Raster::Bytes { pixels: orient(pixels, orientation), resample }
            }
            Raster::Wide(pixels) => Raster::Wide(orient(pixels, orientation)),
        }
    }
}

/// Three samples per pixel: grey (with or without alpha) repeated, alpha dropped.
fn rgb_plane(src: &Plane<u8>) -> Plane<u8> {
    let ch = src.channels.max(1);
    let mut data = Vec::with_capacity(src.width * src.height * 3);
    for px in src.data.chunks_exact(ch) {
        match ch {
            1 | 2 => data.extend_from_slice(&[px[0]; 3]),
            _ => data.extend_from_slice(&px[..3]),
        }
    }
    Plane { width: src.width, height: src.height, channels: 3, data }
}

// ---------------------------------------------------------------------------
// Decoding.

/// Decodes by content (never by extension) into PIL's mode for the file.
fn decode(bytes: &[u8], name: &str, exif: bool) -> Result<Raster> {
    if bytes.is_empty() {
        bail!("{name}: empty file (0 bytes), not an image");
    }
    let format = sniff_format(bytes, name)?;
    if let Some((w, h)) = png_header_size(bytes) {
        check_size(name, w, h)?;
    }
    let corrupt = |e: &dyn std::fmt::Display| corrupt_error(name, format, e);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits(); // we apply PIL's pixel limit ourselves, below
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(&e))?;
    let (w, h) = decoder.dimensions();
    check_size(name, w as u64, h as u64)?;
    let orientation = match exif {
        true => decoder.orientation().unwrap_or(Orientation::NoTransforms),
        false => Orientation::NoTransforms,
    };
    let raster = match format {
        ImageFormat::Png => decode_png(bytes).map_err(|e| corrupt(&e))?,
        ImageFormat::Gif => decode_gif(bytes, name)?,
        ImageFormat::Jpeg => {
            check_jpeg_complete(bytes).map_err(|e| corrupt(&e))?;
            // libjpeg-turbo, as Pillow; CMYK files keep the image crate's path.
            match crate::jpeg::decode(bytes).map_err(|e| corrupt(&e))? {
                Some(pixels) => Raster::bytes(pixels, Resample::Bicubic),
                None => from_dynamic(DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?),
            }
        }
        ImageFormat::Bmp => {
            let image = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?;
            match bmp_is_palette(bytes) {
                true => Raster::bytes(to_plane(image), Resample::Nearest),
                false => from_dynamic(image),
            }
        }
        _ => from_dynamic(DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?),
    };
    Ok(raster.oriented(orientation))
}

/// The format from the magic bytes; only the formats we were built for.
fn sniff_format(bytes: &[u8], name: &str) -> Result<ImageFormat> {
    let supported = [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ];
    match image::guess_format(bytes) {
        Ok(format) if supported.contains(&format) => Ok(format),
        Ok(format) => bail!("{name}: unsupported image format {format:?}"),
        Err(_) => {
            let head: String = bytes.iter().take(16).map(|&b| show_byte(b)).collect();
            bail!("{name}: not an image: unknown format ({} bytes, starting {head:?})", bytes.len())
        }
    }
}

fn show_byte(b: u8) -> char {
    match b {
        0x20..=0x7e => b as char,
        _ => '.',
    }
}

fn corrupt_error(name: &str, format: ImageFormat, e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!("{name}: corrupt or truncated {} data: {e}", format_label(format))
}

fn format_label(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

/// PIL's decompression-bomb rule: refuse more than `MAX_PIXELS` pixels.
fn check_size(name: &str, width: u64, height: u64) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("{name}: invalid image size {width}x{height} (zero width or height)");
    }
    let pixels = width * height;
    if pixels > MAX_PIXELS {
        bail!(
            "{name}: image too large: {width}x{height} = {pixels} pixels, over the limit of \
             {MAX_PIXELS} (possible decompression bomb)"
        );
    }
    Ok(())
}

/// Width and height from a PNG's IHDR, read before anything else is parsed,
/// so a bomb is refused even when the rest of the file is missing.
fn png_header_size(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((word(16) as u64, word(20) as u64))
}

/// Maps a decoded `DynamicImage` to PIL's mode for it.
fn from_dynamic(image: DynamicImage) -> Raster {
    match image {
        DynamicImage::ImageLuma16(grey) => {
            let (width, height) = grey.dimensions();
            let data = grey.into_raw();
            Raster::Wide(Plane { width: width as usize, height: height as usize, channels: 1, data })
        }
        image => {
            let alpha = image.color().has_alpha();
            let resample = if alpha { Resample::Premultiplied } else { Resample::Bicubic };
            Raster::bytes(to_plane(image), resample)
        }
    }
}

/// 8-bit samples; 16-bit ones keep their high byte, as PIL's "RGB;16B" etc. do.
fn to_plane(image: DynamicImage) -> Plane<u8> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (channels, data) = match image {
        DynamicImage::ImageLuma8(b) => (1, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (2, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
        DynamicImage::ImageLuma16(b) => (1, high_bytes(b.as_raw())),
        DynamicImage::ImageLumaA16(b) => (2, high_bytes(b.as_raw())),
        DynamicImage::ImageRgb16(b) => (3, high_bytes(b.as_raw())),
        DynamicImage::ImageRgba16(b) => (4, high_bytes(b.as_raw())),
        other if other.color().has_alpha() => (4, other.to_rgba8().into_raw()),
        other => (3, other.to_rgb8().into_raw()),
    };
    Plane { width, height, channels, data }
}

fn high_bytes(samples: &[u16]) -> Vec<u8> {
    samples.iter().map(|&v| (v >> 8) as u8).collect()
}

/// PNG through the `png` crate without transformations, because PIL keeps
/// palette indices ("P", resized NEAREST) and ignores tRNS, while the image
/// crate expands both.
fn decode_png(bytes: &[u8]) -> std::result::Result<Raster, String> {
    use png::{BitDepth, ColorType};
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    decoder.set_limits(png::Limits { bytes: usize::MAX });
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader.output_buffer_size().ok_or("image too large for memory")?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (width, height, stride) = (frame.width as usize, frame.height as usize, frame.line_size);
    let info = reader.info();
    let bits = info.bit_depth as usize;
    let rows = |row: usize| &buf[row * stride..(row + 1) * stride];
    let plane = |channels: usize, data: Vec<u8>| Plane { width, height, channels, data };
    let raster = match (info.color_type, info.bit_depth) {
        (ColorType::Grayscale, BitDepth::Sixteen) => {
            let data = (0..height).flat_map(|y| be_u16s(&rows(y)[..width * 2])).collect();
            Raster::Wide(Plane { width, height, channels: 1, data })
        }
        (ColorType::Grayscale, depth) if depth != BitDepth::Eight => {
            // "1" (nearest, 0/255); "L;2" and "L;4" scale to 0..255 ("L").
            let scale = match bits {
                1 => 255,
                2 => 85,
                _ => 17,
            };
            let data =
                (0..height).flat_map(|y| unpack_row(rows(y), bits, width)).map(|v| v * scale).collect();
            let resample = if depth == BitDepth::One { Resample::Nearest } else { Resample::Bicubic };
            Raster::bytes(plane(1, data), resample)
        }
        (ColorType::Indexed, _) => {
            let palette = info.palette.as_deref().unwrap_or(&[]);
            let data = (0..height)
                .flat_map(|y| unpack_row(rows(y), bits, width))
                .flat_map(|index| palette_rgb(palette, index))
                .collect();
            Raster::bytes(plane(3, data), Resample::Nearest)
        }
        (color, depth) => {
            let channels = color.samples();
            let data: Vec<u8> = match depth {
                BitDepth::Sixteen => (0..height)
                    .flat_map(|y| rows(y)[..width * channels * 2].iter().step_by(2).copied())
                    .collect(),
                _ if stride == width * channels => {
                    buf.truncate(height * stride); // already packed 8-bit samples
                    buf
                }
                _ => (0..height).flat_map(|y| rows(y)[..width * channels].iter().copied()).collect(),
            };
            let alpha = matches!(color, ColorType::GrayscaleAlpha | ColorType::Rgba);
            let resample = if alpha { Resample::Premultiplied } else { Resample::Bicubic };
            Raster::bytes(plane(channels, data), resample)
        }
    };
    Ok(raster)
}

fn be_u16s(row: &[u8]) -> impl Iterator<Item = u16> + '_ {
    row.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
}

/// The first `width` samples of a row packed `bits` per sample, MSB first.
fn unpack_row(row: &[u8], bits: usize, width: usize) -> impl Iterator<Item = u8> + '_ {
    let mask = ((1u16 << bits) - 1) as u8;
    (0..width).map(move |x| {
        let bit = x * bits;
        let byte = row.get(bit / 8).copied().unwrap_or(0);
        (byte >> (8 - bits - bit % 8)) & mask
    })
}

/// A palette entry; indices past the palette are black, as in PIL.
fn palette_rgb(palette: &[u8], index: u8) -> [u8; 3] {
    let at = index as usize * 3;
    match palette.get(at..at + 3) {
        Some(rgb) => [rgb[0], rgb[1], rgb[2]],
        None => [0, 0, 0],
    }
}

/// GIF's first frame as PIL loads it: the frame's indices on a canvas filled
/// with the transparent index (else 0), mapped through the palette ("P",
/// nearest) — or kept as grey levels ("L") when the palette is the identity
/// grey ramp, which PIL drops.
fn decode_gif(bytes: &[u8], name: &str) -> Result<Raster> {
    let corrupt = |e: gif::DecodingError| corrupt_error(name, ImageFormat::Gif, &e);
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    options.set_memory_limit(gif::MemoryLimit::Unlimited); // sizes are checked below
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(corrupt)?;
    let (screen_w, screen_h) = (decoder.width() as usize, decoder.height() as usize);
    let Some(frame) = decoder.next_frame_info().map_err(corrupt)? else {
        bail!("{name}: corrupt GIF data: no image in the file");
    };
    let (left, top) = (frame.left as usize, frame.top as usize);
    let (frame_w, frame_h) = (frame.width as usize, frame.height as usize);
    let fill = frame.transparent.unwrap_or(0);
    let palette = decoder.palette().ok().filter(|p| !is_grey_ramp(p)).map(<[u8]>::to_vec);
    // PIL grows the image when the first frame sticks out of the screen.
    let (width, height) = (screen_w.max(left + frame_w), screen_h.max(top + frame_h));
    check_size(name, width as u64, height as u64)?;
    let mut indices = vec![0u8; frame_w * frame_h];
    decoder.read_into_buffer(&mut indices).map_err(corrupt)?;
    let mut canvas = vec![fill; width * height];
    for (y, src) in indices.chunks_exact(frame_w.max(1)).enumerate() {
        let at = (top + y) * width + left;
        canvas[at..at + frame_w].copy_from_slice(src);
    }
    let raster = match palette {
        None => Raster::bytes(Plane { width, height, channels: 1, data: canvas }, Resample::Bicubic),
        Some(palette) => {
            let data = canvas.iter().flat_map(|&i| palette_rgb(&palette, i)).collect();
            Raster::bytes(Plane { width, height, channels: 3, data }, Resample::Nearest)
        }
    };
    Ok(raster)
}

/// PIL's `_is_palette_needed` is false when entry i is (i, i, i) throughout.
fn is_grey_ramp(palette: &[u8]) -> bool {
    palette.chunks(3).enumerate().all(|(i, rgb)| rgb.len() == 3 && rgb.iter().all(|&v| v as usize == i))
}

/// Whether PIL opens this BMP as "P" or "1" (nearest resize). Palette BMPs
/// whose palette is exactly the grey ramp become "L" (bicubic) instead.
fn bmp_is_palette(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| {
        bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(header) = u32_at(14) else { return false };
    let (bits, colors, entry) = match header {
        12 => (u16_at(24).unwrap_or(0), 0, 3),
        _ => (u16_at(28).unwrap_or(0), u32_at(46).unwrap_or(0), 4),
    };
    if bits == 0 || bits > 8 {
        return false;
    }
    let colors = if colors == 0 { 1 << bits } else { colors };
    let levels: Vec<usize> = if colors == 2 { vec![0, 255] } else { (0..colors.min(257)).collect() };
    let palette_at = 14 + header;
    let grey = levels.iter().enumerate().all(|(i, &level)| {
        let at = palette_at + i * entry;
        bytes.get(at..at + 3).is_some_and(|rgb| rgb.iter().all(|&v| v as usize == level))
    });
    // A grey ramp makes "L" (bicubic), except with two colours, which makes "1".
    !grey || colors <= 2
}

/// PIL refuses a JPEG that ends before its EOI marker ("image file is
/// truncated"); zune-jpeg would fill the rest with grey, so we check first.
fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    let scan = first_scan_offset(bytes).ok_or("no image scan (SOS marker) found")?;
    let tail = &bytes[scan..];
    match tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        true => Ok(()),
        false => Err("the file ends before the end-of-image marker (truncated)".into()),
    }
}

/// Offset of the first start-of-scan marker, walking the marker segments.
fn first_scan_offset(bytes: &[u8]) -> Option<usize> {
    let mut at = 2; // after SOI
    loop {
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1; // fill bytes
        }
        if bytes.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            0xDA => return Some(at),
            0xD0..=0xD9 | 0x01 => at += 2, // markers without a length
            _ => {
                let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
                at += 2 + len;
            }
        }
    }
}

/// Applies an EXIF orientation the way `DynamicImage::apply_orientation` does.
fn orient<T: Copy>(plane: Plane<T>, orientation: Orientation) -> Plane<T> {
    let (w, h, ch) = (plane.width, plane.height, plane.channels);
    let swap = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    // Source pixel for output pixel (x, y).
    let source = |x: usize, y: usize| -> (usize, usize) {
        match orientation {
            Orientation::NoTransforms => (x, y),
            Orientation::FlipHorizontal => (w - 1 - x, y),
            Orientation::FlipVertical => (x, h - 1 - y),
            Orientation::Rotate180 => (w - 1 - x, h - 1 - y),
            Orientation::Rotate90 => (y, h - 1 - x),
            Orientation::Rotate270 => (w - 1 - y, x),
            Orientation::Rotate90FlipH => (y, x),
            Orientation::Rotate270FlipH => (w - 1 - y, h - 1 - x),
        }
    };
    if orientation == Orientation::NoTransforms {
        return plane;
    }
    let (out_w, out_h) = if swap { (h, w) } else { (w, h) };
    let mut data = Vec::with_capacity(plane.data.len());
    for y in 0..out_h {
        for x in 0..out_w {
            let (sx, sy) = source(x, y);
            let at = (sy * w + sx) * ch;
            data.extend_from_slice(&plane.data[at..at + ch]);
        }
    }
    Plane { width: out_w, height: out_h, channels: ch, data }
}

// ---------------------------------------------------------------------------
// torchvision geometry.

/// torchvision `Resize(n)` on a w×h image: the short side becomes `n`,
/// the long side `int(n * long / short)`.
pub fn resized_size(width: usize, height: usize, n: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = ((n as u64 * long as u64) as f64 / short as f64) as usize;
    if width <= height {
        (n, new_long)
    } else {
        (new_long, n)
    }
}

/// torchvision `CenterCrop`: start at `int(round((size - n) / 2.0))`, where
/// Python rounds halves to even.
pub fn center_crop_offset(size: usize, n: usize) -> usize {
    let excess = size.saturating_sub(n);
    let half = excess / 2;
    if excess % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

fn crop_range(size: usize, n: usize, offset: CropOffset) -> Range<usize> {
    let start = match offset {
        CropOffset::Round => center_crop_offset(size, n),
        CropOffset::Floor => size.saturating_sub(n) / 2,
    };
    start..start + n
}

// ---------------------------------------------------------------------------
// Pillow's resampling (Resample.c), restricted to a window of the output.

/// Bicubic weights for some output positions of a 1-D resize, as Pillow's
/// `precompute_coeffs`: output `i` reads `len[i]` inputs from `start[i]`.
#[derive(Clone, Debug)]
pub struct Coefficients {
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    /// `ksize` weights per output (zeros past `len`).
    pub weights: Vec<f64>,
    pub ksize: usize,
}

impl Coefficients {
    /// The input positions needed by all outputs.
    pub fn input_range(&self) -> Range<usize> {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self.start.iter().zip(&self.len).map(|(s, l)| s + l).max().unwrap_or(0);
        first..last.max(first)
    }
}

/// Pillow's bicubic filter, a = -0.5, evaluated in the same order as C.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` (bicubic, whole-image box) for the outputs in `outputs`.
pub fn coefficients(in_size: usize, out_size: usize, outputs: Range<usize>) -> Coefficients {
    // Pillow holds the box in floats: (float)in_size, then widens to double.
    let scale = (in_size as f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let count = outputs.len();
    let mut c = Coefficients {
        start: Vec::with_capacity(count),
        len: Vec::with_capacity(count),
        weights: vec![0.0; count * ksize],
        ksize,
    };
    for (slot, xx) in outputs.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Truncating casts, as C's (int) conversion.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let len = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let k = &mut c.weights[slot * ksize..slot * ksize + len];
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            *w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            total += *w;
        }
        if total != 0.0 {
            k.iter_mut().for_each(|w| *w /= total);
        }
        c.start.push(xmin as usize);
        c.len.push(len);
    }
    c
}

/// Pillow's `normalize_coeffs_8bpc`: weights as fixed point with 22 fraction bits.
pub fn fixed_point(weights: &[f64]) -> Vec<i32> {
    let one = (1i64 << PRECISION_BITS) as f64;
    weights
        .iter()
        .map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 })
        .collect()
}

/// Pillow's `clip8`: drop the fraction bits and clamp to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass for the source rows `rows`: one output column per coefficient set.
pub fn resample_horizontal(src: &Plane<u8>, rows: Range<usize>, c: &Coefficients) -> Plane<u8> {
    let ch = src.channels;
    let kk = fixed_point(&c.weights);
    let out_w = c.start.len();
    let mut data = vec![0u8; rows.len() * out_w * ch];
    let row_len = src.width * ch;
    for (y, out_row) in rows.zip(data.chunks_exact_mut((out_w * ch).max(1))) {
        let in_row = &src.data[y * row_len..(y + 1) * row_len];
        match ch {
            1 => horizontal_row::<1>(in_row, out_row, &kk, c),
            2 => horizontal_row::<2>(in_row, out_row, &kk, c),
            3 => horizontal_row::<3>(in_row, out_row, &kk, c),
            _ => horizontal_row::<4>(in_row, out_row, &kk, c),
        }
    }
    Plane { width: out_w, height: data.len() / (out_w * ch).max(1), channels: ch, data }
}

/// One row of the horizontal pass, `C` channels per pixel (unrolled by the compiler).
fn horizontal_row<const C: usize>(in_row: &[u8], out_row: &mut [u8], kk: &[i32], c: &Coefficients) {
    for (i, out_px) in out_row.chunks_exact_mut(C).enumerate() {
        let k = &kk[i * c.ksize..i * c.ksize + c.len[i]];
        let pixels = &in_row[c.start[i] * C..(c.start[i] + c.len[i]) * C];
        let mut ss = [1i32 << (PRECISION_BITS - 1); C];
        for (px, &w) in pixels.chunks_exact(C).zip(k) {
            for b in 0..C {
                ss[b] += px[b] as i32 * w;
            }
        }
        for b in 0..C {
            out_px[b] = clip8(ss[b]);
        }
    }
}

/// Vertical pass: `src` holds source rows from `first_row` on.
pub fn resample_vertical(src: &Plane<u8>, first_row: usize, c: &Coefficients) -> Plane<u8> {
    let row_len = src.width * src.channels;
    let kk = fixed_point(&c.weights);
    let out_h = c.start.len();
    let mut data = vec![0u8; out_h * row_len];
    let mut sums = vec![0i32; row_len];
    for (j, out_row) in data.chunks_exact_mut(row_len.max(1)).enumerate() {
        sums.fill(1 << (PRECISION_BITS - 1));
        let k = &kk[j * c.ksize..j * c.ksize + c.len[j]];
        for (y, &w) in k.iter().enumerate() {
            let at = (c.start[j] - first_row + y) * row_len;
            // Integer sums: summing row by row gives Pillow's exact result.
            for (s, &v) in sums.iter_mut().zip(&src.data[at..at + row_len]) {
                *s += v as i32 * w;
            }
        }
        for (out, &s) in out_row.iter_mut().zip(&sums) {
            *out = clip8(s);
        }
    }
    Plane { width: src.width, height: out_h, channels: src.channels, data }
}

/// Resizes to `out_w`×`out_h` as PIL would, computing only `cols`×`rows` of the result.
fn resize_window(
    src: &Plane<u8>,
    resample: Resample,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Plane<u8> {
    if out_w == src.width && out_h == src.height {
        return crop(src, cols, rows); // torchvision skips the resize
    }
    match resample {
        Resample::Nearest => resize_nearest(src, out_w, out_h, cols, rows),
        Resample::Bicubic => resize_bicubic(src, out_w, out_h, cols, rows),
        Resample::Premultiplied => {
            let mut out = resize_bicubic(&premultiply(src), out_w, out_h, cols, rows);
            unpremultiply(&mut out);
            out
        }
    }
}

/// Pillow's two-pass bicubic resize (horizontal, then vertical, as Pillow
/// 11/12) to `out_w`×`out_h`, computing only columns `cols` and rows `rows`.
pub fn resize_bicubic(
    src: &Plane<u8>,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Plane<u8> {
    let vertical = (out_h != src.height).then(|| coefficients(src.height, out_h, rows.clone()));
    let src_rows = vertical.as_ref().map_or(rows.clone(), |c| c.input_range());
    let tmp = match out_w != src.width {
        true => resample_horizontal(src, src_rows.clone(), &coefficients(src.width, out_w, cols)),
        false => crop(src, cols, src_rows.clone()),
    };
    match vertical {
        Some(c) => resample_vertical(&tmp, src_rows.start, &c),
        None => tmp,
    }
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`), which steps the source
/// position by repeated addition.
fn resize_nearest(
    src: &Plane<u8>,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Plane<u8> {
    let xs = nearest_positions(src.width, out_w, cols);
    let ys = nearest_positions(src.height, out_h, rows);
    let ch = src.channels;
    let mut data = Vec::with_capacity(xs.len() * ys.len() * ch);
    for &y in &ys {
        let row = &src.data[y * src.width * ch..(y + 1) * src.width * ch];
        for &x in &xs {
            data.extend_from_slice(&row[x * ch..(x + 1) * ch]);
        }
    }
    Plane { width: xs.len(), height: ys.len(), channels: ch, data }
}

fn nearest_positions(in_size: usize, out_size: usize, wanted: Range<usize>) -> Vec<usize> {
    let scale = (in_size as f32) as f64 / out_size as f64;
    // COORD() truncates; clamp where float drift could step past the edge.
    let coord = |pos: f64| (pos.max(0.0) as usize).min(in_size - 1);
    if wanted.end > 1 << 24 {
        // Absurdly stretched images: multiply instead of stepping billions of times.
        return wanted.map(|i| coord((i as f64 + 0.5) * scale)).collect();
    }
    let mut pos = scale * 0.5;
    let mut out = Vec::with_capacity(wanted.len());
    for i in 0..wanted.end {
        if i >= wanted.start {
            out.push(coord(pos));
        }
        pos += scale;
    }
    out
}

fn crop<T: Copy>(src: &Plane<T>, cols: Range<usize>, rows: Range<usize>) -> Plane<T> {
    let ch = src.channels;
    let mut data = Vec::with_capacity(cols.len() * rows.len() * ch);
    for y in rows.clone() {
        let at = y * src.width * ch;
        data.extend_from_slice(&src.data[at + cols.start * ch..at + cols.end * ch]);
    }
    Plane { width: cols.len(), height: rows.len(), channels: ch, data }
}

/// PIL's "RGBA" -> "RGBa" (and "LA" -> "La"): colour × alpha / 255, rounded.
fn premultiply(src: &Plane<u8>) -> Plane<u8> {
    let mut out = src.clone();
    for px in out.data.chunks_exact_mut(src.channels) {
        let (colour, alpha) = px.split_at_mut(src.channels - 1);
        let a = alpha[0] as u32;
        for v in colour {
            let t = *v as u32 * a + 128;
            *v = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// PIL's "RGBa" -> "RGBA": colour × 255 / alpha, truncated and clipped.
fn unpremultiply(plane: &mut Plane<u8>) {
    let ch = plane.channels;
    for px in plane.data.chunks_exact_mut(ch) {
        let (colour, alpha) = px.split_at_mut(ch - 1);
        let a = alpha[0] as u32;
        if a == 0 || a == 255 {
            continue;
        }
        for v in colour {
            *v = (255 * *v as u32 / a).min(255) as u8;
        }
    }
}

// ---------------------------------------------------------------------------
// 16-bit grey ("I;16"): Pillow's ImagingResample*_16bpc.

/// Pillow's 16-bit store: round half away from zero, then each byte clipped
/// on its own (so negatives become 0 and values past 65535 keep odd low bytes).
fn store_16(ss: f64) -> u16 {
    let v = (if ss >= 0.0 { ss + 0.5 } else { ss - 0.5 }) as i32;
    let clip = |x: i32| x.clamp(0, 255) as u16;
    clip(v >> 8) << 8 | clip(v % 256)
}

fn resample_horizontal_16(src: &Plane<u16>, rows: Range<usize>, c: &Coefficients) -> Plane<u16> {
    let out_w = c.start.len();
    let mut data = Vec::with_capacity(rows.len() * out_w);
    for y in rows {
        let row = &src.data[y * src.width..(y + 1) * src.width];
        for i in 0..out_w {
            let k = &c.weights[i * c.ksize..i * c.ksize + c.len[i]];
            let px = &row[c.start[i]..c.start[i] + c.len[i]];
            // Float sums: keep Pillow's order.
            let ss = px.iter().zip(k).fold(0.0, |ss, (&v, &w)| ss + v as f64 * w);
            data.push(store_16(ss));
        }
    }
    Plane { width: out_w, height: data.len() / out_w.max(1), channels: 1, data }
}

fn resample_vertical_16(src: &Plane<u16>, first_row: usize, c: &Coefficients) -> Plane<u16> {
    let out_h = c.start.len();
    let mut data = Vec::with_capacity(out_h * src.width);
    for j in 0..out_h {
        let k = &c.weights[j * c.ksize..j * c.ksize + c.len[j]];
        for x in 0..src.width {
            let mut ss = 0.0;
            for (y, &w) in k.iter().enumerate() {
                ss += src.data[(c.start[j] - first_row + y) * src.width + x] as f64 * w;
            }
            data.push(store_16(ss));
        }
    }
    Plane { width: src.width, height: out_h, channels: 1, data }
}

fn resize_window_16(
    src: &Plane<u16>,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Plane<u16> {
    if out_w == src.width && out_h == src.height {
        return crop(src, cols, rows);
    }
    let vertical = (out_h != src.height).then(|| coefficients(src.height, out_h, rows.clone()));
    let src_rows = vertical.as_ref().map_or(rows.clone(), |c| c.input_range());
    let tmp = match out_w != src.width {
        true => resample_horizontal_16(src, src_rows.clone(), &coefficients(src.width, out_w, cols)),
        false => crop(src, cols, src_rows.clone()),
    };
    match vertical {
        Some(c) => resample_vertical_16(&tmp, src_rows.start, &c),
        None => tmp,
    }
}

/// PIL's "I;16" -> "RGB": values above 255 become 255 (no rescaling).
fn clip_16_to_8(src: &Plane<u16>) -> Plane<u8> {
    let data = src.data.iter().map(|&v| v.min(255) as u8).collect();
    Plane { width: src.width, height: src.height, channels: 1, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_to_even() {
        // int(round((size - n) / 2.0)) in Python 3.
        let cases = [(35, 15, 10), (24, 15, 4), (26, 15, 6), (16, 15, 0), (18, 15, 2), (15, 15, 0)];
        for (size, n, want) in cases {
            assert_eq!(center_crop_offset(size, n), want, "size {size}, n {n}");
        }
    }

    #[test]
    fn hf_crop_floors_where_torchvision_rounds() {
        // rocket.jpg at 64 px is 95 wide: HF's left is 15, torchvision's 16.
        assert_eq!(crop_range(95, 64, CropOffset::Floor), 15..79);
        assert_eq!(crop_range(95, 64, CropOffset::Round), 16..80);
        assert_eq!(crop_range(96, 64, CropOffset::Floor), crop_range(96, 64, CropOffset::Round));
    }

    #[test]
    fn rgb_first_drops_alpha_and_repeats_grey() {
        let la = Plane { width: 1, height: 1, channels: 2, data: vec![7, 0] };
        assert_eq!(rgb_plane(&la).data, vec![7, 7, 7]);
        let rgba = Plane { width: 1, height: 1, channels: 4, data: vec![1, 2, 3, 0] };
        assert_eq!(rgb_plane(&rgba).data, vec![1, 2, 3]);
    }

    #[test]
    fn square_resize_ignores_the_aspect_ratio() {
        let png = {
            let img = image::RgbImage::from_fn(40, 10, |x, _| image::Rgb([(x * 6) as u8, 0, 0]));
            let mut out = Vec::new();
            DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
            out
        };
        let square = Transform::square(8).from_bytes(&png, "wide.png").unwrap();
        let cropped = Transform::clip(8).from_bytes(&png, "wide.png").unwrap();
        assert_eq!(square.len(), 3 * 64);
        // The square keeps both ends of the gradient; the crop only its middle.
        assert!(square[0] < cropped[0] && square[7] > cropped[7]);
    }

    #[test]
    fn resized_sizes_match_torchvision() {
        assert_eq!(resized_size(451, 300, 224), (336, 224));
        assert_eq!(resized_size(19, 45, 15), (15, 35));
        assert_eq!(resized_size(1, 30, 32), (32, 960));
        assert_eq!(resized_size(500, 500, 224), (224, 224));
    }

    #[test]
    fn orientation_matches_the_image_crate() {
        let data: Vec<u8> = (0..3 * 2 * 3).collect();
        let all = [
            Orientation::NoTransforms,
            Orientation::Rotate90,
            Orientation::Rotate180,
            Orientation::Rotate270,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ];
        for orientation in all {
            let mut theirs =
                DynamicImage::ImageRgb8(image::RgbImage::from_raw(3, 2, data.clone()).unwrap());
            theirs.apply_orientation(orientation);
            let ours =
                orient(Plane { width: 3, height: 2, channels: 3, data: data.clone() }, orientation);
            assert_eq!((ours.width as u32, ours.height as u32), (theirs.width(), theirs.height()));
            assert_eq!(ours.data, theirs.into_rgb8().into_raw(), "{orientation:?}");
        }
    }
}
