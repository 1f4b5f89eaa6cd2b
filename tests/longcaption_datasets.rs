//! The long-caption benchmarks (DCI in its three protocols, DOCCI, IIW,
//! ShareGPT4V-10k) on tiny copies of their real layouts in
//! tests/fixtures/datasets/: counts, captions, image paths and the
//! text -> image mapping each protocol gives, bad rows named with file and
//! row, the --on-missing rule, and `eval` / `probe` end to end.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use longclip::datasets::{self, Dataset, LoadOptions};

fn data_fixture(name: &str) -> PathBuf {
    fixture("datasets").join(name)
}

fn load(name: &str, root: &Path, split: Option<&str>) -> anyhow::Result<Dataset> {
    let opts = LoadOptions { split: split.map(str::to_string), ..LoadOptions::default() };
    datasets::load(name, root, &opts)
}

fn err(r: anyhow::Result<Dataset>) -> String {
    format!("{:#}", r.expect_err("should fail"))
}

fn file_names(d: &Dataset) -> Vec<String> {
    d.images.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// Copies a fixture folder into a temporary one that a test may change.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let p = entry.unwrap().path();
            let dest = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &dest);
            } else {
                std::fs::copy(&p, &dest).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&data_fixture(name), dir.path());
    dir
}

const KIOSK: &str = "A small red kiosk stands in a paved square. Its awning is striped. Two bicycles lean against the wall.";
const SHOP: &str = "A green shop front with a sign that reads \"OPEN\" in white letters.\nBelow it, a bench.";
const HARBOUR: &str = "Boats are moored along a stone quay at dusk. The water reflects 3.5 m tall lamps.";

#[test]
fn long_dci_from_tulips_csv_and_from_the_annotations_agree() {
    let root = data_fixture("dci");
    let photos = root.join("densely_captioned_images/photos");
    // The CSV in --root (tab-separated, a quoted caption with "" and a newline).
    let csv = load("dci", &root, None).unwrap();
    assert_eq!((csv.name.as_str(), csv.split.as_str()), ("dci", "long"));
    assert_eq!(csv.images, [photos.join("sa_101.jpg"), photos.join("sa_102.jpg"), photos.join("sa_104.jpg")]);
    assert_eq!(csv.texts(), [KIOSK, SHOP, HARBOUR]);
    assert_eq!(csv.text_image(), [0, 1, 2]);
    assert!(csv.missing_images().is_empty());
    // The same pairs built from the annotation files as TULIP's
    // dci_long_part.py does: name order, the empty extra_caption left out.
    let built = load("dci", &root.join("densely_captioned_images"), Some("long")).unwrap();
    assert_eq!((built.images.clone(), built.captions.clone()), (csv.images.clone(), csv.captions.clone()));
    assert!(built.notes[0].contains("1 annotation files have an empty extra_caption"), "{:?}", built.notes);
    // The CSV file itself as --root, --image-root for the images.
    let opts = LoadOptions { image_root: Some(PathBuf::from("/imgs")), ..Default::default() };
    let d = datasets::load("dci", &root.join("dci_long.csv"), &opts).unwrap();
    assert_eq!(d.images[2], PathBuf::from("/imgs/sa_104.jpg"));
}

#[test]
fn dci_fgclip_keeps_every_annotation_file() {
    let d = load("dci", &data_fixture("dci"), Some("fgclip")).unwrap();
    assert_eq!(d.split, "fgclip");
    assert_eq!(file_names(&d), ["sa_101.jpg", "sa_102.jpg", "sa_103.jpg", "sa_104.jpg"]);
    assert_eq!(d.texts(), [KIOSK, SHOP, "", HARBOUR]);
    assert!(d.notes[0].contains("FG-CLIP's protocol keeps them"), "{:?}", d.notes);
}

#[test]
fn dci_lotlip_follows_splits_json_and_joins_short_and_long_captions() {
    let d = load("dci", &data_fixture("dci"), Some("lotlip")).unwrap();
    // splits.json: train [104, 102], valid [101], test [103], in file order.
    assert_eq!(file_names(&d), ["sa_104.jpg", "sa_102.jpg", "sa_101.jpg", "sa_103.jpg"]);
    assert_eq!(d.texts()[0], "A harbour at dusk. Boats are moored along a stone quay at dusk. The water reflects 3. 5 m tall lamps");
    assert_eq!(d.texts()[1], "A shop sign. A green shop front with a sign that reads \"OPEN\" in white letters. Below it, a bench");
    assert_eq!(d.texts()[3], "An empty lot");
    assert_eq!(d.text_image(), [0, 1, 2, 3]);
}

#[test]
fn goal_lists_keep_the_file_name_under_the_benchmarks_image_folder() {
    let root = data_fixture("dci");
    let d = load("dci", &root, Some("goal")).unwrap();
    assert_eq!(d.split, "goal");
    let photos = root.join("densely_captioned_images/photos");
    assert_eq!(d.images, [photos.join("sa_104.jpg"), photos.join("sa_101.jpg")]);
    assert_eq!(d.texts()[1], "A small red kiosk with a striped awning in a paved square.");
    let root = data_fixture("docci");
    let d = load("docci", &root, Some("goal")).unwrap();
    assert_eq!(d.images, [root.join("images/qual_test_00000.jpg"), root.join("images/test_00001.jpg")]);
    assert_eq!(d.text_image(), [0, 1]);
    let dir = copy_fixture("docci");
    std::fs::write(dir.path().join("docci_test.json"), r#"[{"filename": "a/b.jpg", "caption": "x"}, {"filename": "c.jpg", "caption": ""}]"#).unwrap();
    let e = err(load("docci", dir.path(), Some("goal")));
    assert!(e.contains("docci_test.json: record 1 has an empty caption"), "{e}");
    std::fs::remove_file(dir.path().join("docci_test.json")).unwrap();
    assert!(err(load("docci", dir.path(), Some("goal"))).contains("GOAL's protocol reads its docci_test.json"));
}

#[test]
fn dci_bad_input_names_the_file_and_row() {
    let dir = copy_fixture("dci");
    let root = dir.path();
    let e = err(load("dci", root, Some("karpathy")));
    assert!(e.contains("unknown DCI split 'karpathy'") && e.contains("lotlip"), "{e}");
    // A CSV row with a missing field, and one with an empty caption.
    std::fs::write(root.join("dci_long.csv"), "filepath\ttitle\nsa_101.jpg\tfine\nsa_102.jpg\n").unwrap();
    let e = err(load("dci", root, None));
    assert!(e.contains("dci_long.csv:3: 1 fields"), "{e}");
    std::fs::write(root.join("dci_long.csv"), "filepath\ttitle\nsa_101.jpg\t \n").unwrap();
    assert!(err(load("dci", root, None)).contains("dci_long.csv:2: empty title"));
    std::fs::write(root.join("dci_long.csv"), "filepath,title\nsa_101.jpg,x\n").unwrap();
    let e = err(load("dci", root, None));
    assert!(e.contains("dci_long.csv:1: no column 'filepath'") && e.contains("tab-separated"), "{e}");
    std::fs::remove_file(root.join("dci_long.csv")).unwrap();
    // A malformed annotation file: named with line and column.
    let ann = root.join("densely_captioned_images/annotations/sa_102.json");
    std::fs::write(&ann, "{\"image\": \"sa_102.jpg\",\n \"extra_caption\": }").unwrap();
    let e = err(load("dci", root, None));
    assert!(e.contains("sa_102.json:2:"), "{e}");
    std::fs::write(&ann, r#"{"extra_caption": "no image"}"#).unwrap();
    let e = err(load("dci", root, Some("fgclip")));
    assert!(e.contains("sa_102.json") && e.contains("image"), "{e}");
    // No extra_caption key at all: a malformed file, not an empty caption.
    std::fs::write(&ann, r#"{"image": "sa_102.jpg", "short_caption": "s"}"#).unwrap();
    for split in ["long", "fgclip"] {
        let e = err(load("dci", root, Some(split)));
        assert!(e.contains("sa_102.json") && e.contains("extra_caption"), "{split}: {e}");
    }
    // splits.json naming a file that is not there.
    std::fs::write(root.join("densely_captioned_images/splits.json"), r#"{"test": ["sa_999.json"]}"#).unwrap();
    let e = err(load("dci", root, Some("lotlip")));
    assert!(e.contains("sa_999.json") && e.contains("splits.json"), "{e}");
    // Not the layout at all.
    let e = err(load("dci", &root.join("densely_captioned_images/photos"), None));
    assert!(e.contains("not a DCI layout") && e.contains("dci_long.csv"), "{e}");
}

#[test]
fn docci_test_split_in_file_order() {
    let root = data_fixture("docci");
    let d = load("docci", &root, None).unwrap();
    assert_eq!((d.name.as_str(), d.split.as_str()), ("docci", "test"));
    assert_eq!(d.images, ["test_00001.jpg", "test_00002.jpg", "test_00003.jpg"].map(|f| root.join("images").join(f)));
    assert_eq!(d.texts()[1], "Two red apples and a green pear in a bowl.\nThe bowl is blue ceramic.");
    assert_eq!(d.text_image(), [0, 1, 2]);
    assert!(d.missing_images().is_empty());
    let q = load("docci", &root, Some("qual_test")).unwrap();
    assert_eq!(file_names(&q), ["qual_test_00000.jpg"]);
    // GOAL's 5,100: test and qual_test together, in file order.
    let both = load("docci", &root, Some("test,qual_test")).unwrap();
    assert_eq!(file_names(&both), ["test_00001.jpg", "qual_test_00000.jpg", "test_00002.jpg", "test_00003.jpg"]);
}

#[test]
fn docci_bad_input_names_the_file_and_line() {
    let dir = copy_fixture("docci");
    let root = dir.path();
    let e = err(load("docci", root, Some("val")));
    assert!(e.contains("no record has split 'val'") && e.contains("test (3)") && e.contains("qual_test (1)"), "{e}");
    let e = err(load("docci", root, Some("test,")));
    assert!(e.contains("--split 'test,': an empty split name"), "{e}");
    let file = root.join("docci_descriptions.jsonlines");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}{{\"split\": \"test\", \"image_file\": \"x.jpg\"}}\n")).unwrap();
    let e = err(load("docci", root, None));
    assert!(e.contains("docci_descriptions.jsonlines:7:") && e.contains("description"), "{e}");
    std::fs::write(&file, format!("{good}{{\"split\": \"test\", \"image_file\": \"x.jpg\", \"description\": \" \"}}\n")).unwrap();
    assert!(err(load("docci", root, None)).contains("docci_descriptions.jsonlines:7: empty description"));
    std::fs::write(&file, format!("{{\"split\": \"test\",\n{good}")).unwrap();
    let e = err(load("docci", root, None));
    assert!(e.contains("docci_descriptions.jsonlines:1: malformed JSON"), "{e}");
    let e = err(load("docci", &root.join("images"), None));
    assert!(e.contains("not a DOCCI layout"), "{e}");
}

#[test]
fn iiw_follows_lotlips_sets_order_images_and_captions() {
    let root = data_fixture("iiw");
    let d = load("iiw", &root, None).unwrap();
    assert_eq!((d.name.as_str(), d.split.as_str()), ("iiw", "lotlip"));
    let want: Vec<PathBuf> = [
        "docci/test_00001.jpg",
        "docci/test_00002.jpg",
        "docci_aar/aar_test_04600.jpg",
        "docci_aar/aar_test_04601.jpg",
        "dci/sa_101.jpg",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    assert_eq!(d.images, want);
    assert!(d.missing_images().is_empty());
    assert_eq!(d.text_image(), [0, 1, 2, 3, 4]);
    let t = d.texts();
    assert_eq!(t[0], "A white mug sits on a wooden table. Steam rises from the mug. The light comes from the left");
    assert_eq!(t[3], "A wide, eye-level shot of a beach at noon. Waves break on the sand");
    assert_eq!(t[4], "A small red kiosk stands in a paved square. Two bicycles lean on it");
    let one = load("iiw", &root, Some("iiw400")).unwrap();
    assert_eq!(file_names(&one), ["aar_test_04600.jpg", "aar_test_04601.jpg"]);
    assert_eq!(load("iiw", &root, Some("dci_test")).unwrap().images, [root.join("dci/sa_101.jpg")]);
}

#[test]
fn iiw_bad_input_names_the_file_and_line() {
    let dir = copy_fixture("iiw");
    let root = dir.path();
    let e = err(load("iiw", root, Some("all")));
    assert!(e.contains("unknown IIW split 'all'") && e.contains("iiw400"), "{e}");
    std::fs::write(root.join("IIW-400/data.jsonl"), "{\"IIW\": \"x\", \"image/key\": \"a\"}\n{\"IIW\": \"no image\"}\n").unwrap();
    let e = err(load("iiw", root, None));
    assert!(e.contains("IIW-400/data.jsonl:2: no \"image\""), "{e}");
    std::fs::write(root.join("IIW-400/data.jsonl"), "{\"IIW\": \" . \", \"image/key\": \"a\"}\n").unwrap();
    assert!(err(load("iiw", root, None)).contains("IIW-400/data.jsonl:1: no \"IIW\" description"));
    std::fs::remove_dir_all(root.join("DCI_Test")).unwrap();
    let e = err(load("iiw", root, Some("dci_test")));
    assert!(e.contains("not an ImageInWords layout") && e.contains("DCI_Test/data.jsonl"), "{e}");
}

#[test]
fn missing_images_follow_the_on_missing_rule_for_every_benchmark() {
    for (name, image) in [
        ("dci", "densely_captioned_images/photos/sa_102.jpg"),
        ("docci", "images/test_00002.jpg"),
        ("iiw", "docci_aar/aar_test_04600.jpg"),
    ] {
        let dir = copy_fixture(name);
        std::fs::remove_file(dir.path().join(image)).unwrap();
        let d = load(name, dir.path(), None).unwrap();
        assert_eq!(d.missing_images().len(), 1, "{name}");
        let model = fixture("tiny-longclip.pt");
        let base = ["eval", "--model", s(&model), "--dataset", name, "--root", s(dir.path()), "--no-cache"];
        let e = fails(&base);
        assert!(e.contains("1 of") && e.contains(image.rsplit('/').next().unwrap()) && e.contains("--on-missing skip"), "{name}: {e}");
        let out = ok(&[&base[..], &["--on-missing", "skip"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let n = d.images.len() - 1;
        assert!(stdout.contains(&format!("{n} images, {n} texts")), "{name}: {stdout}");
    }
}

#[test]
fn eval_and_probe_run_on_each_benchmark() {
    let model = fixture("tiny-longclip.pt");
    for (name, split, n) in [("dci", "long", 3), ("dci", "lotlip", 4), ("docci", "test", 3), ("iiw", "lotlip", 5)] {
        let root = data_fixture(name);
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.json");
        let args = ["--model", s(&model), "--dataset", name, "--split", split, "--root", s(&root), "--no-cache"];
        let out = ok(&[&["eval"], &args[..], &["--json", s(&json)]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{name} ({split}): {n} images, {n} texts")), "{stdout}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["n_images"], n, "{v}");
        let out = ok(&[&["probe"], &args[..], &["--lengths", "5,20"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("on {name} ({split}): {n} images, {n} texts")), "{stdout}");
    }
}

/// `n` ShareGPT4V records whose images are all `img.png`.
fn sharegpt4v_file(root: &Path, n: usize) {
    let rec = |i: usize| {
        serde_json::json!({"id": i, "image": if i < 3 { format!("{i}.png") } else { format!("absent/{i}.jpg") },
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": format!("Caption {i}.\nMore.")}]})
    };
    let json = serde_json::Value::Array((0..n).map(rec).collect());
    std::fs::write(root.join(datasets::sharegpt4v::FILE_NAME), json.to_string()).unwrap();
}

#[test]
fn sharegpt4v_10k_is_named_and_warns_about_long_clips_training_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sharegpt4v_file(root, 1003);
    let load = |split: Option<&str>, limit: Option<usize>| {
        datasets::load("sharegpt4v", root, &LoadOptions { split: split.map(str::to_string), limit, ..Default::default() })
    };
    // The default 1k: no warning.
    let k1 = load(None, None).unwrap();
    assert_eq!((k1.split.as_str(), k1.images.len()), ("1k", 1000));
    assert!(k1.warnings.is_empty());
    assert_eq!(load(Some("1k"), Some(1000)).unwrap().split, "1k");
    // 10k on a short file: all records used and labelled by what ran, with a
    // warning; records from 1,000 on are Long-CLIP's training data, also warned.
    for (split, limit) in [(Some("10k"), None), (None, Some(10000))] {
        let k10 = load(split, limit).unwrap();
        assert_eq!((k10.split.as_str(), k10.images.len()), ("first 1003", 1003));
        assert!(k10.warnings[0].contains("has only 1003 records") && k10.warnings[0].contains("(10k)"), "{:?}", k10.warnings);
        assert!(k10.warnings[1].contains("records 1000 to 1002") && k10.warnings[1].contains("Long-CLIP's training data"), "{:?}", k10.warnings);
    }
    assert_eq!(load(None, Some(500)).unwrap().split, "first 500");
    // A split fixes the number of records: a different --limit, or an
    // unknown split, is an error rather than a mislabelled run.
    let e = load(Some("1k"), Some(10000)).unwrap_err().to_string();
    assert!(e.contains("--split 1k is the first 1000 records") && e.contains("10000"), "{e}");
    let e = load(Some("5k"), None).unwrap_err().to_string();
    assert!(e.contains("unknown ShareGPT4V split '5k'"), "{e}");

    // The CLI prints the warning (images: three present, the rest skipped).
    for i in 0..3 {
        image::RgbImage::from_pixel(8, 6, image::Rgb([i * 60, 20, 200])).save(root.join(format!("{i}.png"))).unwrap();
    }
    let out = ok(&[
        "eval", "--model", s(&fixture("tiny-longclip.pt")), "--dataset", "sharegpt4v", "--root", s(root), "--split", "10k",
        "--on-missing", "skip", "--no-cache",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: ShareGPT4V records 1000 to 1002") && stderr.contains("training data"), "{stderr}");
    assert!(stderr.contains("has only 1003 records"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sharegpt4v (first 1003): 3 images, 3 texts"), "{stdout}");
    let err = fails(&["eval", "--model", s(&fixture("tiny-longclip.pt")), "--dataset", "sharegpt4v", "--root", s(root), "--split", "1k", "--limit", "10000"]);
    assert!(err.contains("--split 1k is the first 1000 records"), "{err}");
}
