//! Task weights from the Gram matrix alone (torchjd's split): every rule here maps the K×K
//! `G = J Jᵀ` to `w`, and the direction is `u = wᵀ J` ([`super::gram::combine`]).

use rand::Rng as _;

use super::gram::MAX_TASKS;
use super::qp;
use crate::{rng, Error, Result};

/// Checks that `g` is a finite square K×K matrix and returns K.
pub fn tasks(g: &[f64], k: usize) -> Result<usize> {
    if k == 0 || k > MAX_TASKS {
        return Err(Error::value(
            "G",
            format!("must be K×K with 1 <= K <= {MAX_TASKS}, got K = {k}"),
        ));
    }
    if g.len() != k * k {
        return Err(Error::value(
            "G",
            format!("must have K² = {} entries, got {}", k * k, g.len()),
        ));
    }
    if let Some(x) = g.iter().find(|x| !x.is_finite()) {
        return Err(Error::value("G", format!("must be finite, got {x}")));
    }
    Ok(k)
}

/// MGDA (Sener & Koltun; Su, part II): `argmin_{w ∈ simplex} ‖wᵀJ‖²`.
///
/// K = 2 uses the closed form `γ = clip(⟨g₂−g₁, g₂⟩/‖g₁−g₂‖², 0, 1)` (γ = ½ when g₁ = g₂);
/// K > 2 the exact active-set QP. A zero gradient gives `u = 0` (Pareto-stationary).
pub fn mgda(g: &[f64], k: usize) -> Result<Vec<f64>> {
    tasks(g, k)?;
    if k == 1 {
        return Ok(vec![1.0]);
    }
    if k == 2 {
        let (g11, g12, g22) = (g[0], g[1], g[3]);
        let denom = g11 - 2.0 * g12 + g22;
        let gamma = if denom <= 0.0 {
            0.5 // g₁ = g₂: every γ is optimal
        } else if g12 >= g11 {
            1.0
        } else if g12 >= g22 {
            0.0
        } else {
            ((g22 - g12) / denom).clamp(0.0, 1.0)
        };
        return Ok(vec![gamma, 1.0 - gamma]);
    }
    Ok(qp::simplex_orthant(g, k, &vec![true; k]))
}

/// Su's primary/auxiliary rule (part III), generalised to several primaries:
/// `min ½‖Σ_{i∈P} α_i g_i + Σ_{j∈A} λ_j g_j‖²` over `α` on the simplex and `λ ≥ 0`.
///
/// One primary: `α = 1` and `λ` is the NNLS solution, so `u = g₀ + Σλ_j g_j` with
/// `⟨u, g_j⟩ ≥ 0` for every auxiliary and `⟨u, g₀⟩ = ‖u‖²`; one auxiliary has the closed
/// form `λ = relu(−⟨g₀,g₁⟩)/‖g₁‖²` (0 when g₁ = 0). Several primaries: they are treated
/// as MGDA treats tasks (`⟨u, g_i⟩ ≥ ‖u‖²` for each), the auxiliaries as constraints.
/// Tasks that are neither primary nor auxiliary do not exist: every task not in `primary`
/// is an auxiliary.
pub fn primary_auxiliary(g: &[f64], k: usize, primary: &[usize]) -> Result<Vec<f64>> {
    tasks(g, k)?;
    let mut simplex = vec![false; k];
    for &p in primary {
        if p >= k {
            return Err(Error::value(
                "primary",
                format!("must index a task in 0..{k}, got {p}"),
            ));
        }
        simplex[p] = true;
    }
    let n_primary = simplex.iter().filter(|&&s| s).count();
    if n_primary == 0 {
        return Err(Error::value("primary", "must name at least one task"));
    }
    if n_primary == 1 && k == 2 {
        let p = primary[0];
        let a = 1 - p;
        let mut w = vec![0.0; 2];
        w[p] = 1.0;
        let (gpa, gaa) = (g[p * 2 + a], g[a * 2 + a]);
        if gpa < 0.0 && gaa > 0.0 {
            w[a] = -gpa / gaa;
        }
        return Ok(w);
    }
    Ok(qp::simplex_orthant(g, k, &simplex))
}

/// Su's gradient-norm rule (part I): `w_i = 1/‖g_i‖`, and 0 for a zero gradient.
pub fn gradnorm_sum(g: &[f64], k: usize) -> Result<Vec<f64>> {
    tasks(g, k)?;
    Ok((0..k)
        .map(|i| {
            let n = g[i * k + i].sqrt();
            if n > 0.0 {
                1.0 / n
            } else {
                0.0
            }
        })
        .collect())
}

/// PCGrad's projection orders: row `i` (of K) is the order in which task `i` is projected
/// off the others, a permutation of `0..K` drawn from stream `i` of `seed`.
pub fn pcgrad_orders(k: usize, seed: u64) -> Result<Vec<usize>> {
    if k == 0 || k > MAX_TASKS {
        return Err(Error::value(
            "k",
            format!("must be in 1..={MAX_TASKS}, got {k}"),
        ));
    }
    let mut orders = Vec::with_capacity(k * k);
    for i in 0..k {
        let mut rng = rng::stream(seed, i as u64);
        let mut perm: Vec<usize> = (0..k).collect();
        for a in (1..k).rev() {
            perm.swap(a, rng.random_range(0..=a));
        }
        orders.extend(perm);
    }
    Ok(orders)
}

/// PCGrad (Yu et al. 2020) in Gram form: each `g_i` is kept as coefficients `c` over the
/// original gradients; projecting off a conflicting `g_j` (⟨cᵀJ, g_j⟩ = (Gc)_j < 0) subtracts
/// `(Gc)_j / G_jj` from `c_j`. The weights are the sum of the K coefficient vectors.
/// `orders` is K×K, row `i` a permutation of `0..K` (entry `i` itself is skipped); zero
/// gradients are never projected on (the textbook form divides by zero there).
pub fn pcgrad(g: &[f64], k: usize, orders: &[usize]) -> Result<Vec<f64>> {
    tasks(g, k)?;
    if orders.len() != k * k {
        return Err(Error::value(
            "order",
            format!("must be K×K = {}×{}, got {} entries", k, k, orders.len()),
        ));
    }
    let mut seen = vec![usize::MAX; k];
    for (i, row) in orders.chunks_exact(k).enumerate() {
        for &j in row {
            if j >= k || seen[j] == i {
                return Err(Error::value(
                    "order",
                    format!("row {i} must be a permutation of 0..{k}"),
                ));
            }
            seen[j] = i;
        }
    }
    let mut w = vec![0.0; k];
    for (i, row) in orders.chunks_exact(k).enumerate() {
        let mut c = vec![0.0; k];
        c[i] = 1.0;
        for &j in row {
            let gjj = g[j * k + j];
            if j == i || gjj <= 0.0 {
                continue;
            }
            let dot: f64 = (0..k).map(|t| g[j * k + t] * c[t]).sum();
            if dot < 0.0 {
                c[j] -= dot / gjj;
            }
        }
        for (wt, ct) in w.iter_mut().zip(&c) {
            *wt += ct;
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgda_two_tasks_closed_form() {
        // g1 = (1,0), g2 = (0,1): γ = ½.
        assert_eq!(mgda(&[1.0, 0.0, 0.0, 1.0], 2).unwrap(), vec![0.5, 0.5]);
        // g1 = g2: any γ, ½ by convention; g1 inside: γ = 1.
        assert_eq!(mgda(&[1.0, 1.0, 1.0, 1.0], 2).unwrap(), vec![0.5, 0.5]);
        assert_eq!(mgda(&[1.0, 1.0, 1.0, 4.0], 2).unwrap(), vec![1.0, 0.0]);
        assert_eq!(mgda(&[0.0, 0.0, 0.0, 1.0], 2).unwrap(), vec![1.0, 0.0]);
    }

    #[test]
    fn pcgrad_projects_conflicts_only() {
        // g1 = (1,0), g2 = (-1,1): ⟨g1,g2⟩ = -1, ‖g2‖² = 2, ‖g1‖² = 1.
        let g = [1.0, -1.0, -1.0, 2.0];
        let w = pcgrad(&g, 2, &[0, 1, 1, 0]).unwrap();
        // pc1 = g1 + ½ g2, pc2 = g2 + g1: weights (2, 1.5).
        assert_eq!(w, vec![2.0, 1.5]);
        let w = pcgrad(&[1.0, 0.0, 0.0, 0.0], 2, &[0, 1, 0, 1]).unwrap();
        assert_eq!(w, vec![1.0, 1.0]);
    }

    #[test]
    fn orders_are_seeded_permutations() {
        let a = pcgrad_orders(5, 3).unwrap();
        assert_eq!(a, pcgrad_orders(5, 3).unwrap());
        assert_ne!(a, pcgrad_orders(5, 4).unwrap());
        for row in a.chunks(5) {
            let mut r = row.to_vec();
            r.sort_unstable();
            assert_eq!(r, (0..5).collect::<Vec<_>>());
        }
        assert!(pcgrad(&[1.0; 4], 2, &[0, 0, 0, 1]).is_err());
    }

    #[test]
    fn primary_auxiliary_closed_form_and_errors() {
        let g = [1.0, -1.0, -1.0, 2.0];
        assert_eq!(primary_auxiliary(&g, 2, &[0]).unwrap(), vec![1.0, 0.5]);
        assert_eq!(primary_auxiliary(&g, 2, &[1]).unwrap(), vec![1.0, 1.0]);
        assert!(primary_auxiliary(&g, 2, &[2]).is_err());
        assert!(primary_auxiliary(&g, 2, &[]).is_err());
        assert!(mgda(&[f64::NAN; 4], 2).is_err());
        assert!(mgda(&[1.0; 3], 2).is_err());
        assert!(gradnorm_sum(&[], 0).is_err());
    }
}
