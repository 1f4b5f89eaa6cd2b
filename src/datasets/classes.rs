//! Zero-shot classification sets in their usual on-disk layouts:
//!
//! * CIFAR-10 / CIFAR-100 test sets, "python version" (`cifar-10-batches-py/`
//!   with `test_batch` and `batches.meta`; `cifar-100-python/` with `test` and
//!   `meta`) or "binary version" (`cifar-10-batches-bin/test_batch.bin` and
//!   `batches.meta.txt`; `cifar-100-binary/test.bin` and
//!   `fine_label_names.txt`). Class names are the files' own (as
//!   torchvision's `testset.classes`, underscores included, which is what the
//!   official Long-CLIP script prompts with).
//! * ImageNet validation as an image folder: `val/<wnid>/*.JPEG`, classes in
//!   sorted wnid order (torchvision's `ImageFolder`, the official
//!   `categories.txt`). With the 1,000 standard folders the class names are
//!   CLIP's curated ones (`assets/imagenet_classes.txt`); any other folder set
//!   is named by its folders.
//!
//! Prompts: the 80 ImageNet templates of CLIP (`assets/imagenet_templates.txt`),
//! which the official Long-CLIP scripts use for CIFAR too.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};

use super::pickle::{self, Value};
use super::ImageRef;
use crate::preprocess::is_image_path;

pub const CLASSIFICATION_DATASETS: [&str; 3] = ["cifar10", "cifar100", "imagenet"];

const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");
const IMAGENET_TEMPLATES: &str = include_str!("../../assets/imagenet_templates.txt");

/// CLIP's 80 prompt templates ("a bad photo of a {}.", ...).
pub fn imagenet_templates() -> Vec<String> {
    IMAGENET_TEMPLATES.lines().map(str::to_string).collect()
}

/// CLIP's curated names of the 1,000 ImageNet classes, in wnid order.
pub fn imagenet_class_names() -> Vec<String> {
    IMAGENET_CLASSES.lines().map(str::to_string).collect()
}

/// Images with a class label each.
#[derive(Clone, Debug)]
pub struct ClassificationSet {
    pub name: String,
    pub classes: Vec<String>,
    pub images: Vec<ImageRef>,
    pub labels: Vec<usize>,
}

pub fn load(name: &str, root: &Path) -> Result<ClassificationSet> {
    if !root.exists() {
        bail!("{}: no such file or directory", root.display());
    }
    match name {
        "cifar10" => load_cifar(root, &CIFAR10),
        "cifar100" => load_cifar(root, &CIFAR100),
        "imagenet" => load_imagenet(root),
        other => bail!("unknown classification dataset '{other}' (expected {})", CLASSIFICATION_DATASETS.join(", ")),
    }
}

struct CifarLayout {
    name: &'static str,
    py_dir: &'static str,
    py_test: &'static str,
    py_meta: &'static str,
    py_labels: &'static str,
    py_names: &'static str,
    bin_dir: &'static str,
    bin_test: &'static str,
    bin_names: &'static str,
    /// Label bytes before each image in the binary file; the last one is used.
    bin_label_bytes: usize,
    classes: usize,
}

const CIFAR10: CifarLayout = CifarLayout {
    name: "cifar10",
    py_dir: "cifar-10-batches-py",
    py_test: "test_batch",
    py_meta: "batches.meta",
    py_labels: "labels",
    py_names: "label_names",
    bin_dir: "cifar-10-batches-bin",
    bin_test: "test_batch.bin",
    bin_names: "batches.meta.txt",
    bin_label_bytes: 1,
    classes: 10,
};

const CIFAR100: CifarLayout = CifarLayout {
    name: "cifar100",
    py_dir: "cifar-100-python",
    py_test: "test",
    py_meta: "meta",
    py_labels: "fine_labels",
    py_names: "fine_label_names",
    bin_dir: "cifar-100-binary",
    bin_test: "test.bin",
    bin_names: "fine_label_names.txt",
    bin_label_bytes: 2,
    classes: 100,
};

const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// `root` may be the folder holding the batches folder, or the batches folder.
fn locate(root: &Path, dir: &str, file: &str) -> Option<PathBuf> {
    [root.join(dir), root.to_path_buf()].into_iter().find(|d| d.join(file).is_file())
}

fn load_cifar(root: &Path, l: &CifarLayout) -> Result<ClassificationSet> {
    let (classes, pixels, labels) = if let Some(dir) = locate(root, l.py_dir, l.py_test) {
        read_cifar_python(&dir, l)?
    } else if let Some(dir) = locate(root, l.bin_dir, l.bin_test) {
        read_cifar_binary(&dir, l)?
    } else {
        bail!(
            "{}: not a {} layout: expected {}/{} (python version) or {}/{} (binary version)",
            root.display(),
            l.name,
            l.py_dir,
            l.py_test,
            l.bin_dir,
            l.bin_test
        );
    };
    ensure!(classes.len() == l.classes, "{}: {} class names, expected {}", root.display(), classes.len(), l.classes);
    if let Some(bad) = labels.iter().find(|&&x| x >= l.classes) {
        bail!("{}: label {bad} out of range for {} classes", root.display(), l.classes);
    }
    let images = pixels
        .chunks_exact(CIFAR_PIXELS)
        .enumerate()
        .map(|(i, chw)| Ok(ImageRef::Encoded { name: format!("{} test image {i}", l.name), bytes: Arc::new(cifar_png(chw)?) }))
        .collect::<Result<Vec<_>>>()?;
    Ok(ClassificationSet { name: l.name.into(), classes, images, labels })
}

fn read_cifar_python(dir: &Path, l: &CifarLayout) -> Result<(Vec<String>, Vec<u8>, Vec<usize>)> {
    let test = dir.join(l.py_test);
    let meta = dir.join(l.py_meta);
    let batch = read_pickle(&test)?;
    let data = batch.get("data").and_then(Value::largest_bytes).with_context(|| format!("{}: no 'data' array", test.display()))?;
    let labels = match batch.get(l.py_labels) {
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                other => bail!("{}: bad label {other:?}", test.display()),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => bail!("{}: no '{}' list", test.display(), l.py_labels),
    };
    ensure!(
        data.len() == labels.len() * CIFAR_PIXELS,
        "{}: {} bytes of pixels for {} labels (expected {} per image)",
        test.display(),
        data.len(),
        labels.len(),
        CIFAR_PIXELS
    );
    let names = match read_pickle(&meta)?.get(l.py_names) {
        Some(Value::List(items)) => items.iter().filter_map(Value::as_text).collect(),
        _ => bail!("{}: no '{}' list", meta.display(), l.py_names),
    };
    Ok((names, data.to_vec(), labels))
}

fn read_pickle(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    pickle::parse(&bytes).with_context(|| format!("{}: cannot read the pickle", path.display()))
}

fn read_cifar_binary(dir: &Path, l: &CifarLayout) -> Result<(Vec<String>, Vec<u8>, Vec<usize>)> {
    let test = dir.join(l.bin_test);
    let bytes = std::fs::read(&test).with_context(|| format!("{}: cannot read", test.display()))?;
    let record = l.bin_label_bytes + CIFAR_PIXELS;
    ensure!(
        !bytes.is_empty() && bytes.len() % record == 0,
        "{}: {} bytes is not a whole number of {record}-byte records",
        test.display(),
        bytes.len()
    );
    let mut pixels = Vec::with_capacity(bytes.len() / record * CIFAR_PIXELS);
    let mut labels = Vec::new();
    for r in bytes.chunks_exact(record) {
        labels.push(r[l.bin_label_bytes - 1] as usize);
        pixels.extend_from_slice(&r[l.bin_label_bytes..]);
    }
    let names_path = dir.join(l.bin_names);
    let names = std::fs::read_to_string(&names_path).with_context(|| format!("{}: cannot read", names_path.display()))?;
    let names = names.lines().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    Ok((names, pixels, labels))
}

/// CHW planes of one 32x32 CIFAR image -> a PNG, as `Image.fromarray` sees it.
fn cifar_png(chw: &[u8]) -> Result<Vec<u8>> {
    let rgb: Vec<u8> = (0..32 * 32).flat_map(|p| [chw[p], chw[1024 + p], chw[2048 + p]]).collect();
    let image = image::RgbImage::from_raw(32, 32, rgb).context("32x32 RGB")?;
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn load_imagenet(root: &Path) -> Result<ClassificationSet> {
    let dir = if root.join("val").is_dir() { root.join("val") } else { root.to_path_buf() };
    let mut folders: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    folders.sort();
    if folders.is_empty() {
        bail!("{}: not an ImageNet layout: expected val/<wnid>/*.JPEG class folders (after the usual valprep)", root.display());
    }
    let is_wnid = |n: &String| n.len() == 9 && n.starts_with('n') && n[1..].bytes().all(|b| b.is_ascii_digit());
    let classes = if folders.len() == 1000 && folders.iter().all(is_wnid) {
        imagenet_class_names()
    } else {
        folders.iter().map(|f| f.replace('_', " ")).collect()
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (label, folder) in folders.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(folder))
            .with_context(|| format!("{}: cannot list", dir.join(folder).display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_path(p))
            .collect();
        files.sort();
        labels.extend(std::iter::repeat_n(label, files.len()));
        images.extend(files.into_iter().map(ImageRef::File));
    }
    if images.is_empty() {
        bail!("{}: the class folders hold no images", dir.display());
    }
    Ok(ClassificationSet { name: "imagenet".into(), classes, images, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_prompts_and_names() {
        let t = imagenet_templates();
        assert_eq!(t.len(), 80);
        assert!(t.iter().all(|s| s.matches("{}").count() == 1));
        let c = imagenet_class_names();
        assert_eq!(c.len(), 1000);
        assert_eq!((c[0].as_str(), c[999].as_str()), ("tench", "toilet paper"));
    }

    #[test]
    fn cifar_pixels_are_planar_rgb() {
        let mut chw = vec![0u8; CIFAR_PIXELS];
        chw[0] = 255; // R of pixel (0,0)
        chw[1024 + 33] = 128; // G of pixel (1,1)
        let png = cifar_png(&chw).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 128, 0]);
    }
}
