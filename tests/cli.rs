//! The `longclip` binary end to end: the exact command forms scripts rely on,
//! outputs in input order, and bad input reported without panics.

mod common;

use std::path::PathBuf;

use candle_core::Tensor;
use common::*;

fn model() -> PathBuf {
    fixture("tiny-longclip.pt")
}

#[test]
fn tokenize_prints_official_ids_unpadded() {
    let out = ok(&["tokenize", "--texts", s(&fixture("captions.json"))]);
    let ids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids, reference_ids("ids_248"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.json");
    let out = ok(&["tokenize", "--texts", s(&fixture("captions.json")), "--context-length", "77", "--out", s(&path)]);
    let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(ids, reference_ids("ids_77"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn embed_texts_writes_normalized_features_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text.npy");
    ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&out), "--batch-size", "5"]);
    let ours = Tensor::read_npy(&out).unwrap();
    assert_eq!(ours.dims(), &[24, 64]);
    let want = longclip::model::l2_normalize(&expected()["longclip.text_features"]).unwrap();
    assert!(max_abs_diff(&ours, &want) < 1e-4);
    let ids = std::fs::read_to_string(dir.path().join("text.ids.txt")).unwrap();
    assert_eq!(ids.lines().count(), 24);

    let raw = dir.path().join("raw.npy");
    ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&raw), "--raw"]);
    assert_rows_cosine("cli raw", &Tensor::read_npy(&raw).unwrap(), &expected()["longclip.text_features"], 0.9999);
}

/// `.json` / `.jsonl` out: arrays of f32 (one per text), as clip-retrieval
/// back's `/knn-service` takes one in `embedding_input`.
#[test]
fn embed_writes_json_arrays_for_clip_retrieval_back() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("q.npy");
    ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&npy)]);
    let want = rows(&Tensor::read_npy(&npy).unwrap());
    let json = dir.path().join("q.json");
    ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&json)]);
    let got: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let jsonl = dir.path().join("q.jsonl");
    ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&jsonl)]);
    let lines: Vec<Vec<f32>> = std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 24);
    assert_eq!(lines, got);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), 64);
        let norm: f64 = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-6));
    }
    assert!(!dir.path().join("q.json.npy").exists() && std::fs::read(&json).unwrap().starts_with(b"[["));
}

#[test]
fn embed_texts_at_77_matches_the_official_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t77.npy");
    let run = ok(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&out), "--context-length", "77", "--raw"]);
    assert_rows_cosine("cli trunc77", &Tensor::read_npy(&out).unwrap(), &expected()["longclip.text_features_trunc77"], 0.9999);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains("row 19 is empty"), "{stderr}");
}

#[test]
fn embed_reads_jsonl_and_txt_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("t.jsonl");
    std::fs::write(&jsonl, "\"a cat\"\n{\"caption\": \"a dog\"}\n\n{\"text\": \"a bird\", \"id\": 3}\n").unwrap();
    let out = dir.path().join("j.npy");
    ok(&["embed", "--model", s(&model()), "--texts", s(&jsonl), "--out", s(&out)]);
    assert_eq!(Tensor::read_npy(&out).unwrap().dims(), &[3, 64]);

    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, "a cat\na dog\n").unwrap();
    ok(&["embed", "--model", s(&model()), "--texts", s(&txt), "--out", s(&out)]);
    assert_eq!(Tensor::read_npy(&out).unwrap().dims(), &[2, 64]);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\"fine\"\n{\"nope\": 1}\n").unwrap();
    let err = fails(&["embed", "--model", s(&model()), "--texts", s(&bad), "--out", s(&out)]);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "[\"ok\", 3]").unwrap();
    let err = fails(&["embed", "--model", s(&model()), "--texts", s(&bad_json), "--out", s(&out)]);
    assert!(err.contains("bad.json") && err.contains("item 1"), "{err}");
}

#[test]
fn embed_images_skips_bad_files_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for f in std::fs::read_dir(fixture("images")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, images.join("sub").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(images.join("empty.png"), b"").unwrap();
    std::fs::write(images.join("notes.jpg"), b"not a jpeg").unwrap();
    let png = std::fs::read(fixture("images/camera.png")).unwrap();
    std::fs::write(images.join("cut.png"), &png[..png.len() / 3]).unwrap();
    std::fs::write(images.join("readme.txt"), b"ignored: not an image extension").unwrap();

    let out = dir.path().join("img.npy");
    let run = ok(&["embed", "--model", s(&model()), "--images", s(&images), "--out", s(&out), "--batch-size", "4"]);
    let features = Tensor::read_npy(&out).unwrap();
    assert_eq!(features.dims(), &[6, 64]);
    let ids: Vec<String> = std::fs::read_to_string(dir.path().join("img.ids.txt")).unwrap().lines().map(String::from).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "rows are in path order");
    let skipped = std::fs::read_to_string(dir.path().join("img.skipped.txt")).unwrap();
    assert_eq!(skipped.lines().count(), 3, "{skipped}");
    for name in ["empty.png", "notes.jpg", "cut.png"] {
        assert!(skipped.contains(name), "{name} not in {skipped}");
    }
    assert!(String::from_utf8_lossy(&run.stderr).contains("skipped 3"));

    // The rows are the official image features of the same files.
    let names = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "logo.png", "rocket.jpg"];
    let order = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "logo.png"];
    let want = longclip::model::l2_normalize(&expected()["longclip.image_features"]).unwrap();
    for (row, name) in names.iter().enumerate() {
        assert!(ids[row].ends_with(name));
        let r = order.iter().position(|n| n == name).unwrap();
        let c = cosine(&rows(&features)[row], &rows(&want)[r]);
        assert!(c > 0.999, "{name}: cosine {c}");
    }
}

#[test]
fn embed_images_from_a_list_and_nothing_usable_fails() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, format!("{}\n{}\n", s(&fixture("images/rocket.jpg")), s(&fixture("images/logo.png")))).unwrap();
    let out = dir.path().join("l.npy");
    ok(&["embed", "--model", s(&model()), "--images", s(&list), "--out", s(&out)]);
    assert_eq!(Tensor::read_npy(&out).unwrap().dims(), &[2, 64]);

    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("a.jpg"), b"").unwrap();
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&bad), "--out", s(&out)]);
    assert!(err.contains("none of the 1 images"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&empty), "--out", s(&out)]);
    assert!(err.contains("no images found"), "{err}");

    // A path that is not there: named first, then what happened, once.
    let gone = dir.path().join("nonexistent");
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&gone), "--out", s(&out)]);
    let want = format!("{}: no such file or directory (expected a folder, an image, or a text file listing images)", gone.display());
    assert!(err.contains(&want) && !err.contains("os error"), "{err}");
    // Also when it is named like an image.
    let gone = dir.path().join("nonexistent.jpg");
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&gone), "--out", s(&out)]);
    assert!(err.contains(&format!("{}: no such file or directory", gone.display())), "{err}");
    // An --out that cannot be written is refused before any work.
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&fixture("images/logo.png")), "--out", s(&empty)]);
    assert!(err.contains(&format!("{}: is a folder", empty.display())), "{err}");
    let nowhere = dir.path().join("no-such-dir").join("o.npy");
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&fixture("images/logo.png")), "--out", s(&nowhere)]);
    assert!(err.contains(&format!("{}: its folder does not exist", nowhere.display())), "{err}");
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none(), "nothing left in the folder given as --out");
    let slash = format!("{}/", dir.path().join("new.npy").display());
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&fixture("images/logo.png")), "--out", &slash]);
    assert!(err.contains("is a folder"), "{err}");
    let err = fails(&["embed", "--model", s(&model()), "--images", s(&fixture("images/logo.png")), "--out", &format!("{}/o.npy", s(&list))]);
    assert!(err.contains("is a file, not a folder"), "{err}");
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")), "no temp files left");

    // A list naming a corrupt image: the skip line names the path once.
    let bad_png = dir.path().join("bad.png");
    std::fs::write(&bad_png, b"not a png at all").unwrap();
    std::fs::write(&list, format!("{}\n{}\n", s(&fixture("images/logo.png")), s(&bad_png))).unwrap();
    let run = ok(&["embed", "--model", s(&model()), "--images", s(&list), "--out", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let line = stderr.lines().find(|l| l.starts_with("skipped ") && l.contains("bad.png")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(line.matches("bad.png").count(), 1, "{line}");
    assert!(line.starts_with(&format!("skipped {}: not an image: unknown format", bad_png.display())), "{line}");
    let listed = std::fs::read_to_string(dir.path().join("l.skipped.txt")).unwrap();
    assert_eq!(listed.matches("bad.png").count(), 1, "{listed}");
}

#[test]
fn stretch_convert_and_info_commands() {
    let dir = tempfile::tempdir().unwrap();
    let stretched = dir.path().join("long.safetensors");
    ok(&["stretch", "--model", s(&fixture("tiny-clip77.pt")), "--out", s(&stretched)]);
    let info = ok(&["info", "--model", s(&stretched), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["config"]["text"]["context_length"], 248);
    assert_eq!(info["long_clip"], true);
    let hf = dir.path().join("hf");
    ok(&["convert", "--model", s(&stretched), "--out", s(&hf)]);
    let text = String::from_utf8_lossy(&ok(&["info", "--model", s(&hf)]).stdout).into_owned();
    assert!(text.contains("Hugging Face") && text.contains("positions 248"), "{text}");
}

#[test]
fn bad_model_and_device_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let err = fails(&["embed", "--model", "/no/such/model.pt", "--texts", s(&fixture("captions.json")), "--out", s(&out)]);
    assert!(err.contains("/no/such/model.pt"), "{err}");
    let err = fails(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&out), "--device", "cuda"]);
    assert!(err.contains("--features cuda") || err.contains("CUDA"), "{err}");
    let err = fails(&["embed", "--model", s(&model()), "--texts", s(&fixture("captions.json")), "--out", s(&out), "--context-length", "300"]);
    assert!(err.contains("300"), "{err}");
    let err = fails(&["embed", "--model", s(&model()), "--texts", "/no/such/texts.txt", "--out", s(&out)]);
    assert!(err.contains("/no/such/texts.txt"), "{err}");
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn bench_prints_one_json_line_per_measurement() {
    let images = fixture("images");
    let out = ok(&[
        "bench", "--model", s(&model()), "--image-batch", "3", "--text-batch", "4", "--text-tokens", "30",
        "--iters", "1", "--images", s(&images), "--repeat", "8", "--peak-tflops", "2",
    ]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["device"], "cpu");
    let what: Vec<&str> = lines[1..].iter().map(|l| l["what"].as_str().unwrap()).collect();
    assert_eq!(what, ["vision tower, batch 3", "text 30 tokens, batch 4", "end to end from files, batch 3"]);
    for l in &lines[1..] {
        assert!(l["per_second"].as_f64().unwrap() > 0.0, "{l}");
    }
    let tflops = lines[1]["tflops"].as_f64().unwrap();
    assert!((lines[1]["share_of_peak"].as_f64().unwrap() - tflops / 2.0).abs() < 1e-12);
    // The end-to-end run embedded every repeated file.
    assert!(String::from_utf8_lossy(&out.stderr).contains("embedded 8 images"), "{}", String::from_utf8_lossy(&out.stderr));
    let err = fails(&["bench", "--model", s(&model()), "--text-tokens", "1000", "--iters", "1", "--image-batch", "1"]);
    assert!(err.contains("--text-tokens must be between 2 and 248"), "{err}");
}

/// `longclip info ... | head -1`: a reader that goes away ends the program
/// quietly (status 0, as ripgrep), with no panic about the broken pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_longclip"))
        .args(["info", "--model", s(&model())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the model is loaded, so every line hits a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}
