//! Fine-tuning: the gradient cache against one big batch, gradients through
//! the model against finite differences, frozen positions, a tiny model
//! that learns long captions without losing short ones, and the two
//! commands end to end (checkpoints, bit-exact resume, skipped images).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint::{self, Activation, Config, TextConfig, VisionConfig};
use longclip::export;
use longclip::finetune::data::{CaptionCuts, ShortCaption};
use longclip::finetune::optim::AdamWConfig;
use longclip::finetune::run::{self, RunConfig};
use longclip::finetune::{gradients, Batch, Params, StepOptions};
use longclip::pcm::{self, PcmOptions};
use longclip::tokenizer::Tokenizer;

/// A Long-CLIP small enough to train in seconds: 32 px images, patch 8.
fn tiny_config() -> Config {
    Config {
        embed_dim: 32,
        text: TextConfig { width: 64, layers: 2, heads: 2, mlp_width: 256, context_length: 248, vocab_size: 49408, keep_positions: 20 },
        vision: VisionConfig { width: 64, layers: 2, heads: 2, mlp_width: 256, patch_size: 8, image_size: 32 },
        activation: Activation::QuickGelu,
        family: Default::default(),
    }
}

fn tiny_params(seed: u64) -> Params {
    Params::from_checkpoint(checkpoint::random(&tiny_config(), seed).unwrap(), &Device::Cpu, Some(4.6052)).unwrap()
}

// ---------------------------------------------------------------------------
// Synthetic long-caption data: four coloured quadrants per image. The short
// caption names the top two colours, the long one all four.

const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 40]),
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
];

struct Sample {
    quadrants: [usize; 4],
}

impl Sample {
    fn name(&self, q: usize) -> &'static str {
        COLOURS[self.quadrants[q]].0
    }

    fn short(&self) -> String {
        format!("a {} and {} picture", self.name(0), self.name(1))
    }

    fn long(&self) -> String {
        format!(
            "{}. the top left is {}. the top right is {}. the bottom left is {}. the bottom right is {}.",
            self.short(),
            self.name(0),
            self.name(1),
            self.name(2),
            self.name(3)
        )
    }

    fn write_png(&self, path: &Path, size: u32) {
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let q = (y >= size / 2) as usize * 2 + (x >= size / 2) as usize;
            image::Rgb(COLOURS[self.quadrants[q]].1)
        });
        img.save(path).unwrap();
    }
}

/// `n` samples whose top colour pairs are all different.
fn samples(n: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut k = 0usize;
    for tl in 0..6 {
        for tr in 0..6 {
            if tl == tr {
                continue;
            }
            out.push(Sample { quadrants: [tl, tr, (tl + 2 + k) % 6, (tr + 3 + 2 * k) % 6] });
            k += 1;
        }
    }
    // Interleave so any prefix mixes colours.
    let mut mixed: Vec<Sample> = Vec::new();
    for i in 0..out.len() {
        mixed.push(Sample { quadrants: out[(i * 7) % out.len()].quadrants });
    }
    mixed.truncate(n);
    mixed
}

/// Writes the images and a CSV (image, caption, short) into `dir`.
fn write_dataset(dir: &Path, samples: &[Sample], caption: impl Fn(&Sample) -> String) -> PathBuf {
    let mut csv = String::from("image,caption,short\n");
    for (i, s) in samples.iter().enumerate() {
        let name = format!("img{i:03}.png");
        s.write_png(&dir.join(&name), 32);
        csv.push_str(&format!("{name},\"{}\",\"{}\"\n", caption(s), s.short()));
    }
    let path = dir.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn synthetic_batch(samples: &[Sample]) -> Batch {
    let dir = tempfile::tempdir().unwrap();
    let transform = longclip::preprocess::Transform::clip(32);
    let mut pixels = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let path = dir.path().join(format!("{i}.png"));
        s.write_png(&path, 32);
        pixels.extend(transform.from_path(&path).unwrap());
    }
    let tok = Tokenizer::global();
    Batch {
        pixels: Tensor::from_vec(pixels, (samples.len(), 3, 32, 32), &Device::Cpu).unwrap(),
        long: samples.iter().map(|s| tok.encode(&s.long(), 248).unwrap().ids).collect(),
        short: samples.iter().map(|s| tok.encode(&s.short(), 248).unwrap().ids).collect(),
    }
}

fn step_options(chunks: usize) -> StepOptions {
    StepOptions { dtype: DType::F32, chunks, pcm: PcmOptions { pca_dim: 4, pca_group: 0, label_smoothing: 0.1 } }
}

// ---------------------------------------------------------------------------

#[test]
fn gradient_cache_gives_the_gradient_of_one_big_batch() {
    let params = tiny_params(1);
    let batch = synthetic_batch(&samples(10));
    let whole = gradients(&params, &batch, &step_options(1), 1.0).unwrap();
    let mut worst = 0f32;
    for chunks in [2, 3, 10] {
        let cached = gradients(&params, &batch, &step_options(chunks), 1.0).unwrap();
        assert!((whole.loss_long - cached.loss_long).abs() < 1e-6, "{chunks} chunks: loss_long");
        assert!((whole.loss_short - cached.loss_short).abs() < 1e-6, "{chunks} chunks: loss_short");
        for (name, (a, b)) in params.names.iter().zip(whole.grads.iter().zip(&cached.grads)) {
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
            let rel = max_abs_diff(a, b) / scale;
            worst = worst.max(rel);
            assert!(rel < 1e-4, "{chunks} chunks: gradient of {name} differs by {rel:e} of its largest entry");
        }
    }
    eprintln!("gradient cache vs one batch: worst relative difference {worst:e}");
}

/// The loss of the current weights, computed without a graph.
fn loss_now(params: &Params, batch: &Batch, opts: &StepOptions) -> f64 {
    let model = params.model(DType::F32, false).unwrap();
    let image = model.vision.encode(&batch.pixels).unwrap();
    let long = model.text.encode(&batch.long).unwrap();
    let short = model.text.encode(&batch.short).unwrap();
    let (l, s) = pcm::loss_values(&image, &long, &short, params.logit_scale().unwrap(), &opts.pcm).unwrap();
    l + s
}

#[test]
fn model_gradients_match_finite_differences() {
    let params = tiny_params(2);
    let batch = synthetic_batch(&samples(8));
    let opts = step_options(2);
    let g = gradients(&params, &batch, &opts, 1.0).unwrap();
    let names = [
        "logit_scale",
        "text_projection",
        "visual.proj",
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.1.ln_2.bias",
        "ln_final.weight",
        "positional_embedding_res",
        "token_embedding.weight",
    ];
    for name in names {
        let i = params.names.iter().position(|n| n == name).unwrap();
        let var = &params.vars[i];
        let grad = g.grads[i].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The entry with the largest gradient: the most signal over f32 noise.
        let (k, &analytic) = grad.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let original = var.as_tensor().copy().unwrap();
        let shape = original.dims().to_vec();
        // A step of 1% of the tensor's typical entry: large enough for f32,
        // small enough for the curvature.
        let rms = original.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        let h = (1e-2 * rms).max(1e-3);
        let at = |delta: f32| {
            let mut values = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values[k] += delta;
            var.set(&Tensor::from_vec(values, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            loss_now(&params, &batch, &opts)
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        var.set(&original).unwrap();
        let err = (analytic as f64 - numeric).abs() / numeric.abs().max(1e-6);
        eprintln!("{name}[{k}]: analytic {analytic:.6e}, finite difference {numeric:.6e}, relative error {err:.2e}");
        assert!(err < 2e-2, "{name}: gradient {analytic} vs finite difference {numeric}");
    }
}

#[test]
fn the_first_twenty_positions_stay_frozen() {
    let params = tiny_params(3);
    assert!(!params.names.iter().any(|n| n == "positional_embedding"), "the frozen table must not be a Var");
    let batch = synthetic_batch(&samples(6));
    let g = gradients(&params, &batch, &step_options(1), 1.0).unwrap();
    let i = params.names.iter().position(|n| n == "positional_embedding_res").unwrap();
    let head = g.grads[i].narrow(0, 0, 20).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let tail = g.grads[i].narrow(0, 20, 30).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(head, 0.0, "rows 0..20 of positional_embedding_res are not read by the model");
    assert!(tail > 0.0, "rows 20.. of positional_embedding_res must train");
    // After training, the frozen table is written back unchanged.
    let before = params.frozen["positional_embedding"].copy().unwrap();
    let ckpt = params.to_checkpoint(PathBuf::from("x")).unwrap();
    assert_eq!(max_abs_diff(&ckpt.tensors["positional_embedding"], &before), 0.0);
}

// ---------------------------------------------------------------------------

fn run_config(model: &Path, data: &Path, out: &Path) -> RunConfig {
    RunConfig {
        model: model.to_path_buf(),
        data: data.display().to_string(),
        image_root: None,
        out: out.to_path_buf(),
        epochs: 1,
        lr: 1e-3,
        batch_size: 30,
        accumulate: 1,
        warmup: 5,
        adamw: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
        // CLIP's initial temperature: ln(100) makes a random model's first
        // steps too sharp for a 30-sample run.
        log_scale: (1.0f64 / 0.07).ln(),
        pcm: PcmOptions { pca_dim: 8, pca_group: 0, label_smoothing: 0.1 },
        short: ShortCaption::Column("short".into()),
        cuts: CaptionCuts::default(),
        device: "cpu".into(),
        dtype: "f32".into(),
        resume: false,
        eval: Some(data.display().to_string()),
        save_every: 0,
        keep: 1,
        seed: 0,
        max_steps: None,
        progress: false,
    }
}

/// The point of the method on a small scale: a model that knows short
/// captions (trained on them first) learns the long ones with PCM, and
/// its short-caption retrieval does not collapse on the way.
#[test]
fn finetuning_learns_long_captions_and_keeps_short_ones() {
    let dir = tempfile::tempdir().unwrap();
    let set = samples(30);
    let start = dir.path().join("random.safetensors");
    export::save_checkpoint(&checkpoint::random(&tiny_config(), 4).unwrap(), &start).unwrap();
    // Stage 1: short captions only (long = short), a "CLIP" for short text.
    let short_dir = dir.path().join("short");
    std::fs::create_dir(&short_dir).unwrap();
    let short_data = write_dataset(&short_dir, &set, Sample::short);
    let long_data = write_dataset(dir.path(), &set, Sample::long);
    let mut cfg = run_config(&start, &short_data, &dir.path().join("stage1"));
    cfg.epochs = 40;
    cfg.lr = 3e-3;
    cfg.eval = Some(long_data.display().to_string());
    let stage1 = run::run(&cfg).unwrap();
    let before = stage1.eval_after.unwrap();
    // Stage 2: PCM fine-tuning on long + short captions.
    let mut cfg = run_config(&stage1.model, &long_data, &dir.path().join("stage2"));
    cfg.epochs = 25;
    cfg.lr = 1e-3;
    let stage2 = run::run(&cfg).unwrap();
    let after = stage2.eval_after.unwrap();
    eprintln!("{}", run::describe_eval("start", &before));
    eprintln!("{}", run::describe_eval("end", &after));
    let long = |r: &longclip::finetune::eval::Recall| (r.i2t + r.t2i) / 2.0;
    assert!(long(&before.short) >= 50.0, "stage 1 must learn short captions ({:?})", before.short);
    assert!(long(&after.long) >= long(&before.long) + 20.0, "long R@1 {:?} -> {:?}", before.long, after.long);
    assert!(long(&after.short) >= 0.8 * long(&before.short), "short R@1 collapsed: {:?} -> {:?}", before.short, after.short);
}

// ---------------------------------------------------------------------------
// The commands

fn longclip(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).output().expect("runs");
    assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn loss_command_matches_official() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let list: String = m["images"].as_array().unwrap().iter().map(|n| format!("{}\n", s(&fixture(&format!("images/{}", n.as_str().unwrap()))))).collect();
    std::fs::write(dir.path().join("images.txt"), list).unwrap();
    std::fs::write(dir.path().join("long.json"), m["pcm"]["long_captions"].to_string()).unwrap();
    std::fs::write(dir.path().join("short.json"), m["pcm"]["short_captions"].to_string()).unwrap();
    let out = longclip(&[
        "loss",
        "--model", s(&fixture("tiny-longclip.pt")),
        "--images", s(&dir.path().join("images.txt")),
        "--long-texts", s(&dir.path().join("long.json")),
        "--short-texts", s(&dir.path().join("short.json")),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exp = expected();
    for key in ["loss_long", "loss_short"] {
        let want = exp[&format!("pcm.{key}")].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let ours = v[key].as_f64().unwrap();
        eprintln!("longclip loss: {key} {ours:.7} (official {want:.7})");
        assert!((ours - want).abs() < 1e-4, "{key}: {ours} vs official {want}");
    }
}

/// Checkpoints resume bit for bit; bad images are skipped and counted; the
/// result loads in `embed`.
#[test]
fn finetune_command_resumes_bit_for_bit_and_skips_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let set = samples(10);
    let data = write_dataset(dir.path(), &set, Sample::long);
    // One missing and one corrupt image.
    let mut csv = std::fs::read_to_string(&data).unwrap();
    csv.push_str("missing.png,\"a lost picture. nothing here.\",\"x\"\n");
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    csv.push_str("broken.png,\"a broken picture. bad bytes.\",\"y\"\n");
    std::fs::write(&data, csv).unwrap();
    let start = dir.path().join("random.safetensors");
    export::save_checkpoint(&checkpoint::random(&tiny_config(), 5).unwrap(), &start).unwrap();
    let with_share = |out: &Path, share: &str| -> Vec<String> {
        [
            "finetune", "--model", s(&start), "--data", s(&data), "--out", s(out), "--epochs", "2", "--batch-size", "4",
            "--lr", "1e-3", "--warmup", "2", "--pca-dim", "2", "--accumulate", "2", "--save-every", "2", "--quiet",
            "--cut-share", share,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let common = |out: &Path| with_share(out, "0.5");
    let args = |v: &[String], extra: &[&str]| -> Vec<String> { v.iter().cloned().chain(extra.iter().map(|a| a.to_string())).collect() };
    let run = |v: Vec<String>| longclip(&v.iter().map(String::as_str).collect::<Vec<_>>());
    // 12 records, batch 4: 3 steps an epoch, 6 in all.
    let straight = dir.path().join("straight");
    let out = run(common(&straight));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped 4 images"), "two bad images, two epochs:\n{stderr}");
    // Batches of 4 are large enough for --pca-dim 2, but an unreadable image
    // leaves a batch of at most 3: warned once, when it happens.
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(stderr.contains("unreadable images leave") && stderr.contains("--pca-dim 2 reconstructs exactly"), "{stderr}");
    let skipped = std::fs::read_to_string(straight.join("skipped.txt")).unwrap();
    assert_eq!(skipped.lines().count(), 4);
    assert!(skipped.contains("missing.png") && skipped.contains("broken.png"));
    let split = dir.path().join("split");
    run(args(&common(&split), &["--max-steps", "3"]));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("checkpoints/step-00000003/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 3);
    assert_eq!(state["recipe"]["cuts"], serde_json::json!({"share": 0.5, "min_tokens": 2}));
    // The cuts are part of the recipe: another share does not resume the run.
    let other = Command::new(env!("CARGO_BIN_EXE_longclip"))
        .args(args(&with_share(&split, "0.25"), &["--resume"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && err.contains("different recipe"), "{err}");
    assert!(err.contains("cuts.share: checkpoint 0.5, this run 0.25"), "the changed value is named:\n{err}");
    run(args(&common(&split), &["--resume"]));
    let a = checkpoint::load(&straight.join("model.safetensors")).unwrap();
    let b = checkpoint::load(&split.join("model.safetensors")).unwrap();
    let start_ckpt = checkpoint::load(&start).unwrap();
    for (key, t) in &a.tensors {
        assert_eq!(max_abs_diff(t, &b.tensors[key]), 0.0, "{key} differs after resume");
    }
    let moved = max_abs_diff(&a.tensors["visual.proj"], &start_ckpt.tensors["visual.proj"]);
    assert!(moved > 0.0, "training changed nothing");
    // The two newest checkpoints are kept (--keep 2, the default).
    let kept: Vec<_> = std::fs::read_dir(straight.join("checkpoints")).unwrap().collect();
    assert_eq!(kept.len(), 2);
    // A second run into the same directory must not clobber it silently.
    let again = Command::new(env!("CARGO_BIN_EXE_longclip")).args(common(&straight)).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // The result is an ordinary checkpoint.
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "a red and blue picture\n").unwrap();
    let npy = dir.path().join("t.npy");
    longclip(&["embed", "--model", s(&straight.join("model.safetensors")), "--texts", s(&texts), "--out", s(&npy)]);
    assert_eq!(Tensor::read_npy(&npy).unwrap().dims(), &[1, 32]);
}


// ---------------------------------------------------------------------------
// Small PCA groups and non-finite values

/// The warning is computed from the groups the run will see: full
/// batches, the last, smaller batch of an epoch, and the last, smaller
/// group of `--pca-group` within a batch. Its boundary is pca_dim + 1
/// samples (a centred PCA of n samples has rank n - 1; see
/// `pcm::tests::pca_is_exact_up_to_pca_dim_plus_one_samples`).
#[test]
fn pca_group_warning_names_every_group_the_pca_reconstructs_exactly() {
    let opts = |pca_dim, pca_group| PcmOptions { pca_dim, pca_group, label_smoothing: 0.1 };
    let warn = |records, batch, pca_dim, pca_group| run::pca_group_warning(records, batch, &opts(pca_dim, pca_group), 512);
    // The example: batch 8, 32 components.
    let w = warn(1000, 8, 32, 128).expect("batch 8 with --pca-dim 32 must warn");
    eprintln!("{w}");
    assert!(w.contains("every full batch of 8"), "{w}");
    assert!(w.contains("up to 33 samples") && w.contains("at least 34"), "{w}");
    assert!(w.contains("primary component matching does nothing"), "{w}");
    // Boundary: 33 = pca_dim + 1 is exact, 34 is not.
    assert!(warn(33 * 10, 33, 32, 0).is_some());
    assert!(warn(34 * 10, 34, 32, 0).is_none());
    assert!(warn(64 * 10, 64, 32, 34).unwrap().contains("its last PCA group of 30 samples"));
    // Only the last batch of an epoch too small: 3 x 64 + 5 records.
    let w = warn(197, 64, 32, 128).expect("a last batch of 5 must warn");
    assert!(w.contains("last batch of each epoch (197 records in batches of 64 leave 5)"), "{w}");
    assert!(!w.contains("every full batch"), "{w}");
    assert!(warn(64 * 3 + 34, 64, 32, 128).is_none(), "a last batch of 34 is large enough");
    assert!(warn(64 * 3 + 33, 64, 32, 128).is_some(), "a last batch of 33 is not");
    assert!(warn(192, 64, 32, 128).is_none());
    // Only the last group of --pca-group within each batch: 262 = 130 + 130 + 2.
    let w = warn(262 * 4, 262, 32, 130).expect("a last group of 2 must warn");
    assert!(w.contains("every full batch of 262: its last PCA group of 2 samples"), "{w}");
    // Fewer records than a batch: one batch.
    assert!(warn(20, 2048, 32, 128).unwrap().contains("the only batch of an epoch (20 records)"));
    // The official recipe does not warn; keeping every dimension does.
    assert!(warn(1_246_000, 2048, 32, 128).is_none());
    assert!(warn(1_246_000, 2048, 512, 128).unwrap().contains("keeps every one of the 512"));
}

fn finetune_command(start: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longclip"));
    cmd.args(["finetune", "--model", s(start), "--data", s(data), "--out", s(out), "--lr", "1e-3", "--warmup", "2", "--quiet"]);
    cmd.args(extra);
    cmd
}

/// The command warns once, before training, about a too-small last batch
/// (and not about large enough ones); a NaN in step 3's features stops the
/// run with the step and batch, and the step-2 checkpoint stays intact.
#[test]
fn finetune_warns_about_small_pca_groups_and_stops_on_non_finite_features() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), &samples(10), Sample::long);
    let start = dir.path().join("random.safetensors");
    export::save_checkpoint(&checkpoint::random(&tiny_config(), 6).unwrap(), &start).unwrap();
    // 10 records in batches of 4: 4, 4, 2; with 2 components, groups of up to 3 are exact.
    let out = dir.path().join("nan");
    let args = ["--batch-size", "4", "--pca-dim", "2", "--epochs", "2", "--save-every", "1", "--keep", "5"];
    let result = finetune_command(&start, &data, &out, &args).env(longclip::finetune::NON_FINITE_AT_STEP_ENV, "3").output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!("{stderr}");
    assert!(!result.status.success(), "a NaN must stop the run");
    assert_eq!(stderr.matches("warning:").count(), 1, "warned once:\n{stderr}");
    assert!(stderr.contains("the last batch of each epoch (10 records in batches of 4 leave 2): its one PCA group of 2 samples"), "{stderr}");
    assert!(stderr.find("warning:").unwrap() < stderr.find("step 3").unwrap(), "the warning comes first");
    assert!(stderr.contains("step 3, batch 3 of 3 in epoch 1: non-finite image features"), "{stderr}");
    let kept = out.join("checkpoints/step-00000002");
    assert!(stderr.contains(&format!("the last checkpoint, {}, is kept", kept.display())), "{stderr}");
    assert!(!out.join("checkpoints/step-00000003").exists());
    assert!(!out.join("model.safetensors").exists(), "no final model after a failed run");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(kept.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2);
    let ckpt = checkpoint::load(&kept.join("model.safetensors")).unwrap();
    for (key, t) in &ckpt.tensors {
        let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{key} of the kept checkpoint is not finite");
    }
    // Resuming from it without the fault finishes the run.
    let resumed = finetune_command(&start, &data, &out, &args).arg("--resume").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    // Batches of 5 (5, 5) with 2 components: every group is large enough, no warning.
    let fine = finetune_command(&start, &data, &dir.path().join("fine"), &["--batch-size", "5", "--pca-dim", "2", "--max-steps", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&fine.stderr);
    assert!(fine.status.success(), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
}

/// A learning rate of 1e30 blows the weights up after the first update;
/// the run stops at the first non-finite value it meets (features, loss,
/// gradient or weights) and names the step and batch; the checkpoint it
/// names loads.
#[test]
fn a_diverging_run_stops_with_the_step_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), &samples(10), Sample::long);
    let start = dir.path().join("random.safetensors");
    export::save_checkpoint(&checkpoint::random(&tiny_config(), 7).unwrap(), &start).unwrap();
    let mut cfg = run_config(&start, &data, &dir.path().join("run"));
    cfg.lr = 1e30;
    cfg.warmup = 1;
    cfg.batch_size = 5;
    cfg.pcm.pca_dim = 2;
    cfg.epochs = 5;
    cfg.save_every = 1;
    cfg.keep = 10;
    cfg.eval = None;
    let err = format!("{:#}", run::run(&cfg).err().expect("lr 1e30 must diverge"));
    eprintln!("{err}");
    assert!(err.starts_with("step ") && err.contains(", batch ") && err.contains(": non-finite "), "{err}");
    let failed: usize = err["step ".len()..].split(',').next().unwrap().parse().unwrap();
    assert!(failed >= 2, "the first step starts from finite weights: {err}");
    let kept = run::latest_checkpoint(&cfg.out).unwrap().expect("steps before the failure were saved");
    assert!(err.contains(&kept.display().to_string()), "{err}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(kept.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, failed - 1);
    checkpoint::load(&kept.join("model.safetensors")).unwrap();
}

/// --cut-min alone is an error; cuts that can never happen end with a
/// warning; the log counts the cuts of each step.
#[test]
fn cut_options_are_checked_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let set = samples(8);
    let data = write_dataset(dir.path(), &set, Sample::long);
    let start = dir.path().join("random.safetensors");
    export::save_checkpoint(&checkpoint::random(&tiny_config(), 5).unwrap(), &start).unwrap();
    let base = ["--epochs", "1", "--batch-size", "4", "--pca-dim", "2"];
    let out = finetune_command(&start, &data, &dir.path().join("a"), &[&base[..], &["--cut-min", "5"]].concat()).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--cut-min does nothing without --cut-share"));
    let out = finetune_command(&start, &data, &dir.path().join("b"), &[&base[..], &["--cut-share", "1", "--cut-min", "1000"]].concat())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("cut no caption"), "{err}");
    let out = finetune_command(&start, &data, &dir.path().join("c"), &[&base[..], &["--cut-share", "1"]].concat()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("8 long captions cut"), "{err}");
    let log = std::fs::read_to_string(dir.path().join("c/log.jsonl")).unwrap();
    let cuts: Vec<u64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cut"].as_u64().unwrap()).collect();
    assert_eq!(cuts, [4, 4]);
    let err = String::from_utf8_lossy(&finetune_command(&start, &data, &dir.path().join("d"), &["--pca-dim", "0"]).output().unwrap().stderr).into_owned();
    assert!(err.contains("--pca-dim must be at least 1"), "{err}");
}

