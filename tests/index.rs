//! Indexes end to end through the binary: build over generated images with
//! the tiny random model, search (exact and HNSW against a brute-force
//! ranking of the same embeddings), resume after a crash, add/remove, the
//! writer lock, import/export, and bad input of every kind named in issue 3.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use common::*;
use longclip::index::Index;

fn model() -> PathBuf {
    fixture("tiny-longclip.pt")
}

/// `n` images in nested folders, PNG and JPEG, extensions in mixed case.
fn make_images(dir: &Path, n: u32, first_seed: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for i in 0..n {
        let sub = dir.join(format!("set{}", i % 3)).join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&sub).unwrap();
        let seed = first_seed + i;
        let ext = ["png", "jpg", "PNG", "JPEG", "Jpg"][i as usize % 5];
        let path = sub.join(format!("img{seed:04}.{ext}"));
        let img = picture(seed, 48 + (i % 4) * 16);
        let format = if ext.eq_ignore_ascii_case("png") { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        img.save_with_format(&path, format).unwrap();
        out.push(path);
    }
    out.sort();
    out
}

/// Brute force in f64 over the index's own stored rows: (row, score), best first.
fn brute_force(index: &Index, query: &[f32]) -> Vec<(usize, f64)> {
    let mut all: Vec<(usize, f64)> = index
        .live_rows()
        .map(|r| (r, index.row_vec(r).iter().zip(query).map(|(a, b)| *a as f64 * *b as f64).sum()))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

/// The query embedding the way `longclip embed` makes it (an independent path).
fn embed_text(dir: &Path, text: &str) -> Vec<f32> {
    let file = dir.join("query.json");
    std::fs::write(&file, serde_json::to_string(&vec![text]).unwrap()).unwrap();
    let out = dir.join("query.npy");
    ok(&["embed", "--model", s(&model()), "--texts", s(&file), "--out", s(&out)]);
    rows(&Tensor::read_npy(&out).unwrap()).remove(0)
}

/// Results must be the brute-force ranking: same scores (to f32 rounding),
/// and the same rows wherever the scores are not tied.
fn assert_matches_brute_force(index: &Index, hits: &[serde_json::Value], query: &[f32], what: &str) {
    let want = brute_force(index, query);
    assert_eq!(hits.len(), 10.min(index.len()), "{what}");
    for (i, h) in hits.iter().enumerate() {
        let (row, score) = want[i];
        let got = h["score"].as_f64().unwrap();
        assert!((got - score).abs() < 1e-5, "{what}: rank {} score {got} vs brute force {score}", i + 1);
        assert_eq!(h["rank"], i + 1);
        let entry = index.entry(row).unwrap();
        let tied = want.iter().filter(|(_, s)| (s - score).abs() < 1e-6).count() > 1;
        if !tied {
            assert_eq!(h["id"].as_u64().unwrap(), entry.id, "{what}: rank {}", i + 1);
            assert_eq!(h["path"].as_str().unwrap(), index.resolve(&entry).display().to_string());
        }
    }
}

#[test]
fn build_search_exact_and_hnsw_equal_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    let files = make_images(&images, 40, 1);
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let index = dir.path().join("idx");
    let run = ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", "f32", "--batch-size", "7"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("embedded 40 images") && stderr.contains("images/s"), "{stderr}");

    let info = info_json(&index);
    assert_eq!(info["count"], 40);
    assert_eq!(info["dim"], 64);
    assert_eq!(info["dtype"], "f32");
    assert!(info["model"]["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let skipped = info["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["path"], "notes.txt");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("not an image"));
    assert_eq!(info["hnsw"]["m"], 16);

    // The stored rows are what `longclip embed` computes for the same files.
    let npy = dir.path().join("ref.npy");
    ok(&["embed", "--model", s(&model()), "--images", s(&images), "--out", s(&npy)]);
    let reference = rows(&Tensor::read_npy(&npy).unwrap());
    let opened = Index::open(&index).unwrap();
    let by_path: BTreeMap<String, usize> = opened.live_entries().unwrap().into_iter().map(|(r, e)| (opened.resolve(&e).display().to_string(), r)).collect();
    let canonical: Vec<String> = files.iter().map(|f| f.canonicalize().unwrap().display().to_string()).collect();
    assert_eq!(by_path.keys().cloned().collect::<BTreeSet<_>>(), canonical.iter().cloned().collect::<BTreeSet<_>>(), "every image once");
    for (i, path) in canonical.iter().enumerate() {
        let c = cosine(&opened.row_vec(by_path[path]), &reference[i]);
        assert!(c > 0.99999, "{path}: cosine {c}");
    }

    let text = "a small bright square on a smooth gradient background, like a label on a wall";
    let query = embed_text(dir.path(), text);
    let exact = search_json(&["search", "--index", s(&index), "--text", text, "--exact", "--json"]);
    assert_matches_brute_force(&opened, &exact, &query, "exact");
    // Below the HNSW threshold the default is the exact scan.
    let default = search_json(&["search", "--index", s(&index), "--text", text, "--json"]);
    assert_eq!(default, exact);
    // The graph with a wide beam finds the true top 10 of 40.
    let hnsw = search_json(&["search", "--index", s(&index), "--text", text, "--ef", "64", "--json"]);
    assert_matches_brute_force(&opened, &hnsw, &query, "hnsw");
    let k3 = search_json(&["search", "--index", s(&index), "--text", text, "-k", "3", "--json"]);
    assert_eq!(k3[..], exact[..3]);

    // An image query ranks the image itself first.
    let hits = search_json(&["search", "--index", s(&index), "--image", s(&files[7]), "--json"]);
    assert_eq!(hits[0]["path"], canonical[7]);
    assert!(hits[0]["score"].as_f64().unwrap() > 0.9999);
    let gone = dir.path().join("gone.png");
    let err = fails(&["search", "--index", s(&index), "--image", s(&gone)]);
    assert!(err.contains(&format!("{}: no such file (--image)", gone.display())), "{err}");
    // More like an entry: its own stored row, no model needed.
    let id = hits[3]["id"].as_u64().unwrap().to_string();
    let like = search_json(&["search", "--index", s(&index), "--like", &id, "--json"]);
    assert_eq!(like[0]["id"].as_u64().unwrap().to_string(), id);

    // The plain output is a table with the same order.
    let table = String::from_utf8(ok(&["search", "--index", s(&index), "--text", text]).stdout).unwrap();
    assert!(table.lines().nth(1).unwrap().contains(exact[0]["path"].as_str().unwrap()), "{table}");
}

#[test]
fn f16_index_matches_brute_force_over_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 25, 100);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.manifest.dtype, longclip::index::Dtype::F16);
    let seg = &opened.manifest.segments[0];
    let size = std::fs::metadata(index.join("segments").join(&seg.name).join(seg.vectors_file())).unwrap().len();
    assert_eq!(size, 25 * 64 * 2, "raw row-major f16");
    let text = "green and violet stripes";
    let query = embed_text(dir.path(), text);
    let hits = search_json(&["search", "--index", s(&index), "--text", text, "--exact", "--json"]);
    assert_matches_brute_force(&opened, &hits, &query, "f16 exact");
    let hnsw = search_json(&["search", "--index", s(&index), "--text", text, "--ef", "50", "--json"]);
    assert_matches_brute_force(&opened, &hnsw, &query, "f16 hnsw");
}

#[test]
fn long_queries_are_truncated_with_a_warning_and_batches_write_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 12, 7);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--no-hnsw"]);
    let long = "a very long and detailed description of a street scene with many small things ".repeat(30);
    let out = ok(&["search", "--index", s(&index), "--text", &long, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("truncated") && stderr.contains("248"), "{stderr}");
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits.len(), 10);

    let file = dir.path().join("q.txt");
    std::fs::write(&file, long.trim()).unwrap();
    let from_file = search_json(&["search", "--index", s(&index), "--text-file", s(&file), "--json"]);
    assert_eq!(from_file, hits);

    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, format!("a red square\n{}\nblue sky over a grey road\n", long.trim())).unwrap();
    let jsonl = dir.path().join("out.jsonl");
    let run = ok(&["search", "--index", s(&index), "--queries", s(&queries), "--out", s(&jsonl), "-k", "5"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("1 queries were longer"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["truncated"], true);
    for line in &lines {
        let text = line["query"].as_str().unwrap();
        let single = search_json(&["search", "--index", s(&index), "--text", text, "-k", "5", "--json"]);
        let got = line["results"].as_array().unwrap();
        for (a, b) in got.iter().zip(&single) {
            assert_eq!(a["id"], b["id"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-5);
        }
    }
}

/// Every file of the folder exactly once, keyed by resolved path.
fn paths_in(index: &Path) -> Vec<String> {
    let opened = Index::open(index).unwrap();
    let mut paths: Vec<String> = opened.live_entries().unwrap().iter().map(|(_, e)| opened.resolve(e).display().to_string()).collect();
    paths.sort();
    paths
}

#[test]
fn a_crashed_build_resumes_and_ends_with_every_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 30, 300);
    let index = dir.path().join("idx");
    let m = model();
    let args = ["index", "build", "--model", s(&m), "--images", s(&images), "--index", s(&index), "--batch-size", "2", "--chunk-size", "4", "--dtype", "f32"];
    let crashed = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).env(longclip::index::CRASH_AFTER_CHUNKS_ENV, "2").output().unwrap();
    assert!(!crashed.status.success(), "the simulated crash must kill the build");
    assert!(!index.join("manifest.json").exists(), "nothing committed");
    let staged = std::fs::read_dir(index.join("staging")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json")).count();
    assert_eq!(staged, 2);
    // A reader is told what happened, no panic.
    let err = fails(&["search", "--index", s(&index), "--text", "x"]);
    assert!(err.contains("not a longclip index") && err.contains("interrupted"), "{err}");

    // The same command resumes; the dead build's lock does not block it.
    let run = ok(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("resuming: 8 images"), "{stderr}");
    assert!(stderr.contains("22 this run, 8 resumed"), "{stderr}");
    let want: Vec<String> = files.iter().map(|f| f.canonicalize().unwrap().display().to_string()).collect();
    assert_eq!(paths_in(&index), want);
    assert!(!index.join("staging").exists());

    // Same embeddings as a build that never crashed.
    let clean = dir.path().join("clean");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&clean), "--dtype", "f32"]);
    let (a, b) = (Index::open(&index).unwrap(), Index::open(&clean).unwrap());
    let rows_by_path = |ix: &Index| -> BTreeMap<String, Vec<f32>> { ix.live_entries().unwrap().into_iter().map(|(r, e)| (ix.resolve(&e).display().to_string(), ix.row_vec(r))).collect() };
    let (ra, rb) = (rows_by_path(&a), rows_by_path(&b));
    for (path, row) in &ra {
        let c = cosine(row, &rb[path]);
        assert!(c > 0.99999, "{path}: {c}");
    }
    // Rerunning a finished build changes nothing.
    let again = ok(&args);
    assert!(String::from_utf8_lossy(&again.stderr).contains("up to date"));
    assert_eq!(Index::open(&index).unwrap().manifest.generation, a.manifest.generation);
}

#[test]
fn a_build_killed_with_sigkill_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 60, 900);
    let index = dir.path().join("idx");
    let m = model();
    let args = ["index", "build", "--model", s(&m), "--images", s(&images), "--index", s(&index), "--batch-size", "1", "--chunk-size", "1"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let chunk = index.join("staging").join("chunk-000003.json");
    while !chunk.exists() && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let committed = index.join("manifest.json").exists();
    eprintln!("killed with the build {}", if committed { "already committed" } else { "in progress" });
    ok(&args);
    let want: Vec<String> = files.iter().map(|f| f.canonicalize().unwrap().display().to_string()).collect();
    assert_eq!(paths_in(&index), want);
}

#[test]
fn add_embeds_new_and_changed_files_and_remove_drops_entries() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    let files = make_images(&images, 10, 50);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", "f32"]);
    let before = Index::open(&index).unwrap();
    let ids_before: BTreeMap<String, u64> = before.live_entries().unwrap().into_iter().map(|(_, e)| (e.path, e.id)).collect();

    let up_to_date = ok(&["index", "add", "--index", s(&index)]);
    assert!(String::from_utf8_lossy(&up_to_date.stderr).contains("up to date"));

    // Three new files and one changed (new content, new size).
    let extra = images.join("new");
    std::fs::create_dir_all(&extra).unwrap();
    for i in 0..3 {
        picture(500 + i, 64).save(extra.join(format!("n{i}.png"))).unwrap();
    }
    picture(999, 80).save_with_format(&files[4], image::ImageFormat::Png).ok();
    let changed = files[4].canonicalize().unwrap().display().to_string();
    let run = ok(&["index", "add", "--index", s(&index)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("4 this run") && stderr.contains("unchanged 9"), "{stderr}");
    let after = Index::open(&index).unwrap();
    assert_eq!(after.len(), 13);
    let mut seen = BTreeSet::new();
    for (r, e) in after.live_entries().unwrap() {
        assert!(seen.insert(e.path.clone()), "{} twice", e.path);
        if after.resolve(&e).display().to_string() == changed {
            assert!(e.id >= 10, "a changed file gets a new entry");
            let single = dir.path().join("one.npy");
            ok(&["embed", "--model", s(&model()), "--images", &changed, "--out", s(&single)]);
            let c = cosine(&after.row_vec(r), &rows(&Tensor::read_npy(&single).unwrap())[0]);
            assert!(c > 0.99999, "re-embedded: {c}");
        } else if let Some(id) = ids_before.get(&e.path) {
            assert_eq!(*id, e.id, "unchanged entries keep their ids");
        }
    }

    // Remove by path and by id; the removed never come back in results.
    let gone_path = files[0].canonicalize().unwrap();
    let gone_id = after.live_entries().unwrap()[5].1.id;
    ok(&["index", "remove", "--index", s(&index), "--path", s(&gone_path), "--id", &gone_id.to_string()]);
    let removed = Index::open(&index).unwrap();
    assert_eq!(removed.len(), 11);
    let hits = search_json(&["search", "--index", s(&index), "--text", "anything", "-k", "11", "--json"]);
    assert_eq!(hits.len(), 11);
    for h in &hits {
        assert_ne!(h["path"].as_str().unwrap(), gone_path.display().to_string());
        assert_ne!(h["id"].as_u64().unwrap(), gone_id);
    }
    let hnsw = search_json(&["search", "--index", s(&index), "--text", "anything", "-k", "11", "--ef", "40", "--json"]);
    let ids = |v: &[serde_json::Value]| v.iter().map(|h| h["id"].as_u64().unwrap()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&hnsw), ids(&hits), "the graph search filters the deleted rows");

    // A deleted file: --missing drops it.
    std::fs::remove_file(&files[9]).unwrap();
    ok(&["index", "remove", "--index", s(&index), "--missing"]);
    assert_eq!(Index::open(&index).unwrap().len(), 10);
    let err = String::from_utf8_lossy(&ok(&["index", "remove", "--index", s(&index), "--id", "12345"]).stderr).into_owned();
    assert!(err.contains("id 12345: not in the index"), "{err}");
    // Files no manifest names are cleaned up: one bitmap per segment at most.
    let m = Index::open(&index).unwrap().manifest;
    for seg in &m.segments {
        let names: Vec<String> = std::fs::read_dir(index.join("segments").join(&seg.name)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let bitmaps: Vec<&String> = names.iter().filter(|n| n.starts_with("deletes-")).collect();
        assert_eq!(bitmaps.iter().map(|b| Some(b.as_str())).collect::<Vec<_>>(), seg.deletes.iter().map(|d| Some(d.as_str())).collect::<Vec<_>>(), "{names:?}");
    }
    let dirs = std::fs::read_dir(index.join("segments")).unwrap().count();
    assert_eq!(dirs, m.segments.len());
}

/// An `index add` in another compute dtype warns once, when it makes the
/// index mixed; later adds in any of its dtypes do not. `index info` and
/// `search` name the mix.
#[test]
fn a_mixed_compute_dtype_is_said_once_and_shown_by_search() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 3, 300);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", "f32", "--no-hnsw"]);
    let like = ["search", "--index", s(&index), "--like", "0", "-k", "2"];
    let stderr = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let searched = stderr(ok(&like));
    assert!(searched.contains("searched 3 vectors (exact; f32, computed in f32)"), "{searched}");

    let add = |seed: u32, dtype: Option<&str>| {
        picture(seed, 64).save(images.join(format!("new{seed}.png"))).unwrap();
        let mut args = vec!["index", "add", "--index", s(&index)];
        if let Some(d) = dtype {
            args.extend(["--compute-dtype", d]);
        }
        stderr(ok(&args))
    };
    let first = add(400, Some("int8"));
    assert!(first.contains("warning") && first.contains("this run: int8") && first.contains("computed in f32+int8"), "{first}");
    // Later adds, in f32 (the default on a mixed index) or int8 again: no warning.
    for (seed, dtype) in [(401, None), (402, Some("int8")), (403, Some("f32"))] {
        let later = add(seed, dtype);
        assert!(later.contains("1 this run") && !later.contains("warning"), "{dtype:?}: {later}");
    }
    let info = info_json(&index);
    assert_eq!((info["count"].as_u64(), info["compute_dtype"].as_str()), (Some(7), Some("f32+int8")));
    let text = String::from_utf8(ok(&["index", "info", "--index", s(&index)]).stdout).unwrap();
    assert!(text.contains("7 x 64 f32, computed in f32+int8"), "{text}");
    let searched = stderr(ok(&like));
    assert!(searched.contains("searched 7 vectors (exact; f32, computed in f32+int8)"), "{searched}");
    // A third dtype extends the mix: said once more.
    let third = add(404, Some("bf16"));
    assert!(third.contains("warning") && third.contains("computed in f32+int8+bf16"), "{third}");
}

/// A build interrupted in f32 and resumed with `--compute-dtype int8`
/// keeps the f32 chunks it staged: the index says `f32+int8` and warns.
#[test]
fn a_resumed_build_in_another_compute_dtype_records_both() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 12, 500);
    let index = dir.path().join("idx");
    let m = model();
    let args = ["index", "build", "--model", s(&m), "--images", s(&images), "--index", s(&index), "--batch-size", "2", "--chunk-size", "4", "--no-hnsw"];
    let crashed = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).env(longclip::index::CRASH_AFTER_CHUNKS_ENV, "1").output().unwrap();
    assert!(!crashed.status.success(), "the simulated crash must kill the build");
    let mut resumed = args.to_vec();
    resumed.extend(["--compute-dtype", "int8"]);
    let stderr = String::from_utf8_lossy(&ok(&resumed).stderr).into_owned();
    assert!(stderr.contains("8 this run, 4 resumed"), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("computed in f32+int8"), "{stderr}");
    assert_eq!(info_json(&index)["compute_dtype"].as_str(), Some("f32+int8"));
}

/// An index kept inside its own image folder does not index (or list as
/// skipped) its own files.
#[test]
fn an_index_inside_its_image_folder_leaves_its_own_files_out() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 3, 600);
    let index = images.join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--no-hnsw"]);
    picture(601, 64).save(images.join("new.png")).unwrap();
    let added = String::from_utf8_lossy(&ok(&["index", "add", "--index", s(&index)]).stderr).into_owned();
    assert!(added.contains("1 this run"), "{added}");
    let info = info_json(&index);
    assert_eq!(info["count"].as_u64(), Some(4));
    assert_eq!(info["skipped"].as_array().map(Vec::len), Some(0), "{info}");
}

#[test]
fn a_second_writer_is_refused_while_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 4, 1);
    let index = dir.path().join("idx");
    std::fs::create_dir_all(&index).unwrap();
    let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(index.join("lock")).unwrap();
    held.lock().unwrap();
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);
    assert!(err.contains("another longclip process is writing this index"), "{err}");
    assert!(!index.join("manifest.json").exists());
    held.unlock().unwrap();
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);

    // Two real builds at once: one wins, the other refuses (or finds it done).
    let index2 = dir.path().join("idx2");
    let m = model();
    let args = ["index", "build", "--model", s(&m), "--images", s(&images), "--index", s(&index2), "--batch-size", "1"];
    let a = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let b = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() || b.status.success());
    for out in [&a, &b] {
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("another longclip process"), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    assert_eq!(Index::open(&index2).unwrap().len(), 4);
}

/// A PNG whose header claims `w` x `h` pixels and holds no pixel data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn bad_files_are_skipped_with_reasons_and_the_rest_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 5, 70);
    std::fs::write(images.join("zero.jpg"), b"").unwrap();
    std::fs::write(images.join("corrupt.png"), b"\x89PNG\r\n\x1a\nthis is not a png at all").unwrap();
    let mut png = Vec::new();
    picture(1, 64).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    std::fs::write(images.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(images.join("huge.png"), png_header_only(20_000, 20_000)).unwrap();
    std::fs::write(images.join("letter.JPG"), b"Dear reader, this is text.").unwrap();
    std::fs::write(images.join("readme.md"), b"# not an image").unwrap();
    let index = dir.path().join("idx");
    let run = ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("skipped 5"), "{}", String::from_utf8_lossy(&run.stderr));
    let info = info_json(&index);
    assert_eq!(info["count"], 5);
    let skipped: BTreeMap<String, String> =
        info["skipped"].as_array().unwrap().iter().map(|v| (v["path"].as_str().unwrap().to_string(), v["reason"].as_str().unwrap().to_string())).collect();
    assert_eq!(skipped.len(), 6, "{skipped:?}");
    for name in ["zero.jpg", "corrupt.png", "truncated.png", "huge.png", "letter.JPG", "readme.md"] {
        let reason = skipped.get(name).unwrap_or_else(|| panic!("{name} not listed: {skipped:?}"));
        assert!(!reason.is_empty());
        // The list puts the path beside the reason; the reason does not repeat it.
        assert!(!reason.contains(name), "{name}: {reason}");
    }
    assert!(skipped["corrupt.png"].starts_with("corrupt or truncated PNG"), "{}", skipped["corrupt.png"]);
    assert!(skipped["letter.JPG"].starts_with("not an image: unknown format"), "{}", skipped["letter.JPG"]);
    assert!(skipped["huge.png"].contains("20000"), "{}", skipped["huge.png"]);
    let text = String::from_utf8(ok(&["index", "info", "--index", s(&index)]).stdout).unwrap();
    assert!(text.contains("skipped     6") && text.contains("huge.png"), "{text}");
    assert!(text.contains("  letter.JPG: not an image"), "{text}");

    // A skipped file that gets fixed is embedded by `add`.
    picture(2, 64).save_with_format(images.join("truncated.png"), image::ImageFormat::Png).unwrap();
    ok(&["index", "add", "--index", s(&index)]);
    let info = info_json(&index);
    assert_eq!(info["count"], 6);
    assert_eq!(info["skipped"].as_array().unwrap().len(), 5);
}

#[test]
fn a_file_that_disappears_mid_build_is_skipped() {
    // The pipeline reads each file when its batch is preprocessed: one listed
    // and then deleted before that is reported, and the rest embedded.
    let dir = tempfile::tempdir().unwrap();
    let files = make_images(dir.path(), 6, 40);
    std::fs::remove_file(&files[3]).unwrap();
    let ckpt = longclip::checkpoint::load(&model()).unwrap();
    let m = longclip::model::LongClip::new(&ckpt, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let embedder = longclip::embed::Embedder { model: &m, device: candle_core::Device::Cpu, batch_size: 2, normalize: true, progress: false };
    let mut kept = 0;
    let mut skipped = Vec::new();
    embedder
        .embed_images_each(&files, |b| {
            kept += b.paths.len();
            skipped.extend(b.skipped);
            Ok(())
        })
        .unwrap();
    assert_eq!(kept, 5);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].1.contains("not found"), "{}", skipped[0].1);
}

#[test]
fn empty_folders_missing_and_corrupt_indexes_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let index = dir.path().join("idx");
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&empty), "--index", s(&index)]);
    assert!(err.contains("no images found"), "{err}");
    let err = fails(&["index", "build", "--model", s(&model()), "--images", "/no/such/folder", "--index", s(&index)]);
    assert!(err.contains("/no/such/folder"), "{err}");

    // Only unusable files: the build fails, naming why, and lists them.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("broken.jpg"), b"\xff\xd8 not really").unwrap();
    let bad_index = dir.path().join("bad-idx");
    let err = fails(&["index", "build", "--model", s(&model()), "--images", s(&bad), "--index", s(&bad_index)]);
    assert!(err.contains("no image could be embedded"), "{err}");
    let info = info_json(&bad_index);
    assert_eq!(info["count"], 0);
    assert_eq!(info["skipped"][0]["path"], "broken.jpg");
    let none = search_json(&["search", "--index", s(&bad_index), "--text", "x", "--json"]);
    assert!(none.is_empty());

    let err = fails(&["search", "--index", "/no/such/index", "--text", "x"]);
    assert!(err.contains("/no/such/index") && err.contains("no such index"), "{err}");
    let err = fails(&["index", "info", "--index", s(&empty)]);
    assert!(err.contains("not a longclip index"), "{err}");

    let images = dir.path().join("p");
    make_images(&images, 6, 5);
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);
    let manifest = Index::open(&index).unwrap().manifest;

    // Damaged files are named.
    let seg = index.join("segments").join(&manifest.segments[0].name);
    let graph = seg.join("hnsw.hnsw.graph");
    let good_graph = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, vec![7u8; good_graph.len()]).unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x", "--ef", "10"]);
    assert!(err.contains("corrupt index") && err.contains("HNSW"), "{err}");
    std::fs::write(&graph, &good_graph).unwrap();

    let emb_name = manifest.segments[0].vectors_file();
    let emb = seg.join(&emb_name);
    let good = std::fs::read(&emb).unwrap();
    std::fs::write(&emb, &good[..good.len() - 10]).unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x"]);
    assert!(err.contains("corrupt index") && err.contains(&emb_name), "{err}");
    std::fs::remove_file(&emb).unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x"]);
    assert!(err.contains("missing"), "{err}");
    std::fs::write(&emb, &good).unwrap();
    std::fs::write(index.join("manifest.json"), b"{\"format\": \"longclip-index\", \"truncat").unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x"]);
    assert!(err.contains("corrupt index manifest"), "{err}");

    let err = fails(&["search", "--index", s(&index), "--text", "x", "-k", "0"]);
    assert!(err.contains("-k"), "{err}");
}

#[test]
fn a_different_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 4, 11);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index)]);

    // Same shapes, other weights: same dim, different identity.
    let ckpt = longclip::checkpoint::load(&model()).unwrap();
    let other = longclip::checkpoint::random(&ckpt.config, 7).unwrap();
    let other_path = dir.path().join("other.safetensors");
    longclip::export::save_checkpoint(&other, &other_path).unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x", "--model", s(&other_path)]);
    assert!(err.contains("another model"), "{err}");
    let err = fails(&["index", "add", "--index", s(&index), "--model", s(&other_path)]);
    assert!(err.contains("another model"), "{err}");

    // Another embedding width.
    let mut config = ckpt.config.clone();
    config.embed_dim = 32;
    let narrow = dir.path().join("narrow.safetensors");
    longclip::export::save_checkpoint(&longclip::checkpoint::random(&config, 1).unwrap(), &narrow).unwrap();
    let err = fails(&["search", "--index", s(&index), "--text", "x", "--model", s(&narrow)]);
    assert!(err.contains("64-d") && err.contains("32 dimensions"), "{err}");
}

#[test]
fn a_full_disk_fails_the_write_and_keeps_the_previous_index() {
    if Command::new("bash").arg("-c").arg("true").status().map(|s| !s.success()).unwrap_or(true) {
        eprintln!("SKIP: no bash to set a file size limit");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("p");
    make_images(&images, 6, 21);
    let index = dir.path().join("idx");
    ok(&["index", "build", "--model", s(&model()), "--images", s(&images), "--index", s(&index), "--dtype", "f32"]);
    let before = Index::open(&index).unwrap();
    let before_manifest = std::fs::read(index.join("manifest.json")).unwrap();
    // 60 more images: the new embeddings file outgrows an 8 KiB file-size
    // limit, which the kernel enforces like a full disk (EFBIG, signal ignored).
    make_images(&images.join("more"), 60, 400);
    let script = format!("trap '' XFSZ; ulimit -f 16; exec '{}' index add --index '{}'", env!("CARGO_BIN_EXE_longclip"), s(&index));
    let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the write must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("File too large") || stderr.contains("cannot write"), "{stderr}");
    assert_eq!(std::fs::read(index.join("manifest.json")).unwrap(), before_manifest, "the previous index is in force");
    let still = Index::open(&index).unwrap();
    assert_eq!(still.len(), before.len());
    let names: Vec<String> = std::fs::read_dir(index.join("segments")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), before.segments().len(), "the failed segment is removed: {names:?}");
    ok(&["search", "--index", s(&index), "--text", "x"]);
    // With room again, the same command finishes the job.
    ok(&["index", "add", "--index", s(&index)]);
    assert_eq!(Index::open(&index).unwrap().len(), 66);
}

#[test]
fn import_then_search_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (300, 24);
    let data = clustered(n, d, 3);
    let npy = dir.path().join("emb.npy");
    write_npy_f32(&npy, &data, n, d);
    let ids = dir.path().join("ids.txt");
    let lines: String = (0..n).map(|i| if i == 2 { "http://example.com/2.jpg\ta caption, with \"quotes\"\n".to_string() } else { format!("images/{i:05}.jpg\n") }).collect();
    std::fs::write(&ids, &lines).unwrap();
    let index = dir.path().join("idx");
    ok(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&index), "--dtype", "f32"]);
    let info = info_json(&index);
    assert_eq!(info["count"], n);
    assert_eq!(info["dim"], d);
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.entry(2).unwrap().caption.as_deref(), Some("a caption, with \"quotes\""));

    // Every row normalized on import; exact and HNSW equal brute force.
    for q in [0usize, 17, 123, 299] {
        let want = brute_force(&opened, &opened.row_vec(q));
        let exact = search_json(&["search", "--index", s(&index), "--like", &q.to_string(), "--exact", "--json"]);
        assert_eq!(exact[0]["id"], q as u64);
        assert!((exact[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5);
        for (h, (row, score)) in exact.iter().zip(&want) {
            assert_eq!(h["id"].as_u64().unwrap(), *row as u64);
            assert!((h["score"].as_f64().unwrap() - score).abs() < 1e-5);
        }
        let hnsw = search_json(&["search", "--index", s(&index), "--like", &q.to_string(), "--ef", "300", "--json"]);
        assert_eq!(hnsw, exact, "HNSW with a beam over the whole set is exact");
    }
    let err = fails(&["search", "--index", s(&index), "--text", "a cat"]);
    assert!(err.contains("--model"), "{err}");

    // Export: clip-retrieval's layout, rows as stored, metadata in row order.
    let out = dir.path().join("export");
    ok(&["index", "export", "--index", s(&index), "--out", s(&out)]);
    let exported = Tensor::read_npy(out.join("img_emb/img_emb_0.npy")).unwrap();
    assert_eq!(exported.dims(), &[n, d]);
    let exported = rows(&exported);
    for r in [0, 150, 299] {
        assert_eq!(exported[r], opened.row_vec(r));
    }
    let meta = longclip::table::read_parquet(&out.join("metadata/metadata_0.parquet")).unwrap();
    let names: Vec<&str> = meta.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["image_path", "id", "caption"]);
    assert!(meta.iter().all(|c| c.values.len() == n));
    use longclip::table::Value;
    assert_eq!(meta[0].values[0], Value::Text("images/00000.jpg".into()));
    assert_eq!(meta[1].values[2], Value::Int(2));
    assert_eq!(meta[2].values[0], Value::Null);
    assert_eq!(meta[0].values[2], Value::Text("http://example.com/2.jpg".into()));
    assert_eq!(meta[2].values[2], Value::Text("a caption, with \"quotes\"".into()));
    assert!(!out.join("metadata/metadata_0.csv").exists());
    let err = fails(&["index", "export", "--index", s(&index), "--out", s(&out)]);
    assert!(err.contains("not empty"), "{err}");

    // f16 import: exported as float16, equal to the stored halves.
    let index16 = dir.path().join("idx16");
    ok(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&index16), "--no-hnsw"]);
    let out16 = dir.path().join("export16");
    ok(&["index", "export", "--index", s(&index16), "--out", s(&out16)]);
    let t = Tensor::read_npy(out16.join("img_emb/img_emb_0.npy")).unwrap();
    assert_eq!(t.dtype(), candle_core::DType::F16);
    assert_eq!(rows(&t)[5], Index::open(&index16).unwrap().row_vec(5));

    // Bad imports are named.
    std::fs::write(&ids, "just one\n").unwrap();
    let err = fails(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&dir.path().join("x"))]);
    assert!(err.contains("1 ids") && err.contains("300 rows"), "{err}");
    let mut zero = data.clone();
    zero[7 * d..8 * d].iter_mut().for_each(|v| *v = 0.0);
    write_npy_f32(&npy, &zero, n, d);
    std::fs::write(&ids, &lines).unwrap();
    let err = fails(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&dir.path().join("y"))]);
    assert!(err.contains("row 7") && err.contains("zeros"), "{err}");
    assert!(!dir.path().join("y/manifest.json").exists());
    let err = fails(&["index", "import", "--embeddings", s(&ids), "--ids", s(&ids), "--index", s(&dir.path().join("z"))]);
    assert!(err.contains("not an .npy"), "{err}");
    let err = fails(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&index)]);
    assert!(err.contains("already an index"), "{err}");
}

#[test]
fn batched_exact_search_equals_brute_force_for_every_query() {
    // 20 queries take the matrix-product path; 5000 rows span two of its blocks.
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (5000, 32);
    let data = clustered(n, d, 11);
    let npy = dir.path().join("emb.npy");
    write_npy_f32(&npy, &data, n, d);
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, (0..n).map(|i| format!("{i}.jpg\n")).collect::<String>()).unwrap();
    for dtype in ["f32", "f16"] {
        let index = dir.path().join(format!("idx-{dtype}"));
        ok(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&index), "--dtype", dtype, "--no-hnsw"]);
        let opened = Index::open(&index).unwrap();
        let queries: Vec<Vec<f32>> = (0..20).map(|i| opened.row_vec(i * 249 + 7)).collect();
        let batched = longclip::search::exact(&opened, &queries, 10);
        for (q, hits) in queries.iter().zip(&batched) {
            let want = brute_force(&opened, q);
            assert_eq!(hits.len(), 10);
            for ((row, score), (want_row, want_score)) in hits.iter().zip(&want) {
                assert!((*score as f64 - want_score).abs() < 1e-5, "{dtype}: {score} vs {want_score}");
                // Rows may swap only where scores tie to rounding.
                if row != want_row {
                    assert!((*score as f64 - want_score).abs() < 1e-6, "{dtype}: row {row} vs {want_row}");
                }
            }
            let single = longclip::search::exact(&opened, std::slice::from_ref(q), 10);
            for (a, b) in single[0].iter().zip(hits) {
                assert!((a.1 - b.1).abs() < 1e-5, "{dtype}: one query {} vs batched {}", a.1, b.1);
            }
        }
    }
}
