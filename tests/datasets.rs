//! Loaders on small generated copies of every layout: the images and
//! captions come out in the official scripts' order, and malformed input is
//! reported with the file (and line) at fault.

use std::path::{Path, PathBuf};

use longclip::datasets::classes;
use longclip::datasets::{self, Dataset, ImageRef, LoadOptions};

fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A small valid PNG (the loaders only check that files exist).
fn png(path: &Path, shade: u8) {
    let img = image::RgbImage::from_pixel(8, 6, image::Rgb([shade, 255 - shade, 7]));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn load(name: &str, root: &Path, split: Option<&str>) -> anyhow::Result<Dataset> {
    let opts = LoadOptions { split: split.map(str::to_string), ..LoadOptions::default() };
    datasets::load(name, root, &opts)
}

fn err(r: anyhow::Result<Dataset>) -> String {
    format!("{:#}", r.expect_err("should fail"))
}

fn names(d: &Dataset) -> Vec<String> {
    d.images.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn coco_val2017_sorts_images_by_id_and_keeps_five_captions_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let anns: Vec<serde_json::Value> = (0..6)
        .map(|k| serde_json::json!({"image_id": 30, "id": 100 + k, "caption": format!("thirty {k}")}))
        .chain([serde_json::json!({"image_id": 7, "id": 5, "caption": "seven"})])
        .collect();
    let json = serde_json::json!({
        "images": [{"id": 30, "file_name": "b.jpg"}, {"id": 7, "file_name": "a.jpg"}, {"id": 12, "file_name": "none.jpg"}],
        "annotations": anns,
    });
    write(&root.join("annotations/captions_val2017.json"), json.to_string());
    std::fs::create_dir_all(root.join("val2017")).unwrap();
    let d = load("coco", root, None).unwrap();
    assert_eq!((d.name.as_str(), d.split.as_str()), ("coco", "val2017"));
    assert_eq!(names(&d), ["a.jpg", "b.jpg"]);
    assert_eq!(d.captions[0], ["seven"]);
    assert_eq!(d.captions[1], ["thirty 0", "thirty 1", "thirty 2", "thirty 3", "thirty 4"]);
    assert!(d.images[0].starts_with(root.join("val2017")));
    assert!(d.notes[0].contains("id 12"), "{:?}", d.notes);
    // All captions on request.
    let all = datasets::load("coco", root, &LoadOptions { max_captions: 0, ..Default::default() }).unwrap();
    assert_eq!(all.captions[1].len(), 6);
}

#[test]
fn coco_and_flickr_karpathy_take_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = |split: &str, file: &str, n: usize| {
        serde_json::json!({"filepath": "val2014", "filename": file, "split": split,
            "sentences": (0..n).map(|k| serde_json::json!({"raw": format!("{file} {k}"), "tokens": []})).collect::<Vec<_>>()})
    };
    let json = serde_json::json!({"dataset": "coco", "images": [img("train", "t.jpg", 5), img("test", "x.jpg", 7), img("val", "v.jpg", 5), img("test", "y.jpg", 5)]});
    write(&root.join("dataset_coco.json"), json.to_string());
    let d = load("coco", root, Some("karpathy")).unwrap();
    assert_eq!(d.images, [root.join("val2014/x.jpg"), root.join("val2014/y.jpg")]);
    assert_eq!(d.captions[0].len(), 5);
    assert_eq!(d.captions[1][4], "y.jpg 4");

    let f = serde_json::json!({"dataset": "flickr30k", "images": [
        {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "one"}]},
        {"filename": "2.jpg", "split": "train", "sentences": [{"raw": "two"}]}]});
    write(&root.join("dataset_flickr30k.json"), f.to_string());
    let d = load("flickr30k", root, Some("karpathy")).unwrap();
    assert_eq!(d.images, [root.join("flickr30k-images/1.jpg")]);
    assert_eq!(d.texts(), ["one"]);
}

#[test]
fn flickr_full_groups_consecutive_lines_of_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut token = String::new();
    for (img, n) in [("9.jpg", 5), ("1.jpg", 5)] {
        for k in 0..n {
            token += &format!("{img}#{k}\t{img} caption {k} .\n");
        }
    }
    write(&root.join("results_20130124.token"), &token);
    std::fs::create_dir_all(root.join("flickr30k-images")).unwrap();
    let d = load("flickr30k", root, None).unwrap();
    assert_eq!((d.split.as_str(), names(&d)), ("full", vec!["9.jpg".to_string(), "1.jpg".to_string()]));
    assert_eq!(d.captions[1][4], "1.jpg caption 4 .");
    assert_eq!(d.text_image(), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);

    write(&root.join("results_20130124.token"), "9.jpg#0\tok\n9.jpg#1 no tab here\n");
    let e = err(load("flickr30k", root, None));
    assert!(e.contains("results_20130124.token:2") && e.contains("no tab"), "{e}");
    write(&root.join("results_20130124.token"), "9.jpg#0\ta\n1.jpg#0\tb\n9.jpg#1\tc\n");
    assert!(err(load("flickr30k", root, None)).contains("not on consecutive lines"));
}

#[test]
fn sharegpt4v_takes_the_first_records_and_flattens_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rec = |i: usize| {
        serde_json::json!({"id": i, "image": format!("coco/train2017/{i}.jpg"), "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": format!("Line one {i}.\n\nLine two.")}]})
    };
    let json = serde_json::Value::Array((0..5).map(rec).collect());
    write(&root.join("share-captioner_coco_lcs_sam_1246k_1107.json"), json.to_string());
    let opts = LoadOptions { limit: Some(3), ..Default::default() };
    let d = datasets::load("sharegpt4v", root, &opts).unwrap();
    assert_eq!(d.images.len(), 3);
    assert_eq!(d.images[2], root.join("coco/train2017/2.jpg"));
    assert_eq!(d.texts()[0], "Line one 0.  Line two.");

    let bad = serde_json::json!([{"image": "a.jpg", "conversations": [{"from": "human", "value": "x"}]}]);
    write(&root.join("share-captioner_coco_lcs_sam_1246k_1107.json"), bad.to_string());
    assert!(err(datasets::load("sharegpt4v", root, &opts)).contains("record 0 has 1 conversation turns"));
    write(&root.join("share-captioner_coco_lcs_sam_1246k_1107.json"), "[{\"image\": \"a.jpg\",\n \"conversations\": [}]");
    let e = err(datasets::load("sharegpt4v", root, &opts));
    assert!(e.contains("share-captioner_coco_lcs_sam_1246k_1107.json:2:"), "{e}");
}

fn urban(root: &Path, n: usize) {
    for i in 1..=n {
        png(&root.join(format!("image/{i}.jpg")), i as u8);
        write(&root.join(format!("caption/{i}.txt")), format!("caption number {i}\nsecond line ignored\n"));
    }
}

#[test]
fn urban_pairs_by_stem_in_numeric_order_with_first_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    urban(root, 12);
    png(&root.join("image/extra.png"), 3);
    let d = load("urban1k", root, None).unwrap();
    assert_eq!(d.images.len(), 12);
    assert_eq!(names(&d)[..3], ["1.jpg", "2.jpg", "3.jpg"]);
    assert_eq!(names(&d)[11], "12.jpg");
    assert_eq!(d.texts()[9], "caption number 10");
    assert!(d.notes[0].contains("1 images have no caption file"), "{:?}", d.notes);
    assert_eq!(load("urban200", root, None).unwrap().name, "urban200");
}

#[test]
fn urban_bad_inputs_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    urban(root, 3);
    // A caption whose image is missing: listed, and found missing later.
    write(&root.join("caption/4.txt"), "no image");
    let d = load("urban1k", root, None).unwrap();
    assert_eq!(d.missing_images(), [3]);
    // An empty caption file.
    write(&root.join("caption/4.txt"), "");
    let e = err(load("urban1k", root, None));
    assert!(e.contains("4.txt") && e.contains("empty"), "{e}");
    std::fs::remove_file(root.join("caption/4.txt")).unwrap();
    // Two caption files for one image.
    write(&root.join("caption/2.TXT"), "again");
    let e = err(load("urban1k", root, None));
    assert!(e.contains("two caption files") && e.contains("'2'"), "{e}");
    std::fs::remove_file(root.join("caption/2.TXT")).unwrap();
    // Not the layout at all.
    let e = err(load("urban1k", &root.join("image"), None));
    assert!(e.contains("not an Urban layout") && e.contains("caption/"), "{e}");
}

#[test]
fn wrong_layouts_say_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let e = err(load("coco", root, None));
    assert!(e.contains("not a COCO layout") && e.contains("captions_val2017.json"), "{e}");
    let e = err(load("flickr30k", root, None));
    assert!(e.contains("results_20130124.token"), "{e}");
    let e = err(load("sharegpt4v", root, None));
    assert!(e.contains("share-captioner_coco_lcs_sam_1246k_1107.json"), "{e}");
    let e = err(load("csv", root, None));
    assert!(e.contains("csv / jsonl file"), "{e}");
    // COCO annotations present but no image folder.
    write(&root.join("annotations/captions_val2017.json"), r#"{"images": [], "annotations": []}"#);
    let e = err(load("coco", root, None));
    assert!(e.contains("val2017") && e.contains("not found"), "{e}");
    // Malformed JSON: file, line and column.
    std::fs::create_dir_all(root.join("val2017")).unwrap();
    write(&root.join("annotations/captions_val2017.json"), "{\"images\": [\n  {\"id\": 1,, }]}");
    let e = err(load("coco", root, None));
    assert!(e.contains("captions_val2017.json:2:"), "{e}");
    // Valid JSON of the wrong shape.
    write(&root.join("annotations/captions_val2017.json"), r#"{"images": [{"id": "x", "file_name": "a"}], "annotations": []}"#);
    let e = err(load("coco", root, None));
    assert!(e.contains("captions_val2017.json:1:") && e.contains("unexpected JSON content"), "{e}");
}

#[test]
fn csv_and_jsonl_group_captions_by_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("set.csv"), "path,text,other\nb.png,\"a dog, running\",1\na.png,a cat,2\nb.png,\"the \"\"same\"\" dog\",3\n");
    let opts = LoadOptions { image_column: "path".into(), caption_column: "text".into(), ..Default::default() };
    let d = datasets::load("csv", &root.join("set.csv"), &opts).unwrap();
    assert_eq!(d.images, [root.join("b.png"), root.join("a.png")]);
    assert_eq!(d.captions, [vec!["a dog, running".to_string(), "the \"same\" dog".to_string()], vec!["a cat".to_string()]]);

    write(&root.join("set.jsonl"), "{\"image\": \"x/1.jpg\", \"caption\": [\"one\", \"uno\"]}\n\n{\"image\": \"x/2.jpg\", \"caption\": \"two\"}\n");
    let d = load("jsonl", &root.join("set.jsonl"), None).unwrap();
    assert_eq!(d.text_image(), [0, 0, 1]);
    assert_eq!(d.images[1], root.join("x/2.jpg"));
}

#[test]
fn csv_and_jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let csv = root.join("bad.csv");
    write(&csv, "image,caption\na.png,fine\nb.png,\"never closed\n");
    let e = err(load("csv", &csv, None));
    assert!(e.contains("bad.csv") && e.contains("line 3") && e.contains("unterminated"), "{e}");
    write(&csv, "image,caption\na.png,fine,extra\n");
    assert!(err(load("csv", &csv, None)).contains("bad.csv:2: 3 fields"));
    write(&csv, "img,caption\na.png,x\n");
    let e = err(load("csv", &csv, None));
    assert!(e.contains("bad.csv:1: no column 'image'") && e.contains("img, caption"), "{e}");
    write(&csv, "image,caption\na.png,\n");
    assert!(err(load("csv", &csv, None)).contains("bad.csv:2: empty caption"));
    let jsonl = root.join("bad.jsonl");
    write(&jsonl, "{\"image\": \"a.png\", \"caption\": \"x\"}\n{\"image\": \"b.png\" \"caption\": \"y\"}\n");
    let e = err(load("jsonl", &jsonl, None));
    assert!(e.contains("bad.jsonl:2: malformed JSON"), "{e}");
    write(&jsonl, "{\"image\": \"a.png\", \"caption\": 5}\n");
    assert!(err(load("jsonl", &jsonl, None)).contains("bad.jsonl:1: expected a string"));
}

// ---------------------------------------------------------------------------
// Classification layouts.

/// 3 CIFAR-style images: image i is a solid color (i*80, 10, 200-i*60).
fn cifar_pixels(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    for i in 0..n {
        for c in [i as u8 * 80, 10, 200 - i as u8 * 60] {
            data.extend(std::iter::repeat_n(c, 1024));
        }
    }
    (data, (0..n as u8).map(|i| (i * 3) % 10).collect())
}

/// A pickle as the real CIFAR "python version" files are: Python 2,
/// protocol 2, byte strings as SHORT_BINSTRING / BINSTRING, the pixels as
/// a numpy array built by `_reconstruct` and `__setstate__`.
fn py2_batch(data: &[u8], labels: &[u8], n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'q', 1, b'('];
    let short = |p: &mut Vec<u8>, s: &[u8]| {
        p.extend([b'U', s.len() as u8]);
        p.extend(s);
    };
    short(&mut p, b"labels");
    p.extend([b']', b'(']);
    for &l in labels {
        p.extend([b'K', l]);
    }
    p.push(b'e');
    short(&mut p, b"data");
    p.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85");
    short(&mut p, b"b");
    p.extend([0x87, b'R', b'(', b'K', 1, b'M']);
    p.extend((n as u16).to_le_bytes());
    p.extend([b'M']);
    p.extend(3072u16.to_le_bytes());
    p.extend([0x86]);
    p.extend(b"cnumpy\ndtype\n");
    short(&mut p, b"u1");
    p.extend([b'K', 0, b'K', 1, 0x87, b'R', b'(', b'K', 3]);
    short(&mut p, b"|");
    p.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbI00\n");
    p.push(b'T');
    p.extend((data.len() as u32).to_le_bytes());
    p.extend(data);
    p.extend([b't', b'b', b'u', b'.']);
    p
}

fn py2_meta(names: &[&str]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'(', b'U', 11];
    p.extend(b"label_names");
    p.extend([b']', b'(']);
    for n in names {
        p.extend([b'U', n.len() as u8]);
        p.extend(n.as_bytes());
    }
    p.extend([b'e', b'u', b'.']);
    p
}

const CIFAR10_NAMES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

#[test]
fn cifar10_python_and_binary_layouts_read_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    let (data, labels) = cifar_pixels(3);
    let py = dir.path().join("py");
    write(&py.join("cifar-10-batches-py/test_batch"), py2_batch(&data, &labels, 3));
    write(&py.join("cifar-10-batches-py/batches.meta"), py2_meta(&CIFAR10_NAMES));
    let bin = dir.path().join("bin");
    let records: Vec<u8> = (0..3).flat_map(|i| std::iter::once(labels[i]).chain(data[i * 3072..(i + 1) * 3072].iter().copied())).collect();
    write(&bin.join("cifar-10-batches-bin/test_batch.bin"), records);
    write(&bin.join("cifar-10-batches-bin/batches.meta.txt"), CIFAR10_NAMES.join("\n") + "\n\n");

    let a = classes::load("cifar10", &py).unwrap();
    let b = classes::load("cifar10", &bin.join("cifar-10-batches-bin")).unwrap();
    assert_eq!(a.classes, CIFAR10_NAMES);
    assert_eq!(a.classes, b.classes);
    assert_eq!(a.labels, [0, 3, 6]);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.images, b.images);
    let ImageRef::Encoded { bytes, .. } = &a.images[2] else { panic!("in memory") };
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    assert_eq!(img.get_pixel(31, 31).0, [160, 10, 80]);

    let e = format!("{:#}", classes::load("cifar100", &py).unwrap_err());
    assert!(e.contains("cifar-100-python/test") && e.contains("cifar-100-binary/test.bin"), "{e}");
    write(&bin.join("cifar-10-batches-bin/test_batch.bin"), [1u8; 100]);
    let e = format!("{:#}", classes::load("cifar10", &bin).unwrap_err());
    assert!(e.contains("test_batch.bin") && e.contains("3073-byte records"), "{e}");
}

#[test]
fn cifar100_binary_uses_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = cifar_pixels(2);
    let records: Vec<u8> = (0..2).flat_map(|i| [9u8, 40 + i as u8].into_iter().chain(data[i * 3072..(i + 1) * 3072].iter().copied())).collect();
    write(&dir.path().join("cifar-100-binary/test.bin"), records);
    let names: Vec<String> = (0..100).map(|i| format!("class_{i}")).collect();
    write(&dir.path().join("cifar-100-binary/fine_label_names.txt"), names.join("\n"));
    let set = classes::load("cifar100", dir.path()).unwrap();
    assert_eq!(set.labels, [40, 41]);
    assert_eq!(set.classes[41], "class_41");
}

#[test]
fn imagenet_folders_in_wnid_order() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val");
    png(&val.join("n02000000/b.JPEG"), 1);
    png(&val.join("n02000000/a.JPEG"), 2);
    png(&val.join("n01000000/c.JPEG"), 3);
    let set = classes::load("imagenet", dir.path()).unwrap();
    // Not the 1,000 standard folders: named by their folders.
    assert_eq!(set.classes, ["n01000000", "n02000000"]);
    assert_eq!(set.labels, [0, 1, 1]);
    let files: Vec<PathBuf> = set.images.iter().map(|i| match i { ImageRef::File(p) => p.clone(), _ => panic!() }).collect();
    assert_eq!(files, [val.join("n01000000/c.JPEG"), val.join("n02000000/a.JPEG"), val.join("n02000000/b.JPEG")]);
    let e = format!("{:#}", classes::load("imagenet", &val.join("n01000000")).unwrap_err());
    assert!(e.contains("not an ImageNet layout"), "{e}");
}

#[test]
fn limit_is_refused_where_it_would_do_nothing() {
    // --limit sizes ShareGPT4V's test set; on a fixed protocol it used to be
    // ignored silently (eval --limit 10 on urban1k ran all 1,000 pairs).
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions { limit: Some(10), ..Default::default() };
    for name in ["urban1k", "coco", "dci"] {
        let e = err(datasets::load(name, dir.path(), &opts));
        assert!(e.contains("--limit") && e.contains(name), "{name}: {e}");
    }
}
