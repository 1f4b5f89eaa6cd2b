//! Scale-out: `spark/longclip_spark.py` (one Spark task per partition of
//! `longclip inference`) and the embeddings served by autofaiss/FAISS.
//!
//! These tests need a Python with pyspark, autofaiss and faiss-cpu, named
//! by `LONGCLIP_PYTHON` (and Java for Spark). Without one they print a loud
//! "skipped" line and pass, unless `LONGCLIP_REQUIRE_PYTHON=1` (CI: .ci/run
//! makes target/pyvenv and sets both), where they fail.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn model() -> PathBuf {
    fixture("tiny-longclip.pt")
}

fn script(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The Python of `LONGCLIP_PYTHON` if it imports `modules`; else `None`
/// after a loud "skipped" line, or a panic under `LONGCLIP_REQUIRE_PYTHON=1`.
fn python_with(modules: &[&str], test: &str) -> Option<PathBuf> {
    match common::python_from_env("LONGCLIP_PYTHON", modules) {
        Ok(p) => Some(p),
        Err(problem) => unavailable(test, &format!("{problem} (it needs a Python with {})", modules.join(", "))),
    }
}

/// Java for Spark: `java` on PATH or under JAVA_HOME.
fn java(test: &str) -> Option<()> {
    let java = std::env::var_os("JAVA_HOME").map_or(PathBuf::from("java"), |h| PathBuf::from(h).join("bin/java"));
    match Command::new(&java).arg("-version").output() {
        Ok(o) if o.status.success() => Some(()),
        _ => unavailable(test, &format!("{} -version failed: Spark needs Java 17 (Debian: openjdk-17-jre-headless)", java.display())),
    }
}

fn unavailable<T>(test: &str, problem: &str) -> Option<T> {
    if std::env::var("LONGCLIP_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("{test}: LONGCLIP_REQUIRE_PYTHON=1 but {problem}; .ci/run makes target/pyvenv and sets LONGCLIP_PYTHON to it");
    }
    common::say_skipped(test, problem, "Set LONGCLIP_PYTHON (see .ci/run) to run it.");
    None
}

/// Runs `cmd` with a time limit (killing it past that), output captured.
fn run_limited(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    // drain both pipes on threads so a chatty child cannot block
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!("{what}: still running after {limit:?}, killed; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

const WORDS: [&str; 24] = [
    "red", "car", "street", "cat", "sleeping", "man", "crossing", "white", "flag", "helmet", "garden", "blue",
    "window", "river", "bridge", "evening", "light", "stone", "wall", "tree", "small", "dog", "running", "field",
];

/// A webdataset: `shards` tars of `per_shard` samples (KEY.jpg or KEY.png,
/// KEY.txt, KEY.json), named 00000.tar...; returns the brace pattern.
fn webdataset(dir: &Path, shards: usize, per_shard: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for s in 0..shards {
        let mut tar = tar::Builder::new(Vec::new());
        for i in 0..per_shard {
            let n = s * per_shard + i;
            let key = format!("{s:05}{i:04}");
            let img = picture(n as u32 + 1, 48 + 8 * (n as u32 % 3));
            let (ext, bytes) = if n % 3 == 2 { ("png", encode(&img, image::ImageFormat::Png)) } else { ("jpg", encode(&img, image::ImageFormat::Jpeg)) };
            let caption = format!("A {} {} near the {} {}.", WORDS[n % 24], WORDS[(n * 7 + 3) % 24], WORDS[(n * 5 + 1) % 24], WORDS[(n * 11 + 2) % 24]);
            let meta = serde_json::json!({ "key": key, "shard": s, "width": img.width(), "source": "generated" }).to_string();
            for (name, data) in [(format!("{key}.{ext}"), bytes), (format!("{key}.txt"), caption.into_bytes()), (format!("{key}.json"), meta.into_bytes())] {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(1_700_000_000);
                header.set_cksum();
                tar.append_data(&mut header, &name, data.as_slice()).unwrap();
            }
        }
        std::fs::write(dir.join(format!("{s:05}.tar")), tar.into_inner().unwrap()).unwrap();
    }
    format!("{}/{{00000..{:05}}}.tar", dir.display(), shards - 1)
}

/// Every file under `dir`'s img_emb/, text_emb/ and metadata/: relative path -> bytes.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for sub in ["img_emb", "text_emb", "metadata"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() {
                files.insert(format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

fn stats(dir: &Path, partition: usize) -> serde_json::Value {
    let p = dir.join(format!("stats/{partition}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The driver on `local[2]` (loopback only, no web UI: nothing listens
/// beyond this machine), writing to `out`; `args` are the rest.
fn driver(python: &Path, out: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(script("spark/longclip_spark.py"))
        .args(["--longclip", env!("CARGO_BIN_EXE_longclip"), "--master", "local[2]", "--progress-interval", "1"])
        .args(["--output-folder", s(out)])
        .args(args)
        .args(["--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1"])
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYSPARK_DRIVER_PYTHON");
    cmd
}

/// Spark (local[2]) running 3 partitions writes exactly what three
/// sequential `longclip inference --partition i` runs write, and the driver
/// prints its summary.
#[test]
fn spark_partitions_match_sequential_runs() {
    const TEST: &str = "spark_partitions_match_sequential_runs";
    let Some(python) = python_with(&["pyspark"], TEST) else { return };
    let Some(()) = java(TEST) else { return };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let input = webdataset(&tmp.path().join("shards"), 4, 6);
    let (spark_out, seq_out) = (tmp.path().join("spark"), tmp.path().join("seq"));
    let model = model();
    let common_args = ["--input", &input, "--input-format", "webdataset", "--model", s(&model), "--enable-text", "--enable-metadata", "--batch-size", "4"];

    // a trailing '/' on the output folder changes nothing
    let spark_out_slash = format!("{}/", spark_out.display());
    let mut args = vec!["--partition-count", "3"];
    args.extend(common_args);
    let cmd = driver(&python, Path::new(&spark_out_slash), &args);
    let out = run_limited(cmd, Duration::from_secs(240), "longclip_spark.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "longclip_spark.py failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let spark_secs = started.elapsed().as_secs_f64();
    eprintln!("driver output:\n{stdout}");

    // the summary: a header, one line per partition, a total line
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["partition", "samples", "seconds", "images/s", "skipped"]), "no summary header:\n{stdout}");
    for p in 0..3 {
        let n = stats(&spark_out, p)["sample_count"].as_u64().unwrap();
        assert!(lines.iter().any(|l| l.split_whitespace().take(2).eq([p.to_string(), n.to_string()].iter().map(String::as_str))), "no summary line for partition {p} ({n} samples):\n{stdout}");
    }
    let total: u64 = (0..3).map(|p| stats(&spark_out, p)["sample_count"].as_u64().unwrap()).sum();
    assert_eq!(total, 24, "every sample of the 4 shards is embedded once");
    assert!(lines.iter().any(|l| l.split_whitespace().take(2).eq(["total", "24"])), "no total line:\n{stdout}");
    assert_eq!(stderr.matches("progress: 3/3 partitions done, 24 samples").count(), 1, "the final progress line, once:\n{stderr}");
    for p in 0..3 {
        assert_eq!(stats(&spark_out, p)["partition_count"], 3);
        assert!(!spark_out.join(format!("stats/wip_{p}.json")).exists(), "wip_{p}.json left behind");
    }

    // the same partitions, one by one, without Spark
    for p in 0..3 {
        let part = p.to_string();
        let mut args = vec!["inference", "--output-folder", s(&seq_out), "--partition", &part, "--partition-count", "3", "--no-progress"];
        args.extend(common_args);
        ok(&args);
    }
    let (a, b) = (outputs(&spark_out), outputs(&seq_out));
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the two runs wrote different files");
    for sub in ["img_emb/img_emb_", "text_emb/text_emb_", "metadata/metadata_"] {
        assert_eq!(a.keys().filter(|k| k.starts_with(sub)).count(), 3, "{sub}*: one per partition: {:?}", names(&a));
    }
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs between the Spark run and the sequential runs");
    }

    // a rerun skips every finished partition and still prints the summary
    let cmd = driver(&python, &spark_out, &args);
    let again = run_limited(cmd, Duration::from_secs(240), "longclip_spark.py (rerun)");
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "rerun failed:\n{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(again_out.matches("finished before this run").count(), 3, "{again_out}");
    assert_eq!(outputs(&spark_out), a, "the rerun changed the outputs");
    assert_eq!(String::from_utf8_lossy(&again.stderr).matches("progress: 3/3 partitions done").count(), 1, "{}", String::from_utf8_lossy(&again.stderr));

    // another model: the binary refuses every partition. They failed (not
    // "finished before this run"), its error is quoted once, and no rerun
    // is suggested for an error that would recur.
    let other = fixture("tiny-clip77.pt");
    let args: Vec<&str> = args.iter().map(|a| if *a == s(&model) { s(&other) } else { *a }).collect();
    let refused = run_limited(driver(&python, &spark_out, &args), Duration::from_secs(240), "longclip_spark.py (another model)");
    let (r_out, r_err) = (String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "another model should fail the job:\n{r_out}\n{r_err}");
    assert!(!r_out.contains("finished before this run"), "{r_out}");
    assert_eq!(r_out.matches("FAILED").count(), 3, "{r_out}");
    assert!(r_out.lines().any(|l| l.split_whitespace().take(2).eq(["total", "0"]) && l.contains("0/3 partitions")), "{r_out}");
    let report: Vec<&str> = r_err.lines().filter(|l| !l.starts_with("[partition ")).collect(); // the binary's own stderr, echoed
    let report = report.join("\n");
    assert_eq!(report.matches("holds partitions made with another model").count(), 1, "the binary's error, quoted once:\n{report}");
    assert!(report.contains("error: partitions 0, 1, 2 failed on "), "{report}");
    assert!(report.contains("error: 3 of 3 partitions failed: 0, 1, 2, all with the error above"), "{report}");
    assert!(!report.contains("rerun the same command"), "no rerun for an error that recurs:\n{report}");
    assert!(report.contains("progress: 0/3 partitions done, 0 samples") && report.contains("3 failed"), "{report}");
    assert_eq!(outputs(&spark_out), a, "the refused run changed the outputs");
    eprintln!("{TEST}: spark run {spark_secs:.1} s, whole test {:.1} s", started.elapsed().as_secs_f64());
}

/// A failing partition: the driver exits non-zero and names the partition
/// with the tail of the binary's stderr.
#[test]
fn spark_failure_names_the_partition() {
    const TEST: &str = "spark_failure_names_the_partition";
    let Some(python) = python_with(&["pyspark"], TEST) else { return };
    let Some(()) = java(TEST) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..2 {
        picture(i, 32).save(images.join(format!("{i}.png"))).unwrap();
    }
    let missing_model = tmp.path().join("no-such-model.pt");
    let cmd = driver(&python, &tmp.path().join("out"), &["--partition-count", "1", "--input", s(&images), "--model", s(&missing_model)]);
    let out = run_limited(cmd, Duration::from_secs(240), "longclip_spark.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing model should fail the job");
    let error = stderr.lines().position(|l| l.starts_with("error: longclip partition 0 failed")).unwrap_or_else(|| panic!("no failure line:\n{stderr}"));
    let tail: String = stderr.lines().skip(error).take(8).collect::<Vec<_>>().join("\n");
    assert!(tail.contains("no-such-model.pt"), "the binary's own error should be quoted:\n{tail}");
    assert!(stderr.contains("error: 1 of 1 partitions failed: 0, with the error above"), "{stderr}");
    assert!(!stderr.contains("rerun the same command"), "nothing finished: no rerun to suggest:\n{stderr}");
}

/// The driver's verdict without Spark: a partition is finished only with
/// "finished": true in stats/{i}.json, a failure of this run wins over an
/// earlier run's stats, and a rerun is suggested only when some partition
/// finished and the failures differ (one error on every failed partition is
/// a configuration problem, quoted once).
#[test]
fn spark_driver_tells_failed_from_finished() {
    const TEST: &str = "spark_driver_tells_failed_from_finished";
    let Some(python) = python_with(&["pyspark"], TEST) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let code = r#"
import contextlib, io, json, os, sys, time
sys.path.insert(0, sys.argv[1])
import longclip_spark as ls
out = sys.argv[2]
os.makedirs(os.path.join(out, "stats"))
start = time.time()
def write(name, **kw):
    with open(os.path.join(out, "stats", name), "w") as f:
        json.dump(dict(sample_count=5, start_time=start - 100, end_time=start - 90, total_duration=10.0, **kw), f)
write("0.json", finished=True)   # an earlier run's
write("1.json")                  # no "finished": true
write("2.json", finished=True)   # an earlier run's, but this run failed it
write("wip_3.json")
stats = ls.read_stats(out)
assert [stats[p][0] for p in range(4)] == [True, False, True, False], stats

def err(p, said, host="w1"):
    return ls.failure_of(f"longclip partition {p} failed on {host}: exit code 1\n  command: longclip inference --partition {p}\n"
                         f"  {ls.STDERR_HEAD}\n    error: {said}")
refused = {p: err(p, "/o: holds partitions made with another model (a.pt); this run uses b.pt") for p in (2, 3)}
table, missing = ls.summary(stats, 4, start, 1.0, refused)
rows = table.splitlines()
assert "(finished before this run)" in rows[1] and "not finished" in rows[2], table
assert "FAILED on w1" in rows[3] and "FAILED on w1" in rows[4] and "before" not in rows[3], table
assert missing == [1] and "(1/4 partitions" in rows[5], table
assert ls.progress_line(stats, 4, start, start + 1, {2, 3}).startswith("progress: 1/4 partitions done, 10 samples")

def report(failed, missing, finished, n):
    e = io.StringIO()
    with contextlib.redirect_stderr(e):
        ls.report_failures(failed, missing, [], finished, n)
    return e.getvalue()

# one error on every failed partition: quoted once, no rerun
r = report(refused, [1], 1, 4)
assert r.count("another model") == 1 and "partitions 2, 3 failed on w1, all with the same error" in r, r
assert "2 of 4 partitions failed: 2, 3 (1 more did not run: 1), all with the error above" in r and "rerun the same" not in r, r
# the partition's own number in the error does not make it another error
same = {p: err(p, f"partition {p}: cannot read /in") for p in (0, 1)}
assert ls.failure_key(same[0]) == ls.failure_key(same[1])
# different errors and one partition finished: maybe passing, rerun
mixed = {1: err(1, "shard 00001.tar: unexpected end of file"), 2: err(2, "No space left on device", "w2")}
r = report(mixed, [], 2, 4)
assert r.count("unexpected end of file") == 1 and r.count("No space left") == 1, r
assert "2 of 4 partitions failed: 1, 2 (errors above); if their cause has passed, rerun the same command" in r, r
# different errors, none finished: no rerun
r = report(mixed, [], 0, 2)
assert "none finished" in r and "rerun the same" not in r, r
# one failure among finished partitions: a rerun
r = report({3: mixed[1]}, [], 3, 4)
assert "1 of 4 partitions failed: 3 (errors above)" in r and "rerun the same command" in r, r
# nothing failed, some never ran (job stopped): a rerun
r = report({}, [2], 3, 4)
assert "1 of 4 partitions did not finish: 2; rerun the same command" in r, r
# the attempts Spark gives a task
assert ls.max_attempts("local[2]", {}) == 1 and ls.max_attempts("local[*, 3]", {}) == 3 and ls.max_attempts("local", {}) == 1
assert ls.max_attempts("yarn", {"spark.task.maxFailures": "6"}) == 6 and ls.max_attempts("spark://h:7077", {}) == 4
# relative paths made absolute, a trailing '/' dropped
args = ls.parse_args(["--longclip", "bin/longclip", "--input", "imgs/", "--output-folder", "out//x/", "--model", "./m.pt"])
assert args.input == os.path.join(os.getcwd(), "imgs") and args.output_folder == os.path.join(os.getcwd(), "out/x"), vars(args)
assert args.model == os.path.join(os.getcwd(), "m.pt"), vars(args)
"#;
    let out = Command::new(&python).args(["-c", code, s(&script("spark")), s(&tmp.path().join("out"))]).env("PYTHONDONTWRITEBYTECODE", "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Deterministic long queries (30-80 words) from the fixture captions'
/// words: the tiny checkpoint only keeps the token rows those captions use.
fn long_queries(n: usize) -> Vec<String> {
    let captions: Vec<String> = serde_json::from_str(&std::fs::read_to_string(fixture("captions.json")).unwrap()).unwrap();
    let mut words: Vec<String> =
        captions.iter().flat_map(|c| c.split_whitespace()).map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()).filter(|w| !w.is_empty()).collect();
    words.sort();
    words.dedup();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let len = 30 + (i * 37) % 51;
            let mut q: Vec<String> = (0..len).map(|_| words[(next() % words.len() as u64) as usize].clone()).collect();
            let mut first = q[0].chars();
            q[0] = first.next().into_iter().flat_map(char::to_uppercase).chain(first).collect();
            format!("{}.", q.join(" "))
        })
        .collect()
}

/// autofaiss over `longclip inference`'s img_emb/: FAISS's top-1 for 50
/// long text queries is longclip's exact top-1 (`index import` + `search
/// --vectors --exact`) over the same embeddings.
#[test]
fn autofaiss_top1_matches_longclip_search() {
    const TEST: &str = "autofaiss_top1_matches_longclip_search";
    let Some(python) = python_with(&["autofaiss", "faiss", "numpy"], TEST) else { return };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (images, out) = (tmp.path().join("images"), tmp.path().join("emb"));
    std::fs::create_dir_all(&images).unwrap();
    const N: usize = 160;
    for i in 0..N {
        picture(i as u32, 64).save(images.join(format!("{i:04}.png"))).unwrap();
    }
    ok(&["inference", "--input", s(&images), "--output-folder", s(&out), "--model", s(&model()), "--no-progress"]);
    let emb = out.join("img_emb/img_emb_0.npy");
    assert!(emb.exists(), "no {}", emb.display());
    assert_eq!(stats(&out, 0)["sample_count"], N);

    let queries = long_queries(50);
    for q in &queries {
        let words = q.split_whitespace().count();
        assert!((30..=80).contains(&words), "{words} words: {q}");
    }
    let (qtxt, qnpy) = (tmp.path().join("q.txt"), tmp.path().join("q.npy"));
    std::fs::write(&qtxt, queries.join("\n") + "\n").unwrap();
    ok(&["embed", "--model", s(&model()), "--texts", s(&qtxt), "--out", s(&qnpy)]);

    // longclip: the rows as an index (f32 storage: the float16 values kept exactly), exact search
    let ids = tmp.path().join("ids.txt");
    std::fs::write(&ids, (0..N).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let index = tmp.path().join("index");
    ok(&["index", "import", "--embeddings", s(&emb), "--ids", s(&ids), "--index", s(&index), "--dtype", "f32"]);
    let results = tmp.path().join("r.jsonl");
    ok(&["search", "--index", s(&index), "--vectors", s(&qnpy), "--out", s(&results), "--exact", "-k", "5"]);
    let ours: Vec<Vec<(usize, f64)>> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["results"].as_array().unwrap().iter().map(|h| (h["path"].as_str().unwrap().parse().unwrap(), h["score"].as_f64().unwrap())).collect()
        })
        .collect();
    assert_eq!(ours.len(), 50);

    // FAISS, through autofaiss (tests/python/faiss_top1.py says why its choice is fair)
    let mut cmd = Command::new(&python);
    cmd.arg(script("tests/python/faiss_top1.py")).args(["--embeddings", s(&out.join("img_emb")), "--queries", s(&qnpy), "--work", s(&tmp.path().join("faiss")), "--k", "5"]);
    let py = run_limited(cmd, Duration::from_secs(180), "faiss_top1.py");
    assert!(py.status.success(), "faiss_top1.py failed:\n{}", String::from_utf8_lossy(&py.stderr));
    let report: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&py.stdout)));
    assert_eq!(report["rows"], N);
    let hits = |key: &str| -> Vec<Vec<(usize, f64)>> {
        report[key].as_array().unwrap().iter().map(|q| q.as_array().unwrap().iter().map(|h| (h[0].as_u64().unwrap() as usize, h[1].as_f64().unwrap())).collect()).collect()
    };
    let (faiss, exact) = (hits("faiss"), hits("exact"));

    // Top-1 must agree. longclip renormalizes the float16 rows on import
    // (FAISS takes them as stored), which moves scores by ~1e-6 here; two
    // rows closer than TIE may then swap, so only such ties are excused.
    const TIE: f64 = 2e-5;
    let mut ties = 0;
    for (q, ((f, o), e)) in faiss.iter().zip(&ours).zip(&exact).enumerate() {
        let (f1, o1) = (f[0], o[0]);
        assert!((f1.1 - o1.1).abs() < 1e-4, "query {q}: top-1 scores differ: FAISS {f1:?}, longclip {o1:?}");
        if f1.0 != o1.0 {
            let score_of = |row: usize| e.iter().find(|h| h.0 == row).map(|h| h.1);
            let (sf, so) = (score_of(f1.0).unwrap(), score_of(o1.0).unwrap_or_else(|| panic!("query {q}: longclip's top-1 {} not in the exact top-5 {e:?}", o1.0)));
            assert!((sf - so).abs() < TIE, "query {q}: FAISS top-1 row {} ({sf:.7}), longclip row {} ({so:.7}): not a tie", f1.0, o1.0);
            ties += 1;
        }
    }
    let distinct: std::collections::BTreeSet<usize> = ours.iter().map(|o| o[0].0).collect();
    assert!(distinct.len() >= 5, "the queries should not all find the same few images: {distinct:?}");
    eprintln!(
        "{TEST}: autofaiss index {}, top-1 agrees on {}/50 queries ({ties} near-ties), {} distinct top-1 images, {:.1} s",
        report["index_key"],
        50 - ties,
        distinct.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A task that Spark gave a GPU runs the binary with CUDA_VISIBLE_DEVICES
/// set to that GPU and `--device cuda`; an explicit `--device` wins. (Spark's
/// TaskContext is stubbed: no GPU, no cluster needed.)
#[test]
fn spark_gpu_task_gets_its_device() {
    const TEST: &str = "spark_gpu_task_gets_its_device";
    let Some(python) = python_with(&["pyspark"], TEST) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-longclip");
    let log = tmp.path().join("calls.txt");
    std::fs::write(&fake, format!("#!/bin/sh\necho \"CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}} $*\" >> '{}'\n", log.display())).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let code = r#"
import sys, types, pyspark
sys.path.insert(0, sys.argv[1])
import longclip_spark as ls
gpus = types.SimpleNamespace(addresses=["3"])
args = ls.parse_args(["--longclip", sys.argv[2], "--input", "in", "--output-folder", "out", "--model", "m.pt", "--partition-count", "4"])
plan = {k: v for k, v in vars(args).items() if k not in ("master", "conf", "progress_interval")}
pyspark.TaskContext.get = staticmethod(lambda: types.SimpleNamespace(resources=lambda: {"gpu": gpus}))
ls.run_partition(1, plan)
plan["device"] = "cuda:0"
ls.run_partition(2, plan)
pyspark.TaskContext.get = staticmethod(lambda: types.SimpleNamespace(resources=lambda: {}))
plan["device"] = None
ls.run_partition(3, plan)
"#;
    let out = Command::new(&python).args(["-c", code, s(&script("spark")), s(&fake)]).env_remove("CUDA_VISIBLE_DEVICES").env("PYTHONDONTWRITEBYTECODE", "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0].starts_with("CUDA_VISIBLE_DEVICES=3 inference ") && calls[0].contains("--partition 1 --partition-count 4") && calls[0].ends_with("--device cuda"), "{}", calls[0]);
    assert!(calls[1].starts_with("CUDA_VISIBLE_DEVICES=3 ") && calls[1].ends_with("--device cuda:0"), "{}", calls[1]);
    assert!(calls[2].starts_with("CUDA_VISIBLE_DEVICES=unset ") && !calls[2].contains("--device"), "{}", calls[2]);
}
