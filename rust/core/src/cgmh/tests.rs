//! Exactness of the sampler on a tiny enumerable bigram LM: the empirical distribution of
//! many independent chains matches the enumerated target (chi-square), per move set.

use std::collections::HashMap;

use rand::Rng as _;
use rayon::prelude::*;

use super::*;

/// A random bigram LM over `v` words: p(w | prev) with start and end of sentence; the
/// backward table is another random bigram, used only for the candidate index.
struct Toy {
    v: usize,
    /// fwd[prev][w], prev in 0..=v (v = start), w in 0..=v (v = end); natural logs.
    fwd: Vec<Vec<f64>>,
    bwd: Vec<Vec<f64>>,
    nan_at: Option<usize>,
}

impl Toy {
    fn new(v: usize, seed: u64) -> Self {
        let mut rng = rng::stream(seed, 0);
        let mut table = || -> Vec<Vec<f64>> {
            (0..=v)
                .map(|_| {
                    let p: Vec<f64> = (0..=v).map(|_| rng.random::<f64>() + 0.05).collect();
                    let s: f64 = p.iter().sum();
                    p.iter().map(|q| (q / s).ln()).collect()
                })
                .collect()
        };
        let fwd = table();
        let bwd = table();
        Toy {
            v,
            fwd,
            bwd,
            nan_at: None,
        }
    }
    fn id(&self, w: u32) -> usize {
        (w as usize).min(self.v - 1) // ids past the vocabulary score as the last word
    }
}

impl Scorer for Toy {
    fn vocab_size(&self) -> usize {
        self.v
    }
    fn sentence_logprob(&self, x: &[u32]) -> Result<f64> {
        if Some(x.len()) == self.nan_at {
            return Ok(f64::NAN);
        }
        let mut prev = self.v;
        let mut lp = 0.0;
        for &w in x {
            lp += self.fwd[prev][self.id(w)];
            prev = self.id(w);
        }
        Ok(lp + self.fwd[prev][self.v])
    }
    fn forward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<()> {
        let prev = if pos == 0 {
            self.v
        } else {
            self.id(x[pos - 1])
        };
        for (w, o) in out.iter_mut().enumerate() {
            *o = self.fwd[prev][w] as f32;
        }
        Ok(())
    }
    fn backward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<bool> {
        let next = x.get(pos + 1).map_or(self.v, |&w| self.id(w));
        for (w, o) in out.iter_mut().enumerate() {
            *o = self.bwd[next][w] as f32;
        }
        Ok(true)
    }
}

/// Every sentence over `v` words with length in `lo..=hi`.
fn enumerate(v: u32, lo: usize, hi: usize) -> Vec<Vec<u32>> {
    let mut all = vec![vec![]];
    let mut out = Vec::new();
    for len in 1..=hi {
        all = all
            .iter()
            .flat_map(|s: &Vec<u32>| {
                (0..v).map(move |w| {
                    let mut t = s.clone();
                    t.push(w);
                    t
                })
            })
            .collect();
        if len >= lo {
            out.extend(all.iter().cloned());
        }
    }
    out
}

/// Upper `1e-6` quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi2_critical(df: f64) -> f64 {
    let z = 4.753; // standard normal upper 1e-6 quantile
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Runs `chains` independent chains of `config.steps` steps and compares the final states
/// with `target` (unnormalised probabilities by sentence) by chi-square.
fn check(
    lm: &Toy,
    task: &Task<'_>,
    config: &Config,
    target: &HashMap<Vec<u32>, f64>,
    chains: usize,
) {
    let finals: Vec<Vec<u32>> = (0..chains)
        .into_par_iter()
        .map(|c| {
            let mut rng = rng::stream(11, c as u64);
            run_chain(lm, task, config, false, &mut rng).unwrap().tokens
        })
        .collect();
    let mut counts: HashMap<Vec<u32>, f64> = HashMap::new();
    for f in finals {
        assert!(target.contains_key(&f), "chain left the support: {f:?}");
        *counts.entry(f).or_default() += 1.0;
    }
    let z: f64 = target.values().sum();
    let (mut stat, mut df, mut pooled_e, mut pooled_o) = (0.0, 0.0, 0.0, 0.0);
    for (s, p) in target {
        let e = chains as f64 * p / z;
        let o = counts.get(s).copied().unwrap_or(0.0);
        if e < 5.0 {
            pooled_e += e;
            pooled_o += o;
        } else {
            stat += (o - e).powi(2) / e;
            df += 1.0;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e.max(1e-9);
        df += 1.0;
    }
    df -= 1.0;
    assert!(df >= 5.0, "too few bins: {df}");
    assert!(
        stat < chi2_critical(df),
        "chi-square {stat:.1} over critical {:.1} (df {df})",
        chi2_critical(df)
    );
}

fn toy_config(actions: [f64; 3], top_k: usize, max_len: usize) -> Config {
    Config {
        steps: 60,
        top_k,
        moves: [actions[0], actions[1], actions[2], 0.0, 0.0],
        min_len: 1,
        max_len,
        explore: 0.2,
        ..Config::default()
    }
}

/// ρ(x)·χ(x) by enumeration: x contains `kw` as a subsequence.
fn target(lm: &Toy, kw: &[u32], lo: usize, hi: usize, gamma: f64) -> HashMap<Vec<u32>, f64> {
    enumerate(lm.v as u32, lo, hi)
        .into_iter()
        .filter(|x| embeddings(kw, x) > 0.0)
        .map(|x| {
            let p = (gamma * lm.sentence_logprob(&x).unwrap()).exp();
            (x, p)
        })
        .collect()
}

#[test]
fn replace_alone_samples_the_target() {
    // Fixed length 3, no keywords: every sentence of length 3; top_k 2 < v forces the
    // current-word and exploration corrections.
    let lm = Toy::new(4, 1);
    let task = Task {
        tokens: vec![0, 1, 2],
        fixed: vec![false; 3],
        forms: vec![],
        units: vec![],
        free_order: false,
        priors: vec![],
    };
    let config = toy_config([1.0, 0.0, 0.0], 2, 3);
    check(&lm, &task, &config, &target(&lm, &[], 3, 3, 1.0), 40_000);
}

#[test]
fn replace_alone_with_a_keyword() {
    // Keyword 1 fixed at position 1 of 3: marginal ∝ ρ(x) / N(x) over x with x[1] = 1.
    let lm = Toy::new(3, 2);
    let task = Task {
        tokens: vec![0, 1, 0],
        fixed: vec![false, true, false],
        forms: vec![],
        units: vec![],
        free_order: false,
        priors: vec![],
    };
    let config = toy_config([1.0, 0.0, 0.0], 2, 3);
    let t: HashMap<Vec<u32>, f64> = enumerate(3, 3, 3)
        .into_iter()
        .filter(|x| x[1] == 1)
        .map(|x| {
            let p = lm.sentence_logprob(&x).unwrap().exp() / embeddings(&[1], &x);
            (x, p)
        })
        .collect();
    check(&lm, &task, &config, &t, 40_000);
}

#[test]
fn insert_delete_alone_sample_the_target() {
    let lm = Toy::new(3, 3);
    let task = Task {
        tokens: vec![2],
        fixed: vec![false],
        forms: vec![],
        units: vec![],
        free_order: false,
        priors: vec![],
    };
    let mut config = toy_config([0.0, 0.5, 0.5], 2, 4);
    config.steps = 600;
    check(&lm, &task, &config, &target(&lm, &[], 1, 4, 1.0), 40_000);
}

#[test]
fn insert_delete_with_keywords_sample_the_target() {
    // Keyword sequence [1, 1] (a repeated word): the sentence marginal is ρ(x)·χ(x).
    let lm = Toy::new(3, 4);
    let task = Task::keywords(&[1, 1]);
    let mut config = toy_config([0.0, 0.5, 0.5], 2, 4);
    config.steps = 120;
    check(
        &lm,
        &task,
        &config,
        &target(&lm, &[1, 1], 2, 4, 1.0),
        40_000,
    );
}

#[test]
fn all_moves_mixed_sample_the_target() {
    let lm = Toy::new(3, 5);
    let task = Task {
        tokens: vec![0, 2],
        fixed: vec![false, false],
        forms: vec![],
        units: vec![],
        free_order: false,
        priors: vec![],
    };
    let mut config = toy_config([0.4, 0.3, 0.3], 2, 4);
    config.steps = 100;
    check(&lm, &task, &config, &target(&lm, &[], 1, 4, 1.0), 40_000);
}

#[test]
fn all_moves_with_keywords_gamma_and_index_variants() {
    for (seed, index, gamma, explore) in [
        (6, Index::Min, 0.8, 0.2),
        (7, Index::Product, 1.0, 0.0),
        (8, Index::Forward, 1.2, 0.1),
    ] {
        let lm = Toy::new(3, seed);
        let task = Task::keywords(&[2, 0]);
        let mut config = toy_config([0.4, 0.3, 0.3], 2, 4);
        config.index = index;
        config.gamma = gamma;
        config.explore = explore;
        if explore == 0.0 {
            config.top_k = 3; // without exploration only K >= v keeps every move reversible
        }
        config.steps = 100;
        check(
            &lm,
            &task,
            &config,
            &target(&lm, &[2, 0], 2, 4, gamma),
            40_000,
        );
    }
}

/// A prior that forbids word 0 and favours long sentences.
struct NoZero;
impl Prior for NoZero {
    fn log_score(&self, x: &[u32]) -> Result<f64> {
        Ok(if x.contains(&0) {
            f64::NEG_INFINITY
        } else {
            0.3 * x.len() as f64
        })
    }
}

#[test]
fn priors_enter_the_target() {
    let lm = Toy::new(3, 9);
    let prior = NoZero;
    let task = Task {
        tokens: vec![1],
        fixed: vec![false],
        forms: vec![],
        units: vec![],
        free_order: false,
        priors: vec![&prior],
    };
    let mut config = toy_config([0.4, 0.3, 0.3], 2, 4);
    config.steps = 100;
    let t: HashMap<Vec<u32>, f64> = target(&lm, &[], 1, 4, 1.0)
        .into_iter()
        .filter(|(x, _)| !x.contains(&0))
        .map(|(x, p)| {
            let s = (0.3 * x.len() as f64).exp();
            (x, p * s)
        })
        .collect();
    check(&lm, &task, &config, &t, 40_000);
}

#[test]
fn keywords_are_kept_in_order_and_bounds_hold() {
    let lm = Toy::new(5, 10);
    let kws = [4, 4, 1, 7]; // a repeat and an id the LM does not know
    let tasks = vec![Task::keywords(&kws)];
    let config = Config {
        steps: 300,
        top_k: 3,
        max_len: 9,
        anneal: Some((1.0, 0.05)),
        trace: true,
        ..Config::default()
    };
    let out = run(&lm, &tasks, 16, &config, 3, true).unwrap();
    for s in &out {
        assert!(embeddings(&kws, &s.tokens) >= 1.0, "{:?}", s.tokens);
        assert!((4..=9).contains(&s.tokens.len()));
        assert!(s.logprob <= s.last_logprob.max(s.logprob));
        assert_eq!(s.trace_log_target.len(), 300);
        assert_eq!(s.proposed.iter().sum::<u64>(), 300);
        let lp = lm.sentence_logprob(&s.tokens).unwrap();
        assert!((lp - s.logprob).abs() < 1e-9);
    }
}

#[test]
fn same_seed_same_output_on_any_thread_count() {
    let lm = Toy::new(6, 12);
    let tasks = vec![Task::keywords(&[1, 2]), Task::keywords(&[3])];
    let config = Config {
        steps: 80,
        top_k: 4,
        ..Config::default()
    };
    crate::parallel::set_num_threads(1).unwrap();
    let a = run(&lm, &tasks, 5, &config, 42, false).unwrap();
    crate::parallel::set_num_threads(3).unwrap();
    let b = run(&lm, &tasks, 5, &config, 42, false).unwrap();
    crate::parallel::set_num_threads(0).unwrap();
    assert_eq!(a, b);
    let c = run(&lm, &tasks, 5, &config, 43, false).unwrap();
    assert_ne!(a, c);
}

#[test]
fn bad_input_is_an_error() {
    let mut lm = Toy::new(3, 13);
    let config = Config::default();
    let ok = vec![Task::keywords(&[1])];
    assert!(run(&lm, &[Task::keywords(&[])], 1, &config, 0, false).is_err());
    assert!(run(&lm, &ok, 0, &config, 0, false).is_err());
    let too_long = vec![Task::keywords(&[1; 41])];
    assert!(run(&lm, &too_long, 1, &config, 0, false).is_err());
    for bad in [
        Config {
            steps: 0,
            ..Config::default()
        },
        Config {
            top_k: 0,
            ..Config::default()
        },
        Config {
            gamma: f64::NAN,
            ..Config::default()
        },
        Config {
            moves: [0.0; Move::COUNT],
            ..Config::default()
        },
        Config {
            moves: [1.0, -1.0, 1.0, 0.0, 0.0],
            ..Config::default()
        },
        Config {
            keep: 0,
            ..Config::default()
        },
        Config {
            blocked: vec![2, 1],
            ..Config::default()
        },
        Config {
            min_len: 5,
            max_len: 4,
            ..Config::default()
        },
        Config {
            anneal: Some((1.0, 0.0)),
            ..Config::default()
        },
        Config {
            explore: 1.0,
            ..Config::default()
        },
    ] {
        assert!(run(&lm, &ok, 1, &bad, 0, false).is_err(), "{bad:?}");
    }
    lm.nan_at = Some(2);
    let e = run(&lm, &ok, 1, &config, 0, false).unwrap_err();
    assert!(e.to_string().contains("lm"), "{e}");
}

#[test]
fn embeddings_counts_subsequences() {
    assert_eq!(embeddings(&[], &[1, 2]), 1.0);
    assert_eq!(embeddings(&[1], &[1, 2, 1]), 2.0);
    assert_eq!(embeddings(&[1, 2], &[1, 2, 1, 2]), 3.0);
    assert_eq!(embeddings(&[2, 1], &[1, 2]), 0.0);
}

/// ρ(x)·χ(x) by enumeration for keywords given by their forms: x admits a marking (in
/// keyword order unless `free`), times e^{extra(x)}.
fn target_forms(
    lm: &Toy,
    forms: &[Vec<u32>],
    free: bool,
    lo: usize,
    hi: usize,
    extra: impl Fn(&[u32]) -> f64,
) -> HashMap<Vec<u32>, f64> {
    let units: Vec<Vec<Vec<u32>>> = forms.iter().map(|f| vec![f.clone()]).collect();
    target_units(lm, &units, free, lo, hi, extra)
}

fn keyword_task(keywords: &[u32], forms: Vec<Vec<u32>>, free_order: bool) -> Task<'static> {
    Task {
        forms,
        free_order,
        ..Task::keywords(keywords)
    }
}

#[test]
fn keyword_forms_sample_the_target() {
    // Keyword 0 may be written 0 or 2 (a repeat of keyword 1's form 2 is possible), keyword 1
    // only 2; fixed order. Every move including reform.
    let lm = Toy::new(3, 14);
    let task = keyword_task(&[0, 2], vec![vec![0, 2], vec![2]], false);
    let mut config = toy_config([0.4, 0.3, 0.3], 2, 4);
    config.moves[Move::Reform as usize] = 0.3;
    config.steps = 120;
    let forms = [vec![0, 2], vec![2]];
    check(
        &lm,
        &task,
        &config,
        &target_forms(&lm, &forms, false, 2, 4, |_| 0.0),
        40_000,
    );
}

#[test]
fn free_keyword_order_samples_the_target() {
    // Keywords {1} and {0, 2} in any order (reorder moves), with forms and a repeat.
    let lm = Toy::new(3, 15);
    let task = keyword_task(&[1, 0], vec![vec![1], vec![0, 2]], true);
    let mut config = toy_config([0.3, 0.25, 0.25], 2, 4);
    config.moves[Move::Reform as usize] = 0.1;
    config.moves[Move::Reorder as usize] = 0.2;
    config.steps = 120;
    let forms = [vec![1], vec![0, 2]];
    check(
        &lm,
        &task,
        &config,
        &target_forms(&lm, &forms, true, 2, 4, |_| 0.0),
        40_000,
    );
}

#[test]
fn length_prior_and_blocked_words_enter_the_target() {
    // Word 1 blocked outside keyword slots, keyword 2 free to move; sentences shorter than 4
    // pay 0.7 nats a word.
    let lm = Toy::new(4, 16);
    let task = keyword_task(&[2], vec![], true);
    let mut config = toy_config([0.4, 0.3, 0.3], 2, 4);
    config.moves[Move::Reorder as usize] = 0.2;
    config.blocked = vec![1];
    config.length = Some(LengthPrior {
        target: 4,
        per_word: 0.7,
    });
    config.steps = 150;
    let t = target_forms(&lm, &[vec![2]], true, 1, 4, |x| {
        if x.contains(&1) {
            f64::NEG_INFINITY
        } else {
            -0.7 * (4 - x.len()) as f64
        }
    });
    check(&lm, &task, &config, &t, 40_000);
}

#[test]
fn markings_count_ordered_and_free_assignments() {
    let forms = [vec![1, 3], vec![2]];
    assert_eq!(markings(&forms, false, &[1, 2, 3, 2]), 3.0); // (0,1) (0,3) (2,3)
    assert_eq!(markings(&forms, false, &[2, 1]), 0.0);
    assert_eq!(markings(&forms, true, &[2, 1]), 1.0);
    assert_eq!(markings(&forms, true, &[1, 2, 3, 2]), 4.0); // 2 forms × 2 places for 2
                                                            // Two keywords with the same form: positions are not shared.
    assert_eq!(markings(&[vec![5], vec![5]], true, &[5, 5, 5]), 6.0);
    assert_eq!(markings(&[vec![5], vec![5]], false, &[5, 5, 5]), 3.0);
}

#[test]
fn kept_states_are_distinct_and_best_first() {
    let lm = Toy::new(6, 17);
    let tasks = vec![keyword_task(&[1, 2], vec![vec![1, 3], vec![]], true)];
    let config = Config {
        steps: 200,
        top_k: 4,
        keep: 5,
        moves: [1.0, 1.0, 1.0, 0.5, 0.5],
        length: Some(LengthPrior {
            target: 5,
            per_word: 1.0,
        }),
        anneal: Some((1.0, 0.05)),
        ..Config::default()
    };
    let out = run(&lm, &tasks, 3, &config, 5, true).unwrap();
    for s in &out {
        assert!(s.kept.len() > 1 && s.kept.len() <= 5);
        assert_eq!(s.kept[0].0, s.tokens);
        for (i, a) in s.kept.iter().enumerate() {
            assert!(markings(&[vec![1, 3], vec![2]], true, &a.0) >= 1.0);
            for b in &s.kept[i + 1..] {
                assert_ne!(a.0, b.0);
                assert!(a.2 >= b.2);
            }
        }
    }
}

/// ρ(x)·χ(x) by enumeration for keyword units: x holds disjoint blocks spelling each unit
/// (in unit order unless `free`), times e^{extra(x)}.
fn target_units(
    lm: &Toy,
    units: &[Vec<Vec<u32>>],
    free: bool,
    lo: usize,
    hi: usize,
    extra: impl Fn(&[u32]) -> f64,
) -> HashMap<Vec<u32>, f64> {
    enumerate(lm.v as u32, lo, hi)
        .into_iter()
        .filter(|x| unit_markings(units, free, x) > 0.0)
        .map(|x| {
            let p = (lm.sentence_logprob(&x).unwrap() + extra(&x)).exp();
            (x, p)
        })
        .filter(|(_, p)| *p > 0.0)
        .collect()
}

#[test]
fn two_token_keyword_samples_the_target_in_fixed_order() {
    // Keyword units [1 2] and [0] (0 may also be written 2, so a form can sit next to the
    // unit's own 2), fixed order; every move including reform. The unit's words may also
    // appear as free words elsewhere (a second [1 2]: two markings).
    let lm = Toy::new(3, 18);
    let task = Task {
        tokens: vec![1, 2, 0],
        fixed: vec![true; 3],
        forms: vec![vec![], vec![], vec![2]],
        units: vec![2, 1],
        free_order: false,
        priors: vec![],
    };
    let mut config = toy_config([0.4, 0.3, 0.3], 2, 5);
    config.moves[Move::Reform as usize] = 0.2;
    config.steps = 150;
    let units = [vec![vec![1], vec![2]], vec![vec![0, 2]]];
    check(
        &lm,
        &task,
        &config,
        &target_units(&lm, &units, false, 3, 5, |_| 0.0),
        40_000,
    );
}

#[test]
fn two_token_keyword_moves_whole_in_free_order() {
    // Units [2 0] and [1] in any order, reorder moving the unit whole; a length prior and a
    // blocked word (3) as in the English defaults.
    let lm = Toy::new(4, 19);
    let task = Task {
        tokens: vec![1, 2, 0],
        fixed: vec![true; 3],
        forms: vec![],
        units: vec![1, 2],
        free_order: true,
        priors: vec![],
    };
    let mut config = toy_config([0.3, 0.25, 0.25], 2, 5);
    config.moves[Move::Reorder as usize] = 0.2;
    config.blocked = vec![3];
    config.length = Some(LengthPrior {
        target: 5,
        per_word: 0.4,
    });
    config.steps = 150;
    let units = [vec![vec![1]], vec![vec![2], vec![0]]];
    let t = target_units(&lm, &units, true, 3, 5, |x| {
        if x.contains(&3) {
            f64::NEG_INFINITY
        } else {
            -0.4 * (5 - x.len()) as f64
        }
    });
    check(&lm, &task, &config, &t, 40_000);
}

#[test]
fn unit_markings_count_disjoint_blocks() {
    let units = [vec![vec![1], vec![2]], vec![vec![2]]];
    assert_eq!(unit_markings(&units, false, &[1, 2, 2]), 1.0);
    assert_eq!(unit_markings(&units, false, &[2, 1, 2]), 0.0); // blocks may not share a 2
    assert_eq!(unit_markings(&units, true, &[2, 1, 2]), 1.0);
    assert_eq!(unit_markings(&units, true, &[1, 2, 1, 2, 2]), 4.0);
    assert_eq!(unit_markings(&units, false, &[1, 2, 1, 2, 2]), 3.0);
    // Single-token units agree with `markings`.
    let forms = [vec![1, 3], vec![2]];
    let single: Vec<Vec<Vec<u32>>> = forms.iter().map(|f| vec![f.clone()]).collect();
    for x in enumerate(4, 1, 4) {
        for free in [false, true] {
            assert_eq!(unit_markings(&single, free, &x), markings(&forms, free, &x));
        }
    }
}

#[test]
fn units_are_checked() {
    let lm = Toy::new(3, 20);
    let config = Config::default();
    let bad = |units: Vec<usize>, fixed: Vec<bool>| Task {
        tokens: vec![0, 1, 2],
        fixed,
        forms: vec![],
        units,
        free_order: true,
        priors: vec![],
    };
    for task in [
        bad(vec![2, 2], vec![true; 3]),
        bad(vec![0, 3], vec![true; 3]),
        bad(vec![2], vec![true, false, true]),
    ] {
        let e = run(&lm, &[task], 1, &config, 0, false).unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
    }
    assert!(run(&lm, &[bad(vec![1, 2], vec![true; 3])], 1, &config, 0, false).is_ok());
}
