//! Shared by the index benches: clustered unit vectors written as `.npy`
//! with ids, and the process's resident memory.

#![allow(dead_code)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use longclip::rng::SplitMix;

pub const DIM: usize = 512;
pub const CENTRES: usize = 1000;
pub const QUERIES: usize = 500;

pub struct Generator {
    centres: Vec<Vec<f32>>,
    rng: SplitMix,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let mut rng = SplitMix(seed);
        let centres = (0..CENTRES).map(|_| unit((0..DIM).map(|_| rng.normal()).collect())).collect();
        Generator { centres, rng: SplitMix(seed ^ 0xABCDEF) }
    }

    /// A centre plus noise of about the centre's size (within-cluster cosine ~0.5-0.7).
    pub fn draw(&mut self) -> Vec<f32> {
        let c = (self.rng.next_u64() % CENTRES as u64) as usize;
        let spread = 0.03 + 0.03 * ((self.rng.next_u64() % 100) as f32 / 100.0);
        unit((0..DIM).map(|j| self.centres[c][j] + spread * self.rng.normal()).collect())
    }
}

pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub fn write_vectors(dir: &Path, n: usize, gen: &mut Generator) -> (PathBuf, PathBuf) {
    let npy = dir.join(format!("vectors-{n}.npy"));
    let ids = dir.join(format!("ids-{n}.txt"));
    if npy.exists() && ids.exists() {
        return (npy, ids);
    }
    let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(&npy).unwrap());
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {DIM}), }}");
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    w.write_all(b"\x93NUMPY\x01\x00").unwrap();
    w.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    w.write_all(&header).unwrap();
    for _ in 0..n {
        for x in gen.draw() {
            w.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    w.flush().unwrap();
    let list: String = (0..n).map(|i| format!("photos/{i:07}.jpg\n")).collect();
    std::fs::write(&ids, list).unwrap();
    (npy, ids)
}

pub fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
    };
    (field("VmRSS:"), field("RssFile:"))
}

