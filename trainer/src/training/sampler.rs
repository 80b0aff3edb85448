//! Batch samplers: balanced positive / negative pairs and class-balanced P x K batches.
//! All randomness comes from the caller's seeded RNG.

use anyhow::{bail, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Image indices grouped by class.
#[derive(Clone, Debug)]
pub struct ClassIndex {
    /// `(class, indices)` for every class with at least one image, ascending class.
    by_class: Vec<(u16, Vec<usize>)>,
}

impl ClassIndex {
    pub fn new(labels: &[u16]) -> Self {
        let mut map = std::collections::BTreeMap::<u16, Vec<usize>>::new();
        for (i, &l) in labels.iter().enumerate() {
            map.entry(l).or_default().push(i);
        }
        ClassIndex {
            by_class: map.into_iter().collect(),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.by_class.len()
    }

    /// Up to `per_class` indices of every class, spread evenly over the class's images
    /// (all of them for 0).
    pub fn subsample(&self, per_class: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for (_, idx) in &self.by_class {
            if per_class == 0 || idx.len() <= per_class {
                out.extend_from_slice(idx);
            } else {
                out.extend((0..per_class).map(|j| idx[j * idx.len() / per_class]));
            }
        }
        out
    }
}

/// A contrastive batch: pair `i` is `(a[i], b[i])`, of the same class when `same[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub same: Vec<bool>,
}

/// `n_pairs` pairs, half of the same class (two distinct images where the class has two),
/// half of two different classes, in shuffled order.
pub fn balanced_pairs(
    index: &ClassIndex,
    n_pairs: usize,
    rng: &mut ChaCha8Rng,
) -> Result<PairBatch> {
    if index.num_classes() < 2 {
        bail!("contrastive pairs need at least 2 classes in the training set");
    }
    let classes = &index.by_class;
    let mut pairs = Vec::with_capacity(n_pairs);
    for p in 0..n_pairs {
        if p % 2 == 0 {
            let (_, idx) = &classes[rng.random_range(0..classes.len())];
            let i = rng.random_range(0..idx.len());
            let j = if idx.len() > 1 {
                let j = rng.random_range(0..idx.len() - 1);
                if j >= i {
                    j + 1
                } else {
                    j
                }
            } else {
                i
            };
            pairs.push((idx[i], idx[j], true));
        } else {
            let c1 = rng.random_range(0..classes.len());
            let mut c2 = rng.random_range(0..classes.len() - 1);
            if c2 >= c1 {
                c2 += 1;
            }
            let a = *classes[c1].1.choose(rng).expect("classes are non-empty");
            let b = *classes[c2].1.choose(rng).expect("classes are non-empty");
            pairs.push((a, b, false));
        }
    }
    pairs.shuffle(rng);
    Ok(PairBatch {
        a: pairs.iter().map(|p| p.0).collect(),
        b: pairs.iter().map(|p| p.1).collect(),
        same: pairs.iter().map(|p| p.2).collect(),
    })
}

/// A class-balanced batch: `p` distinct classes (all of them when fewer exist), `k` images
/// of each (without replacement where the class has `k`, otherwise with). Returns the
/// image indices, grouped by class.
pub fn pk_batch(
    index: &ClassIndex,
    p: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<usize>> {
    if index.num_classes() < 2 {
        bail!("P x K batches need at least 2 classes in the training set");
    }
    let chosen: Vec<&(u16, Vec<usize>)> = index
        .by_class
        .choose_multiple(rng, p.min(index.num_classes()))
        .collect();
    let mut out = Vec::with_capacity(chosen.len() * k);
    for (_, idx) in chosen {
        if idx.len() >= k {
            out.extend(idx.choose_multiple(rng, k).copied());
        } else {
            out.extend((0..k).map(|_| idx[rng.random_range(0..idx.len())]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn labels() -> Vec<u16> {
        (0..200).map(|i| (i % 10) as u16).collect()
    }

    #[test]
    fn pairs_are_balanced_and_seeded() {
        let lab = labels();
        let idx = ClassIndex::new(&lab);
        let b1 = balanced_pairs(&idx, 32, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let b2 = balanced_pairs(&idx, 32, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(b1, b2);
        assert_eq!(b1.same.iter().filter(|&&s| s).count(), 16);
        for i in 0..32 {
            assert_eq!(lab[b1.a[i]] == lab[b1.b[i]], b1.same[i]);
            if b1.same[i] {
                assert_ne!(b1.a[i], b1.b[i]);
            }
        }
    }

    #[test]
    fn pk_batches_have_p_classes_of_k() {
        let lab = labels();
        let idx = ClassIndex::new(&lab);
        let b = pk_batch(&idx, 4, 3, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
        assert_eq!(b.len(), 12);
        for g in b.chunks(3) {
            assert!(g.iter().all(|&i| lab[i] == lab[g[0]]));
            let mut u = g.to_vec();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 3);
        }
        let classes: std::collections::BTreeSet<u16> = b.iter().map(|&i| lab[i]).collect();
        assert_eq!(classes.len(), 4);
        assert_eq!(idx.subsample(5).len(), 50);
        assert!(pk_batch(
            &ClassIndex::new(&[1, 1]),
            2,
            2,
            &mut ChaCha8Rng::seed_from_u64(0)
        )
        .is_err());
    }
}
