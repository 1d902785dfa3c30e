//! Matmul throughput per weight format for the shapes of the project's models, decode (m = 1) and
//! prefill (m = 64). Prints weight GB/s (decode is memory-bound: compare with the machine's bandwidth).
//! Run: cargo bench -p inhaus-kernels --bench matmul
use inhaus_kernels::matmul::{matmul, matmul_packed, QMatrix};
use inhaus_kernels::packed::PackedMatrix;
use inhaus_kernels::packed_k::PackedKMatrix;
use inhaus_kernels::quant::GgmlType;
use inhaus_kernels::quantize::AlignedBytes;
use std::time::Instant;

fn main() {
    let shapes: &[(GgmlType, usize, usize, &str)] = &[
        (GgmlType::Q8_0, 262_144, 640, "gemma output (Q8_0)"),
        (GgmlType::Q5_0, 2048, 640, "gemma ffn_up (Q5_0)"),
        (GgmlType::Q4K, 640, 2048, "gemma ffn_down (Q4_K)"),
        (GgmlType::Q6K, 640, 2048, "gemma ffn_down (Q6_K)"),
        (GgmlType::Q4_1, 1536, 576, "smollm ffn_up (Q4_1)"),
        (GgmlType::Q8_0, 4864, 896, "qwen ffn_up (Q8_0)"),
        (GgmlType::Q4K, 8960, 1536, "qwen1.5b ffn_up (Q4_K)"),
        (GgmlType::Q6K, 1536, 8960, "qwen1.5b ffn_down (Q6_K)"),
    ];
    println!("simd: {}", inhaus_kernels::cpu::simd_level().name());
    for &(t, rows, cols, name) in shapes {
        let bytes = t.row_bytes(cols) * rows;
        let mut data = AlignedBytes::default();
        data.resize(bytes);
        // Plausible block contents: small scales, arbitrary quants.
        let mut s = 1u32;
        for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *b = if i % 2 == 0 { (s >> 24) as u8 } else { 0x20 };
        }
        let w = QMatrix {
            dtype: t,
            rows,
            cols,
            data: data.as_slice(),
        };
        let packed = PackedMatrix::pack(t, rows, cols, data.as_slice());
        let packed_k = PackedKMatrix::pack(t, rows, cols, data.as_slice());
        for (m, use_packed) in [(1usize, false), (64, false), (1, true), (64, true)] {
            if use_packed && packed.is_none() && packed_k.is_none() {
                continue;
            }
            let run = |x: &[f32], out: &mut [f32], scratch: &mut AlignedBytes| match (
                &packed, use_packed,
            ) {
                (Some(p), true) => matmul_packed(p, x, m, out, scratch),
                #[cfg(target_arch = "x86_64")]
                (None, true) if packed_k.is_some() => {
                    if let Some(pk) = &packed_k {
                        inhaus_kernels::matmul::matmul_packed_k(pk, x, m, out, scratch)
                    }
                }
                _ => matmul(&w, x, m, out, scratch),
            };
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let mut out = vec![0f32; m * rows];
            let mut scratch = AlignedBytes::default();
            run(&x, &mut out, &mut scratch);
            let iters = if m == 1 {
                (400_000_000 / bytes).max(3)
            } else {
                (40_000_000 / bytes).max(2)
            };
            let mut times = Vec::new();
            for _ in 0..iters {
                let t0 = Instant::now();
                run(&x, &mut out, &mut scratch);
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            println!(
                "{name:28} {:6} m={m:3}: {:8.3} ms  {:6.1} GB/s weights  {:8.1} GFLOP/s",
                if use_packed { "packed" } else { "rows" },
                med * 1e3,
                bytes as f64 / med / 1e9,
                2.0 * (rows * cols * m) as f64 / med / 1e9
            );
        }
    }
}
