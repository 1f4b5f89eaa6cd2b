//! longclip: Long-CLIP in Rust.
//!
//! Data flows one way: files -> tensors -> embeddings -> index -> results.
//! [`tokenizer`] and [`preprocess`] turn texts and images into model inputs,
//! [`checkpoint`] reads weights in any supported format, [`model`] runs the
//! encoders, [`embed`] batches whole inputs through them, [`stretch`] and
//! [`export`] make and write new checkpoints, and [`cli`] is the command line.
//! Evaluation: [`datasets`] reads benchmark layouts, [`evaluate`] embeds them
//! (with [`cache`]) and scores them with [`metrics`], [`reference`] holds the
//! published numbers and [`plot`] draws the length probe. Search: [`index`]
//! stores embeddings (exact and HNSW), [`search`] queries them and [`serve`]
//! is the HTTP API and page. Scale-out: [`inference`] writes
//! clip-retrieval's layout (embeddings as `.npy`, metadata as parquet via
//! [`table`]) from files or webdataset shards, one partition at a time.
//! Fine-tuning: [`pcm`] is the loss (with
//! [`linalg`] for its PCA) and [`finetune`] the training. [`synth`] generates
//! the synthetic long-caption scenes of `longclip demo`. [`term`] escapes
//! control characters in names and captions bound for a terminal.

pub mod cache;
pub mod checkpoint;
pub mod cli;
pub mod datasets;
pub mod embed;
pub mod evaluate;
pub mod export;
pub mod family;
pub mod finetune;
pub mod jpeg;
pub mod kernels;
pub mod linalg;
pub mod index;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod parity;
pub mod pcm;
pub mod plot;
pub mod preprocess;
pub mod reference;
pub mod rng;
pub mod search;
pub mod serve;
pub mod stretch;
pub mod synth;
pub mod table;
pub mod term;
pub mod tokenizer;
