//! Bad checkpoints get clear errors that name the file and the problem.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint;

fn load_err(path: &std::path::Path) -> String {
    match checkpoint::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn official_tensors() -> HashMap<String, Tensor> {
    checkpoint::load(&fixture("tiny-longclip.pt")).unwrap().tensors
}

fn save(dir: &tempfile::TempDir, name: &str, tensors: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let path = dir.path().join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

#[test]
fn missing_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pt");
    assert!(load_err(&missing).contains("no such file"));
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    let err = load_err(&empty);
    assert!(err.contains("empty.pt") && err.contains("empty file"), "{err}");
}

#[test]
fn garbage_legacy_and_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, b"this is not a checkpoint at all\n").unwrap();
    assert!(load_err(&text).contains("not a checkpoint"));

    let legacy = dir.path().join("legacy.pt");
    std::fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20]).unwrap();
    assert!(load_err(&legacy).contains("legacy"));

    let bytes = std::fs::read(fixture("tiny-longclip.pt")).unwrap();
    let cut = dir.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&cut);
    assert!(err.contains("cut.pt"), "{err}");
}

#[test]
fn missing_tensor_is_named_with_its_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = official_tensors();
    t.remove("visual.ln_post.weight");
    let err = load_err(&save(&dir, "missing.safetensors", &t));
    assert!(err.contains("missing.safetensors"), "{err}");
    assert!(err.contains("'visual.ln_post.weight'") && err.contains("[128]"), "{err}");
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = official_tensors();
    t.insert("transformer.resblocks.1.mlp.c_proj.weight".into(), Tensor::zeros((128, 100), DType::F32, &Device::Cpu).unwrap());
    let err = load_err(&save(&dir, "bad.safetensors", &t));
    assert!(err.contains("'transformer.resblocks.1.mlp.c_proj.weight'"), "{err}");
    assert!(err.contains("[128, 100]") && err.contains("[128, 512]"), "{err}");
}

#[test]
fn resnet_towers_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: HashMap<String, Tensor> =
        official_tensors().into_iter().filter(|(k, _)| !k.starts_with("visual.")).collect();
    t.insert("visual.layer1.0.conv1.weight".into(), Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap());
    let err = load_err(&save(&dir, "rn50.safetensors", &t));
    assert!(err.contains("ResNet") && err.contains("not supported"), "{err}");
}

#[test]
fn widths_that_do_not_split_into_heads_of_64_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = official_tensors();
    t.insert("ln_final.weight".into(), Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap());
    let err = load_err(&save(&dir, "narrow.safetensors", &t));
    assert!(err.contains("width 32"), "{err}");
}

#[test]
fn not_a_clip_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = HashMap::new();
    t.insert("encoder.weight".to_string(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
    let err = load_err(&save(&dir, "other.safetensors", &t));
    assert!(err.contains("not a CLIP checkpoint"), "{err}");
}

#[test]
fn a_directory_without_config_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

/// Flipped bytes anywhere in a real checkpoint: an error or a load, never a panic.
#[test]
fn corrupted_checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("model_cases/script-w64.pt")).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..60 {
        let mut bytes = original.clone();
        for _ in 0..(1 + i % 4) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        if i % 5 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        let path = dir.path().join(format!("bad{i}.pt"));
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = checkpoint::load(&path) {
            assert!(format!("{e:#}").contains(&format!("bad{i}.pt")), "error does not name the file: {e:#}");
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn gzipped_safetensors_load_like_the_plain_file_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("model.safetensors");
    longclip::export::save_checkpoint(&checkpoint::load(&fixture("tiny-longclip.pt")).unwrap(), &plain).unwrap();
    let packed = dir.path().join("model.safetensors.gz");
    let bytes = std::fs::read(&plain).unwrap();
    std::fs::write(&packed, gzip(&bytes)).unwrap();
    let (a, b) = (checkpoint::load(&plain).unwrap(), checkpoint::load(&packed).unwrap());
    assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
    assert_eq!(a.config, b.config);

    let truncated = dir.path().join("cut.safetensors.gz");
    let gz = gzip(&bytes);
    std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
    let err = load_err(&truncated);
    assert!(err.contains("cut.safetensors.gz") && err.contains("not a valid gzip file"), "{err}");

    let other = dir.path().join("notes.txt.gz");
    std::fs::write(&other, gzip(b"just some text, not a checkpoint")).unwrap();
    let err = load_err(&other);
    assert!(err.contains("notes.txt.gz") && err.contains("does not hold a safetensors checkpoint"), "{err}");
}
