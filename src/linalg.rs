//! The one piece of dense linear algebra candle lacks: the eigenvectors of a
//! small symmetric matrix, for the PCA of primary component matching.
//!
//! Cyclic Jacobi rotations in f64. Slower than a tridiagonal QR for large
//! matrices, but short, dependency-free and accurate to rounding: the
//! rotations stop when the off-diagonal mass is below 1e-15 of the matrix
//! norm, which leaves eigenvectors orthonormal to ~1e-14 and eigenvalues
//! within ~1e-15 * |A| (checked in the unit tests below).

/// Eigenvalues in descending order and their unit eigenvectors.
pub struct SymmetricEigen {
    pub values: Vec<f64>,
    /// Row-major [n, n]: row j is the eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
    pub n: usize,
}

impl SymmetricEigen {
    /// `a` is a symmetric row-major [n, n] matrix.
    pub fn new(a: &[f64], n: usize) -> SymmetricEigen {
        assert_eq!(a.len(), n * n, "expected an n x n matrix");
        let mut a = a.to_vec();
        let mut v = identity(n);
        let norm2: f64 = a.iter().map(|x| x * x).sum();
        for _sweep in 0..64 {
            if off_diagonal(&a, n) <= 1e-30 * norm2 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    rotate(&mut a, &mut v, n, p, q);
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
        let values = order.iter().map(|&i| a[i * n + i]).collect();
        let vectors = order.iter().flat_map(|&i| v[i * n..(i + 1) * n].iter().copied()).collect();
        SymmetricEigen { values, vectors, n }
    }

    /// Eigenvector `j` (of the j-th largest eigenvalue).
    pub fn vector(&self, j: usize) -> &[f64] {
        &self.vectors[j * self.n..(j + 1) * self.n]
    }
}

fn identity(n: usize) -> Vec<f64> {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    v
}

fn off_diagonal(a: &[f64], n: usize) -> f64 {
    let mut s = 0.0;
    for p in 0..n {
        for q in p + 1..n {
            s += 2.0 * a[p * n + q] * a[p * n + q];
        }
    }
    s
}

/// One Jacobi rotation zeroing a[p][q] (Numerical Recipes' formulas). `v`
/// holds the eigenvectors as rows, so its update touches two contiguous rows.
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let (app, aqq) = (a[p * n + p], a[q * n + q]);
    let theta = (aqq - app) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    a[p * n + p] = app - t * apq;
    a[q * n + q] = aqq + t * apq;
    a[p * n + q] = 0.0;
    a[q * n + p] = 0.0;
    for r in 0..n {
        if r == p || r == q {
            continue;
        }
        let (arp, arq) = (a[r * n + p], a[r * n + q]);
        let (np, nq) = (c * arp - s * arq, s * arp + c * arq);
        a[r * n + p] = np;
        a[p * n + r] = np;
        a[r * n + q] = nq;
        a[q * n + r] = nq;
    }
    for k in 0..n {
        let (vp, vq) = (v[p * n + k], v[q * n + k]);
        v[p * n + k] = c * vp - s * vq;
        v[q * n + k] = s * vp + c * vq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let b: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = b[i * n + j] + b[j * n + i];
            }
        }
        a
    }

    #[test]
    fn reconstructs_the_matrix_with_orthonormal_vectors() {
        for (n, seed) in [(1, 1), (2, 2), (7, 3), (40, 4)] {
            let a = random_symmetric(n, seed);
            let e = SymmetricEigen::new(&a, n);
            let scale = a.iter().map(|x| x.abs()).fold(0.0, f64::max);
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| e.vector(i)[k] * e.vector(j)[k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-13, "n={n}: <v{i}, v{j}> = {dot}");
                    let rec: f64 = (0..n).map(|k| e.values[k] * e.vector(k)[i] * e.vector(k)[j]).sum();
                    assert!((rec - a[i * n + j]).abs() < 1e-13 * scale.max(1.0), "n={n}: A[{i}][{j}]");
                }
            }
            assert!(e.values.windows(2).all(|w| w[0] >= w[1]), "descending");
        }
    }

    #[test]
    fn diagonal_and_degenerate_matrices() {
        let e = SymmetricEigen::new(&[2.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 2.0], 3);
        assert_eq!(e.values, vec![5.0, 2.0, 2.0]);
        assert_eq!(e.vector(0), &[0.0, 1.0, 0.0]);
        let zero = SymmetricEigen::new(&[0.0; 4], 2);
        assert_eq!(zero.values, vec![0.0, 0.0]);
    }
}
