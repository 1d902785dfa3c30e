//! Soundness of the safe kernel APIs: byte views check length and alignment (and only accept block
//! types, see the `compile_fail` doc-tests), SIMD kernels are reached only with a detection token and
//! `INHAUS_SIMD` caps them, and the kernels that write through raw pointers refuse outputs too short
//! and overlapping sequences before writing. The quantized paths are checked against float math on
//! small shapes, so that `scripts/miri-kernels.sh` can run this file under Miri (scalar paths).
use half::f16;
use inhaus_kernels::attention::{
    paged_attention, try_paged_attention, write_kv, AttnParams, AttnSeq, KvLayer,
};
use inhaus_kernels::cpu::{self, Avx2, Avx512Vnni, SimdLevel};
use inhaus_kernels::dense;
use inhaus_kernels::dot::{dot_fn, dot_fn_at};
use inhaus_kernels::matmul::{matmul, matmul_packed, QMatrix};
use inhaus_kernels::packed::PackedMatrix;
use inhaus_kernels::quant::{
    as_blocks, blocks_as_bytes, dequantize_row, try_as_blocks, try_as_blocks_mut, BlockQ8K,
    BlockQ8_0, BlockViewError, GgmlType,
};
use inhaus_kernels::quantize::{quantize_rows, AlignedBytes};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 20_001) as f32 / 10_000.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    /// Block bytes whose f16 scales are finite and below 1 (every byte < 0x3C).
    fn block_bytes(&mut self, n: usize) -> AlignedBytes {
        let mut a = AlignedBytes::default();
        a.resize(n);
        for b in a.as_mut_slice() {
            *b = (self.next() % 0x3C) as u8;
        }
        a
    }
}

/// Runs the pool with one worker thread besides the caller, so that Miri checks the hand-off too.
fn setup() {
    inhaus_kernels::pool::init(2);
}

#[test]
fn block_views_check_length_and_alignment() {
    let mut buf = AlignedBytes::default();
    buf.resize(3 * 292 + 8);
    let bytes = buf.as_slice();
    assert_eq!(
        try_as_blocks::<BlockQ8K>(&bytes[..2 * 292]).map(<[_]>::len),
        Ok(2)
    );
    assert_eq!(
        try_as_blocks::<BlockQ8K>(&bytes[..291]).map(<[_]>::len),
        Err(BlockViewError::Length {
            len: 291,
            block: 292
        })
    );
    assert!(matches!(
        try_as_blocks::<BlockQ8K>(&bytes[2..2 + 292]),
        Err(BlockViewError::Misaligned { align: 4, .. })
    ));
    // f16 blocks need 2-byte alignment only.
    assert_eq!(
        try_as_blocks::<BlockQ8_0>(&bytes[2..2 + 34]).map(<[_]>::len),
        Ok(1)
    );
    assert!(try_as_blocks::<BlockQ8_0>(&bytes[1..1 + 34]).is_err());
    let mut buf2 = AlignedBytes::default();
    buf2.resize(68);
    let blocks = try_as_blocks_mut::<BlockQ8_0>(buf2.as_mut_slice()).expect("aligned");
    blocks[1].qs[0] = -3;
    blocks[1].d = f16::ONE;
    let round_trip = blocks_as_bytes(blocks);
    assert_eq!(round_trip.len(), 68);
    assert_eq!(round_trip[34..36], f16::ONE.to_le_bytes());
    assert_eq!(round_trip[36], (-3i8) as u8);
}

#[test]
#[should_panic(expected = "not 4-byte aligned")]
fn a_misaligned_block_view_panics_with_the_reason() {
    let mut buf = AlignedBytes::default();
    buf.resize(300);
    let _ = as_blocks::<BlockQ8K>(&buf.as_slice()[3..3 + 292]);
}

#[test]
fn simd_tokens_follow_detection_and_the_inhaus_simd_cap() {
    let level = cpu::simd_level();
    match std::env::var("INHAUS_SIMD").ok().as_deref() {
        Some("scalar") => assert_eq!(level, SimdLevel::Scalar),
        Some("avx2") => assert!(level <= SimdLevel::Avx2),
        _ => {}
    }
    assert_eq!(cpu::avx2().is_some(), level >= SimdLevel::Avx2);
    assert_eq!(cpu::avx512_vnni().is_some(), level >= SimdLevel::Avx512Vnni);
    // A token in use implies the hardware has the features, whatever the cap.
    if cpu::avx2().is_some() {
        assert!(Avx2::detect().is_some());
    }
    if cpu::avx512_vnni().is_some() {
        assert!(Avx512Vnni::detect().is_some());
    }
}

/// Float dot product of the dequantized rows: what every kernel must approximate.
fn float_dot(t: GgmlType, w: &[u8], a: &[u8], k: usize) -> (f64, f64) {
    let partner = t.activation_partner().expect("quantized");
    let (mut wf, mut af) = (vec![0f32; k], vec![0f32; k]);
    dequantize_row(t, w, &mut wf);
    dequantize_row(partner, a, &mut af);
    let exact = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = wf
        .iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    (exact, norm)
}

#[test]
fn every_dot_product_level_is_safe_to_ask_for_and_agrees() {
    let mut rng = Rng(11);
    let k = 256;
    for t in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let w = rng.block_bytes(t.row_bytes(k));
        let x = rng.vec(k);
        let mut a = AlignedBytes::default();
        quantize_rows(t.activation_partner().expect("quantized"), &x, 1, k, &mut a);
        let (exact, norm) = float_dot(t, w.as_slice(), a.as_slice(), k);
        // Any level may be asked for: one the CPU lacks falls back instead of running its code.
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni] {
            let f = dot_fn_at(t, level).expect("kernel");
            let v = f(w.as_slice(), a.as_slice()) as f64;
            assert!(
                (v - exact).abs() <= 1e-4 * norm + 1e-4,
                "{t:?} at {}: {v} vs {exact}",
                level.name()
            );
        }
        let v = dot_fn(t).expect("kernel")(w.as_slice(), a.as_slice()) as f64;
        assert!(
            (v - exact).abs() <= 1e-4 * norm + 1e-4,
            "{t:?}: {v} vs {exact}"
        );
    }
}

#[test]
fn matmul_and_packed_matmul_agree_with_row_dots() {
    setup();
    let mut rng = Rng(5);
    let (rows, cols, m) = (16, 64, 3);
    for t in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
    ] {
        let data = rng.block_bytes(t.row_bytes(cols) * rows);
        let x = rng.vec(m * cols);
        let w = QMatrix {
            dtype: t,
            rows,
            cols,
            data: data.as_slice(),
        };
        let mut out = vec![0f32; m * rows];
        let mut scratch = AlignedBytes::default();
        matmul(&w, &x, m, &mut out, &mut scratch);
        let packed = PackedMatrix::pack(t, rows, cols, data.as_slice()).expect("packable");
        assert_eq!(
            (packed.rows(), packed.cols(), packed.dtype()),
            (rows, cols, t)
        );
        let mut out_p = vec![0f32; m * rows];
        matmul_packed(&packed, &x, m, &mut out_p, &mut scratch);
        let mut wf = vec![0f32; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut wf);
            for i in 0..m {
                let xs = &x[i * cols..(i + 1) * cols];
                let exact: f32 = wf.iter().zip(xs).map(|(a, b)| a * b).sum();
                let scale: f32 = wf.iter().zip(xs).map(|(a, b)| (a * b).abs()).sum();
                for (name, got) in [
                    ("matmul", out[i * rows + r]),
                    ("packed", out_p[i * rows + r]),
                ] {
                    assert!(
                        (got - exact).abs() <= 0.02 * scale + 1e-3,
                        "{t:?} {name} ({i},{r}): {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "output too short")]
fn matmul_refuses_a_short_output() {
    let data = AlignedBytes::default();
    let w = QMatrix {
        dtype: GgmlType::F32,
        rows: 4,
        cols: 0,
        data: data.as_slice(),
    };
    let mut scratch = AlignedBytes::default();
    // 2 rows × 4 outputs do not fit in 7 values.
    matmul(&w, &[], 2, &mut [0f32; 7], &mut scratch);
}

#[test]
#[should_panic(expected = "quantize_rows")]
fn quantize_rows_refuses_too_few_values() {
    let mut buf = AlignedBytes::default();
    quantize_rows(GgmlType::Q8_0, &[0.5; 64], 9, 32, &mut buf);
}

/// A tiny paged KV cache: 2 KV heads of 4 dims, blocks of 2 slots, 6 blocks.
struct Cache {
    k: Vec<f16>,
    v: Vec<f16>,
}

const HD: usize = 4;
const NKV: usize = 2;
const BS: usize = 2;

impl Cache {
    fn new(rng: &mut Rng) -> Self {
        let kv_dim = NKV * HD;
        let slots = 6 * BS;
        let (mut k, mut v) = (
            vec![f16::ZERO; slots * kv_dim],
            vec![f16::ZERO; slots * kv_dim],
        );
        let all: Vec<usize> = (0..slots).collect();
        write_kv(
            &mut k,
            &mut v,
            &all,
            &rng.vec(slots * kv_dim),
            &rng.vec(slots * kv_dim),
            kv_dim,
        );
        Self { k, v }
    }
    fn layer(&self) -> KvLayer<'_> {
        KvLayer {
            k: &self.k,
            v: &self.v,
            block_size: BS,
            n_kv_heads: NKV,
            head_dim: HD,
        }
    }
}

fn params(n_heads: usize) -> AttnParams {
    AttnParams {
        n_heads,
        scale: 0.5,
        window: None,
        softcap: None,
    }
}

#[test]
fn paged_attention_matches_a_naive_reference() {
    setup();
    let mut rng = Rng(9);
    let cache = Cache::new(&mut rng);
    let n_heads = 4;
    let (tables, starts) = ([vec![3u32, 0], vec![5u32, 1, 2]], [0usize, 2]);
    let seqs = [
        AttnSeq {
            token_start: 0,
            n_tokens: 2,
            first_pos: 1,
            block_table: &tables[0],
        },
        AttnSeq {
            token_start: 2,
            n_tokens: 1,
            first_pos: 4,
            block_table: &tables[1],
        },
    ];
    let stride = n_heads * HD;
    let q = rng.vec(3 * stride);
    let mut out = vec![0f32; 3 * stride];
    paged_attention(&q, &mut out, &seqs, &cache.layer(), &params(n_heads));
    let kv_dim = NKV * HD;
    for (s, seq) in seqs.iter().enumerate() {
        for t in 0..seq.n_tokens {
            let (row, pos) = (starts[s] + t, seq.first_pos + t);
            for h in 0..n_heads {
                let kvh = h / (n_heads / NKV);
                let at = |c: &[f16], j: usize, d: usize| {
                    let slot = tables[s][j / BS] as usize * BS + j % BS;
                    c[slot * kv_dim + kvh * HD + d].to_f32()
                };
                let qh = &q[row * stride + h * HD..][..HD];
                let sc: Vec<f32> = (0..=pos)
                    .map(|j| 0.5 * (0..HD).map(|d| qh[d] * at(&cache.k, j, d)).sum::<f32>())
                    .collect();
                let max = sc.iter().copied().fold(f32::MIN, f32::max);
                let e: Vec<f32> = sc.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                for d in 0..HD {
                    let want: f32 = (0..=pos).map(|j| e[j] / sum * at(&cache.v, j, d)).sum();
                    let got = out[row * stride + h * HD + d];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "seq {s} token {t} head {h}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

fn seq(token_start: usize, n_tokens: usize, first_pos: usize, block_table: &[u32]) -> AttnSeq<'_> {
    AttnSeq {
        token_start,
        n_tokens,
        first_pos,
        block_table,
    }
}

#[test]
fn paged_attention_refuses_arguments_that_do_not_fit() {
    let mut rng = Rng(4);
    let cache = Cache::new(&mut rng);
    let kv = cache.layer();
    let table = [0u32, 1];
    let stride = 4 * HD;
    let q = rng.vec(4 * stride);
    let mut out = vec![0f32; 4 * stride];
    let cases: [(&str, Vec<AttnSeq>, usize, usize); 6] = [
        ("q has", vec![seq(3, 2, 0, &table[..])], 4, 4 * stride),
        ("q has", vec![seq(0, 2, 0, &table[..])], 4, stride),
        (
            "share query tokens",
            vec![seq(0, 2, 0, &table[..]), seq(1, 1, 0, &table[..])],
            4,
            4 * stride,
        ),
        (
            "do not cover position 4",
            vec![seq(0, 1, 4, &table[..])],
            4,
            4 * stride,
        ),
        (
            "outside the KV cache",
            vec![seq(0, 1, 0, &[6u32][..])],
            4,
            4 * stride,
        ),
        (
            "not a multiple",
            vec![seq(0, 1, 0, &table[..])],
            3,
            4 * stride,
        ),
    ];
    for (want, seqs, n_heads, out_len) in cases {
        let before = out.clone();
        let err = try_paged_attention(&q, &mut out[..out_len], &seqs, &kv, &params(n_heads))
            .expect_err(want);
        assert!(err.to_string().contains(want), "{err} (wanted {want})");
        assert_eq!(out, before, "nothing is written on error");
    }
    // Adjacent, unsorted and empty sequences are fine.
    let ok = [
        seq(2, 2, 0, &table[..]),
        seq(0, 2, 2, &table[..]),
        seq(1, 0, 0, &[][..]),
    ];
    try_paged_attention(&q, &mut out, &ok, &kv, &params(4)).expect("valid");
}

#[test]
#[should_panic(expected = "sequences 0 and 1 share query tokens")]
fn paged_attention_panics_on_overlapping_sequences() {
    let mut rng = Rng(6);
    let cache = Cache::new(&mut rng);
    let table = [0u32, 1];
    let seqs = [
        AttnSeq {
            token_start: 0,
            n_tokens: 2,
            first_pos: 0,
            block_table: &table,
        },
        AttnSeq {
            token_start: 1,
            n_tokens: 2,
            first_pos: 0,
            block_table: &table,
        },
    ];
    let q = rng.vec(3 * 4 * HD);
    let mut out = vec![0f32; 3 * 4 * HD];
    paged_attention(&q, &mut out, &seqs, &cache.layer(), &params(4));
}

#[test]
#[should_panic(expected = "attention: sequences overlap")]
fn packed_sequence_attention_panics_on_overlapping_sequences() {
    let (heads, hd) = (1, 4);
    let qkv = vec![0.25f32; 4 * 3 * heads * hd];
    let mut out = vec![0f32; 4 * heads * hd];
    dense::attention(&qkv, &[(0, 3), (2, 2)], heads, hd, &mut out);
}

#[test]
#[should_panic(expected = "attention: sequences outside the buffers")]
fn packed_sequence_attention_refuses_an_overflowing_range() {
    let qkv = vec![0.25f32; 2 * 3 * 4];
    let mut out = vec![0f32; 2 * 4];
    dense::attention(&qkv, &[(usize::MAX, 2)], 1, 4, &mut out);
}
