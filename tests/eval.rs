//! `longclip eval`, `probe` and `classify` end to end on generated data:
//! numbers checked against an independent computation (the `embed` pipeline
//! and a naive sort), a probe whose answer is known by construction, the
//! embedding cache, bad input, and (when ../shared is there) the exact
//! reproduction of the official code's numbers for the urban-tiny model.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::datasets::{self, LoadOptions, OnMissing};
use longclip::embed::Embedder;
use longclip::evaluate::{self, Encoder, Unit};
use longclip::metrics::RetrievalScores;
use longclip::model::LongClip;
use serde_json::Value;

fn model_path() -> PathBuf {
    fixture("tiny-longclip.pt")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Image `i`: a deterministic pattern, different for every `i`.
fn pattern(path: &Path, i: usize) {
    let img = image::RgbImage::from_fn(48, 40, |x, y| {
        let v = (x * (i as u32 + 3) + y * (2 * i as u32 + 1) + (x * y) % (i as u32 + 2)) % 256;
        image::Rgb([v as u8, (v * 7 + 40 * i as u32) as u8, (255 - v) as u8])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

const WORDS: [&str; 12] = ["red", "green", "blue", "dog", "cat", "car", "tree", "house", "river", "city", "boat", "bird"];

/// An Urban layout of `n` pairs with captions of a few dozen words.
fn urban_set(root: &Path, n: usize) {
    for i in 0..n {
        pattern(&root.join(format!("image/{i}.png")), i);
        let caption: Vec<&str> = (0..30).map(|k| WORDS[(i * 5 + k * (i + 1)) % WORDS.len()]).collect();
        let path = root.join(format!("caption/{i}.txt"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("A photo of {}.\nignored", caption.join(" "))).unwrap();
    }
}

/// R@1/5/10 by brute force: every gallery item sorted by (score desc, index).
fn naive_scores(images: &[Vec<f32>], texts: &[Vec<f32>], text_image: &[usize]) -> RetrievalScores {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let rank = |scores: Vec<f32>, positives: &[usize]| {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
        order.iter().position(|j| positives.contains(j)).unwrap()
    };
    let t2i: Vec<usize> = texts.iter().zip(text_image).map(|(t, &i)| rank(images.iter().map(|im| dot(t, im)).collect(), &[i])).collect();
    let i2t: Vec<usize> = (0..images.len())
        .map(|i| {
            let pos: Vec<usize> = (0..texts.len()).filter(|&t| text_image[t] == i).collect();
            rank(texts.iter().map(|t| dot(&images[i], t)).collect(), &pos)
        })
        .collect();
    let r = |ranks: &[usize], k: usize| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64;
    RetrievalScores {
        t2i_r1: r(&t2i, 1),
        t2i_r5: r(&t2i, 5),
        t2i_r10: r(&t2i, 10),
        i2t_r1: r(&i2t, 1),
        i2t_r5: r(&i2t, 5),
        i2t_r10: r(&i2t, 10),
    }
}

fn scores_of(v: &Value) -> RetrievalScores {
    serde_json::from_value(v.clone()).unwrap()
}

/// Features from the existing `embed` pipeline (another code path than eval's).
fn embed_independently(images: &[PathBuf], texts: &[String]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let ckpt = longclip::checkpoint::load(&model_path()).unwrap();
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let e = Embedder { model: &model, device: Device::Cpu, batch_size: 7, normalize: true, progress: false };
    let i = e.embed_images(images).unwrap();
    assert!(i.skipped.is_empty());
    let t = e.embed_texts(texts, 248).unwrap();
    (rows(&i.features), rows(&t.features))
}

#[test]
fn eval_matches_an_independent_computation_and_the_cache_serves_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 14);
    let cache = dir.path().join("cache");
    let json = dir.path().join("r.json");
    let csv = dir.path().join("r.csv");
    let m = model_path();
    let args = ["eval", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache)];
    let out = ok(&[&args[..], &["--json", s(&json), "--csv", s(&csv), "--batch-size", "5"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("urban1k (test): 14 images, 14 texts") && stdout.contains("T2I R@1"), "{stdout}");
    let first = read_json(&json);
    for key in ["dataset", "split", "n_images", "n_texts", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "seconds"] {
        assert!(!first[key].is_null(), "missing {key} in {first}");
    }
    assert_eq!((first["n_images"].as_u64(), first["n_texts"].as_u64()), (Some(14), Some(14)));

    let data = datasets::load("urban1k", &root, &LoadOptions::default()).unwrap();
    let (images, texts) = embed_independently(&data.images, &data.texts());
    let want = naive_scores(&images, &texts, &data.text_image());
    assert_eq!(scores_of(&first), want);
    assert!(want.t2i_r1 < 100.0 && want.t2i_r10 > want.t2i_r1, "a random model should be imperfect: {want:?}");
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert!(csv_text.lines().next().unwrap().contains("t2i_r1") && csv_text.lines().count() == 2, "{csv_text}");

    // Again: every embedding comes from the cache, and the numbers are the same.
    ok(&[&args[..], &["--json", s(&json)]].concat());
    let second = read_json(&json);
    assert_eq!(second["timings"]["images_cached"], 14);
    assert_eq!(second["timings"]["texts_cached"], 14);
    assert_eq!(second["timings"]["images_encoded"], 0);
    assert_eq!(scores_of(&second), want);
    // Without the cache: the same numbers again.
    ok(&[&args[..7], &["--no-cache", "--json", s(&json)]].concat());
    assert_eq!(scores_of(&read_json(&json)), want);
}

#[test]
fn several_captions_per_image_are_scored_like_the_official_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows_csv = String::from("image,caption\n");
    for i in 0..9 {
        pattern(&dir.path().join(format!("img/{i}.png")), i + 20);
        for k in 0..(1 + i % 3) {
            rows_csv += &format!("img/{i}.png,\"{} {} {}, take {k}\"\n", WORDS[i], WORDS[(i + k) % 12], WORDS[(2 * i + 1) % 12]);
        }
    }
    let csv = dir.path().join("set.csv");
    std::fs::write(&csv, rows_csv).unwrap();
    let json = dir.path().join("r.json");
    ok(&["eval", "--model", s(&model_path()), "--dataset", "csv", "--root", s(&csv), "--no-cache", "--json", s(&json)]);
    let got = read_json(&json);
    let data = datasets::load("csv", &csv, &LoadOptions::default()).unwrap();
    assert_eq!(got["n_texts"].as_u64(), Some(data.n_texts() as u64));
    let (images, texts) = embed_independently(&data.images, &data.texts());
    assert_eq!(scores_of(&got), naive_scores(&images, &texts, &data.text_image()));
}

/// Captions that agree on their first 80 tokens and differ only after: a
/// text encoder that sees only what follows token 77 finds the right image
/// only when captions are cut after 77, so the probe must jump there.
#[test]
fn probe_shows_the_jump_when_the_answer_lies_past_token_77() {
    let n = 8;
    let prefix = vec!["photo"; 80].join(" ");
    let texts: Vec<String> = (0..n).map(|i| format!("{prefix} {} and more words here", WORDS[i])).collect();
    let tok = longclip::tokenizer::Tokenizer::global();
    let word_ids: Vec<u32> = (0..n).map(|i| tok.bpe_ids(WORDS[i])[0]).collect();
    let dim = n + 1;
    // Text feature: one-hot of the distinguishing word when present, else
    // the same vector for every caption (all images tie).
    let mut encode = |ids: &[Vec<u32>]| -> anyhow::Result<Tensor> {
        let mut f = vec![0f32; ids.len() * dim];
        for (r, seq) in ids.iter().enumerate() {
            match seq.iter().skip(77).find_map(|t| word_ids.iter().position(|w| w == t)) {
                Some(c) => f[r * dim + c] = 1.0,
                None => f[r * dim + n] = 1.0,
            }
        }
        Ok(Tensor::from_vec(f, (ids.len(), dim), &Device::Cpu)?)
    };
    // Image i: mostly "its word", a little of the shared direction.
    let mut img = vec![0f32; n * dim];
    for i in 0..n {
        img[i * dim + i] = 0.8;
        img[i * dim + n] = 0.6;
    }
    let images = Tensor::from_vec(img, (n, dim), &Device::Cpu).unwrap();
    let text_image: Vec<usize> = (0..n).collect();
    let rows = evaluate::probe_rows(&texts, &text_image, &images, &[10, 77, 78, 83, 248], Unit::Tokens, 248, &mut encode).unwrap();
    // Up to 82 tokens (SOT + 80 words + EOT) no caption reaches its word:
    // every image ties, so text i finds image i at rank i (lower index
    // first): R@1 = 1/8, R@5 = 5/8; images likewise rank captions by index.
    for r in &rows[..3] {
        assert_eq!((r.scores.t2i_r1, r.scores.t2i_r5, r.scores.t2i_r10), (12.5, 62.5, 100.0), "length {}", r.length);
        // The 8 cut captions are equal: no reader could do better than this model.
        assert_eq!((r.ceiling.t2i_r1, r.ceiling.t2i_r5, r.ceiling.t2i_r10), (12.5, 62.5, 100.0), "length {}", r.length);
        assert_eq!((r.scores.i2t_r1, r.scores.i2t_r5), (12.5, 62.5), "length {}", r.length);
    }
    // Token 82 (index 81) is the word: 83 tokens keep it, and so does 248.
    for r in &rows[3..] {
        assert_eq!((r.scores.t2i_r1, r.scores.i2t_r1), (100.0, 100.0), "length {}", r.length);
        assert_eq!(r.ceiling.t2i_r1, 100.0);
    }
    // By words: 80 words hide it, 81 show it.
    let rows = evaluate::probe_rows(&texts, &text_image, &images, &[80, 81], Unit::Words, 248, &mut encode).unwrap();
    assert_eq!((rows[0].scores.t2i_r1, rows[1].scores.t2i_r1), (12.5, 100.0));
}

/// The ceiling counts the images a cut caption cannot tell apart: those
/// with a caption cut to the same ids (several captions an image allowed).
#[test]
fn the_perfect_reader_ceiling_counts_indistinguishable_images() {
    let ids = vec![vec![1u32, 9], vec![1, 9], vec![2, 9], vec![1, 9], vec![3, 9]];
    // Texts 0 and 1 describe image 0, text 3 image 2: ids [1, 9] fit images 0 and 2.
    let c = evaluate::reader_ceiling(&ids, &[0, 0, 1, 2, 3]);
    assert_eq!(c.t2i_r1, 100.0 * (0.5 + 0.5 + 1.0 + 0.5 + 1.0) / 5.0);
    assert_eq!((c.t2i_r5, c.t2i_r10), (100.0, 100.0));
    // Eleven images with one cut caption: R@10 = 10/11.
    let same = vec![vec![7u32]; 11];
    let c = evaluate::reader_ceiling(&same, &(0..11).collect::<Vec<_>>());
    assert!((c.t2i_r1 - 100.0 / 11.0).abs() < 1e-8 && (c.t2i_r10 - 1000.0 / 11.0).abs() < 1e-8, "{c:?}");
    // Rounded at 1e-9: no float noise in the JSON.
    assert_eq!(evaluate::reader_ceiling(&vec![vec![1u32]; 3], &[0, 1, 2]).t2i_r1, 33.333333333);
}

#[test]
fn probe_at_full_length_equals_eval_and_writes_json_csv_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 12);
    let cache = dir.path().join("cache");
    let eval_json = dir.path().join("eval.json");
    ok(&["eval", "--model", s(&model_path()), "--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache), "--json", s(&eval_json)]);
    let json = dir.path().join("probe.json");
    let csv = dir.path().join("probe.csv");
    let svg = dir.path().join("probe.svg");
    let out = ok(&[
        "probe", "--model", s(&model_path()), "--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache),
        "--lengths", "5,20,77,248", "--json", s(&json), "--csv", s(&csv), "--plot", s(&svg),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("probe by tokens on urban1k"), "{stdout}");
    let probe = read_json(&json);
    assert_eq!(probe["unit"], "tokens");
    let rows = probe["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["length"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 20, 77, 248]);
    // Captions are shorter than 77 tokens, so 77 and 248 are the full captions.
    assert_eq!(scores_of(&rows[3]), scores_of(&read_json(&eval_json)));
    assert_eq!(scores_of(&rows[2]), scores_of(&rows[3]));
    // The images came from eval's cache.
    assert_eq!(probe["models"][0]["timings"]["images_cached"], 12);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 5);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    // T2I, I2T and the perfect reader's ceiling.
    assert_eq!(svg_text.matches("<polyline").count(), 3);
    assert!(svg_text.contains("perfect reader T2I"));
    assert!(rows.iter().all(|r| r["ceiling_t2i_r1"].as_f64().is_some()));

    // Two models on one PNG, by words.
    let png = dir.path().join("probe.png");
    let other = dir.path().join("other.safetensors");
    let ckpt = longclip::checkpoint::load(&model_path()).unwrap();
    longclip::export::save_checkpoint(&ckpt, &other).unwrap();
    ok(&[
        "probe", "--model", s(&model_path()), "--model", s(&other), "--dataset", "urban1k", "--root", s(&root),
        "--embeddings-cache", s(&cache), "--unit", "words", "--lengths", "3,8,40", "--json", s(&json), "--plot", s(&png),
    ]);
    let probe = read_json(&json);
    assert_eq!(probe["unit"], "words");
    let rows = probe["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    // The same weights in another format: the same numbers (and the cache is shared).
    for k in 0..3 {
        assert_eq!(scores_of(&rows[k]), scores_of(&rows[k + 3]));
    }
    assert_eq!(probe["models"][1]["timings"]["texts_encoded"], 0);
    let img = image::open(&png).unwrap();
    assert!(img.width() > 600 && img.height() > 400);
}

#[test]
fn missing_and_broken_images_fail_or_are_skipped_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 6);
    std::fs::remove_file(root.join("image/2.png")).unwrap();
    std::fs::write(root.join("image/4.png"), b"not a png at all").unwrap();
    let m = model_path();
    let base = ["eval", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--no-cache"];
    let err = fails(&base);
    // Named with the extension the other images have (the set is .png).
    assert!(err.contains("2.png: file not found") && err.contains("--on-missing skip"), "{err}");
    let json = dir.path().join("r.json");
    let out = ok(&[&base[..], &["--on-missing", "skip", "--json", s(&json)]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 6 images skipped"), "{stderr}");
    assert!(stderr.contains("4.png"), "{stderr}");
    let got = read_json(&json);
    assert_eq!((got["n_images"].as_u64(), got["n_texts"].as_u64(), got["skipped_images"].as_u64()), (Some(4), Some(4), Some(2)));
    // Broken but present: found while decoding, also under --on-missing.
    std::fs::copy(root.join("image/0.png"), root.join("image/2.png")).unwrap();
    let err = fails(&base);
    assert!(err.contains("4.png") && err.contains("not an image"), "{err}");
}

#[test]
fn bad_datasets_and_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_path();
    let err = fails(&["eval", "--model", s(&m), "--dataset", "urban1k", "--root", s(dir.path())]);
    assert!(err.contains("not an Urban layout"), "{err}");
    let err = fails(&["eval", "--model", s(&m), "--dataset", "mscoco", "--root", s(dir.path())]);
    assert!(err.contains("unknown dataset 'mscoco'"), "{err}");
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "image,caption\n\"a.png,b\n").unwrap();
    let err = fails(&["eval", "--model", s(&m), "--dataset", "csv", "--root", s(&csv)]);
    assert!(err.contains("x.csv") && err.contains("line 2"), "{err}");
    let root = dir.path().join("u");
    urban_set(&root, 3);
    let err = fails(&["probe", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--no-cache", "--lengths", "1,5"]);
    assert!(err.contains("at least 2"), "{err}");
    let err = fails(&["probe", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--no-cache", "--lengths", "0", "--unit", "words"]);
    assert!(err.contains("length of 0"), "{err}");
    let err = fails(&["probe", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--no-cache", "--lengths", "10,10,5"]);
    assert!(err.contains("gives 10 twice"), "{err}");
    let err = fails(&["probe", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--no-cache", "--lengths", "5", "--plot", "x.gif"]);
    assert!(err.contains(".svg or .png"), "{err}");
    let err = fails(&["eval", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--paper-model", "gpt"]);
    assert!(err.contains("unknown model 'gpt'"), "{err}");
}

#[test]
fn zero_shot_classification_on_a_generated_cifar10() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    let mut records = Vec::new();
    let mut pngs = Vec::new();
    for i in 0..5u8 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8 ^ (i * 50), (y * 8) as u8, i * 40]));
        records.push(i * 2);
        for c in 0..3 {
            records.extend(img.pixels().map(|p| p.0[c]));
        }
        let path = dir.path().join(format!("png/{i}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(&path).unwrap();
        pngs.push(path);
    }
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("test_batch.bin"), &records).unwrap();
    std::fs::write(bin.join("batches.meta.txt"), names.join("\n")).unwrap();
    let templates = dir.path().join("t.txt");
    std::fs::write(&templates, "a photo of a {}.\na blurry photo of the {}.\n").unwrap();
    let json = dir.path().join("c.json");
    let out = ok(&[
        "eval", "--model", s(&model_path()), "--dataset", "cifar10", "--root", s(dir.path()), "--no-cache",
        "--templates-file", s(&templates), "--json", s(&json),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("top-1"));
    let got = read_json(&json);
    assert_eq!((got["n_images"].as_u64(), got["n_classes"].as_u64()), (Some(5), Some(10)));

    // Independently: prompts averaged per class, images from PNG files.
    let ckpt = longclip::checkpoint::load(&model_path()).unwrap();
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let e = Embedder { model: &model, device: Device::Cpu, batch_size: 8, normalize: true, progress: false };
    let prompts: Vec<String> = names.iter().flat_map(|n| [format!("a photo of a {n}."), format!("a blurry photo of the {n}.")]).collect();
    let t = rows(&e.embed_texts(&prompts, 248).unwrap().features);
    let class: Vec<Vec<f32>> = t.chunks(2).map(|p| {
        let m: Vec<f32> = (0..p[0].len()).map(|d| (p[0][d] + p[1][d]) / 2.0).collect();
        let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt();
        m.iter().map(|x| x / norm).collect()
    }).collect();
    let imgs = rows(&e.embed_images(&pngs).unwrap().features);
    let labels = [0usize, 2, 4, 6, 8];
    let mut top1 = 0;
    let mut top5 = 0;
    for (im, &l) in imgs.iter().zip(&labels) {
        let sc: Vec<f32> = class.iter().map(|c| c.iter().zip(im).map(|(a, b)| a * b).sum()).collect();
        let rank = (0..10).filter(|&j| sc[j] > sc[l] || (sc[j] == sc[l] && j < l)).count();
        top1 += (rank < 1) as usize;
        top5 += (rank < 5) as usize;
    }
    assert_eq!(got["top1"].as_f64(), Some(100.0 * top1 as f64 / 5.0));
    assert_eq!(got["top5"].as_f64(), Some(100.0 * top5 as f64 / 5.0));

    // classify: one line per image, best label first.
    let out = ok(&["classify", "--model", s(&model_path()), "--images", s(&dir.path().join("png")), "--labels", "red,green,blue", "--top", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(stdout.lines().all(|l| l.matches('%').count() == 2), "{stdout}");
}

// ---------------------------------------------------------------------------
// The official numbers for urban-tiny on Urban1k (needs ../shared).

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    let needed = [p.join("fixtures/urban-tiny/model.pt"), p.join("datasets/urban1k/caption")];
    if needed.iter().all(|f| f.exists()) {
        Some(p)
    } else {
        eprintln!("skipped: ../shared (urban-tiny and Urban1k) is not there");
        None
    }
}

/// Every number beside the official one; returns the largest difference
/// among numbers that ties do not touch, and records failures: over 0.1
/// points where no tie is involved, or outside what tie order allows.
fn compare(what: &str, got: &RetrievalScores, ties: Option<&(RetrievalScores, RetrievalScores)>, want: &Value, failures: &mut Vec<String>) -> f64 {
    let mut worst = 0.0f64;
    let mut line = format!("{what:>16}");
    let lows = ties.map(|t| t.0.named());
    let highs = ties.map(|t| t.1.named());
    for (n, (k, v)) in got.named().into_iter().enumerate() {
        let w = want[k].as_f64().unwrap_or_else(|| panic!("{what}: reference has no {k}"));
        let d = (v - w).abs();
        line += &format!("  {k} {v:6.2} ({w:6.2})");
        let (lo, hi) = match (lows, highs) {
            (Some(l), Some(h)) => (l[n].1, h[n].1),
            _ => (v, v),
        };
        if lo != hi {
            line += &format!(" ties {lo:.1}..{hi:.1}");
            if w < lo - 0.1 - 1e-9 || w > hi + 0.1 + 1e-9 {
                failures.push(format!("{what} {k}: official {w:.2} outside the tie range {lo:.2}..{hi:.2}"));
            }
            continue;
        }
        if d > 0.1 + 1e-9 {
            failures.push(format!("{what} {k}: ours {v:.2}, official {w:.2}"));
        }
        worst = worst.max(d);
    }
    eprintln!("{line}");
    worst
}

#[test]
fn urban_tiny_reproduces_the_official_numbers() {
    let Some(shared) = shared() else { return };
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(shared.join("fixtures/urban-tiny/reference.json")).unwrap()).unwrap();
    let ckpt = longclip::checkpoint::load(&shared.join("fixtures/urban-tiny/model.pt")).unwrap();
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let data = datasets::load("urban1k", &shared.join("datasets/urban1k"), &LoadOptions::default()).unwrap();
    assert_eq!(data.images.len(), reference["pairs"].as_u64().unwrap() as usize);
    // A fresh cache: the images are decoded once for the three passes.
    let cache = tempfile::tempdir().unwrap();
    let fingerprint = ckpt.fingerprint().unwrap();
    let mut enc = Encoder::new(&model, Device::Cpu, 64, Some((cache.path(), fingerprint.as_str()))).unwrap();
    let full = evaluate::evaluate_retrieval(&mut enc, &data, OnMissing::Fail, 248).unwrap();
    let mut failures = Vec::new();
    let mut worst = compare("full", &full.scores, full.tie_range.as_ref(), &reference["full"], &mut failures);
    for (unit, key) in [(Unit::Tokens, "probe_tokens"), (Unit::Words, "probe_words")] {
        let want = reference[key].as_object().unwrap();
        let mut lengths: Vec<usize> = want.keys().map(|k| k.parse().unwrap()).collect();
        lengths.sort();
        let (rows, _) = evaluate::probe(&mut enc, &data, &lengths, unit, OnMissing::Fail).unwrap();
        for r in rows {
            worst = worst.max(compare(&format!("{key} {}", r.length), &r.scores, r.tie_range.as_ref(), &want[&r.length.to_string()], &mut failures));
        }
    }
    assert!(failures.is_empty(), "more than 0.1 points from the official code:\n{}", failures.join("\n"));
    eprintln!("urban-tiny: every number within {worst:.3} points of the official code");
}

/// `eval --model A --model B --model C`: a row per model, the numbers each
/// model gets alone, an entry per model in the JSON, CSV and records.
#[test]
fn eval_of_several_models_gives_each_the_numbers_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 8);
    let cache = dir.path().join("cache");
    let models = [model_path(), fixture("frontier/fg-clip-tiny"), fixture("frontier/goal-tiny/goal-tiny.pth")];
    let data = ["--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache)];
    let alone: Vec<Value> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let json = dir.path().join(format!("alone{i}.json"));
            ok(&[&["eval", "--model", s(m)][..], &data[..], &["--json", s(&json)][..]].concat());
            read_json(&json)
        })
        .collect();
    let (json, csv, record) = (dir.path().join("all.json"), dir.path().join("all.csv"), dir.path().join("results"));
    let mut args = vec!["eval"];
    for m in &models {
        args.extend(["--model", s(m)]);
    }
    args.extend(data);
    args.extend(["--json", s(&json), "--csv", s(&csv), "--record", s(&record)]);
    let out = ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("urban1k (test): 8 images, 8 texts; 3 models"), "{stdout}");
    let labels = ["tiny-longclip", "fg-clip-tiny", "goal-tiny"];
    for (label, want) in labels.iter().zip(&alone) {
        // One table row per model, with the numbers of its run alone.
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&format!("{label} "))).collect();
        assert_eq!(rows.len(), 1, "{label}: {stdout}");
        let cells: Vec<f64> = rows[0].split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
        let s = scores_of(want);
        let two = |v: f64| (v * 100.0).round() / 100.0;
        assert_eq!(cells, [s.t2i_r1, s.t2i_r5, s.t2i_r10, s.i2t_r1, s.i2t_r5, s.i2t_r10].map(two), "{label}: {stdout}");
    }
    let all = read_json(&json);
    assert_eq!((all["dataset"].as_str(), all["split"].as_str()), (Some("urban1k"), Some("test")));
    let entries = all["models"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for ((entry, want), label) in entries.iter().zip(&alone).zip(labels) {
        assert_eq!(entry["label"], label);
        assert_eq!(scores_of(entry), scores_of(want));
        for key in ["model", "fingerprint", "context_length", "n_images", "n_texts", "family", "text_path"] {
            assert_eq!(entry[key], want[key], "{label}: {key}");
        }
        // The second time, every embedding came from the cache.
        assert_eq!(entry["timings"]["images_encoded"], 0, "{label}");
    }
    assert_eq!((entries[1]["family"].as_str(), entries[2]["family"].as_str()), (Some("FG-CLIP"), Some("GOAL")));
    assert_eq!(entries[0]["context_length"], 248);
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 4, "{csv_text}");
    assert!(csv_text.starts_with("label,dataset,"), "{csv_text}");
    let records = std::fs::read_to_string(record.join("runs.jsonl")).unwrap();
    let records: Vec<Value> = records.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["result"]["label"], "goal-tiny");

    // --paper-model once per model; a count that fits neither is refused.
    let mut named = args[..7].to_vec();
    named.extend(data);
    named.extend(["--paper-model", "LongCLIP-B", "--paper-model", "none"]);
    let err = fails(&named);
    assert!(err.contains("once per --model"), "{err}");
    named.extend(["--paper-model", "FG-CLIP-B"]);
    let stdout = String::from_utf8_lossy(&ok(&named).stdout).into_owned();
    assert!(stdout.contains("paper: LongCLIP-B (LoTLIP README)") && !stdout.contains("paper: FG-CLIP-B"), "{stdout}");
}

/// `probe` of several models: a table per model, then a row per model by length.
#[test]
fn probe_of_several_models_has_a_row_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 5);
    let json = dir.path().join("probe.json");
    let svg = dir.path().join("probe.svg");
    let (a, b) = (model_path(), fixture("frontier/goal-tiny/goal-tiny.pth"));
    let out = ok(&[
        "probe", "--model", s(&a), "--model", s(&b), "--dataset", "urban1k", "--root", s(&root), "--no-cache",
        "--lengths", "5,248", "--json", s(&json), "--plot", s(&svg), "--paper-model", "LongCLIP-B",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let probe = read_json(&json);
    let rows = probe["rows"].as_array().unwrap();
    for (i, label) in ["tiny-longclip", "goal-tiny"].iter().enumerate() {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{label} "))).unwrap_or_else(|| panic!("{stdout}"));
        let cells: Vec<f64> = line.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
        let want: Vec<f64> = rows[2 * i..2 * i + 2].iter().map(|r| (r["t2i_r1"].as_f64().unwrap() * 100.0).round() / 100.0).collect();
        assert_eq!(cells, want, "{stdout}");
        assert_eq!(probe["models"][i]["label"], *label);
    }
    assert_eq!(probe["models"][1]["family"], "GOAL");
    // Urban1k's published LongCLIP-B number stands at 248 (whole captions) only.
    let paper = stdout.lines().find(|l| l.starts_with("paper: LongCLIP-B")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(paper.ends_with("      -   79.50"), "{paper}");
    assert_eq!(probe["models"][0]["paper"][0]["values"]["t2i_r1"], 79.5);
    // Two models: T2I and I2T each, and the ceiling.
    assert_eq!(std::fs::read_to_string(&svg).unwrap().matches("<polyline").count(), 5);
}

#[test]
fn eval_int8_warns_records_its_dtype_and_never_shares_the_f32_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 8);
    let cache = dir.path().join("cache");
    let json = dir.path().join("r.json");
    let m = model_path();
    let args = ["eval", "--model", s(&m), "--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache), "--json", s(&json)];
    let out = ok(&args);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("int8"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", f32)"));
    assert_eq!(read_json(&json)["dtype"], "f32");

    let out = ok(&[&args[..], &["--dtype", "int8"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: --dtype int8") && stderr.contains("reproduce published tables"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", int8)"));
    let int8 = read_json(&json);
    assert_eq!(int8["dtype"], "int8");
    // The f32 features were cached by the first run: int8 must embed afresh.
    assert_eq!(int8["timings"]["images_cached"], 0, "{int8}");
    assert_eq!(int8["timings"]["texts_cached"], 0, "{int8}");
    let e = fails(&[&args[..], &["--dtype", "int4"]].concat());
    assert!(e.contains("int4"), "{e}");
}

#[test]
fn several_models_and_output_folders_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("urban");
    urban_set(&root, 4);
    let m = model_path();
    let missing = dir.path().join("nope.pt");
    let cache = dir.path().join("cache");
    let base = ["eval", "--dataset", "urban1k", "--root", s(&root), "--embeddings-cache", s(&cache), "--model", s(&m)];
    let e = fails(&[&base[..], &["--model", s(&missing)]].concat());
    assert!(e.contains("nope.pt") && e.contains("no model was run"), "{e}");
    assert!(!cache.exists(), "the first model did no work");
    let json = dir.path().join("no/such/folder/r.json");
    let e = fails(&[&base[..], &["--json", s(&json)]].concat());
    assert!(e.contains("nothing was run") && e.contains("r.json"), "{e}");
    assert!(!cache.exists());
    let plot = dir.path().join("missing/p.png");
    let e = fails(&["probe", "--dataset", "urban1k", "--root", s(&root), "--model", s(&m), "--plot", s(&plot)]);
    assert!(e.contains("nothing was run"), "{e}");
}
