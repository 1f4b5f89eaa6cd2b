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

/// A ratio past longclip::stretch::MAX_POSITIONS (or one that overflows) is
/// a clear error, not an allocation failure or a panic.
#[test]
fn stretch_refuses_absurd_ratios() {
    let t = Tensor::zeros((77, 4), DType::F32, &Device::Cpu).unwrap();
    for ratio in [1150, usize::MAX] {
        let err = stretch_table_with(&t, 20, ratio, false).err().unwrap().to_string();
        assert!(err.contains("more than 65536 positions") && err.contains("largest ratio here is 1149"), "{err}");
    }
    assert_eq!(stretch_table_with(&t, 20, 1149, false).unwrap().dim(0).unwrap(), 20 + 57 * 1149);
}

// ---- KPS generalized in K (--keep) and R (--ratio) ----

use half::f16;
use longclip::finetune::Params;
use longclip::stretch::{stretch_checkpoint_with, stretch_table_with};

/// scripts/gen_stretch_cases.py: the official loop generalized in K and R,
/// in numpy fp16 (as load_from_clip) and f32, stored as bit patterns.
#[test]
fn stretch_matches_numpy_official_formula_bit_for_bit() {
    let text = std::fs::read_to_string(fixture("stretch_cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (keep, ratio, rows, width) = (get("keep"), get("ratio"), get("rows"), get("width"));
        let fp16 = case["dtype"] == "f16";
        let bits = |k: &str| case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<u64>>();
        let (input, want) = (bits("input"), bits("output"));
        let table = if fp16 {
            let v: Vec<f16> = input.iter().map(|&b| f16::from_bits(b as u16)).collect();
            Tensor::from_vec(v, (rows, width), &Device::Cpu).unwrap()
        } else {
            let v: Vec<f32> = input.iter().map(|&b| f32::from_bits(b as u32)).collect();
            Tensor::from_vec(v, (rows, width), &Device::Cpu).unwrap()
        };
        let out = stretch_table_with(&table, keep, ratio, fp16).unwrap();
        assert_eq!(out.dims(), &[keep + (rows - keep) * ratio, width], "K={keep} R={ratio}");
        let got: Vec<u64> = out
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| if fp16 { f16::from_f32(x).to_bits() as u64 } else { x.to_bits() as u64 })
            .collect();
        if fp16 {
            // Every value is exactly an fp16 (nothing was lost converting back).
            let exact = out.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&x| f16::from_f32(x).to_f32() == x);
            assert!(exact, "K={keep} R={ratio}: a value that is not an fp16");
        }
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "K={keep} R={ratio} {}: {bad} of {} values differ", case["dtype"], want.len());
        if keep == 20 && ratio == 4 && fp16 {
            assert_eq!(stretch_table(&table).unwrap().to_vec2::<f32>().unwrap(), out.to_vec2::<f32>().unwrap());
        }
    }
}

#[test]
fn stretch_with_default_keep_and_ratio_is_load_from_clip() {
    let clip = || checkpoint::load(&fixture("tiny-clip77.pt")).unwrap();
    let official = stretch_checkpoint(clip()).unwrap();
    let general = stretch_checkpoint_with(clip(), 20, 4).unwrap();
    assert_eq!(general.config, official.config);
    for key in ["positional_embedding", "positional_embedding_res"] {
        let (a, b) = (general.get(key).unwrap(), official.get(key).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap(), "{key}");
    }
}

#[test]
fn stretch_rejects_a_zero_ratio_and_too_large_a_keep() {
    let t = Tensor::zeros((77, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(stretch_table_with(&t, 20, 0, true).is_err());
    assert!(stretch_table_with(&t, 76, 2, true).is_err());
    assert!(stretch_table_with(&t, 75, 2, true).is_ok());
    let err = stretch_checkpoint_with(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap(), 80, 4).err().unwrap();
    assert!(err.to_string().contains("cannot keep 80"), "{err}");
}

/// A Long-CLIP stretched further: its merged table (rows 0..20 of
/// `positional_embedding`, 20.. of `_res`) is kept to K and interpolated;
/// f32 tables stay f32, so kept and copied rows are exact.
#[test]
fn long_clip_stretches_further_keeping_its_merged_rows() {
    let src = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let merged = src.text_positions().unwrap().to_vec2::<f32>().unwrap();
    for (keep, ratio) in [(20, 2), (30, 3)] {
        let ckpt = stretch_checkpoint_with(checkpoint::load(&fixture("tiny-longclip.pt")).unwrap(), keep, ratio).unwrap();
        let n = keep + (248 - keep) * ratio;
        assert_eq!(ckpt.config.text.context_length, n);
        assert_eq!(ckpt.config.text.keep_positions, keep);
        let table = ckpt.text_positions().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(table.len(), n);
        assert_eq!(&table[..keep], &merged[..keep]);
        for i in 0..248 - 1 - keep {
            assert_eq!(table[keep + ratio * i], merged[keep + i], "K={keep} R={ratio} row {i}");
        }
        assert_eq!(table[n - ratio], merged[247]);
        let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(model.text.context_length(), n);
    }
}

#[test]
fn the_split_comes_from_the_config() {
    let mut ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    assert_eq!(ckpt.config.text.keep_positions, 20);
    let pe = ckpt.get("positional_embedding").unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let res = ckpt.get("positional_embedding_res").unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    assert_ne!(pe[25], res[25], "the fixture's tables differ after row 20");
    ckpt.config.text.keep_positions = 30;
    let merged = ckpt.text_positions().unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(&merged[..30], &pe[..30]);
    assert_eq!(&merged[30..], &res[30..]);
}

#[test]
fn the_split_survives_safetensors_and_hf_export_and_old_files_read_20() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = stretch_checkpoint_with(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap(), 10, 2).unwrap();
    assert_eq!(ckpt.config.text.context_length, 144);
    let st = dir.path().join("k10.safetensors");
    longclip::export::save_checkpoint(&ckpt, &st).unwrap();
    let back = checkpoint::load(&st).unwrap();
    assert_eq!(back.config.text.keep_positions, 10);
    assert_eq!(back.config, ckpt.config);

    let hf = dir.path().join("hf");
    longclip::export::write_hf_dir(&back, &hf, DType::F32).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config[checkpoint::HF_KEEP_KEY], 10);
    assert_eq!(config["text_config"]["max_position_embeddings"], 144);
    let from_hf = checkpoint::load(&hf).unwrap();
    assert_eq!(from_hf.config.text.keep_positions, 10);
    assert_eq!(from_hf.config.text.context_length, 144);

    // A config written before the field existed loads with the official 20.
    let mut old = serde_json::to_value(&ckpt.config).unwrap();
    old["text"].as_object_mut().unwrap().remove("keep_positions");
    let old: checkpoint::Config = serde_json::from_value(old).unwrap();
    assert_eq!(old.text.keep_positions, 20);
}

/// Fine-tuning starts from a stretched checkpoint (and from its merged HF
/// export) with the same text features as inference.
#[test]
fn finetune_starts_from_a_stretched_checkpoint() {
    let ckpt = stretch_checkpoint_with(checkpoint::load(&fixture("tiny-clip77.pt")).unwrap(), 10, 5).unwrap();
    let n = ckpt.config.text.context_length;
    assert_eq!(n, 345);
    let ids: Vec<Vec<u32>> = vec![(0..300).map(|i| if i == 0 { 49406 } else if i == 299 { 49407 } else { 320 + i % 50 }).collect()];
    let want = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap().text.encode(&ids).unwrap();
    let params = Params::from_checkpoint(ckpt, &Device::Cpu, None).unwrap();
    assert_eq!(params.config.text.keep_positions, 10);
    let got = params.inference_model(DType::F32).unwrap().text.encode(&ids).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-6);

    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    longclip::export::write_hf_dir(&params.to_checkpoint(dir.path().join("x")).unwrap(), &hf, DType::F32).unwrap();
    let params = Params::from_checkpoint(checkpoint::load(&hf).unwrap(), &Device::Cpu, None).unwrap();
    assert_eq!(params.config.text.keep_positions, 10);
    let got = params.inference_model(DType::F32).unwrap().text.encode(&ids).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

fn long_caption(words: usize) -> String {
    let vocab = ["a", "red", "kite", "over", "the", "quiet", "harbour", "with", "three", "boats", "and", "gulls"];
    (0..words).map(|i| vocab[(i * 7 + i / 12) % vocab.len()]).collect::<Vec<_>>().join(" ")
}

#[test]
fn cli_stretch_keep_ratio_then_info_embed_and_tokenize_past_248() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let o = ok(&["stretch", "--keep", "20", "--ratio", "6", "--model", s(&fixture("tiny-clip77.pt")), "--out", s(&out)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("362 positions"), "{}", String::from_utf8_lossy(&o.stderr));

    let info = String::from_utf8(ok(&["info", "--model", s(&out)]).stdout).unwrap();
    assert!(info.contains("positions 362"), "{info}");
    assert!(info.contains("rows 0..20"), "{info}");
    let json: serde_json::Value = serde_json::from_slice(&ok(&["info", "--model", s(&out), "--json"]).stdout).unwrap();
    assert_eq!(json["config"]["text"]["context_length"], 362);
    assert_eq!(json["config"]["text"]["keep_positions"], 20);

    let texts = dir.path().join("texts.json");
    std::fs::write(&texts, serde_json::to_string(&vec![long_caption(400), "a kite".to_string()]).unwrap()).unwrap();
    let ids = dir.path().join("ids.json");
    ok(&["tokenize", "--texts", s(&texts), "--model", s(&out), "--out", s(&ids)]);
    let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&ids).unwrap()).unwrap();
    assert_eq!(ids[0].len(), 362);
    let err = fails(&["tokenize", "--texts", s(&texts), "--model", s(&out), "--context-length", "363"]);
    assert!(err.contains("exceeds the model's 362 positions"), "{err}");
    let at300 = String::from_utf8(ok(&["tokenize", "--texts", s(&texts), "--context-length", "300"]).stdout).unwrap();
    let at300: Vec<Vec<u32>> = serde_json::from_str(&at300).unwrap();
    assert_eq!(at300[0].len(), 300);

    let e300 = dir.path().join("e300.json");
    let e248 = dir.path().join("e248.json");
    ok(&["embed", "--model", s(&out), "--texts", s(&texts), "--context-length", "300", "--out", s(&e300)]);
    ok(&["embed", "--model", s(&out), "--texts", s(&texts), "--context-length", "248", "--out", s(&e248)]);
    let read = |p: &std::path::Path| -> Vec<Vec<f32>> { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (a, b) = (read(&e300), read(&e248));
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], b[0], "tokens 248..300 of the long caption change its embedding");
    let diff = a[1].iter().zip(&b[1]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "a short caption is the same at any context length ({diff})");
    let err = fails(&["embed", "--model", s(&out), "--texts", s(&texts), "--context-length", "363", "--out", s(&e300)]);
    assert!(err.contains("362 positions"), "{err}");
}

#[test]
fn cli_stretches_a_long_clip_further() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("longer.safetensors");
    ok(&["stretch", "--ratio", "2", "--model", s(&fixture("tiny-longclip.pt")), "--out", s(&out)]);
    let info = String::from_utf8(ok(&["info", "--model", s(&out)]).stdout).unwrap();
    assert!(info.contains("positions 476"), "{info}");
    let again = dir.path().join("again.safetensors");
    ok(&["stretch", "--keep", "40", "--ratio", "2", "--model", s(&out), "--out", s(&again)]);
    let json: serde_json::Value = serde_json::from_slice(&ok(&["info", "--model", s(&again), "--json"]).stdout).unwrap();
    assert_eq!(json["config"]["text"]["context_length"], 40 + (476 - 40) * 2);
    assert_eq!(json["config"]["text"]["keep_positions"], 40);
    let texts = dir.path().join("t.json");
    std::fs::write(&texts, serde_json::to_string(&vec![long_caption(700)]).unwrap()).unwrap();
    let e = dir.path().join("e.npy");
    ok(&["embed", "--model", s(&again), "--texts", s(&texts), "--context-length", "600", "--out", s(&e)]);
}

#[test]
fn fingerprint_tells_splits_apart_and_keeps_the_official_one() {
    let official = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let fp = official.fingerprint().unwrap();
    let mut moved = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    moved.config.text.keep_positions = 30;
    assert_ne!(moved.fingerprint().unwrap(), fp, "same tensors, another split: another model");
    moved.config.text.keep_positions = 20;
    assert_eq!(moved.fingerprint().unwrap(), fp);
}
