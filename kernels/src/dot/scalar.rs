//! Portable dot products: the reference every SIMD path must agree with.
use super::DotFn;
use crate::quant::*;

pub fn dot_fn(weight: GgmlType) -> Option<DotFn> {
    Some(match weight {
        GgmlType::Q4_0 => q4_0_q8_0,
        GgmlType::Q4_1 => q4_1_q8_1,
        GgmlType::Q5_0 => q5_0_q8_0,
        GgmlType::Q5_1 => q5_1_q8_1,
        GgmlType::Q8_0 => q8_0_q8_0,
        GgmlType::Q4K => q4k_q8k,
        GgmlType::Q5K => q5k_q8k,
        GgmlType::Q6K => q6k_q8k,
        _ => return None,
    })
}

pub fn q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ8_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let s: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += s as f32 * x.d.to_f32() * y.d.to_f32();
    }
    sum
}

pub fn q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ4_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut s = 0i32;
        for j in 0..QK / 2 {
            s += ((x.qs[j] & 0xF) as i32 - 8) * y.qs[j] as i32;
            s += ((x.qs[j] >> 4) as i32 - 8) * y.qs[j + QK / 2] as i32;
        }
        sum += s as f32 * x.d.to_f32() * y.d.to_f32();
    }
    sum
}

pub fn q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ4_1>(w), as_blocks::<BlockQ8_1>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut s = 0i32;
        for j in 0..QK / 2 {
            s += (x.qs[j] & 0xF) as i32 * y.qs[j] as i32;
            s += (x.qs[j] >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += s as f32 * x.d.to_f32() * y.d.to_f32() + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

pub fn q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ5_0>(w), as_blocks::<BlockQ8_0>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = u32::from_le_bytes(x.qh);
        let mut s = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            s += (((x.qs[j] & 0xF) as u32 | h0) as i32 - 16) * y.qs[j] as i32;
            s += (((x.qs[j] >> 4) as u32 | h1) as i32 - 16) * y.qs[j + QK / 2] as i32;
        }
        sum += s as f32 * x.d.to_f32() * y.d.to_f32();
    }
    sum
}

pub fn q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ5_1>(w), as_blocks::<BlockQ8_1>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = u32::from_le_bytes(x.qh);
        let mut s = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            s += ((x.qs[j] & 0xF) as u32 | h0) as i32 * y.qs[j] as i32;
            s += ((x.qs[j] >> 4) as u32 | h1) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += s as f32 * x.d.to_f32() * y.d.to_f32() + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

pub fn q4k_q8k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for c in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * c, &x.scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, &x.scales);
            let q = &x.qs[32 * c..32 * c + 32];
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                s0 += (q[l] & 0xF) as i32 * y.qs[64 * c + l] as i32;
                s1 += (q[l] >> 4) as i32 * y.qs[64 * c + 32 + l] as i32;
            }
            sumi += s0 * sc0 as i32 + s1 * sc1 as i32;
            let b0 = y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32;
            let b1 = y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32;
            summ += m0 as i32 * b0 + m1 as i32 * b1;
        }
        sum += y.d * (x.d.to_f32() * sumi as f32 - x.dmin.to_f32() * summ as f32);
    }
    sum
}

pub fn q5k_q8k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ5K>(w), as_blocks::<BlockQ8K>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for c in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * c, &x.scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, &x.scales);
            let q = &x.qs[32 * c..32 * c + 32];
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                let h0 = if x.qh[l] & u1 != 0 { 16 } else { 0 };
                let h1 = if x.qh[l] & u2 != 0 { 16 } else { 0 };
                s0 += ((q[l] & 0xF) as i32 + h0) * y.qs[64 * c + l] as i32;
                s1 += ((q[l] >> 4) as i32 + h1) * y.qs[64 * c + 32 + l] as i32;
            }
            sumi += s0 * sc0 as i32 + s1 * sc1 as i32;
            let b0 = y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32;
            let b1 = y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32;
            summ += m0 as i32 * b0 + m1 as i32 * b1;
        }
        sum += y.d * (x.d.to_f32() * sumi as f32 - x.dmin.to_f32() * summ as f32);
    }
    sum
}

pub fn q6k_q8k(w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for half in 0..2 {
            let ql = &x.ql[64 * half..];
            let qh = &x.qh[32 * half..];
            let sc = &x.scales[8 * half..];
            let q8 = &y.qs[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                sumi += sc[is] as i32 * q1 * q8[l] as i32;
                sumi += sc[is + 2] as i32 * q2 * q8[l + 32] as i32;
                sumi += sc[is + 4] as i32 * q3 * q8[l + 64] as i32;
                sumi += sc[is + 6] as i32 * q4 * q8[l + 96] as i32;
            }
        }
        sum += y.d * x.d.to_f32() * sumi as f32;
    }
    sum
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
