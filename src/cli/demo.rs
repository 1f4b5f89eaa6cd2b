//! `longclip synth` and `longclip demo`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, Parser};

use crate::index::Index;
use crate::model::l2_normalize;
use crate::search::{self, QueryEncoder};
use crate::synth::{self, SynthOptions};
use crate::tokenizer::Tokenizer;

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory: image/N.png and caption/N.txt (the Urban1k layout; see --layout).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 96)]
    size: usize,
    /// Scenes per hard group (consecutive, sharing the top two rows).
    #[arg(long, default_value_t = 4)]
    group: usize,
    /// Share of scenes in hard groups.
    #[arg(long, default_value_t = 0.8)]
    hard: f64,
    /// Draw the shared top rows from a pool of this many (0: one per group); for training sets.
    #[arg(long, default_value_t = 0)]
    pool: usize,
    /// urban1k (image/N.png, caption/N.txt) or coco (annotations/captions_val2017.json and
    /// val2017/*.jpg, for `eval --dataset coco`; sized by --width, --height, --captions).
    #[arg(long, default_value = "urban1k")]
    layout: String,
    /// coco: image width in pixels.
    #[arg(long, default_value_t = 640)]
    width: usize,
    /// coco: image height in pixels.
    #[arg(long, default_value_t = 480)]
    height: usize,
    /// coco: captions per image.
    #[arg(long, default_value_t = 5)]
    captions: usize,
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let opts = SynthOptions { n: a.n, seed: a.seed, size: a.size, group: a.group, hard: a.hard, pool: a.pool };
    let start = Instant::now();
    match a.layout.as_str() {
        "urban1k" => synth::write_set(&a.out, &opts, true)?,
        "coco" => synth::write_coco(&a.out, &opts, synth::CocoShape { width: a.width, height: a.height, captions: a.captions }, true)?,
        other => bail!("synth: unknown --layout '{other}' (expected urban1k or coco)"),
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("wrote {} scenes to {} in {secs:.1} s ({:.0} scenes/s)", a.n, crate::term::path(&a.out), a.n as f64 / secs);
    Ok(())
}

/// Where the bundled model lives in the repository.
pub const DEMO_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/longclip-demo.safetensors.gz");
/// The held-out seed: the model was trained on seed 1000 (scripts/train-demo-model.sh).
const HELD_OUT_SEED: u64 = 20261122;
/// Marks a folder `demo` made, so a rerun may replace it.
const MARKER: &str = ".longclip-demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Where the scenes, the index, the probe table and the plot go (replaced on a rerun).
    #[arg(long, default_value = "longclip-demo")]
    out: PathBuf,
    /// Default: the bundled demo model (assets/demo/).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Held-out scenes to generate.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = HELD_OUT_SEED)]
    seed: u64,
}

pub fn demo(a: DemoArgs) -> Result<()> {
    let start = Instant::now();
    let model = a.model.clone().unwrap_or_else(|| PathBuf::from(DEMO_MODEL));
    if !model.exists() {
        bail!("{}: the demo model is missing (it ships in the repository's assets/demo/)", model.display());
    }
    if a.n == 0 {
        bail!("--n must be at least 1 (held-out scenes to generate)");
    }
    prepare_out(&a.out)?;
    let opts = SynthOptions { n: a.n, seed: a.seed, ..SynthOptions::default() };
    let scenes = a.out.join("scenes");
    synth::write_set(&scenes, &opts, false)?;
    println!(
        "1. {} held-out scenes (seed {}) in {}: {} of them in groups of {} that share their top two rows",
        a.n,
        a.seed,
        crate::term::path(&scenes),
        (0..a.n).filter(|&i| synth::in_hard_group(&opts, i)).count(),
        opts.group
    );
    let index = a.out.join("index");
    let (m, s, i) = (model.display().to_string(), scenes.join("image").display().to_string(), index.display().to_string());
    println!("\n2. longclip index build --model {} --images {} --index {} --no-hnsw", crate::term::escape_for_terminal(&m), crate::term::escape_for_terminal(&s), crate::term::escape_for_terminal(&i));
    run_command(&["index", "build", "--model", &m, "--images", &s, "--index", &i, "--no-hnsw"])?;
    println!("\n3. Three long queries (the captions of three held-out scenes), top 3 at 248 and at 77 tokens:");
    let positions = queries(&index, &opts)?;
    let (root, plot, json) = (scenes.display().to_string(), a.out.join("probe.png"), a.out.join("probe.json"));
    let (plot, json) = (plot.display().to_string(), json.display().to_string());
    println!("\n4. longclip probe --model {} --dataset urban1k --root {} --plot {} --no-cache", crate::term::escape_for_terminal(&m), crate::term::escape_for_terminal(&root), crate::term::escape_for_terminal(&plot));
    run_command(&[
        "probe", "--model", &m, "--dataset", "urban1k", "--root", &root, "--lengths", "10,20,40,60,77,90,100,110,120,248",
        "--plot", &plot, "--json", &json, "--no-cache",
    ])?;
    headline(Path::new(&json), a.n, start.elapsed().as_secs_f64(), positions)
}

/// An empty or missing folder, or one an earlier demo made (then replaced).
fn prepare_out(out: &Path) -> Result<()> {
    if out.join(MARKER).exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}: cannot replace the earlier demo", out.display()))?;
    } else if out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!("{}: not empty and not made by `longclip demo`; give another --out", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    std::fs::write(out.join(MARKER), "made by longclip demo; replaced by the next run\n")?;
    Ok(())
}

/// Runs another longclip command as if typed.
fn run_command(args: &[&str]) -> Result<()> {
    let cli = super::Cli::try_parse_from(std::iter::once("longclip").chain(args.iter().copied()))?;
    super::run(cli)
}

/// Three hard-group scenes spread over the set.
fn query_scenes(opts: &SynthOptions) -> Vec<usize> {
    (0..3)
        .filter_map(|k| (k * opts.n / 3..opts.n).find(|&i| synth::in_hard_group(opts, i) && i % opts.group == opts.group - 1))
        .collect()
}

/// Prints the three queries and their hits; returns the model's text positions.
fn queries(index_dir: &Path, opts: &SynthOptions) -> Result<usize> {
    let index = Index::open(index_dir)?;
    let encoder = QueryEncoder::for_index(&index, None, "cpu")?;
    let positions = encoder.model.text.context_length();
    let search_opts = search::Options { k: 3, exact: true, ef: None };
    for target in query_scenes(opts) {
        let caption = synth::scene(opts, target).long_caption();
        println!("\n  query (scene {target}): \"{}\"", mark_cut(&caption, 77)?);
        for ctx in [248, 77] {
            let vector = embed_query(&encoder, &caption, ctx)?;
            let hits = search::search(&index, &[vector], &search_opts)?.remove(0);
            println!("  read to {} tokens:", ctx.min(positions));
            for h in hits {
                println!("    {}  {:.4}  {}{}", h.rank, h.score, crate::term::escape_for_terminal(&h.path), hit_note(&h.path, target, opts));
            }
        }
    }
    Ok(positions)
}

/// The caption with " [77] " where a 77-token model stops reading.
fn mark_cut(caption: &str, ctx: usize) -> Result<String> {
    let words: Vec<&str> = caption.split(' ').collect();
    let tok = Tokenizer::global();
    // SOT and EOT take two of the 77 positions.
    let fits = |n: usize| -> Result<bool> { Ok(tok.encode(&words[..n].join(" "), 1000)?.ids.len() <= ctx) };
    let mut n = 0;
    while n < words.len() && fits(n + 1)? {
        n += 1;
    }
    if n == words.len() {
        return Ok(caption.to_string());
    }
    Ok(format!("{} [{ctx} tokens: a CLIP stops here] {}", words[..n].join(" "), words[n..].join(" ")))
}

/// The query cut at `ctx` tokens, or at the model's positions if fewer.
fn embed_query(encoder: &QueryEncoder, text: &str, ctx: usize) -> Result<Vec<f32>> {
    let ids = Tokenizer::global().encode(text, ctx.min(encoder.model.text.context_length()))?.ids;
    let features = l2_normalize(&encoder.model.text.encode(&[ids])?.to_dtype(DType::F32)?)?;
    Ok(features.flatten_all()?.to_vec1::<f32>()?)
}

fn hit_note(path: &str, target: usize, opts: &SynthOptions) -> &'static str {
    let stem = Path::new(path).file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<usize>().ok());
    match stem {
        Some(i) if i == target => "   <- the scene described",
        Some(i) if i / opts.group == target / opts.group => "   (same top rows, other bottom row)",
        _ => "",
    }
}

/// `positions`: the model's text positions (what "reading 248 tokens" can read).
fn headline(json: &Path, n: usize, seconds: f64, positions: usize) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("{}: cannot read", json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", json.display()))?;
    let get = |len: u64, key: &str| -> Result<f64> {
        let rows = v["rows"].as_array().context("probe JSON without rows")?;
        let row = rows.iter().find(|r| r["length"] == len).with_context(|| format!("probe JSON without length {len}"))?;
        row[key].as_f64().with_context(|| format!("probe JSON without {key}"))
    };
    let r1 = |len: u64| get(len, "t2i_r1");
    println!(
        "\nT2I R@1 on {n} held-out scenes: {:.1}% reading {} tokens, {:.1}% cut at 77 (a perfect 77-token reader: {:.1}%), \
         {:.1}% cut at 20 (chance {:.1}%). demo finished in {seconds:.0} s",
        r1(248)?,
        positions.min(248),
        r1(77)?,
        get(77, "ceiling_t2i_r1")?,
        r1(20)?,
        100.0 / n as f64
    );
    Ok(())
}
