//! `longclip serve` over real HTTP on 127.0.0.1 (a std TcpStream client,
//! bounded requests), and the page in headless Chromium when it is installed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;

fn ok(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A server on a free port, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(index: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_longclip"))
        .args(["serve", "--index", s(index), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("unexpected: {line}")).to_string();
    Server { child, addr }
}

/// Copies of the fixture photos plus generated ones, indexed with the tiny model.
fn build_index(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let images = dir.join("photos");
    std::fs::create_dir_all(&images).unwrap();
    let mut files = Vec::new();
    for f in std::fs::read_dir(fixture("images")).unwrap() {
        let f = f.unwrap().path();
        let to = images.join(f.file_name().unwrap());
        std::fs::copy(&f, &to).unwrap();
        files.push(to);
    }
    for i in 0..6u8 {
        let to = images.join(format!("gen{i}.png"));
        image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([i * 40, (x * 6) as u8, (y * 8) as u8])).save(&to).unwrap();
        files.push(to);
    }
    let index = dir.join("idx");
    ok(&["index", "build", "--model", s(&fixture("tiny-longclip.pt")), "--images", s(&images), "--index", s(&index)]);
    (index, files)
}

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request with `Connection: close`; `declared` overrides the
/// Content-Length header (to announce a body that is never sent).
fn request(addr: &str, method: &str, target: &str, body: &[u8], declared: Option<usize>) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        declared.unwrap_or(body.len())
    );
    // The server may answer and close before reading everything we send.
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        eprintln!("(the server closed the connection while we were writing)");
    }
    let mut raw = Vec::new();
    if stream.read_to_end(&mut raw).is_err() && raw.is_empty() {
        return None;
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    if headers.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some(Reply { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

fn get(addr: &str, target: &str) -> Reply {
    request(addr, "GET", target, b"", None).expect("a reply")
}

fn post(addr: &str, body: &serde_json::Value) -> Reply {
    request(addr, "POST", "/api/search", body.to_string().as_bytes(), None).expect("a reply")
}

fn assert_error(reply: &Reply, status: u16, words: &str) {
    assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(&reply.body));
    let err = reply.json()["error"].as_str().unwrap_or_else(|| panic!("no JSON error: {}", String::from_utf8_lossy(&reply.body))).to_string();
    assert!(err.contains(words), "{err}");
}

#[test]
fn the_api_searches_serves_indexed_images_and_rejects_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (index, files) = build_index(dir.path());
    let server = start(&index);
    let addr = server.addr.as_str();

    let health = get(addr, "/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["count"], 12);
    assert_eq!(health.json()["text_search"], true);
    assert_eq!(health.json()["compute_dtype"], "f32");

    // GET and POST give the CLI's results.
    let text = "a cat sitting on a wooden table next to a cup of coffee";
    let cli: Vec<serde_json::Value> = serde_json::from_slice(&ok(&["search", "--index", s(&index), "--text", text, "-k", "5", "--json"]).stdout).unwrap();
    let reply = get(addr, "/api/search?q=a%20cat%20sitting%20on%20a%20wooden%20table%20next%20to%20a%20cup%20of%20coffee&k=5");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let results = reply.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 5);
    assert_eq!((&reply.json()["dtype"], &reply.json()["compute_dtype"]), (&health.json()["dtype"], &serde_json::json!("f32")));
    for (a, b) in results.iter().zip(&cli) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["path"], b["path"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    let posted = post(addr, &serde_json::json!({ "text": text, "k": 5 }));
    assert_eq!(posted.json()["results"], reply.json()["results"]);
    let long = "a long description of a busy street with shops, people and cars ".repeat(40);
    assert_eq!(post(addr, &serde_json::json!({ "text": long })).json()["truncated"], true);

    // An image finds itself; "more like this" starts from an id.
    let bytes = std::fs::read(&files[2]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let by_image = post(addr, &serde_json::json!({ "image": b64, "k": 3 })).json();
    let top = &by_image["results"][0];
    assert_eq!(top["path"].as_str().unwrap(), files[2].canonicalize().unwrap().display().to_string());
    let id = top["id"].as_u64().unwrap();
    let like = get(addr, &format!("/api/search?like={id}&k=4")).json();
    assert_eq!(like["results"][0]["id"], id);
    assert_eq!(post(addr, &serde_json::json!({ "like": id, "k": 2 })).json()["results"][0]["id"], id);

    // Indexed files by id; thumbnails as JPEG.
    let image = get(addr, &format!("/api/image/{id}"));
    assert_eq!(image.status, 200);
    assert_eq!(image.body, bytes);
    let thumb = get(addr, &format!("/api/image/{id}?size=32"));
    assert_eq!(thumb.status, 200);
    assert!(thumb.headers.to_lowercase().contains("image/jpeg"));
    let small = image::load_from_memory(&thumb.body).unwrap();
    assert!(small.width() <= 32 && small.height() <= 32);

    // Anything else is 404; no request path reaches the filesystem.
    for target in ["/api/image/999999", "/api/image/..%2F..%2Fetc%2Fpasswd", "/api/image/../../etc/passwd", "/api/image/%2Fetc%2Fpasswd", "/api/image/-1", "/etc/passwd"] {
        let r = get(addr, target);
        assert_eq!(r.status, 404, "{target}: {}", String::from_utf8_lossy(&r.body));
        assert!(!String::from_utf8_lossy(&r.body).contains("root:"), "{target}");
    }

    // Bad requests: 400 with a JSON error.
    assert_error(&get(addr, "/api/search?q=x&k=1000000000"), 400, "k must be between 1 and 1000");
    assert_error(&get(addr, "/api/search?q=x&k=0"), 400, "k must be");
    assert_error(&get(addr, "/api/search?q=x&k=ten"), 400, "k must be a whole number");
    assert_error(&get(addr, "/api/search"), 400, "give q");
    assert_error(&get(addr, "/api/search?like=abc"), 400, "like must be an id");
    assert_error(&get(addr, "/api/search?like=424242"), 404, "no entry with id 424242");
    assert_error(&post(addr, &serde_json::json!({ "text": "x", "k": 1_000_000_000u64 })), 400, "k must be");
    assert_error(&post(addr, &serde_json::json!({ "text": "   " })), 400, "empty");
    assert_error(&post(addr, &serde_json::json!({ "image": "###" })), 400, "base64");
    assert_error(&post(addr, &serde_json::json!({ "image": base64::engine::general_purpose::STANDARD.encode(b"hello") })), 400, "posted image");
    assert_error(&post(addr, &serde_json::json!({ "text": "a", "like": 1 })), 400, "only one");
    assert_error(&request(addr, "POST", "/api/search", b"{not json", None).unwrap(), 400, "bad JSON");

    // A 10 MB query: refused by size, in the body or in the URL.
    let huge = "a".repeat(10 << 20);
    assert_error(&post(addr, &serde_json::json!({ "text": huge })), 400, "limit");
    // A body larger than the limit is refused from its Content-Length.
    assert_error(&request(addr, "POST", "/api/search", b"", Some(40 << 20)).unwrap(), 413, "request body");
    match request(addr, "GET", &format!("/api/search?q={huge}"), b"", None) {
        Some(r) => assert!((400..500).contains(&r.status), "10 MB URL got {}", r.status),
        None => eprintln!("10 MB URL: connection closed by the server"),
    }
    // Still serving.
    assert_eq!(get(addr, "/api/health").status, 200);

    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("<textarea") && html.contains("/api/search"));
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// Runs headless Chromium with a fresh profile; killed after 90 s.
fn run_chromium(bin: &Path, profile: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.display()),
    ]);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    out
}

#[test]
fn the_page_shows_results_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!("SKIP: chromium is not installed (.ci/run installs it: apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = build_index(dir.path());
    let server = start(&index);
    let url = format!("http://{}/?q=a%20photo%20of%20a%20cat%20on%20a%20table", server.addr);

    let dom = run_chromium(&bin, &dir.path().join("profile1"), &["--virtual-time-budget=20000", "--dump-dom", &url]);
    let html = String::from_utf8_lossy(&dom.stdout);
    let results = html.matches("class=\"result\"").count();
    assert!(results >= 10, "expected result cards in the DOM, found {results}:\n{html}\n{}", String::from_utf8_lossy(&dom.stderr));
    assert!(html.contains("/api/image/") && html.contains("more like this"));
    assert!(html.contains("of 12 images"), "{html}");

    let shot = dir.path().join("page.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = run_chromium(&bin, &dir.path().join("profile2"), &["--virtual-time-budget=20000", "--window-size=1100,800", &arg, &url]);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let png = image::open(&shot).unwrap().to_rgb8();
    assert_eq!((png.width(), png.height()), (1100, 800));
    // Results painted: the grid area below the header is not blank.
    let grid = image::imageops::crop_imm(&png, 0, 300, 1100, 400).to_image();
    let colours: std::collections::HashSet<[u8; 3]> = grid.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 200, "the result grid looks empty ({} colours)", colours.len());
}

#[test]
fn the_server_follows_adds_removes_and_merges_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (index, files) = build_index(dir.path());
    let server = start(&index);
    let count = |addr: &str| get(addr, "/api/health").json()["count"].as_u64().unwrap();
    let before = count(&server.addr);
    assert_eq!(before as usize, files.len());

    // A new photo, added while serving: the next request sees it.
    let extra = files[0].parent().unwrap().join("added.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 7) as u8, 200, (y * 7) as u8])).save(&extra).unwrap();
    ok(&["index", "add", "--index", s(&index)]);
    assert_eq!(count(&server.addr), before + 1);
    let reply = get(&server.addr, "/api/search?q=a%20photo&k=100");
    let paths: Vec<String> = reply.json()["results"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_string()).collect();
    assert!(paths.iter().any(|p| p.ends_with("added.png")), "{paths:?}");

    // Removed: gone from results and from /api/image at once.
    let id = reply.json()["results"].as_array().unwrap().iter().find(|h| h["path"].as_str().unwrap().ends_with("added.png")).unwrap()["id"].as_u64().unwrap();
    ok(&["index", "remove", "--index", s(&index), "--id", &id.to_string()]);
    assert_eq!(count(&server.addr), before);
    assert_eq!(get(&server.addr, &format!("/api/image/{id}")).status, 404);

    // Optimized into one segment (old files deleted): still answers, same count.
    ok(&["index", "optimize", "--index", s(&index)]);
    let reply = get(&server.addr, "/api/search?q=a%20photo&k=100");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["results"].as_array().unwrap().len() as u64, before);
    assert!(reply.json()["results"].as_array().unwrap().iter().all(|h| h["id"].as_u64().unwrap() != id));
}
