//! `longclip inference`: webdataset and file inputs, clip-retrieval's
//! layout byte for byte where it can be, the partition rule, restart after
//! a crash, and every kind of bad input (skipped and counted, or refused).

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use common::{fails, fixture, ok, picture, s};
use half::f16;
use longclip::table::{read_parquet, Column, Value};

const MODEL: &str = "tiny-longclip.pt";

fn model() -> String {
    fixture(MODEL).display().to_string()
}

fn jpeg(seed: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    picture(seed, 48).write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn png(seed: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    picture(seed, 40).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A tar of `(name, bytes)` members, in order.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

fn caption(n: u32) -> String {
    format!("photo number {n}: a long description of a coloured square on a smooth gradient, the square sits at a place of its own and the colours are all different")
}

/// A clean sample: jpg (or png), txt, json.
fn sample(key: &str, n: u32) -> Vec<(String, Vec<u8>)> {
    let image = if n % 3 == 0 { (format!("{key}.png"), png(n)) } else { (format!("{key}.jpg"), jpeg(n)) };
    let json = format!(r#"{{"url": "http://example.com/{n}.jpg", "width": {}, "exif": {{"iso": {}}}, "caption": "dropped"}}"#, 40 + n, 100 * n);
    vec![image, (format!("{key}.txt"), caption(n).into_bytes()), (format!("{key}.json"), json.into_bytes())]
}

/// `count` shards of `per` clean samples each: keys `SSSSSIIII` as img2dataset names them.
fn dataset(dir: &Path, count: u32, per: u32) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for shard in 0..count {
        let members: Vec<_> = (0..per).flat_map(|i| sample(&format!("{shard:05}{i:04}"), shard * 100 + i)).collect();
        write_tar(&dir.join(format!("{shard:05}.tar")), &members);
    }
    format!("{}/{{00000..{:05}}}.tar", dir.display(), count - 1)
}

fn infer(input: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let m = model();
    let mut args = vec!["inference", "--input", input, "--input-format", "webdataset", "--output-folder", s(out), "--model", &m, "--no-progress", "--batch-size", "4"];
    args.extend_from_slice(extra);
    ok(&args)
}

fn npy_f16(path: &Path) -> (Vec<u8>, usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
    let header = String::from_utf8_lossy(&bytes[..header_len]).into_owned();
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap().to_string();
    let dims: Vec<usize> = shape.split(',').map(|d| d.trim().parse().unwrap()).collect();
    assert!(header.contains("'descr': '<f2'"), "{header}");
    let data = bytes[header_len..].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    (bytes[..header_len].to_vec(), dims[0], dims[1], data)
}

fn column<'a>(cols: &'a [Column], name: &str) -> &'a [Value] {
    &cols.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no column {name}")).values
}

fn texts(values: &[Value]) -> Vec<String> {
    values.iter().map(|v| match v {
        Value::Text(t) => t.clone(),
        other => panic!("not text: {other:?}"),
    }).collect()
}

fn stats(out: &Path, i: usize) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("stats/{i}.json"))).unwrap()).unwrap()
}

#[test]
fn npy_header_is_numpys_byte_for_byte() {
    // tests/fixtures/npy_headers.json: headers numpy's np.save wrote.
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("npy_headers.json")).unwrap()).unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let want: Vec<u8> = c["header"].as_str().unwrap().chars().map(|ch| ch as u32 as u8).collect();
        let got = longclip::index::npy_header(c["descr"].as_str().unwrap(), c["rows"].as_u64().unwrap() as usize, c["cols"].as_u64().unwrap() as usize);
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "{c}");
    }
}

#[test]
fn webdataset_partitions_write_clip_retrievals_layout() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 5, 3);
    let out = t.path().join("out");
    infer(&input, &out, &["--partition-count", "3", "--enable-text", "--enable-metadata"]);
    for p in 0..3 {
        assert!(out.join(format!("img_emb/img_emb_{p}.npy")).is_file());
        assert!(out.join(format!("text_emb/text_emb_{p}.npy")).is_file());
        assert!(out.join(format!("metadata/metadata_{p}.parquet")).is_file());
        assert_eq!(stats(&out, p)["sample_count"], 6 - 3 * (p == 2) as u64, "partition {p}");
    }
    // Partition 1 takes shards 1 and 4 (n % 3 == 1), samples in tar order.
    let cols = read_parquet(&out.join("metadata/metadata_1.parquet")).unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["image_path", "caption", "url", "width", "exif.iso"]);
    let keys = texts(column(&cols, "image_path"));
    assert_eq!(keys, ["000010000", "000010001", "000010002", "000040000", "000040001", "000040002"]);
    assert_eq!(texts(column(&cols, "caption"))[4], caption(401));
    assert_eq!(column(&cols, "width")[0], Value::Int(140));
    assert_eq!(column(&cols, "exif.iso")[5], Value::Int(40200));

    // The rows are the images and captions as `longclip embed` encodes them
    // (f16 storage: within 1e-3), L2-normalized.
    let (header, rows, dim, data) = npy_f16(&out.join("img_emb/img_emb_1.npy"));
    assert_eq!((rows, header.len() % 64), (6, 0));
    let images = t.path().join("loose");
    std::fs::create_dir_all(&images).unwrap();
    let mut list = String::new();
    for (i, n) in [100u32, 101, 102, 400, 401, 402].iter().enumerate() {
        let (name, bytes) = if n % 3 == 0 { (format!("{i}.png"), png(*n)) } else { (format!("{i}.jpg"), jpeg(*n)) };
        std::fs::write(images.join(&name), bytes).unwrap();
        list.push_str(&format!("{}\n", images.join(&name).display()));
    }
    std::fs::write(t.path().join("list.txt"), list).unwrap();
    let want = t.path().join("want.npy");
    ok(&["embed", "--model", &model(), "--images", s(&t.path().join("list.txt")), "--out", s(&want)]);
    let want = candle_core::Tensor::read_npy(&want).unwrap().to_vec2::<f32>().unwrap();
    for (r, w) in data.chunks_exact(dim).zip(&want) {
        let worst = r.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "image row differs by {worst}");
    }
    let (_, _, _, text_rows) = npy_f16(&out.join("text_emb/text_emb_1.npy"));
    let captions: Vec<String> = [100, 101, 102, 400, 401, 402].iter().map(|&n| caption(n)).collect();
    std::fs::write(t.path().join("caps.json"), serde_json::to_string(&captions).unwrap()).unwrap();
    let want = t.path().join("caps.npy");
    ok(&["embed", "--model", &model(), "--texts", s(&t.path().join("caps.json")), "--out", s(&want)]);
    let want = candle_core::Tensor::read_npy(&want).unwrap().to_vec2::<f32>().unwrap();
    for (r, w) in text_rows.chunks_exact(dim).zip(&want) {
        let worst = r.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "text row differs by {worst}");
    }
}

#[test]
fn partition_numbers_are_zero_padded_and_empty_partitions_write_only_stats() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 2, 2);
    let out = t.path().join("out");
    infer(&input, &out, &["--partition-count", "12", "--partition", "1"]);
    assert!(out.join("img_emb/img_emb_01.npy").is_file());
    assert!(out.join("metadata/metadata_01.parquet").is_file());
    infer(&input, &out, &["--partition-count", "12", "--partition", "7"]);
    assert!(!out.join("img_emb/img_emb_07.npy").exists());
    assert!(!out.join("metadata/metadata_07.parquet").exists());
    assert_eq!(stats(&out, 7)["sample_count"], 0);
    assert_eq!(stats(&out, 7)["finished"], true);
}

#[test]
fn files_input_pairs_captions_and_partitions_by_sorted_path() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("photos");
    std::fs::create_dir_all(dir.join("b")).unwrap();
    for (i, name) in ["a1", "a2", "b/c3", "d4"].iter().enumerate() {
        std::fs::write(dir.join(format!("{name}.jpg")), jpeg(i as u32)).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), caption(i as u32)).unwrap();
    }
    let out = t.path().join("out");
    let m = model();
    ok(&["inference", "--input", s(&dir), "--output-folder", s(&out), "--model", &m, "--enable-text", "--partition-count", "2", "--no-progress"]);
    let cols = read_parquet(&out.join("metadata/metadata_0.parquet")).unwrap();
    // image_path is the input folder joined with the file's path, as clip-retrieval writes it.
    let want: Vec<String> = ["a1", "b/c3"].iter().map(|n| dir.join(format!("{n}.jpg")).display().to_string()).collect();
    assert_eq!(texts(column(&cols, "image_path")), want);
    assert_eq!(texts(column(&cols, "caption")), [caption(0), caption(2)]);
}

#[test]
fn finished_partitions_are_skipped_and_a_crashed_one_is_redone_whole() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 4, 3);
    let clean = t.path().join("clean");
    infer(&input, &clean, &["--partition-count", "2", "--enable-text"]);

    let out = t.path().join("out");
    infer(&input, &out, &["--partition-count", "2", "--partition", "0", "--enable-text"]);
    let first = std::fs::read(out.join("stats/0.json")).unwrap();
    // Partition 1 dies after its first batch, leaving temporary files.
    let m = model();
    let crashed = Command::new(env!("CARGO_BIN_EXE_longclip"))
        .args(["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--no-progress", "--batch-size", "4", "--partition-count", "2", "--enable-text"])
        .env("LONGCLIP_TEST_CRASH_AFTER_BATCHES", "1")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert!(!out.join("stats/1.json").exists());
    assert!(!out.join("img_emb/img_emb_1.npy").exists(), "nothing half written under the final name");
    let rerun = infer(&input, &out, &["--partition-count", "2", "--enable-text"]);
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(stderr.contains("partition 0/2: already done"), "{stderr}");
    assert_eq!(std::fs::read(out.join("stats/0.json")).unwrap(), first, "finished partition untouched");
    for f in ["img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "text_emb/text_emb_1.npy", "metadata/metadata_1.parquet"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(clean.join(f)).unwrap(), "{f} differs from a clean run");
    }
    let leftovers: Vec<String> = ["img_emb", "text_emb", "metadata", "stats"]
        .iter()
        .flat_map(|d| std::fs::read_dir(out.join(d)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with('.') || n.starts_with("wip_"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_samples_are_skipped_and_counted_with_reasons() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("ds");
    std::fs::create_dir_all(&ds).unwrap();
    let mut a = sample("good1", 1);
    a.push(("notext.txt".into(), b"a caption with no image".to_vec()));
    a.push(("fake.jpg".into(), b"this is not a jpeg".to_vec()));
    a.push(("fake.txt".into(), caption(2).into_bytes()));
    a.push(("fake.json".into(), b"{}".to_vec()));
    a.extend(sample("good1", 3)); // the same key again
    a.push(("dots.v2.jpg".into(), jpeg(4))); // key "dots", extension "v2.jpg"
    a.push(("dots.txt".into(), caption(4).into_bytes()));
    a.push(("latin1.jpg".into(), jpeg(5)));
    a.push(("latin1.txt".into(), b"caf\xe9 au lait".to_vec()));
    a.push(("latin1.json".into(), b"{}".to_vec()));
    a.push(("arr.jpg".into(), jpeg(6)));
    a.push(("arr.txt".into(), caption(6).into_bytes()));
    a.push(("arr.json".into(), b"[1, 2]".to_vec()));
    a.extend(sample("good2", 7));
    write_tar(&ds.join("00000.tar"), &a);
    // A second shard cut in the middle of a member.
    let b: Vec<_> = (0..4).flat_map(|i| sample(&format!("cut{i}"), 10 + i)).collect();
    write_tar(&ds.join("00001.tar"), &b);
    let full = std::fs::read(ds.join("00001.tar")).unwrap();
    std::fs::write(ds.join("00001.tar"), &full[..full.len() * 2 / 3]).unwrap();

    let out = t.path().join("out");
    let run = infer(&format!("{}/{{00000..00001}}.tar", ds.display()), &out, &["--enable-text", "--enable-metadata"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("00001.tar"), "the broken shard is named: {stderr}");
    let st = stats(&out, 0);
    let skipped = &st["skipped"];
    assert_eq!(skipped["no image"], 2, "{st:#}"); // notext, dots
    assert_eq!(skipped["image cannot be decoded"], 1, "{st:#}");
    assert_eq!(skipped["duplicate key"], 1, "{st:#}");
    assert_eq!(skipped["caption is not UTF-8"], 1, "{st:#}");
    assert_eq!(skipped[".json is not a JSON object"], 1, "{st:#}");
    assert!(skipped.get("no metadata (.json)").is_none(), "{st:#}");
    assert!(skipped["sample cut off by a broken tar"].as_u64().unwrap() <= 1, "{st:#}");
    assert_eq!(st["shard_errors"].as_array().unwrap().len(), 1, "{st:#}");
    let cols = read_parquet(&out.join("metadata/metadata_0.parquet")).unwrap();
    let keys = texts(column(&cols, "image_path"));
    assert_eq!(&keys[..2], ["good1", "good2"]);
    assert!(keys[2..].iter().all(|k| k.starts_with("cut")) && keys.len() >= 3, "{keys:?}");
    assert_eq!(st["sample_count"].as_u64().unwrap() as usize, keys.len());
    let details = st["skipped_samples"].to_string();
    assert!(details.contains("dots") && details.contains("v2.jpg"), "the extra-dot key is explained: {details}");
}

#[test]
fn missing_shards_and_foreign_output_folders_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 2, 2);
    let m = model();
    let out = t.path().join("out");
    let missing = format!("{}/{{00000..00004}}.tar", t.path().join("ds").display());
    let e = fails(&["inference", "--input", &missing, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m]);
    assert!(e.contains("3 of which do not exist") && e.contains("00002.tar"), "{e}");
    assert!(!out.exists(), "nothing written");

    infer(&input, &out, &[]);
    let other = fixture("tiny-clip77.pt").display().to_string();
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &other, "--no-progress"]);
    assert!(e.contains("another model"), "{e}");
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--partition-count", "3"]);
    assert!(e.contains("--partition-count 1"), "{e}");

    // clip-retrieval output that longclip did not write.
    let theirs = t.path().join("theirs");
    std::fs::create_dir_all(theirs.join("img_emb")).unwrap();
    std::fs::write(theirs.join("img_emb/img_emb_0.npy"), b"x").unwrap();
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&theirs), "--model", &m]);
    assert!(e.contains("not written by `longclip inference`"), "{e}");

    let e = fails(&["inference", "--input", &input, "--output-folder", s(&out), "--model", &m]);
    assert!(e.contains("--input-format webdataset"), "{e}");
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--partition", "1"]);
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn json_fields_keep_file_order_like_json_normalize() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("ds");
    std::fs::create_dir_all(&ds).unwrap();
    let json = br#"{"width": 3, "idx": 1, "nested": {"b": 1, "a": 2}, "ok": true, "f": 1.5}"#;
    write_tar(&ds.join("0.tar"), &[("k.jpg".into(), jpeg(1)), ("k.json".into(), json.to_vec())]);
    let out = t.path().join("out");
    infer(&format!("{}/0.tar", ds.display()), &out, &["--enable-metadata"]);
    let cols = read_parquet(&out.join("metadata/metadata_0.parquet")).unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    // pd.json_normalize([...]).columns on the same object.
    assert_eq!(names, ["image_path", "width", "idx", "ok", "f", "nested.b", "nested.a"]);
}

#[test]
fn the_same_input_spelled_differently_is_the_same_input() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.jpg"), jpeg(1)).unwrap();
    let out = t.path().join("out");
    let m = model();
    ok(&["inference", "--input", s(&dir), "--output-folder", s(&out), "--model", &m, "--no-progress"]);
    let again = format!("{}//./", dir.display());
    let run = ok(&["inference", "--input", &again, "--output-folder", s(&out), "--model", &m, "--no-progress"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("already done"));
}

#[test]
fn unreadable_shards_are_named_and_a_partition_of_only_those_is_not_marked_done() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("ds");
    std::fs::create_dir_all(ds.join("00001.tar")).unwrap();
    std::fs::write(ds.join("00000.tar"), b"").unwrap();
    let out = t.path().join("out");
    let m = model();
    let base = ["inference", "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--no-progress"];
    let folder = format!("{}/{{00000..00001}}.tar", ds.display());
    let e = fails(&[&base[..], &["--input", &folder]].concat());
    assert!(e.contains("00001.tar is a folder"), "{e}");
    let glob = format!("{}/*.tar", ds.display());
    let e = fails(&[&base[..], &["--input", &glob]].concat());
    assert!(e.contains("wildcards are not expanded"), "{e}");
    let empty = format!("{}/00000.tar", ds.display());
    let e = fails(&[&base[..], &["--input", &empty]].concat());
    assert!(e.contains("is empty (0 bytes)") && e.contains("not marked done"), "{e}");
    assert!(!out.join("stats/0.json").exists());
}

#[test]
fn an_imported_inference_folder_keeps_its_model() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 2, 3);
    let out = t.path().join("out");
    infer(&input, &out, &["--partition-count", "2"]);
    let index = t.path().join("index");
    let other = fixture("tiny-clip77.pt").display().to_string();
    let e = fails(&["index", "import", "--clip-retrieval", s(&out), "--index", s(&index), "--model", &other]);
    assert!(e.contains("were made with") && e.contains("drop --model"), "{e}");
    ok(&["index", "import", "--clip-retrieval", s(&out), "--index", s(&index)]);
    // The recorded model embeds the query: no --model needed.
    let found = common::search_json(&["search", "--index", s(&index), "--text", "a coloured square", "-k", "3", "--json"]);
    assert_eq!(found.len(), 3, "{found:?}");
}

#[test]
fn missing_members_and_invalid_json_are_skipped_and_other_inputs_or_flags_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("ds");
    std::fs::create_dir_all(&ds).unwrap();
    let mut a = sample("good", 1);
    a.push(("notxt.jpg".into(), jpeg(2)));
    a.push(("notxt.json".into(), b"{}".to_vec()));
    a.push(("nojson.jpg".into(), jpeg(3)));
    a.push(("nojson.txt".into(), caption(3).into_bytes()));
    a.push(("badjson.jpg".into(), jpeg(4)));
    a.push(("badjson.txt".into(), caption(4).into_bytes()));
    a.push(("badjson.json".into(), b"{\"width\": 3,".to_vec()));
    write_tar(&ds.join("00000.tar"), &a);
    let input = format!("{}/{{00000..00000}}.tar", ds.display());

    let out = t.path().join("out");
    infer(&input, &out, &["--enable-text", "--enable-metadata"]);
    let st = stats(&out, 0);
    let skipped = &st["skipped"];
    assert_eq!(skipped["no caption (.txt)"], 1, "{st:#}");
    assert_eq!(skipped["no metadata (.json)"], 1, "{st:#}");
    assert_eq!(skipped[".json is not valid JSON"], 1, "{st:#}");
    assert_eq!(st["sample_count"], 1, "{st:#}");
    let details = st["skipped_samples"].to_string();
    assert!(details.contains("notxt") && details.contains("nojson") && details.contains("badjson"), "{details}");

    // Without --enable-text / --enable-metadata the same members are not needed.
    let plain = t.path().join("plain");
    infer(&input, &plain, &[]);
    assert_eq!(stats(&plain, 0)["sample_count"], 4);

    // The folder of the first run refuses other flags and another input, and is left as it was.
    let before = std::fs::read(out.join("stats/0.json")).unwrap();
    let m = model();
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--no-progress", "--enable-text"]);
    assert!(e.contains("Use the same flags"), "{e}");
    let other_input = dataset(&t.path().join("ds2"), 1, 2);
    let e = fails(&["inference", "--input", &other_input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--no-progress", "--enable-text", "--enable-metadata"]);
    assert!(e.contains("holds partitions of --input"), "{e}");
    assert_eq!(std::fs::read(out.join("stats/0.json")).unwrap(), before, "nothing rewritten");
}

#[test]
fn a_folder_keeps_one_compute_dtype() {
    let t = tempfile::tempdir().unwrap();
    let input = dataset(&t.path().join("ds"), 2, 2);
    let out = t.path().join("out");
    infer(&input, &out, &["--partition-count", "2", "--partition", "0"]);
    assert_eq!(stats(&out, 0)["compute_dtype"], "f32");
    let m = model();
    let e = fails(&["inference", "--input", &input, "--input-format", "webdataset", "--output-folder", s(&out), "--model", &m, "--no-progress", "--partition-count", "2", "--partition", "1", "--dtype", "int8"]);
    assert!(e.contains("computed in f32") && e.contains("int8"), "{e}");
    assert!(!out.join("stats/1.json").exists(), "nothing written");
    let other = t.path().join("int8");
    infer(&input, &other, &["--dtype", "int8"]);
    assert_eq!(stats(&other, 0)["compute_dtype"], "int8");
}
