//! `longclip inference`: flags shaped after clip-retrieval's `inference`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use super::index::count;
use crate::inference::{self, InferenceOptions, InputFormat, PartitionReport};
use crate::model::{self, LongClip};
use crate::{checkpoint, search};

#[derive(Args)]
pub struct InferenceArgs {
    /// A folder of images, a file listing image paths, or (webdataset) tar
    /// shards with brace ranges, e.g. 'DS/{00000..00099}.tar' (quote it).
    #[arg(long)]
    input: String,
    /// files: images with KEY.txt / KEY.json beside them; webdataset: tar
    /// shards whose members are grouped by key (img2dataset's output).
    #[arg(long, default_value = "files")]
    input_format: String,
    /// Where img_emb/, text_emb/, metadata/ and stats/ go (clip-retrieval's layout).
    #[arg(long)]
    output_folder: PathBuf,
    /// Also embed each sample's .txt caption into text_emb/ (samples without one are skipped).
    #[arg(long)]
    enable_text: bool,
    /// Flatten each sample's .json object into metadata columns (samples without one are skipped).
    #[arg(long)]
    enable_metadata: bool,
    /// Run only partition I (0-based); without it every partition runs in turn.
    #[arg(long)]
    partition: Option<usize>,
    /// Split the inputs (files, or shards) into N partitions: input n goes to partition n % N.
    #[arg(long, default_value_t = 1)]
    partition_count: usize,
    /// A Long-CLIP checkpoint in any format `longclip info` reads.
    #[arg(long)]
    model: PathBuf,
    /// Images per encoder call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// What the encoders compute in: f32 (exact, the default), f16, bf16,
    /// or int8 (CPU only; for large libraries: rankings can move, docs/cpu.md).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// No progress bars (the summary lines stay).
    #[arg(long)]
    no_progress: bool,
}

pub fn run(a: InferenceArgs) -> Result<()> {
    let start = Instant::now();
    let (device, precision) = model::device_and_precision(&a.device, &a.dtype)?;
    let ckpt = checkpoint::load(&a.model)?;
    let info = search::model_info(&ckpt, &a.model)?;
    let model = LongClip::new(&ckpt, &device, precision)?;
    drop(ckpt);
    let opts = InferenceOptions {
        input: a.input,
        input_format: InputFormat::parse(&a.input_format)?,
        output_folder: a.output_folder,
        enable_text: a.enable_text,
        enable_metadata: a.enable_metadata,
        partition: a.partition,
        partition_count: a.partition_count,
        batch_size: a.batch_size.max(1),
        progress: !a.no_progress,
        device_name: a.device.clone(),
    };
    let reports = inference::run(&model, &device, &info, &opts, |r| eprintln!("{}, {}", partition_line(r, opts.partition_count), model.precision))?;
    if reports.len() > 1 {
        let done: Vec<&PartitionReport> = reports.iter().filter(|r| !r.already_done).collect();
        let images: usize = done.iter().map(|r| r.stats.sample_count).sum();
        let skipped: usize = done.iter().map(|r| r.stats.skipped_count).sum();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "inference: {} partitions ({} already done), {} in {secs:.2} s ({:.1} images/s, {}), {skipped} skipped -> {}",
            reports.len(),
            reports.len() - done.len(),
            count(images, "image"),
            images as f64 / secs.max(1e-9),
            model.precision,
            crate::term::path(&opts.output_folder)
        );
    }
    Ok(())
}

fn partition_line(r: &PartitionReport, partitions: usize) -> String {
    let s = &r.stats;
    if r.already_done {
        return format!("partition {}/{partitions}: already done ({}), skipped", r.partition, count(s.sample_count, "image"));
    }
    let texts = if s.text_count > 0 { format!(" + {}", count(s.text_count, "caption")) } else { String::new() };
    let mut line = format!(
        "partition {}/{partitions}: {}{texts} in {:.2} s ({:.1} images/s), {} skipped",
        r.partition, count(s.sample_count, "image"), s.total_duration, s.images_per_second, s.skipped_count
    );
    if !s.skipped.is_empty() {
        let why: Vec<String> = s.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line.push_str(&format!(" ({}; see stats/{}.json)", why.join(", "), r.partition));
    }
    if !s.shard_errors.is_empty() {
        line.push_str(&format!(", {} unreadable in part or whole", count(s.shard_errors.len(), "shard")));
    }
    if s.truncated_captions > 0 {
        line.push_str(&format!(", {} captions cut to the model's positions", s.truncated_captions));
    }
    line
}
