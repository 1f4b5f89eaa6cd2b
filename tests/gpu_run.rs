//! The pieces of the GPU run that need no GPU: `synth --layout coco` makes a
//! dataset `eval --dataset coco` reads, and `benches/gpu.sh` in its smoke
//! mode (CPU, small sizes) writes results.jsonl and summary.md.

mod common;

use std::process::Command;

use common::*;
use longclip::datasets::{self, LoadOptions};

#[test]
fn synth_coco_layout_loads_as_coco_with_five_captions_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("coco");
    ok(&["synth", "--layout", "coco", "--out", s(&root), "--n", "3", "--width", "64", "--height", "48"]);
    let data = datasets::load("coco", &root, &LoadOptions::default()).unwrap();
    assert_eq!(data.images.len(), 3);
    assert_eq!(data.images[0].file_name().unwrap(), "000000000001.jpg");
    for (path, captions) in data.images.iter().zip(&data.captions) {
        assert_eq!(captions.len(), 5);
        // Caption k holds 2(k + 1) sentences: lengths grow.
        assert!(captions.windows(2).all(|w| w[0].len() < w[1].len()), "{captions:?}");
        let img = image::open(path).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
    }
    let err = fails(&["synth", "--layout", "coco", "--out", s(&root), "--n", "3", "--width", "40", "--height", "48"]);
    assert!(err.contains("--width >= --height"), "{err}");
    let err = fails(&["synth", "--layout", "flickr", "--out", s(&root)]);
    assert!(err.contains("unknown --layout 'flickr'"), "{err}");
}

#[test]
fn gpu_script_smoke_run_writes_results_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gpu.sh"))
        .env("DEVICE", "cpu")
        .env("QUICK", "1")
        .env("OUT", &out)
        .env("DEADLINE_S", "240")
        .env("LONGCLIP", env!("CARGO_BIN_EXE_longclip"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let status = |stage: &str| {
        rows.iter().find(|r| r["stage"] == stage && r.get("status").is_some() && r.get("what").is_none()).map(|r| r["status"].clone())
    };
    for stage in ["parity-fixture", "parity-demo", "coco-gen", "coco-ckpt", "coco-eval", "speed-demo-bf16", "speed-demo-f16"] {
        assert_eq!(status(stage), Some("ok".into()), "{stage}: {text}");
    }
    assert_eq!(rows.iter().filter(|r| r.get("min_cos").is_some() && r["ok"] == true).count(), 12, "{text}");
    let coco = rows.iter().find(|r| r.get("goal_s").is_some()).expect("coco wall time row");
    assert!(coco["seconds"].as_f64().unwrap() > 0.0);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for want in ["## Parity", "| demo | images | cpu-bf16 | cpu-f32 |", "## Speed", "## COCO-5k eval"] {
        assert!(summary.contains(want), "{want} missing from:\n{summary}");
    }
}
