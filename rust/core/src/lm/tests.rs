//! Round trips and file errors of the whole model.

use super::*;

fn model(order: usize, backward: bool) -> (Model, Option<Model>) {
    let mut c = Corpus::new(false);
    for l in [
        "the cat sat on the mat",
        "the dog sat on the log",
        "a cat saw a dog",
        "",
        "the mat saw the cat <unk>",
        "dogs and cats",
    ] {
        c.add_sentence(l);
    }
    let opts = BuildOptions {
        order,
        discount_fallback: true,
        ..Default::default()
    };
    build(&c, &opts, backward).unwrap()
}

fn scores(m: &Model) -> Vec<f64> {
    ["the cat sat", "a dog on the mat", "unknown words here", ""]
        .iter()
        .map(|s| m.score_ids(&m.ids(s), true, true))
        .collect()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kexue-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn arpa_round_trip_is_exact() {
    for order in [1, 3, 5] {
        let (m, _) = model(order, false);
        let p = tmp(&format!("m{order}.arpa"));
        write_arpa(&m, &p).unwrap();
        let back = read_arpa(&p).unwrap();
        assert_eq!(back.counts(), m.counts());
        assert_eq!(scores(&back), scores(&m));
        assert_eq!(back.unigrams(), m.unigrams());
        for n in 2..=order {
            for (k, w) in m.entries(n) {
                let words: Vec<&str> = k.iter().map(|&i| m.vocab().word(i).unwrap()).collect();
                let k2: Vec<u32> = words.iter().map(|w| back.vocab().id(w)).collect();
                assert_eq!(back.get(&k2), Some(w));
            }
        }
    }
}

#[test]
fn binary_round_trip_is_exact() {
    let (f, b) = model(4, true);
    let p = tmp("m.kxlm");
    save(&p, &f, b.as_ref()).unwrap();
    for mapped in [false, true] {
        let (f2, b2) = load(&p, mapped).unwrap();
        assert_eq!(f2, f);
        assert_eq!(b2, b);
    }
}

#[test]
fn corrupt_binaries_are_errors() {
    let (f, _) = model(3, false);
    let bytes = to_bytes(&f, None);
    let src = std::path::Path::new("m.bin");
    let msg = |b: &[u8]| from_bytes(b, src).unwrap_err().to_string();
    assert!(msg(&bytes[..bytes.len() - 5]).contains("truncated"));
    assert!(msg(&bytes[..10]).contains("truncated"));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(msg(&bad).contains("magic"));
    let mut bad = bytes.clone();
    bad[8] = 9;
    assert!(msg(&bad).contains("version 9"));
    let mut bad = bytes.clone();
    let last = bad.len() - 3;
    bad[last] ^= 1;
    assert!(msg(&bad).contains("checksum"));
    assert!(msg(&bad).starts_with("m.bin: "));
    // Tags without an empty one would make searches endless: refused even with a valid
    // checksum. The last table's tags end the payload (then padding to 8 bytes).
    let mut bad = bytes.clone();
    let tags = f.tables.last().unwrap().tags.len();
    let end = bad.len() - (8 - tags % 8) % 8;
    bad[end - tags..end].fill(1);
    let crc = crc32fast::hash(&bad[32..]);
    bad[24..28].copy_from_slice(&crc.to_le_bytes());
    assert!(msg(&bad).contains("slot tags"));
}

#[test]
fn corrupt_arpa_names_file_and_line() {
    let (m, _) = model(2, false);
    let p = tmp("c.arpa");
    write_arpa(&m, &p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            text.replace("\\data\\", "\\dota\\"),
            "line 1: expected \\data\\",
        ),
        (text.replacen("\t", "\tx ", 1), "line 6:"),
        (
            text[..=text[..text.len() / 2].rfind('\n').unwrap()].to_string(),
            "file ends",
        ),
        (text.replacen("\t", "x\t", 1), "is not a number"),
        (text.replace("\\end\\", ""), "file ends where \\end\\"),
    ];
    for (i, (t, want)) in cases.iter().enumerate() {
        let q = tmp(&format!("c{i}.arpa"));
        std::fs::write(&q, t).unwrap();
        let e = read_arpa(&q).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("c"), "{i}: {e}");
    }
    let q = tmp("u.arpa");
    let mut bytes = text.into_bytes();
    let at = bytes.iter().position(|&b| b == b'\t').unwrap() + 1;
    bytes[at] = 0xff;
    std::fs::write(&q, bytes).unwrap();
    let e = read_arpa(&q).unwrap_err().to_string();
    assert!(e.contains("line 6: invalid UTF-8"), "{e}");
}

#[test]
fn batch_scores_equal_single_scores() {
    let (m, _) = model(5, false);
    let sentences: Vec<Vec<u32>> = ["the cat sat on the mat", "", "a dog saw the log", "zzz"]
        .iter()
        .cycle()
        .take(300)
        .map(|s| m.ids(s))
        .collect();
    let refs: Vec<&[u32]> = sentences.iter().map(Vec::as_slice).collect();
    for (bos, eos) in [(true, true), (false, true), (true, false), (false, false)] {
        let mut out = vec![0.0; refs.len()];
        m.score_ids_batch(&refs, bos, eos, &mut out).unwrap();
        for (s, o) in refs.iter().zip(&out) {
            assert_eq!(*o, m.score_ids(s, bos, eos));
        }
    }
    assert!(m.score_ids_batch(&refs, true, true, &mut [0.0]).is_err());
}

#[test]
fn states_agree_with_context_slices() {
    let (m, _) = model(4, false);
    let ids = m.ids("the cat sat on the mat");
    let mut state = m.begin_state();
    let mut ctx = vec![BOS];
    for &w in &ids {
        let (p, next) = m.score_word(&state, w);
        let q = m.cond_logprob(&ctx, w);
        assert!((f64::from(p) * LN_10 - q).abs() < 1e-12);
        assert_eq!(m.logprob_word(&state, w).0, q);
        state = next;
        ctx.push(w);
    }
}

#[test]
fn successors_are_the_explicit_ngrams_of_a_context() {
    let (m, _) = model(4, false);
    for n in 2..=4 {
        for (key, pb) in m.entries(n) {
            let found: Vec<(u32, f32)> = m.successors(&key[1..]).collect();
            assert!(found.contains(&(key[0], pb.prob)), "{key:?}");
            let expected = m.entries(n).filter(|(k, _)| k[1..] == key[1..]).count();
            assert_eq!(found.len(), expected);
            assert!(found.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
    assert_eq!(m.successors(&[]).len(), 0);
    assert_eq!(m.successors(&[BOS, BOS, BOS, BOS]).len(), 0);
    assert_eq!(m.successors(&[u32::MAX]).len(), 0);
}

#[test]
fn batched_scoring_equals_one_by_one() {
    let (m, _) = model(4, false);
    let words = [
        "the", "cat", "sat", "on", "mat", "dog", "zebra", "a", "log", "saw",
    ];
    // Lengths 0..=12, more sentences than the lanes hold, unknown words included.
    let sentences: Vec<Vec<u32>> = (0..50)
        .map(|i| {
            (0..i % 13)
                .map(|j| m.vocab().id(words[(i * 7 + j * 3) % 10]))
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = sentences.iter().map(Vec::as_slice).collect();
    for (bos, eos) in [(true, true), (true, false), (false, true), (false, false)] {
        for f32_sum in [false, true] {
            let mut out = vec![f64::NAN; refs.len()];
            m.score_many(&refs, bos, eos, f32_sum, &mut out);
            for (s, got) in refs.iter().zip(&out) {
                let want = if f32_sum {
                    f64::from(m.score_ids_f32(s, bos, eos))
                } else {
                    m.score_ids(s, bos, eos)
                };
                assert_eq!(*got, want, "{s:?} bos={bos} eos={eos}");
            }
        }
    }
}

#[test]
fn hostile_arpa_headers_are_errors_before_allocating() {
    let (m, _) = model(3, false);
    let p = tmp("hostile.arpa");
    write_arpa(&m, &p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    for (n, count) in [
        (1, "99999999999999"),
        (2, "18446744073709551615"),
        (3, "9999"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("ngram {n}=")))
            .unwrap();
        let bad = tmp(&format!("hostile{n}.arpa"));
        std::fs::write(&bad, text.replacen(line, &format!("ngram {n}={count}"), 1)).unwrap();
        let e = read_arpa(&bad).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "line {}: ngram {n}={count} cannot be right",
                n + 1
            )),
            "{e}"
        );
    }
}

#[test]
fn saves_follow_symlinks_and_refuse_special_files() {
    let (m, _) = model(2, false);
    let target = tmp("target.kxlm");
    save(&target, &m, None).unwrap();
    let link = tmp("link.kxlm");
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let (m3, _) = model(3, false);
        save(&link, &m3, None).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&target, false).unwrap().0, m3);
    }
    let dir = tmp("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    for e in [save(&dir, &m, None), write_arpa(&m, &dir)] {
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("is a directory, not a regular file"));
    }
    let e = load(&dir, true).unwrap_err().to_string();
    assert!(e.contains("is a directory, not a regular file"), "{e}");
}
