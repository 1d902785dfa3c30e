//! Kernel tests: block decoding against candle's independent implementation, every SIMD dot product
//! against the scalar reference and against float math, matmul and paged attention against naive loops.
use candle_core::quantized::k_quants as ck;
use half::f16;
use inhaus_kernels::attention::{paged_attention, write_kv, AttnParams, AttnSeq, KvLayer};
use inhaus_kernels::cpu::SimdLevel;
use inhaus_kernels::dot::{dot_fn_at, scalar};
use inhaus_kernels::matmul::{matmul, QMatrix};
use inhaus_kernels::quant::{dequantize_row, GgmlType};
use inhaus_kernels::quantize::{quantize_rows, AlignedBytes};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Roughly normal values with occasional outliers, like real activations.
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4)
            .map(|_| (self.next() % 10_000) as f32 / 10_000.0)
            .sum::<f32>()
            - 2.0;
        if self.next().is_multiple_of(97) {
            s * 8.0
        } else {
            s
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

fn bytes_of<T>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain-old-data blocks viewed as bytes.
    unsafe {
        std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)).to_vec()
    }
}

/// Quantizes `x` with candle (an independent encoder) and returns (bytes, candle's own decoding).
fn candle_quantize(t: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    fn go<B: ck::GgmlType>(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut blocks = vec![B::zeros(); x.len() / B::BLCK_SIZE];
        B::from_float(x, &mut blocks);
        let mut y = vec![0f32; x.len()];
        B::to_float(&blocks, &mut y);
        (bytes_of(&blocks), y)
    }
    match t {
        GgmlType::Q4_0 => go::<ck::BlockQ4_0>(x),
        GgmlType::Q4_1 => go::<ck::BlockQ4_1>(x),
        GgmlType::Q5_0 => go::<ck::BlockQ5_0>(x),
        GgmlType::Q5_1 => go::<ck::BlockQ5_1>(x),
        GgmlType::Q8_0 => go::<ck::BlockQ8_0>(x),
        GgmlType::Q4K => go::<ck::BlockQ4K>(x),
        GgmlType::Q5K => go::<ck::BlockQ5K>(x),
        GgmlType::Q6K => go::<ck::BlockQ6K>(x),
        _ => unreachable!(),
    }
}

const WEIGHT_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn aligned(bytes: &[u8]) -> AlignedBytes {
    let mut a = AlignedBytes::default();
    a.resize(bytes.len());
    a.as_mut_slice().copy_from_slice(bytes);
    a
}

#[test]
#[cfg_attr(
    miri,
    ignore = "candle's K-quant encoder is too slow to interpret; tests/soundness.rs covers decoding under Miri"
)]
fn dequantization_matches_candle() {
    let mut rng = Rng(0x1234_5678);
    for t in WEIGHT_TYPES {
        let x = rng.vec(1024);
        let (bytes, expected) = candle_quantize(t, &x);
        let bytes = aligned(&bytes);
        let mut got = vec![0f32; x.len()];
        dequantize_row(t, bytes.as_slice(), &mut got);
        assert_eq!(got, expected, "{t:?} decodes differently from candle");
    }
}

#[test]
fn activation_quantization_round_trips() {
    let mut rng = Rng(99);
    for partner in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
        let x = rng.vec(512);
        let mut buf = AlignedBytes::default();
        quantize_rows(partner, &x, 1, 512, &mut buf);
        let mut y = vec![0f32; 512];
        dequantize_row(partner, buf.as_slice(), &mut y);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= amax / 127.0, "{partner:?}: {a} vs {b}");
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "large rows quantized by candle; tests/soundness.rs covers every format under Miri"
)]
fn dot_products_agree_scalar_simd_and_float() {
    let mut rng = Rng(42);
    let k = 2048;
    for t in WEIGHT_TYPES {
        for trial in 0..4 {
            let w = rng.vec(k);
            let x = rng.vec(k);
            let (wb, wdeq) = candle_quantize(t, &w);
            let wb = aligned(&wb);
            let partner = t.activation_partner().unwrap();
            let mut ab = AlignedBytes::default();
            quantize_rows(partner, &x, 1, k, &mut ab);
            let mut xdeq = vec![0f32; k];
            dequantize_row(partner, ab.as_slice(), &mut xdeq);
            let exact: f64 = wdeq
                .iter()
                .zip(&xdeq)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let norm: f64 = wdeq
                .iter()
                .zip(&xdeq)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let s = scalar::dot_fn(t).unwrap()(wb.as_slice(), ab.as_slice());
            assert!(
                (s as f64 - exact).abs() <= 1e-4 * norm + 1e-3,
                "{t:?} trial {trial}: scalar {s} vs exact {exact}"
            );
            // Any level may be asked for: one this CPU lacks falls back to the best it has.
            for level in [SimdLevel::Avx2, SimdLevel::Avx512Vnni] {
                let f = dot_fn_at(t, level).unwrap();
                let v = f(wb.as_slice(), ab.as_slice());
                assert!(
                    (v as f64 - s as f64).abs() <= 1e-5 * norm + 1e-4,
                    "{t:?} trial {trial}: {} {v} vs scalar {s}",
                    level.name()
                );
            }
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "large shapes; tests/soundness.rs covers matmul under Miri"
)]
fn matmul_matches_naive() {
    let mut rng = Rng(7);
    let (rows, cols, m) = (67, 512, 5);
    for t in [
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5_0,
        GgmlType::F32,
    ] {
        let w = rng.vec(rows * cols);
        let (bytes, wdeq) = if t == GgmlType::F32 {
            (bytes_of(&w), w.clone())
        } else {
            candle_quantize(t, &w)
        };
        let bytes = aligned(&bytes);
        let x = rng.vec(m * cols);
        let mat = QMatrix {
            dtype: t,
            rows,
            cols,
            data: bytes.as_slice(),
        };
        let mut out = vec![0f32; m * rows];
        let mut scratch = AlignedBytes::default();
        matmul(&mat, &x, m, &mut out, &mut scratch);
        for i in 0..m {
            for r in 0..rows {
                let exact: f32 = (0..cols)
                    .map(|c| wdeq[r * cols + c] * x[i * cols + c])
                    .sum();
                let scale: f32 = (0..cols)
                    .map(|c| (wdeq[r * cols + c] * x[i * cols + c]).abs())
                    .sum();
                let got = out[i * rows + r];
                assert!(
                    (got - exact).abs() <= 0.02 * scale + 1e-3,
                    "{t:?} ({i},{r}): {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn paged_attention_matches_contiguous_attention() {
    let mut rng = Rng(3);
    let (n_heads, n_kv, hd, bs) = (4, 2, 16, 4);
    let kv_dim = n_kv * hd;
    let n_blocks = 16;
    let mut kc = vec![f16::ZERO; n_blocks * bs * kv_dim];
    let mut vc = vec![f16::ZERO; n_blocks * bs * kv_dim];
    // Two sequences with scattered blocks: A has 9 cached positions + 1 new; B has 3 cached and a
    // 16-token prefill chunk (two token tiles).
    let tables: [Vec<u32>; 2] = [vec![7, 2, 11], vec![5, 0, 9, 13, 1]];
    let lens = [10usize, 19];
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for (s, len) in lens.iter().enumerate() {
        let k = rng.vec(len * kv_dim);
        let v = rng.vec(len * kv_dim);
        let slots: Vec<usize> = (0..*len)
            .map(|j| tables[s][j / bs] as usize * bs + j % bs)
            .collect();
        write_kv(&mut kc, &mut vc, &slots, &k, &v, kv_dim);
        keys.push(k);
        vals.push(v);
    }
    let seqs = [
        AttnSeq {
            token_start: 0,
            n_tokens: 1,
            first_pos: 9,
            block_table: &tables[0],
        },
        AttnSeq {
            token_start: 1,
            n_tokens: 5,
            first_pos: 0,
            block_table: &tables[1],
        },
    ];
    let q = rng.vec(6 * n_heads * hd);
    for window in [None, Some(3)] {
        let p = AttnParams {
            n_heads,
            scale: 0.25,
            window,
            softcap: None,
        };
        let kv = KvLayer {
            k: &kc,
            v: &vc,
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let mut out = vec![0f32; q.len()];
        paged_attention(&q, &mut out, &seqs, &kv, &p);
        for seq_i in 0..2 {
            let seq = seqs[seq_i];
            for t in 0..seq.n_tokens {
                let row = seq.token_start + t;
                let pos = seq.first_pos + t;
                let lo = window.map(|w| (pos + 1).saturating_sub(w)).unwrap_or(0);
                for h in 0..n_heads {
                    let kvh = h / (n_heads / n_kv);
                    let qh = &q[(row * n_heads + h) * hd..(row * n_heads + h + 1) * hd];
                    let f16r = |x: f32| f16::from_f32(x).to_f32();
                    let mut sc: Vec<f32> = (lo..=pos)
                        .map(|j| {
                            let k =
                                &keys[seq_i][j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                            qh.iter().zip(k).map(|(a, b)| a * f16r(*b)).sum::<f32>() * 0.25
                        })
                        .collect();
                    let mx = sc.iter().copied().fold(f32::MIN, f32::max);
                    let sum: f32 = sc
                        .iter_mut()
                        .map(|s| {
                            *s = (*s - mx).exp();
                            *s
                        })
                        .sum();
                    for d in 0..hd {
                        let exp: f32 = (lo..=pos)
                            .map(|j| {
                                sc[j - lo] / sum * f16r(vals[seq_i][j * kv_dim + kvh * hd + d])
                            })
                            .sum();
                        let got = out[(row * n_heads + h) * hd + d];
                        assert!(
                            (got - exp).abs() < 1e-4,
                            "seq {seq_i} t {t} h {h} d {d}: {got} vs {exp}"
                        );
                    }
                }
            }
        }
    }
}

/// Packs random `rows` × `cols` matrices of each type with `run_packed` and compares its results with
/// the row-wise matmul for several batch sizes.
fn check_packed(
    types: &[GgmlType],
    (rows, cols): (usize, usize),
    seed: u64,
    run_packed: impl Fn(GgmlType, &[u8], &[f32], usize, &mut [f32], &mut AlignedBytes),
) {
    let mut rng = Rng(seed);
    for &t in types {
        let w = rng.vec(rows * cols);
        let (bytes, wdeq) = candle_quantize(t, &w);
        let bytes = aligned(&bytes);
        for m in [1usize, 2, 3, 6, 9] {
            let x = rng.vec(m * cols);
            let mut got = vec![0f32; m * rows];
            let mut want = vec![0f32; m * rows];
            let mut scratch = AlignedBytes::default();
            run_packed(t, bytes.as_slice(), &x, m, &mut got, &mut scratch);
            let mat = QMatrix {
                dtype: t,
                rows,
                cols,
                data: bytes.as_slice(),
            };
            matmul(&mat, &x, m, &mut want, &mut scratch);
            for i in 0..m * rows {
                let (r, tok) = (i % rows, i / rows);
                let scale: f32 = (0..cols)
                    .map(|c| (wdeq[r * cols + c] * x[tok * cols + c]).abs())
                    .sum();
                assert!(
                    (got[i] - want[i]).abs() <= 1e-4 * scale + 1e-4,
                    "{t:?} m={m} out {i}: packed {} vs row-wise {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "large shapes; tests/soundness.rs covers packed matmul under Miri"
)]
fn packed_matmul_matches_row_wise() {
    use inhaus_kernels::matmul::matmul_packed;
    use inhaus_kernels::packed::PackedMatrix;
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
    ];
    check_packed(&types, (48, 320), 11, |t, bytes, x, m, out, scratch| {
        let packed = PackedMatrix::pack(t, 48, 320, bytes).expect("packable");
        matmul_packed(&packed, x, m, out, scratch);
    });
}

#[test]
#[cfg_attr(miri, ignore = "AVX-512 VNNI only")]
fn packed_k_matmul_matches_row_wise() {
    if inhaus_kernels::cpu::simd_level() < SimdLevel::Avx512Vnni {
        eprintln!("no AVX-512 VNNI here: packed K-quant kernels are not used on this CPU");
        return;
    }
    use inhaus_kernels::matmul::matmul_packed_k;
    use inhaus_kernels::packed_k::PackedKMatrix;
    check_packed(
        &[GgmlType::Q4K, GgmlType::Q6K],
        (24, 512),
        17,
        |t, bytes, x, m, out, scratch| {
            let packed = PackedKMatrix::pack(t, 24, 512, bytes).expect("packable");
            matmul_packed_k(&packed, x, m, out, scratch);
        },
    );
}

#[test]
fn fast_rounding_is_round_half_to_even() {
    use inhaus_kernels::quantize::round_even;
    for x in [
        -127.5f32, -2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 3.49, 126.5, 127.0, 127.5,
    ] {
        assert_eq!(round_even(x), x.round_ties_even() as i32, "{x}");
    }
    let mut rng = Rng(5);
    for _ in 0..if cfg!(miri) { 2_000 } else { 100_000 } {
        let x = rng.normal() * 40.0;
        assert_eq!(round_even(x), x.round_ties_even() as i32, "{x}");
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "65536-entry table, too slow to interpret; no unsafe code on the scalar path"
)]
fn gelu_table_matches_f32_gelu_within_f16_rounding() {
    use inhaus_kernels::ops::{gelu_tanh, gelu_tanh_mul};
    let mut rng = Rng(23);
    let mut x: Vec<f32> = (0..1000).map(|_| rng.normal() * 4.0).collect();
    x.extend([
        -12.0,
        -10.0,
        -9.99,
        0.0,
        9.99,
        10.0,
        15.0,
        f32::MIN_POSITIVE,
    ]);
    let up: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let mut g = x.clone();
    gelu_tanh_mul(&mut g, &up);
    for i in 0..x.len() {
        let want = gelu_tanh(x[i]) * up[i];
        // Input and output are rounded to f16 (relative 2^-11 each), plus the slope of GELU.
        let tol = 2e-3 * (want.abs() + x[i].abs() * up[i]) + 1e-6;
        assert!(
            (g[i] - want).abs() <= tol,
            "x {}: {} vs {}",
            x[i],
            g[i],
            want
        );
    }
}
