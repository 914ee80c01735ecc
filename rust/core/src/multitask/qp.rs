//! Exact solver of the small QP behind MGDA and the primary/auxiliary rule:
//!
//! `min ½ xᵀ G x  s.t.  x ≥ 0,  Σ_{i ∈ S} x_i = 1`
//!
//! with `G` the K×K Gram matrix (PSD, possibly singular) and `S` the non-empty "simplex"
//! set: `S` = every task is MGDA's min-norm point, `S = {primary}` is Su's NNLS, and a larger
//! `S` beside auxiliaries is the mixed case. A primal active-set method: hand-written because
//! K ≤ a few dozen and the only dependency-free alternatives (projected gradient,
//! Frank–Wolfe) do not reach 1e-6 reliably; singular `G` (duplicate or dependent gradients) is
//! handled by solving each equality-constrained subproblem with full pivoting and setting
//! the undetermined coordinates to zero, since any minimiser of a subproblem will do.

/// Relative size under which a pivot of the KKT system counts as zero.
const PIVOT_TOL: f64 = 1e-12;
/// Multiplier tolerance (G is scaled to unit largest diagonal first).
const DUAL_TOL: f64 = 1e-13;

/// Solves `a x = b` (n×n, row-major) by Gaussian elimination with full pivoting; unknowns
/// whose pivot is below the tolerance are set to zero (a solution when the system is
/// consistent, as the subproblems here are).
fn solve_singular(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut cols: Vec<usize> = (0..n).collect();
    let mut rank = 0;
    for r in 0..n {
        let (mut pr, mut pc, mut best) = (r, r, 0.0);
        for i in r..n {
            for j in r..n {
                if a[i * n + j].abs() > best {
                    (pr, pc, best) = (i, j, a[i * n + j].abs());
                }
            }
        }
        if best <= PIVOT_TOL * scale || best == 0.0 {
            break;
        }
        if pr != r {
            for j in 0..n {
                a.swap(r * n + j, pr * n + j);
            }
            b.swap(r, pr);
        }
        if pc != r {
            for i in 0..n {
                a.swap(i * n + r, i * n + pc);
            }
            cols.swap(r, pc);
        }
        for i in r + 1..n {
            let f = a[i * n + r] / a[r * n + r];
            if f != 0.0 {
                for j in r..n {
                    a[i * n + j] -= f * a[r * n + j];
                }
                b[i] -= f * b[r];
            }
        }
        rank += 1;
    }
    let mut y = vec![0.0; n];
    for r in (0..rank).rev() {
        let s: f64 = (r + 1..rank).map(|j| a[r * n + j] * y[j]).sum();
        y[r] = (b[r] - s) / a[r * n + r];
    }
    let mut x = vec![0.0; n];
    for (r, &c) in cols.iter().enumerate() {
        x[c] = y[r];
    }
    x
}

/// Minimiser of `½ xᵀGx` over `x_F` free (the rest 0) with `Σ_{F ∩ S} x = 1`.
fn subproblem(g: &[f64], k: usize, free: &[bool], simplex: &[bool]) -> Vec<f64> {
    let idx: Vec<usize> = (0..k).filter(|&i| free[i]).collect();
    let n = idx.len() + 1;
    let mut a = vec![0.0; n * n];
    let mut b = vec![0.0; n];
    for (r, &i) in idx.iter().enumerate() {
        for (c, &j) in idx.iter().enumerate() {
            a[r * n + c] = g[i * k + j];
        }
        if simplex[i] {
            a[r * n + n - 1] = -1.0;
            a[(n - 1) * n + r] = 1.0;
        }
    }
    b[n - 1] = 1.0;
    let sol = solve_singular(a, b, n);
    let mut x = vec![0.0; k];
    for (r, &i) in idx.iter().enumerate() {
        x[i] = sol[r];
    }
    x
}

fn objective(g: &[f64], k: usize, x: &[f64]) -> f64 {
    (0..k)
        .map(|i| x[i] * (0..k).map(|j| g[i * k + j] * x[j]).sum::<f64>())
        .sum()
}

/// The minimiser `x` (see the module doc). `g` must be finite and symmetric; `simplex` must
/// mark at least one index.
pub fn simplex_orthant(g: &[f64], k: usize, simplex: &[bool]) -> Vec<f64> {
    let scale = (0..k).map(|i| g[i * k + i]).fold(0.0f64, f64::max);
    // Start at the shortest simplex vertex: optimal whenever that gradient is zero.
    let start = (0..k)
        .filter(|&i| simplex[i])
        .min_by(|&a, &b| g[a * k + a].total_cmp(&g[b * k + b]))
        .expect("simplex marks at least one index");
    let mut x = vec![0.0; k];
    x[start] = 1.0;
    if scale <= 0.0 {
        return x;
    }
    let g: Vec<f64> = g.iter().map(|v| v / scale).collect();
    let mut free = vec![false; k];
    free[start] = true;
    let (mut best, mut best_f) = (x.clone(), objective(&g, k, &x));
    for _ in 0..20 * (k + 2) {
        let y = subproblem(&g, k, &free, simplex);
        let blocking = (0..k)
            .filter(|&i| free[i] && y[i] < 0.0 && x[i] - y[i] > 0.0)
            .map(|i| (x[i] / (x[i] - y[i]), i))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match blocking {
            Some((t, _)) if t < 1.0 => {
                for i in 0..k {
                    x[i] += t * (y[i] - x[i]);
                }
                for i in 0..k {
                    if free[i] && x[i] <= 1e-15 {
                        free[i] = false;
                        x[i] = 0.0;
                    }
                }
            }
            _ => {
                x = y.iter().map(|v| v.max(0.0)).collect();
                let grad: Vec<f64> = (0..k)
                    .map(|i| (0..k).map(|j| g[i * k + j] * x[j]).sum())
                    .collect();
                let nu: f64 = (0..k).filter(|&i| simplex[i]).map(|i| x[i] * grad[i]).sum();
                let worst = (0..k)
                    .filter(|&i| !free[i])
                    .map(|i| (grad[i] - if simplex[i] { nu } else { 0.0 }, i))
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                let f = objective(&g, k, &x);
                if f <= best_f {
                    (best, best_f) = (x.clone(), f);
                }
                match worst {
                    Some((mu, i)) if mu < -DUAL_TOL => free[i] = true,
                    _ => return normalised(x, simplex),
                }
            }
        }
    }
    normalised(best, simplex)
}

/// Rescales the simplex part to sum exactly to one (it drifts by rounding only).
fn normalised(mut x: Vec<f64>, simplex: &[bool]) -> Vec<f64> {
    let s: f64 = x
        .iter()
        .zip(simplex)
        .filter(|(_, &s)| s)
        .map(|(v, _)| v)
        .sum();
    if s > 0.0 {
        for (v, _) in x.iter_mut().zip(simplex).filter(|(_, &s)| s) {
            *v /= s;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(rows: &[&[f64]]) -> Vec<f64> {
        let k = rows.len();
        let mut g = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] = rows[i].iter().zip(rows[j]).map(|(a, b)| a * b).sum();
            }
        }
        g
    }

    #[test]
    fn min_norm_point_of_a_triangle() {
        // Vertices (1,0), (0,1), (1,1): the nearest hull point to 0 is (1/2, 1/2).
        let g = gram(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]]);
        let x = simplex_orthant(&g, 3, &[true; 3]);
        assert!((x[0] - 0.5).abs() < 1e-12 && (x[1] - 0.5).abs() < 1e-12 && x[2].abs() < 1e-12);
    }

    #[test]
    fn duplicates_and_zero_rows() {
        let g = gram(&[&[1.0, 2.0], &[1.0, 2.0], &[-1.0, -2.0]]);
        let x = simplex_orthant(&g, 3, &[true; 3]);
        assert!(
            (x[0] + x[1] - 0.5).abs() < 1e-12 && (x[2] - 0.5).abs() < 1e-12,
            "{x:?}"
        );
        let g = gram(&[&[1.0, 2.0], &[0.0, 0.0]]);
        assert_eq!(simplex_orthant(&g, 2, &[true; 2]), vec![0.0, 1.0]);
    }

    #[test]
    fn nnls_projection_for_one_auxiliary() {
        // g0 = (1, 0), g1 = (-1, 1): λ = relu(-⟨g0,g1⟩)/‖g1‖² = 1/2.
        let g = gram(&[&[1.0, 0.0], &[-1.0, 1.0]]);
        let x = simplex_orthant(&g, 2, &[true, false]);
        assert!(
            (x[0] - 1.0).abs() < 1e-15 && (x[1] - 0.5).abs() < 1e-12,
            "{x:?}"
        );
    }
}
