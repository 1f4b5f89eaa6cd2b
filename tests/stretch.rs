//! Knowledge-preserved stretching against the official `load_from_clip`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint;
use longclip::model::LongClip;
use longclip::stretch::{stretch_checkpoint, stretch_table};

#[test]
fn stretched_table_matches_official_within_1e6() {
    let ckpt = stretch_checkpoint(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap()).unwrap();
    let ours = ckpt.get("positional_embedding").unwrap();
    let want = &expected()["clip77.stretched_positional_embedding"];
    assert_eq!(ours.dims(), &[248, 64]);
    let diff = max_abs_diff(ours, want);
    eprintln!("stretched table max abs diff {diff:e}");
    assert!(diff <= 1e-6, "stretched table differs by {diff}");
    assert_eq!(ckpt.config.text.context_length, 248);
    assert!(ckpt.is_long_clip());
}

#[test]
fn stretched_features_match_official() {
    let ckpt = stretch_checkpoint(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap()).unwrap();
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let exp = expected();
    let text = model.text.encode(&reference_ids("ids_248")).unwrap();
    assert_rows_cosine("clip77.stretched.text", &text, &exp["clip77.stretched.text_features"], 0.9999);
    let image = model.vision.encode(&exp["pixels"]).unwrap();
    assert_rows_cosine("clip77.stretched.image", &image, &exp["clip77.stretched.image_features"], 0.9999);
}

#[test]
fn stretch_keeps_20_rows_and_interpolates_four_times() {
    // Exactly representable values, so fp16 rounding does not blur the check.
    let rows: Vec<f32> = (0..77).flat_map(|i| [i as f32, -(i as f32) * 2.0]).collect();
    let table = Tensor::from_vec(rows, (77, 2), &Device::Cpu).unwrap();
    let s = stretch_table(&table).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(s.len(), 248);
    for i in 0..20 {
        assert_eq!(s[i], vec![i as f32, -(i as f32) * 2.0]);
    }
    // Row 20 + 4k is original row 20 + k; the three after it step by a quarter.
    assert_eq!(s[24][0], 21.0);
    assert_eq!(s[25][0], 21.25);
    assert_eq!(s[26][0], 21.5);
    assert_eq!(s[27][0], 21.75);
    // The last four extrapolate from the last step (76 - 75 = 1).
    assert_eq!(&s[244..].iter().map(|r| r[0]).collect::<Vec<_>>(), &[76.0, 76.25, 76.5, 76.75]);
}

#[test]
fn stretch_refuses_a_long_clip_checkpoint() {
    let err = stretch_checkpoint(checkpoint::load(&fixture("tiny-longclip.pt")).unwrap()).err().unwrap();
    assert!(err.to_string().contains("already a Long-CLIP"), "{err}");
}

#[test]
fn stretch_refuses_too_short_a_table() {
    let t = Tensor::zeros((21, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(stretch_table(&t).is_err());
}
