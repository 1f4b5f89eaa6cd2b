//! `index import --clip-retrieval DIR`: clip-retrieval's output folder
//! (img_emb/img_emb_{i}.npy + metadata/metadata_{i}.parquet) as an index.

mod common;

use std::path::Path;

use common::{clustered, fails, info_json, ok, s, search_json, write_npy_f32};
use longclip::index::Index;
use longclip::table::{write_parquet, Column, Value};

/// Writes partition `name` (e.g. "0", "007") of `rows` rows of width `d`:
/// paths `{prefix}{r}.jpg`, captions on even rows; float16 when `half`.
fn partition(dir: &Path, name: &str, rows: usize, d: usize, prefix: &str, half: bool) {
    std::fs::create_dir_all(dir.join("img_emb")).unwrap();
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    let npy = dir.join(format!("img_emb/img_emb_{name}.npy"));
    let data = clustered(rows, d, rows as u64 + d as u64);
    if half {
        let t = candle_core::Tensor::from_vec(data, (rows, d), &candle_core::Device::Cpu).unwrap();
        t.to_dtype(candle_core::DType::F16).unwrap().write_npy(&npy).unwrap();
    } else {
        write_npy_f32(&npy, &data, rows, d);
    }
    let paths = (0..rows).map(|r| Value::Text(format!("{prefix}{r}.jpg"))).collect();
    let captions = (0..rows).map(|r| if r % 2 == 0 { Value::Text(format!("caption {prefix}{r}")) } else { Value::Null }).collect();
    let columns = [Column { name: "image_path".into(), values: paths }, Column { name: "caption".into(), values: captions }];
    write_parquet(&dir.join(format!("metadata/metadata_{name}.parquet")), &columns).unwrap();
}

fn import(source: &Path, index: &Path) -> std::process::Output {
    ok(&["index", "import", "--clip-retrieval", s(source), "--index", s(index), "--dtype", "f32"])
}

fn import_fails(source: &Path, index: &Path) -> String {
    let err = fails(&["index", "import", "--clip-retrieval", s(source), "--index", s(index)]);
    assert!(!index.join("manifest.json").exists(), "no index is left behind: {err}");
    err
}

fn segment_rows(index: &Path) -> Vec<u64> {
    info_json(index)["segments"].as_array().unwrap().iter().map(|seg| seg["rows"].as_u64().unwrap()).collect()
}

#[test]
fn export_then_import_gives_the_same_search_results() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (120, 16);
    let npy = dir.path().join("emb.npy");
    write_npy_f32(&npy, &clustered(n, d, 9), n, d);
    let ids = dir.path().join("ids.txt");
    let lines: String = (0..n).map(|i| if i % 3 == 0 { format!("img/{i}.jpg\tcaption {i}\n") } else { format!("img/{i}.jpg\n") }).collect();
    std::fs::write(&ids, lines).unwrap();
    let first = dir.path().join("first");
    ok(&["index", "import", "--embeddings", s(&npy), "--ids", s(&ids), "--index", s(&first), "--dtype", "f32"]);
    let out = dir.path().join("export");
    ok(&["index", "export", "--index", s(&first), "--out", s(&out)]);
    let second = dir.path().join("second");
    import(&out, &second);

    let (a, b) = (Index::open(&first).unwrap(), Index::open(&second).unwrap());
    assert_eq!(b.len(), n);
    assert_eq!(b.entry(3).unwrap().caption.as_deref(), Some("caption 3"));
    assert_eq!(b.entry(4).unwrap().caption, None);
    for q in ["0", "41", "119"] {
        let want = search_json(&["search", "--index", s(&first), "--like", q, "--exact", "--json", "-k", "10"]);
        let got = search_json(&["search", "--index", s(&second), "--like", q, "--exact", "--json", "-k", "10"]);
        assert_eq!(want.len(), got.len());
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w["id"], g["id"]);
            assert_eq!(a.entry(w["id"].as_u64().unwrap() as usize).unwrap().path, b.entry(g["id"].as_u64().unwrap() as usize).unwrap().path);
            assert!((w["score"].as_f64().unwrap() - g["score"].as_f64().unwrap()).abs() < 1e-5, "{w} {g}");
        }
    }
}

#[test]
fn each_partition_is_a_segment_in_number_order() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("cr");
    // Zero-padded numbers, out of listing order, float16 and float32 mixed.
    partition(&source, "0010", 7, 8, "ten/", false);
    partition(&source, "0002", 5, 8, "two/", true);
    std::fs::create_dir_all(source.join("text_emb")).unwrap();
    std::fs::write(source.join("text_emb/text_emb_0.npy"), b"ignored").unwrap();
    let index = dir.path().join("idx");
    import(&source, &index);
    assert_eq!(segment_rows(&index), [5, 7]);
    let opened = Index::open(&index).unwrap();
    assert_eq!(opened.entry(0).unwrap().path, "two/0.jpg");
    assert_eq!(opened.entry(0).unwrap().caption.as_deref(), Some("caption two/0"));
    assert_eq!(opened.entry(5).unwrap().path, "ten/0.jpg");
    assert_eq!(opened.entry(6).unwrap().caption, None);

    // Over --segment-rows: a partition is split.
    let split = dir.path().join("split");
    ok(&["index", "import", "--clip-retrieval", s(&source), "--index", s(&split), "--segment-rows", "4"]);
    assert_eq!(segment_rows(&split), [4, 1, 4, 3]);

    // --append adds partitions of new paths as new segments.
    let more = dir.path().join("more");
    partition(&more, "0", 3, 8, "more/", false);
    ok(&["index", "import", "--clip-retrieval", s(&more), "--index", s(&index), "--append"]);
    assert_eq!(segment_rows(&index), [5, 7, 3]);
    let err = fails(&["index", "import", "--clip-retrieval", s(&more), "--index", s(&index), "--append"]);
    assert!(err.contains("more/0.jpg") && err.contains("in the index already"), "{err}");
}

#[test]
fn bad_layouts_are_errors_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("idx");

    // Row counts differ.
    let a = dir.path().join("a");
    partition(&a, "0", 4, 8, "a/", false);
    partition(&a, "1", 3, 8, "b/", false);
    std::fs::copy(a.join("metadata/metadata_0.parquet"), a.join("metadata/metadata_1.parquet")).unwrap();
    let err = import_fails(&a, &index);
    assert!(err.contains("metadata_1.parquet has 4 rows") && err.contains("img_emb_1.npy has 3 rows"), "{err}");

    // A matrix without its table, and a table without its matrix.
    let b = dir.path().join("b");
    partition(&b, "0", 2, 8, "a/", false);
    partition(&b, "1", 2, 8, "b/", false);
    std::fs::remove_file(b.join("metadata/metadata_1.parquet")).unwrap();
    let err = import_fails(&b, &index);
    assert!(err.contains("img_emb_1.npy: no metadata/metadata_1.parquet"), "{err}");
    std::fs::remove_file(b.join("img_emb/img_emb_1.npy")).unwrap();
    partition(&b, "2", 2, 8, "c/", false);
    std::fs::remove_file(b.join("img_emb/img_emb_2.npy")).unwrap();
    let err = import_fails(&b, &index);
    assert!(err.contains("metadata_2.parquet: no img_emb/img_emb_2.npy"), "{err}");

    // Widths differ between partitions.
    let c = dir.path().join("c");
    partition(&c, "0", 2, 8, "a/", false);
    partition(&c, "1", 2, 6, "b/", false);
    let err = import_fails(&c, &index);
    assert!(err.contains("img_emb_1.npy has 6-d rows") && err.contains("img_emb_0.npy has 8-d rows"), "{err}");

    // The same image_path in two partitions.
    let e = dir.path().join("e");
    partition(&e, "0", 3, 8, "same/", false);
    partition(&e, "1", 4, 8, "same/", false);
    let err = import_fails(&e, &index);
    assert!(err.contains("'same/0.jpg'") && err.contains("metadata_0.parquet row 0") && err.contains("metadata_1.parquet row 0"), "{err}");

    // No image_path column; not a parquet file; no partitions at all.
    let f = dir.path().join("f");
    partition(&f, "0", 2, 8, "a/", false);
    let t = f.join("metadata/metadata_0.parquet");
    write_parquet(&t, &[Column { name: "url".into(), values: vec![Value::Text("x".into()), Value::Text("y".into())] }]).unwrap();
    let err = import_fails(&f, &index);
    assert!(err.contains("metadata_0.parquet: no column 'image_path' (columns: url)"), "{err}");
    std::fs::write(&t, "image_path\nx\ny\n").unwrap();
    let err = import_fails(&f, &index);
    assert!(err.contains("metadata_0.parquet") && err.contains("not a parquet file"), "{err}");
    let err = import_fails(&dir.path().join("nothing"), &index);
    assert!(err.contains("nothing: no such folder"), "{err}");
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let err = import_fails(&dir.path().join("empty"), &index);
    assert!(err.contains("no img_emb/img_emb_{i}.npy"), "{err}");

    // --clip-retrieval excludes the npy/ids arguments.
    let err = fails(&["index", "import", "--clip-retrieval", s(&f), "--embeddings", "x.npy", "--ids", "x.txt", "--index", s(&index)]);
    assert!(err.contains("cannot be used with"), "{err}");
}
