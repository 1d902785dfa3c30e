//! RoPE inverse frequencies as Hugging Face computes them: the default `1 / base^(2i/d)`, and the
//! scalings of long-context checkpoints (linear, Llama 3, LongRoPE's short factors).
use super::spec::RopeSpec;

/// How a checkpoint scales its RoPE frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.x: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// LongRoPE (Phi-3): per-dimension factors and a cos/sin scale. The short factors are used, for
    /// contexts up to `original_max_position_embeddings`.
    LongRope {
        short_factor: Vec<f64>,
        attention_factor: f64,
    },
}

/// The unscaled inverse frequencies of `dims` rotary dimensions.
fn default_inv_freq(base: f64, dims: usize) -> Vec<f64> {
    (0..dims / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dims as f64))
        .collect()
}

/// The RoPE table of a layer with base `base` over `dims` rotary dimensions.
pub fn rope_spec(base: f64, dims: usize, scaling: &RopeScaling) -> Result<RopeSpec, String> {
    let inv = default_inv_freq(base, dims);
    let (inv, attention_factor): (Vec<f64>, f64) = match scaling {
        RopeScaling::None => (inv, 1.0),
        RopeScaling::Linear { factor } => (inv.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let scaled = inv
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (scaled, 1.0)
        }
        RopeScaling::LongRope {
            short_factor,
            attention_factor,
        } => {
            if short_factor.len() != inv.len() {
                return Err(format!(
                    "LongRoPE has {} short factors for {} frequencies",
                    short_factor.len(),
                    inv.len()
                ));
            }
            let scaled = inv.iter().zip(short_factor).map(|(f, s)| f / s).collect();
            (scaled, *attention_factor)
        }
    };
    Ok(RopeSpec {
        inv_freq: inv.into_iter().map(|f| f as f32).collect(),
        attention_factor: attention_factor as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_short_wavelengths_and_divides_long_ones() {
        let plain = rope_spec(500_000.0, 64, &RopeScaling::None).unwrap();
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let scaled = rope_spec(500_000.0, 64, &s).unwrap();
        assert_eq!(
            scaled.inv_freq[0], plain.inv_freq[0],
            "highest frequency kept"
        );
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] * 8.0 - plain.inv_freq[last]).abs() < 1e-12);
        assert!(scaled
            .inv_freq
            .iter()
            .zip(&plain.inv_freq)
            .all(|(a, b)| a <= b));
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = rope_spec(10_000.0, 8, &RopeScaling::None).unwrap();
        let lin = rope_spec(10_000.0, 8, &RopeScaling::Linear { factor: 4.0 }).unwrap();
        for (a, b) in lin.inv_freq.iter().zip(&plain.inv_freq) {
            assert!((a * 4.0 - b).abs() < 1e-7);
        }
    }
}
