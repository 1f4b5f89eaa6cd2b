//! Issue 11: the index as immutable segments. Duplicates, exact search over
//! many segments with deletions, `add`/`remove` leaving segment files alone,
//! tiered merges, shard builds + `index merge`, `search --vectors`, crash
//! points at every step, format-1 upgrade, readers during merges, a full
//! disk during a merge, and the writer lock.
//!
//! Most tests import small generated vectors (no model); the tiny random
//! model is used only where images are essential.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use longclip::index::{plan_merge, Dtype, Index, MergePolicy, SegmentMeta};
use longclip::search::{self, Options};

// ---------------------------------------------------------------------------
// Helpers

fn model() -> PathBuf {
    fixture("tiny-longclip.pt")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_longclip")
}

/// Runs `longclip` with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

/// `n` PNG images `img{seed}.png` directly in `dir`, sorted.
fn make_images(dir: &Path, n: u32, first_seed: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let seed = first_seed + i;
        let path = dir.join(format!("img{seed:04}.png"));
        picture(seed, 32 + (i % 3) * 8).save_with_format(&path, image::ImageFormat::Png).unwrap();
        out.push(path);
    }
    out.sort();
    out
}

/// Writes `data` ([n, d]) and `n` ids (`{prefix}{i}.jpg`) next to `index`
/// and runs `index import` with `extra` arguments.
fn import(index: &Path, data: &[f32], d: usize, prefix: &str, extra: &[&str]) -> Output {
    let n = data.len() / d;
    let parent = index.parent().unwrap();
    let tag = format!("{}-{prefix}", index.file_name().unwrap().to_string_lossy());
    let npy = parent.join(format!("{tag}.npy"));
    let ids = parent.join(format!("{tag}.txt"));
    write_npy_f32(&npy, data, n, d);
    std::fs::write(&ids, (0..n).map(|i| format!("{prefix}{i}.jpg\n")).collect::<String>()).unwrap();
    let mut args = vec!["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(index)];
    args.extend_from_slice(extra);
    ok(&args)
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

/// Brute force in f64 over the live stored rows: (id, score), best first,
/// equal scores by lower id.
fn brute_force(index: &Index, query: &[f32]) -> Vec<(u64, f64)> {
    let mut all: Vec<(u64, f64)> = index.live_rows().map(|r| (index.id(r), index.row_vec(r).iter().zip(query).map(|(a, b)| *a as f64 * *b as f64).sum())).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

/// `got` ((id, score) best first) must be the top of the brute-force
/// ranking: scores within 1e-5 at every rank, ids equal except where two
/// scores tie to rounding (then ordered by id).
fn assert_ranking(got: &[(u64, f64)], want: &[(u64, f64)], k: usize, what: &str) {
    assert_eq!(got.len(), k.min(want.len()), "{what}: result count");
    for (i, ((id, score), (want_id, want_score))) in got.iter().zip(want).enumerate() {
        assert!((score - want_score).abs() < 1e-5, "{what}: rank {i}: score {score} vs brute force {want_score}");
        if id != want_id {
            let theirs = want.iter().find(|(x, _)| x == id).map(|(_, s)| *s).unwrap_or(f64::NAN);
            assert!((theirs - want_score).abs() < 1e-6, "{what}: rank {i}: id {id} (score {theirs}) vs brute force {want_id} ({want_score})");
        }
    }
    // Equal scores are ordered by id.
    for w in got.windows(2) {
        if w[0].1 == w[1].1 {
            assert!(w[0].0 < w[1].0, "{what}: equal scores out of id order: {w:?}");
        }
    }
}

fn hits_of(v: &[serde_json::Value]) -> Vec<(u64, f64)> {
    v.iter().map(|h| (h["id"].as_u64().unwrap(), h["score"].as_f64().unwrap())).collect()
}

fn ids_of(index: &Index) -> BTreeSet<u64> {
    index.live_rows().map(|r| index.id(r)).collect()
}

/// (inode, length, mtime in ns, bytes) of a file.
type Stamp = (u64, u64, i128, Vec<u8>);

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128, std::fs::read(path).unwrap())
}

/// Every file in every segment folder.
fn snapshot_segments(index: &Path) -> BTreeMap<PathBuf, Stamp> {
    let mut out = BTreeMap::new();
    for seg in std::fs::read_dir(index.join("segments")).unwrap() {
        for f in std::fs::read_dir(seg.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            out.insert(p.clone(), stamp(&p));
        }
    }
    out
}

fn assert_unchanged(before: &BTreeMap<PathBuf, Stamp>, what: &str) {
    for (path, old) in before {
        assert!(path.exists(), "{what}: {} was deleted", path.display());
        let new = stamp(path);
        assert_eq!((new.0, new.1, new.2), (old.0, old.1, old.2), "{what}: {} changed (inode, len, mtime)", path.display());
        assert!(new.3 == old.3, "{what}: {} changed content", path.display());
    }
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(l) => l.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Nothing the committed manifest does not name: segment folders, files in
/// them, bitmaps, skipped lists, temporaries, staging.
fn assert_no_garbage(index: &Path) {
    let m = longclip::index::read_manifest(index).unwrap();
    let live: BTreeSet<String> = m.segments.iter().map(|s| s.name.clone()).collect();
    assert_eq!(dir_names(&index.join("segments")), live, "segment folders vs manifest");
    for seg in &m.segments {
        let mut want: BTreeSet<String> = seg.sizes.keys().cloned().collect();
        want.extend(seg.deletes.clone());
        assert_eq!(dir_names(&index.join("segments").join(&seg.name)), want, "files of segment {}", seg.name);
    }
    let mut top: BTreeSet<String> = ["manifest.json", "lock", "segments"].iter().map(|s| s.to_string()).collect();
    if !m.skipped.is_empty() {
        top.insert(m.skipped.clone());
    }
    let got: BTreeSet<String> = dir_names(index);
    let extra: Vec<&String> = got.difference(&top).collect();
    assert!(extra.is_empty(), "unreferenced files in {}: {extra:?}", index.display());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn have_bash() -> bool {
    Command::new("bash").arg("-c").arg("true").status().map(|s| s.success()).unwrap_or(false)
}

// ---------------------------------------------------------------------------
// 1. Duplicates

/// Five distinct 16-d vectors, each 100 times (copy c of vector v is row
/// c * 5 + v), exactly and with tiny noise, imported as f16 and f32 with
/// HNSW graphs: (index, "exact" | "near", dtype).
fn duplicate_indexes(dir: &Path) -> Vec<(PathBuf, &'static str, &'static str)> {
    let d = 16;
    let mut next = noise(5);
    let distinct: Vec<Vec<f32>> = (0..5).map(|_| (0..d).map(|_| next()).collect()).collect();
    let exact: Vec<f32> = (0..100).flat_map(|_| distinct.iter().flatten().copied()).collect();
    let near: Vec<f32> = (0..500).flat_map(|r| distinct[r % 5].iter().map(|x| x + 1e-5 * next()).collect::<Vec<_>>()).collect();
    let mut out = Vec::new();
    for (data, kind) in [(&exact, "exact"), (&near, "near")] {
        for dtype in ["f16", "f32"] {
            let index = dir.join(format!("{kind}-{dtype}"));
            import(&index, data, d, "dup", &["--dtype", dtype]);
            let opened = Index::open(&index).unwrap();
            assert_eq!(opened.len(), 500);
            assert!(opened.segments()[0].meta.hnsw.is_some(), "built with a graph");
            out.push((index, kind, dtype));
        }
    }
    out
}

/// Search `--like v -k 100` must return the 100 copies of vector v; exact
/// copies with one score, ordered by id.
fn assert_all_copies(index: &Path, kind: &str, dtype: &str, how: &[&str]) {
    for v in [0u64, 3] {
        let vs = v.to_string();
        let mut args = vec!["search", "--index", s(index), "--like", &vs, "-k", "100", "--json"];
        args.extend_from_slice(how);
        let hits = search_json(&args);
        let what = format!("{kind} duplicates, {dtype}, {how:?}, vector {v}");
        let want: BTreeSet<u64> = (0..100).map(|c| c * 5 + v).collect();
        let got: BTreeSet<u64> = hits.iter().map(|h| h["id"].as_u64().unwrap()).collect();
        let missing = want.difference(&got).count();
        assert_eq!(missing, 0, "{what}: {missing} of the 100 copies not returned");
        if kind == "exact" {
            let scores: BTreeSet<u64> = hits.iter().map(|h| h["score"].as_f64().unwrap().to_bits()).collect();
            assert_eq!(scores.len(), 1, "{what}: equal scores");
            let ids: Vec<u64> = hits.iter().map(|h| h["id"].as_u64().unwrap()).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{what}: ties by id: {ids:?}");
        }
    }
}

/// hnsw_rs's `DistDot` panicked the graph build on exact duplicates
/// (`assertion failed: dot <= 1.000002`); `UnitDot` never panics.
#[test]
fn duplicate_vectors_import_and_exact_search_returns_all_copies() {
    let dir = tempfile::tempdir().unwrap();
    for (index, kind, dtype) in duplicate_indexes(dir.path()) {
        assert_all_copies(&index, kind, dtype, &["--exact"]);
    }
}

/// With a clamped distance alone the graph search with `--ef 200` returned
/// only ~75 of the 100 identical copies (hnsw_rs links points at distance 0
/// poorly); a segment's graph holds one node per group of bit-identical
/// rows (`duplicates.bin`), and a hit returns the whole group.
#[test]
fn duplicate_vectors_graph_search_returns_all_copies() {
    let dir = tempfile::tempdir().unwrap();
    for (index, kind, dtype) in duplicate_indexes(dir.path()) {
        assert_all_copies(&index, kind, dtype, &["--ef", "200"]);
    }
}

/// Copies of a photo embed to identical vectors (same bytes, same pixels):
/// the build used to panic in `DistDot`.
#[test]
fn a_folder_with_copied_images_builds() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 4, 300);
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::copy(f, images.join(format!("{stem}-copy1.png"))).unwrap();
        std::fs::copy(f, images.join(format!("{stem}-copy2.png"))).unwrap();
    }
    let index = dir.path().join("idx");
    for dtype in ["f16", "f32"] {
        let index = index.with_extension(dtype);
        ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", dtype]);
        let opened = Index::open(&index).unwrap();
        assert_eq!(opened.len(), 12);
        let hits = search_json(&["search", "--index", s(&index), "--like", "0", "-k", "3", "--ef", "50", "--json"]);
        assert_eq!(hits.len(), 3);
        let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
        assert!(scores.iter().all(|x| (x - scores[0]).abs() < 1e-6), "three identical images: {scores:?}");
    }
}

// ---------------------------------------------------------------------------
// 2. Exact search over many segments with deletions; optimize

#[test]
fn exact_search_over_segments_with_deletions_equals_brute_force_and_survives_optimize() {
    let dir = tempfile::tempdir().unwrap();
    let d = 24;
    let index = dir.path().join("idx");
    // Copies of row 3 in several segments (ids 3, 7, 777, 1500, 2000, 2299): equal scores, ordered by id.
    let mut first = clustered(2000, d, 1);
    let mut second = clustered(300, d, 2);
    let copy: Vec<f32> = first[3 * d..4 * d].to_vec();
    for r in [7, 777, 1500] {
        first[r * d..(r + 1) * d].copy_from_slice(&copy);
    }
    for r in [0, 299] {
        second[r * d..(r + 1) * d].copy_from_slice(&copy);
    }
    import(&index, &first, d, "a", &["--segment-rows", "250", "--no-merge", "--no-hnsw"]);
    import(&index, &second, d, "b", &["--append", "--segment-rows", "250", "--no-merge", "--no-hnsw"]);
    let info = info_json(&index);
    assert_eq!(info["segments"].as_array().unwrap().len(), 10, "8 + 2 segments");
    assert_eq!(info["count"], 2300);
    // A random-ish set of ids, across all segments.
    let removed: Vec<u64> = (0..2300u64).filter(|i| (i * 7919) % 13 == 0 || (500..560).contains(i)).collect();
    let list = removed.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    ok(&["index", "remove", "--index", s(&index), "--id", &list]);
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.len(), 2300 - removed.len());
    assert_eq!(opened.live_rows().count(), opened.len());

    // 12 queries: the matrix-product path; 3 queries: the dot path.
    let mut next = noise(99);
    let mut raw: Vec<Vec<f32>> = (0..12).map(|i| if i % 3 == 0 { opened.row_vec(i * 150 + 1) } else { (0..d).map(|_| next()).collect() }).collect();
    raw[1] = copy.clone();
    raw[9] = copy.clone();
    let qnpy = dir.path().join("q.npy");
    write_npy_f32(&qnpy, &raw.concat(), 12, d);
    let queries: Vec<Vec<f32>> = raw.iter().map(|q| normalized(q)).collect();
    let k = 25;

    let check = |index_dir: &Path, what: &str| -> Vec<Vec<(u64, f64)>> {
        let opened = Index::open(index_dir).unwrap();
        let out = dir.path().join(format!("r-{what}.jsonl"));
        ok(&["search", "--index", s(index_dir), "--vectors", s(&qnpy), "--out", s(&out), "-k", &k.to_string(), "--exact"]);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 12);
        let rows = search::search_rows(&opened, &queries, &Options { k, exact: true, ef: None }).unwrap();
        let few = search::exact(&opened, &queries[..3], k);
        let mut all = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let want = brute_force(&opened, q);
            let cli = hits_of(lines[i]["results"].as_array().unwrap());
            assert_ranking(&cli, &want, k, &format!("{what}: --vectors query {i}"));
            let lib: Vec<(u64, f64)> = rows[i].iter().map(|&(r, sc)| (opened.id(r), sc as f64)).collect();
            assert_ranking(&lib, &want, k, &format!("{what}: search_rows query {i}"));
            if i < 3 {
                let lib: Vec<(u64, f64)> = few[i].iter().map(|&(r, sc)| (opened.id(r), sc as f64)).collect();
                assert_ranking(&lib, &want, k, &format!("{what}: exact (3 queries) query {i}"));
            }
            for (id, _) in &cli {
                assert!(!removed.contains(id), "{what}: removed id {id} returned");
            }
            if i == 1 || i == 9 {
                let copies: Vec<u64> = [3u64, 7, 777, 1500, 2000, 2299].into_iter().filter(|id| !removed.contains(id)).collect();
                assert!(copies.len() >= 4);
                let top: Vec<u64> = cli[..copies.len()].iter().map(|h| h.0).collect();
                assert_eq!(top, copies, "{what}: equal scores across segments ordered by id (query {i}: {:?})", &cli[..copies.len()]);
                let lib: Vec<u64> = rows[i][..copies.len()].iter().map(|&(r, _)| opened.id(r)).collect();
                assert_eq!(lib, copies, "{what}: search_rows ties by id");
            }
            all.push(cli);
        }
        all
    };
    let before = check(&index, "10 segments");
    ok(&["index", "optimize", "--index", s(&index), "--max-segments", "1"]);
    let after = check(&index, "optimized");
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a.iter().map(|h| h.0).collect::<Vec<_>>(), b.iter().map(|h| h.0).collect::<Vec<_>>(), "same ids after optimize");
        for (x, y) in a.iter().zip(b) {
            assert!((x.1 - y.1).abs() < 1e-6, "same scores after optimize: {} vs {}", x.1, y.1);
        }
    }
    let info = info_json(&index);
    let segs = info["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(segs[0]["deleted"], 0);
    assert_eq!(segs[0]["rows"], info["count"]);
    assert_eq!(info["count"].as_u64().unwrap() as usize, 2300 - removed.len());
    assert_no_garbage(&index);
}

// ---------------------------------------------------------------------------
// 3. `index add` touches no existing segment file

#[test]
fn add_writes_a_new_segment_and_leaves_old_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 5, 10);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", "f32"]);
    let before = snapshot_segments(&index);
    let old = Index::open(&index).unwrap();
    let old_names: Vec<String> = old.manifest.segments.iter().map(|s| s.name.clone()).collect();
    assert_eq!(old_names.len(), 1);

    make_images(&images, 3, 50);
    ok(&["index", "add", "--index", s(&index)]);
    assert_unchanged(&before, "add of new files");
    let info = info_json(&index);
    let segs = info["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 2, "one new segment: {segs:?}");
    assert_eq!(segs[0]["name"], old_names[0].as_str());
    assert_eq!((segs[0]["rows"].as_u64(), segs[0]["deleted"].as_u64()), (Some(5), Some(0)));
    assert_eq!((segs[1]["rows"].as_u64(), segs[1]["deleted"].as_u64()), (Some(3), Some(0)));
    assert_eq!(segs[1]["dtype"], "f32");
    assert_eq!(segs[1]["hnsw"], true);
    assert_eq!(info["count"], 8);

    // A changed file (new size): its old row is deleted by bitmap, the new one is in a new segment.
    let before = snapshot_segments(&index);
    let mid = Index::open(&index).unwrap();
    let key = files[2].file_name().unwrap().to_string_lossy().into_owned();
    let old_id = mid.live_entries().unwrap().into_iter().find(|(_, e)| e.path == key).unwrap_or_else(|| panic!("{key} not in the index")).1.id;
    picture(999, 72).save_with_format(&files[2], image::ImageFormat::Png).unwrap();
    ok(&["index", "add", "--index", s(&index)]);
    assert_unchanged(&before, "add of a changed file");
    let after = Index::open(&index).unwrap();
    assert_eq!(after.len(), 8);
    let segs = &after.manifest.segments;
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert_eq!(segs[0].deleted, 1, "the old row is marked in a bitmap");
    let bitmap = segs[0].deletes.clone().expect("a bitmap in force");
    assert!(index.join("segments").join(&segs[0].name).join(&bitmap).exists());
    assert_eq!((segs[2].rows, segs[2].deleted), (1, 0));
    assert!(after.row_of_id(old_id).is_none(), "the old entry is gone");
    let entries: Vec<_> = after.live_entries().unwrap().into_iter().filter(|(_, e)| e.path == key).collect();
    assert_eq!(entries.len(), 1, "the changed file once");
    let (row, e) = &entries[0];
    assert!(e.id > old_id);
    assert_eq!(after.locate(*row).0, 2, "in the new segment");
    assert_no_garbage(&index);
}

// ---------------------------------------------------------------------------
// 4. `index remove` writes deletion bitmaps only

#[test]
fn remove_writes_bitmaps_only_and_removed_ids_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let index = dir.path().join("idx");
    import(&index, &clustered(300, d, 4), d, "r", &["--segment-rows", "100", "--no-merge", "--dtype", "f32"]);
    let before = snapshot_segments(&index);
    let removed = [0u64, 5, 99, 100, 150, 151, 299];
    let out = ok(&["index", "remove", "--index", s(&index), "--id", "0,5,99", "--id", "100", "--id", "150,151,299", "--id", "4242"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("id 4242") && stderr.contains("not in the index"), "{stderr}");
    assert_unchanged(&before, "remove");
    let after = snapshot_segments(&index);
    let new: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert_eq!(new.len(), 3, "one bitmap per touched segment: {new:?}");
    assert!(new.iter().all(|p| p.file_name().unwrap().to_string_lossy().starts_with("deletes-")), "{new:?}");
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.len(), 293);
    assert_eq!(opened.manifest.segments.iter().map(|s| s.deleted).collect::<Vec<_>>(), vec![3, 3, 1]);
    for q in [1u64, 6, 101, 152, 298] {
        for extra in [&["--exact"][..], &["--ef", "300"][..]] {
            let qs = q.to_string();
            let mut args = vec!["search", "--index", s(&index), "--like", &qs, "-k", "300", "--json"];
            args.extend_from_slice(extra);
            let hits = search_json(&args);
            let ids: BTreeSet<u64> = hits.iter().map(|h| h["id"].as_u64().unwrap()).collect();
            for r in removed {
                assert!(!ids.contains(&r), "{extra:?}: removed id {r} returned");
            }
            if extra[0] == "--exact" {
                assert_eq!(hits.len(), 293);
            }
        }
    }
    // A removed id cannot be the query either.
    let err = fails(&["search", "--index", s(&index), "--like", "5"]);
    assert!(err.contains("no entry with id 5"), "{err}");
    assert_no_garbage(&index);
}

// ---------------------------------------------------------------------------
// 5. Tiered merges

fn meta(name: String, rows: usize) -> SegmentMeta {
    SegmentMeta { name, rows, deleted: 0, deletes: None, dtype: Dtype::F16, min_id: 0, max_id: 0, sizes: BTreeMap::new(), hnsw: None }
}

#[test]
fn tiered_policy_keeps_the_segment_count_logarithmic() {
    let policy = MergePolicy::default();
    let f = policy.segments_per_tier;
    let tiers = |total: usize| {
        let (mut t, mut bound) = (1, policy.floor_rows * f);
        while total >= bound {
            t += 1;
            bound *= f;
        }
        t
    };
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut next = 0;
    let mut merges = 0;
    let mut name = || {
        next += 1;
        format!("s{next:06}")
    };
    for step in 1..=1000 {
        segments.push(meta(name(), 100));
        let mut guard = 0;
        while let Some(chosen) = plan_merge(&segments, &policy) {
            guard += 1;
            assert!(guard < 100, "step {step}: the policy never settles");
            assert!(chosen.len() >= 2, "step {step}: a merge of one segment without deletions: {chosen:?}");
            let rows: usize = segments.iter().filter(|s| chosen.contains(&s.name)).map(|s| s.live()).sum();
            assert_eq!(segments.iter().filter(|s| chosen.contains(&s.name)).count(), chosen.len(), "step {step}: unknown names {chosen:?}");
            segments.retain(|s| !chosen.contains(&s.name));
            segments.push(meta(name(), rows));
            merges += 1;
        }
        let total: usize = segments.iter().map(|s| s.rows).sum();
        assert_eq!(total, step * 100, "no rows lost");
        let bound = (f - 1) * tiers(total) + f;
        assert!(segments.len() <= bound, "step {step}: {} segments > {bound}", segments.len());
        assert!(segments.len() <= (f - 1) * tiers(total), "step {step}: after merging, at most f-1 per tier: {}", segments.len());
    }
    assert!(merges > 100, "merges happened: {merges}");
    assert!(segments.len() < 30, "{}", segments.len());
    // A segment with most rows deleted is rewritten on its own.
    let mut s = meta("sx".into(), 100);
    s.deleted = 60;
    assert_eq!(plan_merge(&[s], &policy), Some(vec!["sx".to_string()]));
}

#[test]
fn appends_with_the_default_policy_keep_few_segments() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let index = dir.path().join("idx");
    let mut max_segments = 0;
    for batch in 0..25u64 {
        let data = clustered(50, d, 100 + batch);
        let prefix = format!("b{batch}-");
        if batch == 0 {
            import(&index, &data, d, &prefix, &["--no-hnsw"]);
        } else {
            import(&index, &data, d, &prefix, &["--append", "--no-hnsw"]);
        }
        let m = longclip::index::read_manifest(&index).unwrap();
        assert_eq!(m.count, 50 * (batch as usize + 1));
        assert!(m.segments.len() <= 9, "after append {batch}: {} segments", m.segments.len());
        max_segments = max_segments.max(m.segments.len());
        assert_no_garbage(&index);
    }
    assert_eq!(max_segments, 9);
    let opened = Index::open(&index).unwrap();
    assert!(opened.segments().len() < 9, "merged: {}", opened.segments().len());
    assert_eq!(ids_of(&opened), (0..1250).collect::<BTreeSet<u64>>());
    for q in [0usize, 333, 1249] {
        let query = opened.row_vec(opened.row_of_id(q as u64).unwrap());
        let want = brute_force(&opened, &query);
        let got = search_json(&["search", "--index", s(&index), "--like", &q.to_string(), "-k", "20", "--json"]);
        assert_ranking(&hits_of(&got), &want, 20, &format!("after merges, query {q}"));
    }
}

// ---------------------------------------------------------------------------
// 6. Shard builds + index merge

#[test]
fn shard_builds_merged_equal_a_single_build_and_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 12, 60);
    let canonical: Vec<String> = files.iter().map(|f| f.canonicalize().unwrap().display().to_string()).collect();
    let single = dir.path().join("single");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&single), "--dtype", "f32"]);
    let mut shards = Vec::new();
    for i in 0..3 {
        let shard = dir.path().join(format!("shard{i}"));
        ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&shard), "--dtype", "f32", "--shard", &format!("{i}/3")]);
        let opened = Index::open(&shard).unwrap();
        let got: BTreeSet<String> = opened.live_entries().unwrap().iter().map(|(_, e)| opened.resolve(e).display().to_string()).collect();
        let want: BTreeSet<String> = canonical.iter().enumerate().filter(|(n, _)| n % 3 == i).map(|(_, p)| p.clone()).collect();
        assert_eq!(got, want, "shard {i}/3 holds files n % 3 == {i}");
        shards.push(shard);
    }
    let merged = dir.path().join("merged");
    ok(&["index", "merge", s(&shards[0]), s(&shards[1]), s(&shards[2]), "--into", s(&merged)]);
    let vectors = |index: &Path| -> BTreeMap<String, Vec<f32>> {
        let opened = Index::open(index).unwrap();
        opened.live_entries().unwrap().iter().map(|(r, e)| (opened.resolve(e).display().to_string(), opened.row_vec(*r))).collect()
    };
    let (a, b) = (vectors(&single), vectors(&merged));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same files");
    for (path, v) in &a {
        let c = cosine(v, &b[path]);
        assert!(c > 0.99999, "{path}: cosine {c}");
    }
    let m = Index::open(&merged).unwrap();
    assert_eq!(m.len(), 12);
    assert!(m.manifest.shard.is_none(), "a merge clears the shard");
    let ids: Vec<u64> = ids_of(&m).into_iter().collect();
    assert_eq!(ids.len(), 12, "distinct ids");
    for text in ["a red square", "blue gradient with a small green box"] {
        let x = search_json(&["search", "--index", s(&single), "--text", text, "--exact", "--json"]);
        let y = search_json(&["search", "--index", s(&merged), "--text", text, "--exact", "--json"]);
        assert_eq!(x.len(), 10);
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(&y) {
            assert_eq!(p["path"], q["path"], "{text}");
            assert!((p["score"].as_f64().unwrap() - q["score"].as_f64().unwrap()).abs() < 1e-5, "{text}");
        }
    }
    assert_no_garbage(&merged);

    // Mismatches are refused, naming the indexes.
    let narrow = dir.path().join("narrow");
    import(&narrow, &clustered(10, 32, 1), 32, "n", &["--dtype", "f32"]);
    let half = dir.path().join("half");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&half), "--shard", "0/6"]);
    let ckpt = longclip::checkpoint::load(&model()).unwrap();
    let other_model = dir.path().join("other.safetensors");
    longclip::export::save_checkpoint(&longclip::checkpoint::random(&ckpt.config, 7).unwrap(), &other_model).unwrap();
    let other = dir.path().join("other");
    ok(&["index", "build", "--model", s(&other_model), "--images", s(&images), "--index", s(&other), "--dtype", "f32", "--shard", "1/6"]);
    for (bad, needle) in [(&narrow, "32-d"), (&half, "f16"), (&other, "another model")] {
        let into = dir.path().join(format!("refused-{}", bad.file_name().unwrap().to_string_lossy()));
        let err = fails(&["index", "merge", s(&shards[0]), s(bad), "--into", s(&into)]);
        assert!(err.contains(needle), "{err}");
        assert!(err.contains(s(bad)), "names the refused index: {err}");
        assert!(err.contains(s(&shards[0])) || err.contains(s(&into)), "names the other side: {err}");
        assert!(!into.join("manifest.json").exists(), "nothing committed");
        // Into an existing index too.
        let err = fails(&["index", "merge", s(bad), "--into", s(&merged)]);
        assert!(err.contains(needle) && err.contains(s(bad)) && err.contains(s(&merged)), "{err}");
    }
    assert_eq!(Index::open(&merged).unwrap().len(), 12, "refused merges leave the destination alone");
}

// ---------------------------------------------------------------------------
// 7. search --vectors

#[test]
fn search_vectors_writes_jsonl_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let index = dir.path().join("idx");
    import(&index, &clustered(200, d, 8), d, "v", &["--no-hnsw", "--segment-rows", "64", "--no-merge"]);
    let opened = Index::open(&index).unwrap();
    let q = clustered(5, d, 9);
    let qnpy = dir.path().join("q.npy");
    write_npy_f32(&qnpy, &q, 5, d);
    let out = ok(&["search", "--index", s(&index), "--vectors", s(&qnpy), "-k", "7"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("QPS") && stderr.contains("5 query vectors"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "one line per query");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        let results = line["results"].as_array().unwrap();
        assert_eq!(results.len(), 7);
        assert_eq!(results[0]["rank"], 1);
        assert!(results[0]["path"].as_str().unwrap().starts_with('v'));
        let want = brute_force(&opened, &normalized(&q[i * d..(i + 1) * d]));
        assert_ranking(&hits_of(results), &want, 7, &format!("--vectors query {i}"));
    }
    // --out writes the same lines.
    let file = dir.path().join("r.jsonl");
    ok(&["search", "--index", s(&index), "--vectors", s(&qnpy), "-k", "7", "--out", s(&file)]);
    let from_file: Vec<serde_json::Value> = std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_file, lines);

    // Other dimension.
    let wide = dir.path().join("wide.npy");
    write_npy_f32(&wide, &clustered(3, 20, 1), 3, 20);
    let err = fails(&["search", "--index", s(&index), "--vectors", s(&wide)]);
    assert!(err.contains("20") && err.contains("16") && err.contains("row 0"), "{err}");
    // An all-zero row and a NaN row are named.
    let mut bad = q.clone();
    bad[3 * d..4 * d].iter_mut().for_each(|v| *v = 0.0);
    write_npy_f32(&qnpy, &bad, 5, d);
    let err = fails(&["search", "--index", s(&index), "--vectors", s(&qnpy)]);
    assert!(err.contains("row 3") && err.contains("zeros"), "{err}");
    let mut bad = q.clone();
    bad[2 * d + 4] = f32::NAN;
    write_npy_f32(&qnpy, &bad, 5, d);
    let err = fails(&["search", "--index", s(&index), "--vectors", s(&qnpy)]);
    assert!(err.contains("row 2") && err.contains("not finite"), "{err}");
}

// ---------------------------------------------------------------------------
// 8. Crash points

const STEPS: [&str; 4] = ["segment-written", "committed", "deletes-written", "merge-written"];
const CRASH_AT: &str = "LONGCLIP_TEST_CRASH_AT";

/// Live (id, path) pairs of an index, or None without a manifest.
fn state(index: &Path) -> Option<BTreeSet<(u64, String)>> {
    if !index.join("manifest.json").exists() {
        return None;
    }
    let opened = Index::open(index).unwrap_or_else(|e| panic!("{}: cannot open after a crash: {e:#}", index.display()));
    let pairs: BTreeSet<(u64, String)> = opened.live_entries().unwrap().into_iter().map(|(_, e)| (e.id, e.path)).collect();
    assert_eq!(pairs.len(), opened.len(), "count matches the entries");
    Some(pairs)
}

/// The segment layout: (name, rows, deleted) per segment.
fn layout(index: &Path) -> Option<Vec<(String, usize, usize)>> {
    let m = longclip::index::read_manifest(index).ok()?;
    Some(m.segments.iter().map(|s| (s.name.clone(), s.rows, s.deleted)).collect())
}

/// Runs `args` on a fresh copy of `base` once per crash step: after the
/// abort the index shows the old or the new entries (count and ids), never
/// a mix; rerunning (idempotent commands, or when the old state is found)
/// ends in the uninterrupted result, segment layout included, with no
/// unreferenced files.
fn crash_each_step(work: &Path, base: Option<&Path>, name: &str, args: &dyn Fn(&Path) -> Vec<String>, idempotent: bool, applies: &[&str]) {
    let fresh = |tag: &str| -> PathBuf {
        let dir = work.join(format!("{name}-{tag}"));
        if let Some(base) = base {
            copy_dir(base, &dir);
        }
        dir
    };
    let reference = fresh("reference");
    let a = args(&reference);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let old = base.and_then(state);
    let new = state(&reference);
    let new_layout = layout(&reference);
    assert!(old != new || base.and_then(layout) != new_layout, "{name}: the command changes the index");
    for step in STEPS {
        let index = fresh(step);
        let a = args(&index);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run_env(&a, &[(CRASH_AT, step)]);
        let crashed = !out.status.success();
        assert_eq!(crashed, applies.contains(&step), "{name}: crash point {step} reached? {}", String::from_utf8_lossy(&out.stderr));
        if crashed {
            assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("aborting at {step}")), "{name} at {step}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let got = state(&index);
        assert!(got == old || got == new, "{name}: crash at {step}: a mix of states: {} entries (old {}, new {})", got.as_ref().map_or(0, |g| g.len()), old.as_ref().map_or(0, |g| g.len()), new.as_ref().map_or(0, |g| g.len()));
        if !crashed {
            assert_eq!(got, new, "{name}: {step} does not apply and the command finished");
        }
        if idempotent || got == old {
            ok(&a);
            assert_eq!(layout(&index), new_layout, "{name}: segments after a crash at {step} and a rerun");
        } else {
            // Not rerun (it would add the rows twice): the next writer collects what the crash left.
            ok(&["index", "optimize", "--index", s(&index), "--max-segments", "1000"]);
        }
        assert_eq!(state(&index), new, "{name}: after a crash at {step} and a rerun");
        assert_no_garbage(&index);
        let _ = std::fs::remove_dir_all(&index);
    }
}

#[test]
fn a_crash_at_any_step_of_remove_optimize_import_leaves_the_old_or_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let d = 16;
    // Vector indexes: remove, optimize, import --append (with a merge due).
    let base = work.join("base");
    import(&base, &clustered(90, d, 3), d, "c", &["--segment-rows", "10", "--no-merge", "--dtype", "f32"]);
    assert_eq!(Index::open(&base).unwrap().segments().len(), 9);
    crash_each_step(work, Some(&base), "remove", &|i| ["index", "remove", "--index", s(i), "--id", "3,17,45,89"].map(String::from).to_vec(), true, &["deletes-written", "committed"]);
    let deleted = work.join("base-deleted");
    copy_dir(&base, &deleted);
    ok(&["index", "remove", "--index", s(&deleted), "--id", "1,2,33"]);
    crash_each_step(work, Some(&deleted), "optimize", &|i| ["index", "optimize", "--index", s(i), "--max-segments", "1"].map(String::from).to_vec(), true, &["merge-written", "committed"]);
    let npy = work.join("more.npy");
    write_npy_f32(&npy, &clustered(10, d, 77), 10, d);
    let ids = work.join("more.txt");
    std::fs::write(&ids, (0..10).map(|i| format!("more{i}\n")).collect::<String>()).unwrap();
    // The 10th segment in tier 0: the append commits, then merges.
    let append = |i: &Path| ["index", "import", "--append", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(i)].map(String::from).to_vec();
    crash_each_step(work, Some(&base), "import-append", &append, false, &["segment-written", "committed", "merge-written"]);
}

/// A crash at `committed` leaves the staged chunks of the committed segment;
/// the rerun must recognise them and not commit them again.
#[test]
fn a_crash_during_add_leaves_the_old_or_new_state_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let images = work.join("p");
    make_images(&images, 6, 200);
    let built = work.join("built");
    let build = |i: &Path| ["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(i), "--segment-rows", "4", "--chunk-size", "2"].map(String::from).to_vec();
    ok(&build(&built).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(Index::open(&built).unwrap().segments().len(), 2, "6 images, 4 per segment");
    make_images(&images, 3, 400);
    // A changed file too: add writes a segment and a bitmap in one commit.
    picture(7, 40).save_with_format(images.join("img0201.png"), image::ImageFormat::Png).unwrap();
    crash_each_step(work, Some(&built), "add", &|i| ["index", "add", "--index", s(i), "--chunk-size", "2"].map(String::from).to_vec(), true, &["segment-written", "committed"]);
}

/// As for add: a crash at `committed` must not commit the staged chunks twice.
#[test]
fn a_crash_during_a_build_keeps_whole_segments_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();

    // A fresh build commits a segment every 4 images: after a crash any
    // committed prefix is consistent, and the rerun ends with every image once.
    let images2 = work.join("p2");
    make_images(&images2, 10, 500);
    let build2 = |i: &Path| ["index", "build", "--model", s(&model()), "--images", s(&images2), "--index", s(i), "--segment-rows", "4", "--chunk-size", "2"].map(String::from).to_vec();
    let reference = work.join("build-reference");
    ok(&build2(&reference).iter().map(String::as_str).collect::<Vec<_>>());
    let want_state = state(&reference).unwrap();
    let want: BTreeSet<String> = want_state.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(want.len(), 10);
    for step in STEPS {
        let index = work.join(format!("build-{step}"));
        let a = build2(&index);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run_env(&a, &[(CRASH_AT, step)]);
        assert_eq!(!out.status.success(), ["segment-written", "committed"].contains(&step), "build: crash point {step} reached? {}", String::from_utf8_lossy(&out.stderr));
        if let Some(got) = state(&index) {
            let paths: BTreeSet<String> = got.iter().map(|(_, p)| p.clone()).collect();
            assert_eq!(paths.len(), got.len(), "build at {step}: a path twice");
            assert!(paths.is_subset(&want), "build at {step}");
            if !out.status.success() {
                assert_eq!(got.len() % 4, 0, "build at {step}: whole segments only ({} entries)", got.len());
            }
        }
        ok(&a);
        let got = state(&index).unwrap();
        let paths: BTreeSet<String> = got.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(paths, want, "build at {step}: every image once after the rerun");
        assert_eq!(got.len(), 10);
        // The same entries (ids too) and segments as an uninterrupted build.
        assert_eq!(got, want_state, "build at {step}: ids after the rerun");
        assert_eq!(layout(&index), layout(&reference), "build at {step}: segments after the rerun");
        assert_no_garbage(&index);
        assert!(!index.join("staging").exists());
    }
}

/// `LONGCLIP_TEST_CRASH_AFTER_CHUNKS` counts the chunks of the run: with
/// 4-row segments of 2-image chunks, chunk 3 is saved after the first
/// segment was committed, which the resumed build keeps (same files).
#[test]
fn a_build_killed_after_chunks_keeps_its_committed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 10, 600);
    let index = dir.path().join("idx");
    let m = model();
    let args = ["index", "build", "--model", s(&m), "--images", s(&images), "--index", s(&index), "--segment-rows", "4", "--chunk-size", "2", "--batch-size", "2", "--no-hnsw"];
    let out = run_env(&args, &[(longclip::index::CRASH_AFTER_CHUNKS_ENV, "3")]);
    assert!(!out.status.success(), "the build must abort after chunk 3: {}", String::from_utf8_lossy(&out.stderr));
    let crashed = Index::open(&index).expect("the first segment was committed");
    assert_eq!(crashed.len(), 4);
    let first = crashed.manifest.segments[0].name.clone();
    let kept = snapshot_segments(&index);
    assert!(index.join("staging").exists(), "chunk 3 is staged");
    let out = ok(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_unchanged(&kept, "the resumed build");
    let done = Index::open(&index).unwrap();
    assert_eq!(done.len(), 10);
    assert_eq!(done.manifest.segments[0].name, first);
    let paths: BTreeSet<String> = done.live_entries().unwrap().into_iter().map(|(_, e)| e.path).collect();
    assert_eq!(paths.len(), 10);
    assert_no_garbage(&index);
}

// ---------------------------------------------------------------------------
// 9. Format 1

#[test]
fn a_format_1_index_is_refused_then_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("v1");
    std::fs::create_dir_all(&index).unwrap();
    let (n, d) = (120, 20);
    let raw = clustered(n, d, 21);
    let vectors: Vec<Vec<f32>> = raw.chunks(d).map(normalized).collect();
    // Ids with gaps, as removals left them.
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 2 + 1).collect();
    let emb: Vec<u8> = vectors.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let mut entries = Vec::new();
    let mut rows = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        rows.extend_from_slice(&id.to_le_bytes());
        rows.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        let line = serde_json::json!({ "id": id, "path": format!("old/{i}.jpg") });
        entries.extend_from_slice(serde_json::to_string(&line).unwrap().as_bytes());
        entries.push(b'\n');
    }
    let skipped = b"{\"path\":\"notes.txt\",\"reason\":\"not an image\"}\n".to_vec();
    let files = [("embeddings-1.f32", emb), ("entries-1.jsonl", entries), ("rows-1.bin", rows), ("skipped-1.jsonl", skipped), ("hnsw-1.hnsw.graph", b"old graph".to_vec()), ("hnsw-1.hnsw.data", b"old data".to_vec())];
    let mut sizes = serde_json::Map::new();
    for (name, bytes) in &files {
        std::fs::write(index.join(name), bytes).unwrap();
        sizes.insert(name.to_string(), serde_json::json!(bytes.len()));
    }
    let manifest = serde_json::json!({
        "format": "longclip-index",
        "format_version": 1,
        "generation": 1,
        "model": { "path": null, "fingerprint": null, "embed_dim": d, "image_size": null, "context_length": null },
        "dim": d,
        "dtype": "f32",
        "count": n,
        "skipped_count": 1,
        "next_id": ids[n - 1] + 5,
        "root": null,
        "created": "2026-01-01T00:00:00Z",
        "updated": "2026-01-02T00:00:00Z",
        "files": { "embeddings": "embeddings-1.f32", "entries": "entries-1.jsonl", "rows": "rows-1.bin", "skipped": "skipped-1.jsonl", "sizes": sizes },
        "hnsw": { "m": 16, "ef_construction": 100, "ef_search": 64, "basename": "hnsw-1", "distance": "DistDot", "build_seconds": 0.1 },
    });
    std::fs::write(index.join("manifest.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();

    let q = clustered(4, d, 22);
    let qnpy = dir.path().join("q.npy");
    write_npy_f32(&qnpy, &q, 4, d);
    let err = fails(&["search", "--index", s(&index), "--vectors", s(&qnpy)]);
    assert!(err.contains("index upgrade"), "{err}");
    let err = fails(&["index", "info", "--index", s(&index)]);
    assert!(err.contains("index upgrade"), "{err}");

    ok(&["index", "upgrade", "--index", s(&index)]);
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.manifest.format_version, 2);
    assert_eq!(opened.len(), n);
    assert_eq!(opened.manifest.next_id, ids[n - 1] + 5, "ids are never reused");
    assert_eq!(opened.manifest.created, "2026-01-01T00:00:00Z");
    assert_eq!(opened.skipped().unwrap().len(), 1);
    for (name, _) in &files {
        assert!(!index.join(name).exists(), "{name} is gone after the upgrade");
    }
    assert_no_garbage(&index);
    // Brute force over the vectors written above (not the index's rows).
    for extra in [&["--exact"][..], &["--ef", "200"][..]] {
        let mut args = vec!["search", "--index", s(&index), "--vectors", s(&qnpy), "-k", "10"];
        args.extend_from_slice(extra);
        let out = ok(&args);
        for (i, line) in String::from_utf8(out.stdout).unwrap().lines().enumerate() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let query = normalized(&q[i * d..(i + 1) * d]);
            let mut want: Vec<(u64, f64)> = vectors.iter().zip(&ids).map(|(v, id)| (*id, v.iter().zip(&query).map(|(a, b)| *a as f64 * *b as f64).sum())).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            assert_ranking(&hits_of(line["results"].as_array().unwrap()), &want, 10, &format!("upgraded {extra:?} query {i}"));
            let paths: Vec<&str> = line["results"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap()).collect();
            let id = line["results"][0]["id"].as_u64().unwrap();
            assert_eq!(paths[0], format!("old/{}.jpg", (id - 1) / 2));
        }
    }
    // Upgrading again is a no-op.
    ok(&["index", "upgrade", "--index", s(&index)]);
    assert_eq!(Index::open(&index).unwrap().manifest.generation, opened.manifest.generation);
}

// ---------------------------------------------------------------------------
// 10. Readers during a merge

#[test]
fn an_open_reader_keeps_working_while_a_merge_commits() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let index = dir.path().join("idx");
    import(&index, &clustered(600, d, 31), d, "m", &["--segment-rows", "200", "--no-merge", "--dtype", "f32"]);
    ok(&["index", "remove", "--index", s(&index), "--id", "10,250,590"]);
    let old = Index::open(&index).unwrap();
    let live = longclip::index::LiveIndex::open(&index).unwrap();
    assert_eq!(live.get().segments().len(), 3);
    let queries: Vec<Vec<f32>> = [0usize, 300, 555].iter().map(|&r| old.row_vec(r)).collect();
    let opts = Options { k: 15, exact: true, ef: None };
    let as_ids = |index: &Index, rows: &[Vec<(usize, f32)>]| -> Vec<Vec<(u64, f32)>> { rows.iter().map(|h| h.iter().map(|&(r, sc)| (index.id(r), sc)).collect()).collect() };
    let before = as_ids(&old, &search::search_rows(&old, &queries, &opts).unwrap());
    let old_dirs = dir_names(&index.join("segments"));
    // A second view whose graphs are loaded (memory-mapped) before the merge.
    let graphs = Index::open(&index).unwrap();
    let ef = Options { k: 15, exact: false, ef: Some(64) };
    let graph_before = as_ids(&graphs, &search::search_rows(&graphs, &queries, &ef).unwrap());

    ok(&["index", "optimize", "--index", s(&index)]);
    let graph_after = as_ids(&graphs, &search::search_rows(&graphs, &queries, &ef).unwrap());
    assert_eq!(graph_after, graph_before, "graphs mapped before the merge keep working");
    assert!(old.is_stale());
    assert!(dir_names(&index.join("segments")).is_disjoint(&old_dirs), "the old segment folders are deleted");
    // The old view: its mappings still work, same results.
    let again = as_ids(&old, &search::search_rows(&old, &queries, &opts).unwrap());
    assert_eq!(again, before, "the old view after the merge");
    let hits = search::search(&old, &queries, &Options { k: 15, exact: false, ef: Some(50) }).unwrap();
    for h in &hits {
        assert_eq!(h.len(), 15);
        assert!(h.iter().all(|x| ![10, 250, 590].contains(&x.id)));
    }
    // A new view sees the merge, with the same results.
    let new = Index::open(&index).unwrap();
    assert_eq!(new.segments().len(), 1);
    assert_eq!(new.manifest.segments[0].deleted, 0);
    assert_eq!(new.len(), 597);
    assert_eq!(as_ids(&new, &search::search_rows(&new, &queries, &opts).unwrap()), before);
    let followed = live.get();
    assert_eq!(followed.manifest.generation, new.manifest.generation, "LiveIndex follows the commit");
    assert_eq!(followed.segments().len(), 1);
}

// ---------------------------------------------------------------------------
// 11. A full disk during a merge

#[test]
fn a_full_disk_during_a_merge_keeps_the_previous_manifest() {
    if !have_bash() {
        eprintln!("SKIP: no bash to set a file size limit");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = 32;
    let index = dir.path().join("idx");
    import(&index, &clustered(1500, d, 41), d, "f", &["--segment-rows", "500", "--no-merge", "--dtype", "f32", "--no-hnsw"]);
    ok(&["index", "remove", "--index", s(&index), "--id", "7"]);
    let manifest = std::fs::read(index.join("manifest.json")).unwrap();
    let segments = dir_names(&index.join("segments"));
    let files = snapshot_segments(&index);
    // The merged vectors (~190 KB) outgrow a 64 KiB file-size limit.
    let script = format!("trap '' XFSZ; ulimit -f 64; exec '{}' index optimize --index '{}'", bin(), s(&index));
    let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the merge must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("File too large") || stderr.contains("cannot write"), "{stderr}");
    assert!(std::fs::read(index.join("manifest.json")).unwrap() == manifest, "the previous manifest is byte-identical");
    assert_eq!(dir_names(&index.join("segments")), segments, "no new segment folder remains");
    assert_unchanged(&files, "a failed merge");
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.len(), 1499);
    ok(&["search", "--index", s(&index), "--like", "0"]);
    assert_no_garbage(&index);
    // With room again, it merges.
    ok(&["index", "optimize", "--index", s(&index)]);
    assert_eq!(Index::open(&index).unwrap().segments().len(), 1);
}

// ---------------------------------------------------------------------------
// 12. Two writers

#[test]
fn a_held_lock_refuses_optimize_remove_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    import(&a, &clustered(40, d, 51), d, "a", &["--segment-rows", "10", "--no-merge", "--no-hnsw"]);
    import(&b, &clustered(40, d, 52), d, "b", &["--no-hnsw"]);
    let into = dir.path().join("into");
    std::fs::create_dir_all(&into).unwrap();
    let manifest = std::fs::read(a.join("manifest.json")).unwrap();
    let refused = |what: &str, args: &[&str]| {
        let err = fails(args);
        assert!(err.contains("another longclip process is writing this index"), "{what}: {err}");
    };
    {
        let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(a.join("lock")).unwrap();
        held.lock().unwrap();
        refused("optimize", &["index", "optimize", "--index", s(&a)]);
        refused("remove", &["index", "remove", "--index", s(&a), "--id", "1"]);
        refused("merge from a locked source", &["index", "merge", s(&a), s(&b), "--into", s(&into)]);
        assert!(std::fs::read(a.join("manifest.json")).unwrap() == manifest, "nothing changed");
        held.unlock().unwrap();
    }
    {
        let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(into.join("lock")).unwrap();
        held.lock().unwrap();
        refused("merge into a locked index", &["index", "merge", s(&a), s(&b), "--into", s(&into)]);
        assert!(!into.join("manifest.json").exists());
        held.unlock().unwrap();
    }
    ok(&["index", "remove", "--index", s(&a), "--id", "1"]);
    ok(&["index", "optimize", "--index", s(&a)]);
    ok(&["index", "merge", s(&a), s(&b), "--into", s(&into)]);
    assert_eq!(Index::open(&into).unwrap().len(), 79);
}

// ---------------------------------------------------------------------------
// Edge cases

#[test]
fn optimize_after_removing_everything_leaves_an_empty_usable_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = 16;
    let index = dir.path().join("idx");
    import(&index, &clustered(30, d, 61), d, "e", &["--segment-rows", "10", "--no-merge"]);
    let all = (0..30).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    ok(&["index", "remove", "--index", s(&index), "--id", &all]);
    assert_eq!(Index::open(&index).unwrap().len(), 0);
    ok(&["index", "optimize", "--index", s(&index)]);
    let info = info_json(&index);
    assert_eq!(info["count"], 0);
    assert_eq!(info["segments"].as_array().unwrap().len(), 0, "{info}");
    assert_no_garbage(&index);
    let q = dir.path().join("q.npy");
    write_npy_f32(&q, &clustered(2, d, 62), 2, d);
    let out = ok(&["search", "--index", s(&index), "--vectors", s(&q)]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["results"].as_array().unwrap().is_empty()));
    // Ids are never reused.
    import(&index, &clustered(5, d, 63), d, "f", &["--append"]);
    let opened = Index::open(&index).unwrap();
    assert_eq!(ids_of(&opened), (30..35).collect::<BTreeSet<u64>>());
}

#[test]
fn adding_to_merged_shards_finds_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 6, 700);
    let mut shards = Vec::new();
    for i in 0..2 {
        let shard = dir.path().join(format!("shard{i}"));
        ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&shard), "--shard", &format!("{i}/2"), "--no-hnsw"]);
        shards.push(shard);
    }
    let merged = dir.path().join("merged");
    ok(&["index", "merge", s(&shards[0]), s(&shards[1]), "--into", s(&merged)]);
    let before = layout(&merged);
    let out = ok(&["index", "add", "--index", s(&merged)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("up to date"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(layout(&merged), before);
    // New files go into the merged index once.
    make_images(&images, 2, 800);
    ok(&["index", "add", "--index", s(&merged)]);
    assert_eq!(Index::open(&merged).unwrap().len(), 8);
}

/// A merge keeps the record of what computed the rows: shards embedded in
/// int8 and f32 make a `int8+f32` index (it read as f32 before).
#[test]
fn merged_shards_keep_their_compute_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 4, 900);
    let mut shards = Vec::new();
    for (i, dtype) in ["int8", "f32"].iter().enumerate() {
        let shard = dir.path().join(format!("shard{i}"));
        ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&shard), "--shard", &format!("{i}/2"), "--no-hnsw", "--compute-dtype", dtype]);
        shards.push(shard);
    }
    let merged = dir.path().join("merged");
    ok(&["index", "merge", s(&shards[0]), s(&shards[1]), "--into", s(&merged)]);
    assert_eq!(Index::open(&merged).unwrap().manifest.compute_dtype(), "int8+f32");
    let same = dir.path().join("same");
    ok(&["index", "merge", s(&shards[1]), "--into", s(&same)]);
    assert_eq!(Index::open(&same).unwrap().manifest.compute_dtype(), "f32");
}

/// Shard membership is the position in the sorted file list, so new files
/// shift it: `add` on a shard refuses (naming `index merge`), and the merged
/// index takes the new files.
#[test]
fn a_shard_refuses_add_and_the_merged_index_takes_the_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 6, 900);
    let mut shards = Vec::new();
    for i in 0..3 {
        let shard = dir.path().join(format!("shard{i}"));
        ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&shard), "--shard", &format!("{i}/3"), "--no-hnsw"]);
        shards.push(shard);
    }
    // Two new files that sort first: file numbers shift, so a shard must not take them.
    picture(1, 40).save_with_format(images.join("aaa1.png"), image::ImageFormat::Png).unwrap();
    picture(2, 40).save_with_format(images.join("aaa2.png"), image::ImageFormat::Png).unwrap();
    for shard in &shards {
        let err = fails(&["index", "add", "--index", s(shard)]);
        assert!(err.contains("shard") && err.contains("index merge"), "{err}");
    }
    let merged = dir.path().join("merged");
    ok(&["index", "merge", s(&shards[0]), s(&shards[1]), s(&shards[2]), "--into", s(&merged)]);
    assert_eq!(Index::open(&merged).unwrap().len(), 6);
    ok(&["index", "add", "--index", s(&merged)]);
    assert_eq!(Index::open(&merged).unwrap().len(), 8);
}

/// What a new user tried by mistake (fresh-user review of issue 11): writers
/// never create or write into folders that are not indexes, ids are checked,
/// URLs stay URLs, shards may be empty, merges refuse what they cannot do.
#[test]
fn mistakes_get_clear_errors_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // Writers that need an index refuse a missing one and create nothing.
    let ghost = work.join("ghost");
    for args in [
        vec!["index", "optimize", "--index", s(&ghost)],
        vec!["index", "remove", "--index", s(&ghost), "--id", "1"],
        vec!["index", "upgrade", "--index", s(&ghost)],
    ] {
        let err = fails(&args);
        assert!(err.contains("no such index"), "{args:?}: {err}");
        assert!(!ghost.exists(), "{args:?} created {}", ghost.display());
    }
    let into = work.join("into");
    let err = fails(&["index", "merge", s(&ghost), "--into", s(&into)]);
    assert!(err.contains("no such index"), "{err}");
    assert!(!ghost.exists() && !into.exists());

    // A folder of other files is not made into an index, nor locked.
    let photos = work.join("photos");
    make_images(&photos, 3, 40);
    let listing = dir_names(&photos);
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&photos), "--index", s(&photos)]);
    assert!(err.contains("is not a longclip index"), "{err}");
    let err = fails(&["index", "optimize", "--index", s(&photos)]);
    assert!(err.contains("not a longclip index"), "{err}");
    assert_eq!(dir_names(&photos), listing, "nothing written into the photo folder");

    // Ids: blank and repeated lines are named; appends of ids already there refused.
    let d = 8;
    let data = clustered(4, d, 1);
    let npy = work.join("e.npy");
    write_npy_f32(&npy, &data, 4, d);
    let ids = work.join("ids.txt");
    let idx = work.join("idx");
    for (text, want) in [("a\n\nc\nd\n", "ids.txt:2: empty id"), ("a\nb\na\nd\n", "ids.txt:3: id 'a' repeats line 1")] {
        std::fs::write(&ids, text).unwrap();
        let err = fails(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&idx)]);
        assert!(err.contains(want), "{err}");
        assert!(!idx.join("manifest.json").exists());
    }
    std::fs::write(&ids, "https://example.com/a.jpg\ns3://bucket/b.jpg\nc.jpg\nd.jpg\n").unwrap();
    let err = fails(&["index", "import", "--append", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&idx)]);
    assert!(err.contains("no index there to append to"), "{err}");
    ok(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&idx), "--no-hnsw"]);
    let err = fails(&["index", "import", "--append", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&idx)]);
    assert!(err.contains("is in the index already"), "{err}");
    // URLs are not files: --missing keeps them, paths print as given.
    ok(&["index", "remove", "--index", s(&idx), "--missing"]);
    assert_eq!(Index::open(&idx).unwrap().len(), 2, "the two URL entries stay, the two missing files go");
    let hits = search_json(&["search", "--index", s(&idx), "--like", "0", "--json"]);
    assert_eq!(hits[0]["path"], "https://example.com/a.jpg");

    // Merges: a source twice, an unfinished build.
    let err = fails(&["index", "merge", s(&idx), s(&idx), "--into", s(&work.join("m"))]);
    assert!(err.contains("given twice"), "{err}");
    std::fs::create_dir_all(idx.join("staging")).unwrap();
    let err = fails(&["index", "merge", s(&idx), "--into", s(&work.join("m2"))]);
    assert!(err.contains("unfinished build"), "{err}");
    std::fs::remove_dir_all(idx.join("staging")).unwrap();

    // An empty shard is an empty index, and merges.
    let few = work.join("few");
    make_images(&few, 2, 70);
    let empty = work.join("shard-empty");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&few), "--index", s(&empty), "--shard", "5/8"]);
    assert_eq!(Index::open(&empty).unwrap().len(), 0);
    let full = work.join("shard-0");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&few), "--index", s(&full), "--shard", "0/8"]);
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&few), "--index", s(&full), "--shard", "1/8"]);
    assert!(err.contains("built as shard 0/8"), "{err}");
    ok(&["index", "merge", s(&empty), s(&full), "--into", s(&work.join("all"))]);
    assert_eq!(Index::open(&work.join("all")).unwrap().len(), 1);

    // Zero counts and blank queries.
    let err = fails(&["search", "--index", s(&idx), "--like", "0", "--ef", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&few), "--index", s(&work.join("z")), "--segment-rows", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    let queries = work.join("q.txt");
    std::fs::write(&queries, "a red square\n \nblue\n").unwrap();
    let err = fails(&["search", "--index", s(&full), "--queries", s(&queries)]);
    assert!(err.contains("query 2 of 3 is empty"), "{err}");
}
