//! Parity of the encoders with the official Long-CLIP PyTorch code on the
//! reference fixtures, and of the loader on checkpoints of other shapes.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint::{self, Config};
use longclip::model::LongClip;

const MIN_COS: f64 = 0.9999;

fn load_model(name: &str) -> LongClip {
    let ckpt = checkpoint::load(&fixture(name)).expect("checkpoint loads");
    LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap()
}

fn encode_in_batches(model: &LongClip, ids: &[Vec<u32>], batch: usize) -> Tensor {
    let parts: Vec<Tensor> = ids.chunks(batch).map(|c| model.text.encode(c).unwrap()).collect();
    Tensor::cat(&parts, 0).unwrap()
}

#[test]
fn longclip_text_features_match_official() {
    let model = load_model("tiny-longclip.pt");
    let exp = expected();
    let ids = reference_ids("ids_248");
    let ours = encode_in_batches(&model, &ids, 24);
    assert_rows_cosine("text_features", &ours, &exp["longclip.text_features"], MIN_COS);
    let diff = max_abs_diff(&ours, &exp["longclip.text_features"]);
    eprintln!("text_features max abs diff {diff:e}");
}

#[test]
fn longclip_text_features_do_not_depend_on_batching() {
    let model = load_model("tiny-longclip.pt");
    let ids = reference_ids("ids_248");
    let together = encode_in_batches(&model, &ids, 24);
    let alone = encode_in_batches(&model, &ids, 1);
    let by_five = encode_in_batches(&model, &ids, 5);
    assert!(max_abs_diff(&together, &alone) < 1e-4);
    assert!(max_abs_diff(&together, &by_five) < 1e-4);
}

#[test]
fn padding_to_248_gives_the_same_features_as_trimming() {
    // The official code always runs 248 positions; we run the batch's longest.
    let model = load_model("tiny-longclip.pt");
    let ids = reference_ids("ids_248");
    let trimmed = encode_in_batches(&model, &ids, 24);
    let padded: Vec<Vec<u32>> = ids.iter().map(|s| {
        let mut p = s.clone();
        p.resize(248, 0);
        p
    }).collect();
    let full = encode_in_batches(&model, &padded, 24);
    assert_rows_cosine("padded vs trimmed", &full, &trimmed, 0.999999);
}

#[test]
fn longclip_truncated_77_features_match_official() {
    let model = load_model("tiny-longclip.pt");
    let ours = encode_in_batches(&model, &reference_ids("ids_77"), 8);
    assert_rows_cosine("text_features_trunc77", &ours, &expected()["longclip.text_features_trunc77"], MIN_COS);
}

#[test]
fn longclip_image_features_and_logits_match_official() {
    let model = load_model("tiny-longclip.pt");
    let exp = expected();
    let image = model.vision.encode(&exp["pixels"]).unwrap();
    assert_rows_cosine("image_features", &image, &exp["longclip.image_features"], MIN_COS);
    let text = encode_in_batches(&model, &reference_ids("ids_248"), 24);
    let logits = model.logits_per_image(&image, &text).unwrap();
    let diff = max_abs_diff(&logits, &exp["longclip.logits_per_image"]);
    eprintln!("logits max abs diff {diff:e}");
    assert!(diff < 1e-3, "logits differ by {diff}");
}

#[test]
fn clip77_plain_features_match_official() {
    let model = load_model("tiny-clip77.pt");
    assert_eq!(model.text.context_length(), 77);
    let exp = expected();
    let text = encode_in_batches(&model, &reference_ids("ids_77"), 24);
    assert_rows_cosine("clip77.plain.text", &text, &exp["clip77.plain.text_features"], MIN_COS);
    let image = model.vision.encode(&exp["pixels"]).unwrap();
    assert_rows_cosine("clip77.plain.image", &image, &exp["clip77.plain.image_features"], MIN_COS);
}

#[test]
fn a_77_position_model_refuses_longer_sequences() {
    let model = load_model("tiny-clip77.pt");
    let long = reference_ids("ids_248").into_iter().max_by_key(Vec::len).unwrap();
    assert!(long.len() > 77);
    let err = model.text.encode(&[long]).unwrap_err().to_string();
    assert!(err.contains("77"), "{err}");
}

#[test]
fn loader_infers_the_fixture_architecture() {
    let ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let c = &ckpt.config;
    assert!(ckpt.is_long_clip());
    assert_eq!((c.embed_dim, c.text.width, c.text.layers, c.text.heads), (64, 128, 2, 2));
    assert_eq!((c.text.context_length, c.text.vocab_size), (248, 49408));
    assert_eq!((c.vision.width, c.vision.layers, c.vision.heads, c.vision.patch_size, c.vision.image_size), (128, 2, 2, 16, 64));
    let m = manifest();
    let dtypes = &m["tiny-longclip.pt"];
    for (key, t) in &ckpt.tensors {
        let stored = dtypes[key][1].as_str().unwrap();
        let ours = format!("{:?}", t.dtype());
        let want = match stored { "torch.float16" => "F16", "torch.float32" => "F32", other => other };
        assert_eq!(ours, want, "{key}: dtype");
        let shape: Vec<usize> = dtypes[key][0].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), shape.as_slice(), "{key}: shape");
    }
}

/// Checkpoints of other shapes, written in the official format by
/// scripts/gen_model_cases.py with features from an independent float64
/// implementation (itself checked against the official outputs).
#[test]
fn loader_infers_and_runs_other_shapes() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("model_cases/cases.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ckpt = checkpoint::load(&fixture(&format!("model_cases/{}", case["file"].as_str().unwrap())))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let want: Config = serde_json::from_value(case["config"].clone()).unwrap();
        assert_eq!(ckpt.config, want, "{name}: inferred config");
        assert_eq!(ckpt.is_long_clip(), case["long_clip"].as_bool().unwrap(), "{name}");
        assert_eq!(format!("{:?}", ckpt.format), case["format"].as_str().unwrap(), "{name}: format");
        let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(case["ids"].clone()).unwrap();
        let text = encode_in_batches(&model, &ids, 4);
        let want_text = tensor2(&case["text_features"]);
        assert_rows_cosine(&format!("{name} text"), &text, &want_text, 0.99999);
        let r = want.vision.image_size;
        let pixels: Vec<f32> = serde_json::from_value(case["pixels"].clone()).unwrap();
        let n = pixels.len() / (3 * r * r);
        let pixels = Tensor::from_vec(pixels, (n, 3, r, r), &Device::Cpu).unwrap();
        let image = model.vision.encode(&pixels).unwrap();
        assert_rows_cosine(&format!("{name} image"), &image, &tensor2(&case["image_features"]), 0.99999);
    }
}

fn tensor2(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (n, d) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.into_iter().flatten().collect::<Vec<_>>(), (n, d), &Device::Cpu).unwrap()
}

#[test]
fn half_precision_stays_close_to_f32() {
    let ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let exp = expected();
    let ids = reference_ids("ids_248");
    for dtype in [DType::F16, DType::BF16] {
        let model = LongClip::new(&ckpt, &Device::Cpu, dtype).unwrap();
        let text = model.text.encode(&ids).unwrap();
        assert_rows_cosine(&format!("{dtype:?} text"), &text, &exp["longclip.text_features"], 0.999);
        let image = model.vision.encode(&exp["pixels"]).unwrap();
        assert_rows_cosine(&format!("{dtype:?} image"), &image, &exp["longclip.image_features"], 0.999);
    }
}

#[test]
fn one_tower_models_give_the_same_features_and_refuse_the_other_tower() {
    use longclip::model::Towers;
    let ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let both = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let text_only = LongClip::with_towers(&ckpt, &Device::Cpu, DType::F32, None, Towers::Text).unwrap();
    let vision_only = LongClip::with_towers(&ckpt, &Device::Cpu, DType::F32, None, Towers::Vision).unwrap();
    let exp = expected();
    let ids = &reference_ids("ids_248")[..4];
    let diff = max_abs_diff(&text_only.text.encode(ids).unwrap(), &both.text.encode(ids).unwrap());
    assert_eq!(diff, 0.0, "text-only model's features differ by {diff}");
    let diff = max_abs_diff(&vision_only.vision.encode(&exp["pixels"]).unwrap(), &both.vision.encode(&exp["pixels"]).unwrap());
    assert_eq!(diff, 0.0, "vision-only model's features differ by {diff}");
    let err = text_only.vision.encode(&exp["pixels"]).unwrap_err().to_string();
    assert!(err.contains("without its vision tower"), "{err}");
    let err = vision_only.text.encode(ids).unwrap_err().to_string();
    assert!(err.contains("without its text tower"), "{err}");
    // What does not need the blocks still answers.
    assert_eq!(text_only.vision.image_size(), both.vision.image_size());
    assert_eq!(vision_only.text.context_length(), both.text.context_length());
}
