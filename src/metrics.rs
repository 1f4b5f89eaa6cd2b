//! Retrieval recall (R@K) and classification accuracy, small and exact.
//!
//! Every query scores the whole gallery; a query is a hit at K when one of
//! its correct items is among the first K of the gallery ranked by score.
//!
//! Tie rule: the gallery is ordered by score, highest first, and equal scores
//! by gallery index, lowest first (a stable sort by index). With several
//! correct items the best one counts. So the rank of a query is the number of
//! gallery items that come before its best correct item in that order, and a
//! hit at K means rank < K. K larger than the gallery is always a hit.
//!
//! Scores are the f32 dot products of L2-normalized features, as the official
//! scripts compute them (`image_features @ text_features.T`).

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

/// The K of every table: R@1, R@5, R@10.
pub const KS: [usize; 3] = [1, 5, 10];

/// How many query rows are scored at once: a block of the similarity matrix
/// stays under about 256 MB however large the gallery.
const BLOCK_ELEMENTS: usize = 64 << 20;

/// Where `a` comes before `b` in the ranking: higher score, then lower index.
fn before(scores: &[f32], a: usize, b: usize) -> bool {
    scores[a] > scores[b] || (scores[a] == scores[b] && a < b)
}

/// The rank (0 = first) of the best of `positives` among all `scores`.
pub fn best_rank(scores: &[f32], positives: &[usize]) -> usize {
    let Some(&first) = positives.first() else {
        return usize::MAX;
    };
    let best = positives.iter().copied().fold(first, |best, p| if before(scores, p, best) { p } else { best });
    (0..scores.len()).filter(|&j| before(scores, j, best)).count()
}

/// The best and worst rank the best of `positives` can have under any order
/// of exactly tied scores: items scoring higher always come first, items
/// scoring the same may come before or after.
pub fn rank_bounds(scores: &[f32], positives: &[usize]) -> (usize, usize) {
    let Some(top) = positives.iter().map(|&p| scores[p]).reduce(f32::max) else {
        return (usize::MAX, usize::MAX);
    };
    let higher = scores.iter().filter(|&&s| s > top).count();
    let tied_others = (0..scores.len()).filter(|j| scores[*j] == top && !positives.contains(j)).count();
    (higher, higher + tied_others)
}

/// Percent of ranks below `k` (0 when there are no queries).
pub fn recall_at(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    let hits = ranks.iter().filter(|&&r| r < k).count();
    100.0 * hits as f64 / ranks.len() as f64
}

/// R@1/5/10 in both directions, in percent (0-100).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RetrievalScores {
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
}

impl RetrievalScores {
    /// (name, value) in table order: T2I then I2T, K ascending.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("t2i_r1", self.t2i_r1),
            ("t2i_r5", self.t2i_r5),
            ("t2i_r10", self.t2i_r10),
            ("i2t_r1", self.i2t_r1),
            ("i2t_r5", self.i2t_r5),
            ("i2t_r10", self.i2t_r10),
        ]
    }
}

/// The rank of every query in both directions.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranks {
    /// Per text: rank of its image among all images.
    pub t2i: Vec<usize>,
    /// Per image: rank of its best caption among all texts.
    pub i2t: Vec<usize>,
    /// `rank_bounds` of every query: what another tie order could give.
    pub t2i_bounds: Vec<(usize, usize)>,
    pub i2t_bounds: Vec<(usize, usize)>,
}

impl Ranks {
    /// The lowest and highest R@K any order of exact ties could give, when
    /// ties change anything (identical captions, duplicate images).
    pub fn tie_range(&self) -> Option<(RetrievalScores, RetrievalScores)> {
        let pick = |b: &[(usize, usize)], worst: bool| -> Vec<usize> { b.iter().map(|&(lo, hi)| if worst { hi } else { lo }).collect() };
        let at = |worst: bool| Ranks {
            t2i: pick(&self.t2i_bounds, worst),
            i2t: pick(&self.i2t_bounds, worst),
            t2i_bounds: vec![],
            i2t_bounds: vec![],
        }
        .scores();
        let (low, high) = (at(true), at(false));
        (low != high).then_some((low, high))
    }

    pub fn scores(&self) -> RetrievalScores {
        RetrievalScores {
            t2i_r1: recall_at(&self.t2i, 1),
            t2i_r5: recall_at(&self.t2i, 5),
            t2i_r10: recall_at(&self.t2i, 10),
            i2t_r1: recall_at(&self.i2t, 1),
            i2t_r5: recall_at(&self.i2t, 5),
            i2t_r10: recall_at(&self.i2t, 10),
        }
    }
}

/// For each image, the indices of its texts; every image needs at least one.
pub fn texts_per_image(text_image: &[usize], n_images: usize) -> Result<Vec<Vec<usize>>> {
    let mut out = vec![Vec::new(); n_images];
    for (t, &i) in text_image.iter().enumerate() {
        ensure!(i < n_images, "text {t} belongs to image {i}, but there are only {n_images} images");
        out[i].push(t);
    }
    if let Some(i) = out.iter().position(Vec::is_empty) {
        bail!("image {i} has no text: every image needs at least one caption");
    }
    Ok(out)
}

/// Ranks of a retrieval set: `images` [I, D] and `texts` [T, D] are
/// L2-normalized features, `text_image[t]` is the image of text `t`.
pub fn retrieval_ranks(images: &Tensor, texts: &Tensor, text_image: &[usize]) -> Result<Ranks> {
    let n_images = images.dim(0)?;
    ensure!(texts.dim(0)? == text_image.len(), "{} text features for {} texts", texts.dim(0)?, text_image.len());
    let positives = texts_per_image(text_image, n_images)?;
    check_finite(images, "image")?;
    check_finite(texts, "text")?;
    let (t2i, t2i_bounds) = ranks_by_block(texts, images, |t| std::slice::from_ref(&text_image[t]))?.into_iter().unzip();
    let (i2t, i2t_bounds) = ranks_by_block(images, texts, |i| positives[i].as_slice())?.into_iter().unzip();
    Ok(Ranks { t2i, i2t, t2i_bounds, i2t_bounds })
}

/// Rank and tie bounds of every query row against the gallery, a block of
/// rows at a time.
pub fn ranks_by_block<'a>(
    queries: &Tensor,
    gallery: &Tensor,
    positives: impl Fn(usize) -> &'a [usize],
) -> Result<Vec<(usize, (usize, usize))>> {
    let block = BLOCK_ELEMENTS / gallery.dim(0)?.max(1);
    ranks_in_blocks(queries, gallery, positives, block)
}

fn ranks_in_blocks<'a>(
    queries: &Tensor,
    gallery: &Tensor,
    positives: impl Fn(usize) -> &'a [usize],
    block: usize,
) -> Result<Vec<(usize, (usize, usize))>> {
    let n = queries.dim(0)?;
    let gallery_t = gallery.to_dtype(DType::F32)?.t()?.contiguous()?;
    let block = block.clamp(1, n.max(1));
    let mut ranks = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let q = queries.narrow(0, start, len)?.to_dtype(DType::F32)?;
        let sims = q.matmul(&gallery_t)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        for (r, row) in sims.iter().enumerate() {
            let p = positives(start + r);
            ranks.push((best_rank(row, p), rank_bounds(row, p)));
        }
        start += len;
    }
    Ok(ranks)
}

/// Refuses NaN or infinite features: they would make every rank meaningless.
pub fn check_finite(features: &Tensor, what: &str) -> Result<()> {
    let bad = features.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().position(|v| !v.is_finite());
    if let Some(pos) = bad {
        let dim = features.dim(1).unwrap_or(1).max(1);
        bail!("{what} feature row {} is not finite (NaN or infinity): the model output is broken", pos / dim);
    }
    Ok(())
}

/// Top-1 and top-5 accuracy, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
}

/// Zero-shot classification: `images` [N, D] against `classes` [C, D], both
/// normalized; the same tie rule as retrieval (lower class index first).
pub fn classification_ranks(images: &Tensor, classes: &Tensor, labels: &[usize]) -> Result<Vec<usize>> {
    ensure!(images.dim(0)? == labels.len(), "{} image features for {} labels", images.dim(0)?, labels.len());
    let n_classes = classes.dim(0)?;
    if let Some(l) = labels.iter().find(|&&l| l >= n_classes) {
        bail!("label {l} out of range: there are {n_classes} classes");
    }
    check_finite(images, "image")?;
    check_finite(classes, "class")?;
    Ok(ranks_by_block(images, classes, |i| std::slice::from_ref(&labels[i]))?.into_iter().map(|r| r.0).collect())
}

pub fn accuracy(ranks: &[usize]) -> Accuracy {
    Accuracy { top1: recall_at(ranks, 1), top5: recall_at(ranks, 5) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let d = rows[0].len();
        Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu).unwrap()
    }

    #[test]
    fn rank_counts_higher_scores_and_earlier_ties() {
        // Ranked order: 1 (0.9), then 0 and 3 tied at 0.5 (0 first), then 2.
        let s = [0.5, 0.9, 0.1, 0.5];
        assert_eq!(best_rank(&s, &[1]), 0);
        assert_eq!(best_rank(&s, &[0]), 1);
        assert_eq!(best_rank(&s, &[3]), 2);
        assert_eq!(best_rank(&s, &[2]), 3);
        // Several correct items: the best one counts, whatever their order.
        assert_eq!(best_rank(&s, &[2, 3]), 2);
        assert_eq!(best_rank(&s, &[3, 0]), 1);
        assert_eq!(best_rank(&s, &[]), usize::MAX);
    }

    #[test]
    fn tie_bounds_span_every_order_of_equal_scores() {
        let s = [0.5, 0.9, 0.1, 0.5, 0.5];
        assert_eq!(rank_bounds(&s, &[1]), (0, 0));
        assert_eq!(rank_bounds(&s, &[3]), (1, 3));
        // Positives tied with each other do not count against each other.
        assert_eq!(rank_bounds(&s, &[3, 4]), (1, 2));
        assert_eq!(rank_bounds(&s, &[2]), (4, 4));
    }

    #[test]
    fn tie_range_appears_only_when_ties_matter() {
        let images = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let distinct = retrieval_ranks(&images, &t(&[&[1.0, 0.0], &[0.0, 1.0]]), &[0, 1]).unwrap();
        assert_eq!(distinct.tie_range(), None);
        // Two identical captions for two images: each image ties its two texts.
        let same = retrieval_ranks(&images, &t(&[&[0.6, 0.8], &[0.6, 0.8]]), &[0, 1]).unwrap();
        assert_eq!(same.i2t, vec![0, 1]);
        let (low, high) = same.tie_range().unwrap();
        assert_eq!((low.i2t_r1, high.i2t_r1), (0.0, 100.0));
        assert_eq!(same.scores().i2t_r1, 50.0);
    }

    #[test]
    fn all_equal_scores_rank_by_index() {
        let s = [0.0f32; 6];
        let ranks: Vec<usize> = (0..6).map(|i| best_rank(&s, &[i])).collect();
        assert_eq!(ranks, [0, 1, 2, 3, 4, 5]);
        assert!((recall_at(&ranks, 1) - 100.0 / 6.0).abs() < 1e-12);
        assert!((recall_at(&ranks, 5) - 500.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn k_larger_than_the_gallery_is_always_a_hit() {
        let ranks = [0, 1, 2];
        assert_eq!(recall_at(&ranks, 10), 100.0);
        assert_eq!(recall_at(&ranks, 2), 200.0 / 3.0);
        assert_eq!(recall_at(&[], 1), 0.0);
    }

    #[test]
    fn hand_computed_retrieval_with_several_captions_per_image() {
        // Unit vectors at angles: image i at 0, 90, 180 degrees.
        let images = t(&[&[1.0, 0.0], &[0.0, 1.0], &[-1.0, 0.0]]);
        // Texts 0,1 -> image 0; 2 -> image 1; 3,4 -> image 2.
        let texts = t(&[
            &[1.0, 0.0],   // best image 0
            &[0.0, -1.0],  // ties: images 0 and 2 at 0 -> image 0 first; image 1 last
            &[0.6, 0.8],   // image 1 (0.8) then image 0 (0.6)
            &[0.0, 1.0],   // image 1 first, then images 0 and 2 tied at 0
            &[-0.8, -0.6], // image 2 (0.8), then image 1 (-0.6), then image 0 (-0.8)
        ]);
        let ranks = retrieval_ranks(&images, &texts, &[0, 0, 1, 2, 2]).unwrap();
        // T2I: text 0 -> 0; text 1 -> image 0 rank 0 (tie with 2, lower index);
        // text 2 -> image 1 rank 0; text 3 -> image 2: after 1 and 0 -> 2; text 4 -> 0.
        assert_eq!(ranks.t2i, vec![0, 0, 0, 2, 0]);
        // I2T: image 0 scores texts [1, 0, .6, 0, -.8] -> its texts 0,1: text 0 rank 0.
        // image 1 scores [0, -1, .8, 1, -.6] -> text 2 after text 3 -> 1.
        // image 2 scores [-1, 0, -.6, 0, .8] -> text 4 first -> 0.
        assert_eq!(ranks.i2t, vec![0, 1, 0]);
        let s = ranks.scores();
        assert_eq!(s.t2i_r1, 80.0);
        assert_eq!(s.t2i_r5, 100.0);
        assert!((s.i2t_r1 - 200.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.i2t_r10, 100.0);
    }

    #[test]
    fn blocks_give_the_same_ranks_as_one_pass() {
        let g = t(&[&[1.0, 0.0], &[0.8, 0.6], &[0.0, 1.0]]);
        let q = t(&[&[0.0, 1.0], &[1.0, 0.0], &[0.6, 0.8], &[-1.0, 0.0]]);
        let pos = [[2usize], [0], [1], [1]];
        // q3 scores [-1, -0.8, 0] -> image 1 after image 2 -> 1.
        for block in [1, 3, 4, 100] {
            let ranks: Vec<usize> = ranks_in_blocks(&q, &g, |i| &pos[i][..], block).unwrap().into_iter().map(|r| r.0).collect();
            assert_eq!(ranks, vec![0, 0, 0, 1], "block {block}");
        }
    }

    #[test]
    fn images_without_texts_and_nan_features_are_refused() {
        let images = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let texts = t(&[&[1.0, 0.0]]);
        let err = retrieval_ranks(&images, &texts, &[0]).unwrap_err().to_string();
        assert!(err.contains("image 1 has no text"), "{err}");
        let nan = t(&[&[f32::NAN, 0.0]]);
        let err = retrieval_ranks(&t(&[&[1.0, 0.0]]), &nan, &[0]).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }

    #[test]
    fn classification_top1_top5_with_ties() {
        // 6 classes along a circle; image features pick classes.
        let classes = t(&[&[1.0, 0.0], &[0.0, 1.0], &[-1.0, 0.0], &[0.0, -1.0], &[1.0, 0.0], &[0.6, 0.8]]);
        let images = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        // Image 0: classes 0 and 4 tie at 1 -> class 4 is second; image 1: class 1 first.
        let ranks = classification_ranks(&images, &classes, &[4, 3]).unwrap();
        // Image 1 scores [0, 1, 0, -1, 0, .8] -> class 3 is last (rank 5).
        assert_eq!(ranks, vec![1, 5]);
        let a = accuracy(&ranks);
        assert_eq!(a.top1, 0.0);
        assert_eq!(a.top5, 50.0);
        assert!(classification_ranks(&images, &classes, &[6, 0]).is_err());
    }
}
