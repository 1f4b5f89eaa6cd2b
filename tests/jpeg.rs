//! JPEGs decode as Pillow decodes them (libjpeg-turbo): the official
//! transform's output on every greyscale and RGB JPEG fixture equals
//! Pillow's to float rounding, where zune-jpeg was off by a few levels.

mod common;

use common::*;
use longclip::preprocess::Transform;
use safetensors::SafeTensors;

const EXACT: f32 = 1e-5;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn rocket_jpg_matches_pillow_exactly() {
    let bytes = std::fs::read(fixture("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    // rocket.jpg is the fourth image of the reference set (MANIFEST.json order).
    for (key, size) in [("pixels", 64), ("pixels_224", 224)] {
        let all = f32s(tensors.tensor(key).unwrap().data());
        let per = 3 * size * size;
        let want = &all[3 * per..4 * per];
        let ours = Transform { exif: false, ..Transform::clip(size) }.from_path(&fixture("images/rocket.jpg")).unwrap();
        let d = max_diff(&ours, want);
        assert!(d <= EXACT, "rocket.jpg at {size}px: max diff {d}");
    }
}

#[test]
fn jpeg_cases_match_pillow_exactly() {
    let bytes = std::fs::read(fixture("preprocess_cases.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for key in tensors.names() {
        let parts: Vec<&str> = key.split('@').collect();
        let (file, size) = (parts[0], parts[1].parse::<usize>().unwrap());
        // CMYK files keep the image crate's decoder (PIL resizes them in CMYK).
        if !file.ends_with(".jpg") || file.contains("cmyk") {
            continue;
        }
        let exif = parts.get(2) == Some(&"exif");
        let want = f32s(tensors.tensor(key).unwrap().data());
        let ours = Transform { exif, ..Transform::clip(size) }.from_path(&fixture(&format!("preprocess/{file}"))).unwrap();
        let d = max_diff(&ours, &want);
        assert!(d <= EXACT, "{key}: max diff {d}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} JPEG cases");
}
