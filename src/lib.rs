//! longclip: Long-CLIP in Rust.
//!
//! Data flows one way: files -> tensors -> embeddings.
//! [`tokenizer`] and [`preprocess`] turn texts and images into model inputs,
//! [`checkpoint`] reads weights in any supported format, [`model`] runs the
//! encoders, [`embed`] batches whole inputs through them, [`stretch`] and
//! [`export`] make and write new checkpoints, and [`cli`] is the command line.

pub mod checkpoint;
pub mod cli;
pub mod embed;
pub mod export;
pub mod index;
pub mod model;
pub mod preprocess;
pub mod search;
pub mod serve;
pub mod stretch;
pub mod tokenizer;
