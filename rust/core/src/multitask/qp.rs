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

/// Minimiser of `½ yᵀGy` over `y_F` free (the rest 0) with `Σ_F a_i y_i = 1`.
fn subproblem(g: &[f64], k: usize, free: &[bool], a: &[f64]) -> Vec<f64> {
    let idx: Vec<usize> = (0..k).filter(|&i| free[i]).collect();
    let n = idx.len() + 1;
    let mut m = vec![0.0; n * n];
    let mut b = vec![0.0; n];
    for (r, &i) in idx.iter().enumerate() {
        for (c, &j) in idx.iter().enumerate() {
            m[r * n + c] = g[i * k + j];
        }
        m[r * n + n - 1] = -a[i];
        m[(n - 1) * n + r] = a[i];
    }
    b[n - 1] = 1.0;
    let sol = solve_singular(m, b, n);
    let mut y = vec![0.0; k];
    for (r, &i) in idx.iter().enumerate() {
        y[i] = sol[r];
    }
    y
}

fn objective(g: &[f64], k: usize, x: &[f64]) -> f64 {
    (0..k)
        .map(|i| x[i] * (0..k).map(|j| g[i * k + j] * x[j]).sum::<f64>())
        .sum()
}

/// The minimiser `x` (see the module doc). `g` must be finite and symmetric; `simplex` must
/// mark at least one index.
///
/// The problem is solved in Jacobi-scaled variables `y_i = ‖g_i‖ x_i` (unit-diagonal Gram of
/// the normalised gradients, equality `Σ_S y_i/‖g_i‖ = 1`), so gradient norms that differ by
/// many orders of magnitude do not reach the rank and multiplier tolerances.
pub fn simplex_orthant(g: &[f64], k: usize, simplex: &[bool]) -> Vec<f64> {
    let mut x = vec![0.0; k];
    // A zero simplex gradient is optimal on its own (u = 0).
    if let Some(i) = (0..k).find(|&i| simplex[i] && g[i * k + i] <= 0.0) {
        x[i] = 1.0;
        return x;
    }
    // Zero auxiliary gradients change nothing: they stay out, with weight 0.
    let d: Vec<f64> = (0..k)
        .map(|i| {
            let n = g[i * k + i];
            if n > 0.0 {
                1.0 / n.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let usable: Vec<bool> = d.iter().map(|&v| v > 0.0).collect();
    let gs: Vec<f64> = (0..k * k).map(|ij| g[ij] * d[ij / k] * d[ij % k]).collect();
    let dmax = (0..k)
        .filter(|&i| simplex[i])
        .map(|i| d[i])
        .fold(0.0, f64::max);
    // Σ_S d_i y_i = 1 rescaled to coefficients in (0, 1]: y is then measured in units of
    // the shortest simplex gradient.
    let a: Vec<f64> = (0..k)
        .map(|i| if simplex[i] { d[i] / dmax } else { 0.0 })
        .collect();
    // Start at the shortest simplex vertex, y_s = 1/a_s.
    let start = (0..k)
        .filter(|&i| simplex[i])
        .max_by(|&p, &q| a[p].total_cmp(&a[q]))
        .expect("simplex marks at least one index");
    let mut y = vec![0.0; k];
    y[start] = 1.0 / a[start];
    let mut free = vec![false; k];
    free[start] = true;
    let (mut best, mut best_f) = (y.clone(), objective(&gs, k, &y));
    for _ in 0..20 * (k + 2) {
        let z = subproblem(&gs, k, &free, &a);
        let blocking = (0..k)
            .filter(|&i| free[i] && z[i] < 0.0 && y[i] - z[i] > 0.0)
            .map(|i| (y[i] / (y[i] - z[i]), i))
            .min_by(|p, q| p.0.total_cmp(&q.0));
        match blocking {
            Some((t, _)) if t < 1.0 => {
                for i in 0..k {
                    y[i] += t * (z[i] - y[i]);
                }
                let top = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for i in 0..k {
                    if free[i] && y[i] <= 1e-15 * top {
                        free[i] = false;
                        y[i] = 0.0;
                    }
                }
            }
            _ => {
                y = z.iter().map(|v| v.max(0.0)).collect();
                let grad: Vec<f64> = (0..k)
                    .map(|i| (0..k).map(|j| gs[i * k + j] * y[j]).sum())
                    .collect();
                // At a subproblem optimum grad_i = ν a_i on the free simplex indices.
                let nu: f64 = (0..k).filter(|&i| simplex[i]).map(|i| y[i] * grad[i]).sum();
                let f = objective(&gs, k, &y);
                // |grad_i| = |⟨ĝ_i, u⟩| <= ‖u‖ = sqrt(2f): the multipliers' natural scale,
                // floored at 1e-6 of the starting vertex's length for u ≈ 0.
                let tol = DUAL_TOL * (2.0 * f).sqrt().max(1e-6 / a[start]);
                let worst = (0..k)
                    .filter(|&i| !free[i] && usable[i])
                    .map(|i| (grad[i] - nu * a[i], i))
                    .min_by(|p, q| p.0.total_cmp(&q.0));
                if f <= best_f {
                    (best, best_f) = (y.clone(), f);
                }
                match worst {
                    Some((mu, i)) if mu < -tol => free[i] = true,
                    _ => return unscaled(&y, &d, simplex),
                }
            }
        }
    }
    unscaled(&best, &d, simplex)
}

/// `x ∝ D y`, scaled so that the simplex part sums to one (`Σ_S d_i y_i = max d`, and
/// rounding).
fn unscaled(y: &[f64], d: &[f64], simplex: &[bool]) -> Vec<f64> {
    let mut x: Vec<f64> = y.iter().zip(d).map(|(v, s)| v * s).collect();
    let s: f64 = (0..x.len()).filter(|&i| simplex[i]).map(|i| x[i]).sum();
    if s > 0.0 {
        for v in &mut x {
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
    fn primary_with_non_unit_norm() {
        // min ‖(3,0) + λ1(−1,1) + λ2(0,−1)‖² = (3−λ1)² + (λ1−λ2)²: λ = (3, 3), u = 0.
        let g = gram(&[&[3.0, 0.0], &[-1.0, 1.0], &[0.0, -1.0]]);
        let x = simplex_orthant(&g, 3, &[true, false, false]);
        assert_eq!(x[0], 1.0);
        assert!(
            (x[1] - 3.0).abs() < 1e-12 && (x[2] - 3.0).abs() < 1e-12,
            "{x:?}"
        );
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
