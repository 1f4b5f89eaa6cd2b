//! JPEG decoding with libjpeg-turbo's decoder (built from source by
//! `mozjpeg-sys`, no SIMD), so that pixels are the ones Pillow produces:
//! Pillow links libjpeg-turbo, whose islow IDCT and "fancy" chroma
//! upsampling give the same output with or without SIMD. zune-jpeg (the
//! `image` crate's decoder) differs by a few levels in about one pixel in
//! eight, which is enough to move retrieval numbers of a sensitive model by
//! several pairs in a thousand.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::preprocess::Plane;

/// Greyscale ("L") or RGB pixels as PIL decodes them, or `Ok(None)` for
/// CMYK / YCCK files, which PIL keeps in CMYK (the caller's other path).
pub fn decode(bytes: &[u8]) -> Result<Option<Plane<u8>>, String> {
    // libjpeg errors unwind out of the C code (mozjpeg's error manager).
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes))) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".into())),
    }
}

fn decode_inner(bytes: &[u8]) -> std::io::Result<Option<Plane<u8>>> {
    let started = match mozjpeg::Decompress::new_mem(bytes)?.image()? {
        mozjpeg::decompress::Format::RGB(d) => (d, 3),
        mozjpeg::decompress::Format::Gray(d) => (d, 1),
        mozjpeg::decompress::Format::CMYK(_) => return Ok(None),
    };
    let (mut d, channels) = started;
    let (width, height) = (d.width(), d.height());
    let data: Vec<u8> = d.read_scanlines()?;
    d.finish()?;
    if data.len() != width * height * channels {
        return Err(std::io::Error::other("truncated JPEG data"));
    }
    Ok(Some(Plane { width, height, channels, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rgb_and_grey_and_reports_garbage() {
        let rgb = image::RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 77]));
        let mut jpg = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
        let p = decode(jpg.get_ref()).unwrap().unwrap();
        assert_eq!((p.width, p.height, p.channels, p.data.len()), (16, 8, 3, 16 * 8 * 3));
        let grey = image::GrayImage::from_fn(9, 7, |x, _| image::Luma([(x * 20) as u8]));
        let mut jpg = std::io::Cursor::new(Vec::new());
        grey.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
        let p = decode(jpg.get_ref()).unwrap().unwrap();
        assert_eq!((p.width, p.height, p.channels), (9, 7, 1));
        let err = decode(b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap_err();
        assert!(!err.is_empty());
    }
}
