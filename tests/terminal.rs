//! Control characters in file names reach the terminal only as visible
//! escapes (`\n`, `\x1b`); JSON outputs keep the exact names.

mod common;

use common::*;

const RED: &str = "red\x1b[31mcar.png";
const TWO_LINES: &str = "two\nlines.png";
const BAD: &str = "bad\x1b[2Jname.jpg";

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn no_escape_char(what: &str, s: &str) {
    assert!(!s.contains('\x1b'), "{what} holds a raw ESC: {s:?}");
}

#[test]
fn names_with_control_characters_are_escaped_for_the_terminal_and_exact_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    picture(1, 64).save(images.join(RED)).unwrap();
    picture(2, 64).save(images.join(TWO_LINES)).unwrap();
    picture(3, 64).save(images.join("plain.png")).unwrap();
    std::fs::write(images.join(BAD), b"not a jpeg").unwrap();
    let index = dir.path().join("idx");
    let model = fixture("tiny-longclip.pt");

    let build = ok(&["index", "build", "--images", s(&images), "--index", s(&index), "--model", s(&model), "--no-hnsw"]);
    let (out, err) = text(&build);
    no_escape_char("build stdout", &out);
    no_escape_char("build stderr", &err);

    // The table: a header and one line per result, names escaped.
    let search = ok(&["search", "--index", s(&index), "--text", "a photo of a red car", "-k", "10"]);
    let (out, err) = text(&search);
    no_escape_char("search stdout", &out);
    no_escape_char("search stderr", &err);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].contains("path"), "{out}");
    for line in &lines[1..] {
        assert_eq!(line.split_whitespace().count(), 4, "one result per line: {line:?}");
    }
    assert!(out.contains("red\\x1b[31mcar.png"), "{out}");
    assert!(out.contains("two\\nlines.png"), "{out}");
    assert!(out.contains("plain.png"), "{out}");

    // --json keeps the exact names.
    let hits = search_json(&["search", "--index", s(&index), "--text", "a photo of a red car", "-k", "10", "--json"]);
    let paths: Vec<String> = hits.iter().map(|h| h["path"].as_str().unwrap().to_string()).collect();
    assert!(paths.iter().any(|p| p.ends_with(RED)), "{paths:?}");
    assert!(paths.iter().any(|p| p.ends_with(TWO_LINES)), "{paths:?}");

    // index info: the skipped file is listed escaped; --json keeps it exact.
    let (out, err) = text(&ok(&["index", "info", "--index", s(&index)]));
    no_escape_char("info stdout", &out);
    no_escape_char("info stderr", &err);
    assert!(out.contains("bad\\x1b[2Jname.jpg"), "{out}");
    let info = info_json(&index);
    let skipped: Vec<&str> = info["skipped"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert!(skipped.iter().any(|p| p.ends_with(BAD)), "{skipped:?}");

    // embed's one-path-a-line side files: line i is row i of the .npy.
    let npy = dir.path().join("e.npy");
    ok(&["embed", "--model", s(&model), "--images", s(&images), "--out", s(&npy)]);
    let ids = std::fs::read_to_string(dir.path().join("e.ids.txt")).unwrap();
    let rows = candle_core::Tensor::read_npy(&npy).unwrap().dim(0).unwrap();
    assert_eq!(ids.lines().count(), rows, "{ids:?}");
    assert!(ids.contains("two\\nlines.png"), "{ids:?}");
    let skipped = std::fs::read_to_string(dir.path().join("e.skipped.txt")).unwrap();
    assert_eq!(skipped.lines().count(), 1, "{skipped:?}");
    assert_eq!(skipped.lines().next().unwrap().split('\t').count(), 2, "{skipped:?}");
}

#[test]
fn errors_naming_such_a_path_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone\x1b]0;owned\x07\u{202e}gpj.png");
    let err = fails(&["search", "--index", s(&missing), "--text", "anything"]);
    no_escape_char("error", &err);
    assert!(!err.contains('\x07') && !err.contains('\u{202e}'), "{err:?}");
    assert!(err.contains("gone\\x1b]0;owned\\x07\\u{202e}gpj.png"), "{err}");
    assert!(err.starts_with("longclip: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
}
