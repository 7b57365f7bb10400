//! Which (tenant, key) each request addresses: uniform or Zipfian over the ranks.

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Zipf};

/// How ranks are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// Every rank equally likely.
    Uniform,
    /// Rank r (from 1) drawn with probability proportional to 1 / r^exponent.
    Zipfian {
        /// The skew; 0 is uniform, 1 is the classic Zipf law.
        exponent: f64,
    },
}

/// The key space: `tenants` × `keys`, tenant and key ranks drawn independently from the shape,
/// so with Zipf both a hot tenant and, within every tenant, hot keys appear (rank 0 is hottest).
#[derive(Debug, Clone)]
pub struct KeySpace {
    /// Number of tenants; ranks are `0..tenants`.
    tenants: u32,
    /// Number of keys per tenant; ranks are `0..keys`.
    keys: u32,
    /// The tenant-rank distribution, when Zipfian (`None` is uniform).
    tenant_zipf: Option<Zipf<f64>>,
    /// The key-rank distribution, when Zipfian.
    key_zipf: Option<Zipf<f64>>,
}

/// An invalid key space.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeySpaceError {
    /// No tenants or no keys.
    #[error("the key space needs at least one tenant and one key")]
    Empty,
    /// The exponent is negative, NaN or infinite.
    #[error("the Zipf exponent must be a finite number >= 0, not {0}")]
    BadExponent(f64),
}

impl KeySpace {
    /// A key space of `tenants` × `keys` drawn with `shape`.
    pub fn new(tenants: u32, keys: u32, shape: Shape) -> Result<Self, KeySpaceError> {
        if tenants == 0 || keys == 0 {
            return Err(KeySpaceError::Empty);
        }
        let zipf = |n: u32| match shape {
            Shape::Uniform => Ok(None),
            Shape::Zipfian { exponent } if exponent.is_finite() && exponent >= 0.0 => {
                Zipf::new(f64::from(n), exponent)
                    .map(Some)
                    .map_err(|_| KeySpaceError::BadExponent(exponent))
            }
            Shape::Zipfian { exponent } => Err(KeySpaceError::BadExponent(exponent)),
        };
        Ok(Self {
            tenants,
            keys,
            tenant_zipf: zipf(tenants)?,
            key_zipf: zipf(keys)?,
        })
    }

    /// Draws (tenant rank, key rank).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> (u32, u32) {
        (
            draw(self.tenants, self.tenant_zipf.as_ref(), rng),
            draw(self.keys, self.key_zipf.as_ref(), rng),
        )
    }
}

/// One rank in `0..n`.
fn draw<R: Rng + ?Sized>(n: u32, zipf: Option<&Zipf<f64>>, rng: &mut R) -> u32 {
    match zipf {
        None => rng.random_range(0..n),
        // Zipf yields whole numbers in 1..=n as floats; the clamp guards float edge cases.
        Some(z) => (z.sample(rng) as u32).clamp(1, n) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    fn counts(space: &KeySpace, seed: u64, draws: usize) -> Vec<u64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut c = vec![0u64; space.keys as usize];
        for _ in 0..draws {
            let (t, k) = space.sample(&mut rng);
            assert!(t < space.tenants && k < space.keys);
            c[k as usize] += 1;
        }
        c
    }

    #[test]
    fn zipfian_skews_to_low_ranks() {
        let space = KeySpace::new(1, 100, Shape::Zipfian { exponent: 1.0 }).unwrap();
        let c = counts(&space, 7, 100_000);
        // P(rank 0) = 1 / H_100 ≈ 0.193; P(rank 1) ≈ 0.096; the last rank ≈ 0.0019.
        let share0 = c[0] as f64 / 100_000.0;
        assert!((0.18..0.21).contains(&share0), "rank 0 share {share0}");
        assert!(c[0] > c[1] && c[1] > c[2] && c[2] > c[9], "{:?}", &c[..10]);
        let low: u64 = c[..10].iter().sum();
        let high: u64 = c[90..].iter().sum();
        assert!(low > 20 * high, "low ranks {low}, high ranks {high}");
    }

    #[test]
    fn zipf_exponent_zero_is_flat() {
        let space = KeySpace::new(1, 10, Shape::Zipfian { exponent: 0.0 }).unwrap();
        let c = counts(&space, 3, 50_000);
        for (rank, n) in c.iter().enumerate() {
            assert!((4_000..6_000).contains(n), "rank {rank}: {n}");
        }
    }

    #[test]
    fn uniform_covers_every_rank_evenly() {
        let space = KeySpace::new(1, 100, Shape::Uniform).unwrap();
        let c = counts(&space, 11, 100_000);
        assert!(c.iter().all(|&n| n > 0), "some rank never drawn");
        let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
        // Mean 1000 per rank, standard deviation ≈ 31.
        assert!(*min > 850 && *max < 1150, "min {min} max {max}");
    }

    #[test]
    fn tenants_are_covered_too() {
        let space = KeySpace::new(7, 3, Shape::Uniform).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut seen = [false; 7];
        for _ in 0..1_000 {
            seen[space.sample(&mut rng).0 as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let space = KeySpace::new(50, 1000, Shape::Zipfian { exponent: 1.2 }).unwrap();
        let run = |seed| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            (0..200).map(|_| space.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn invalid_spaces_are_rejected() {
        assert_eq!(
            KeySpace::new(0, 5, Shape::Uniform).unwrap_err(),
            KeySpaceError::Empty
        );
        assert!(matches!(
            KeySpace::new(1, 5, Shape::Zipfian { exponent: -1.0 }),
            Err(KeySpaceError::BadExponent(_))
        ));
        assert!(matches!(
            KeySpace::new(1, 5, Shape::Zipfian { exponent: f64::NAN }),
            Err(KeySpaceError::BadExponent(_))
        ));
    }
}
