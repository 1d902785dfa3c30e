//! GGUF/GGML block formats: layouts, sizes and dequantization to f32.
//!
//! Each quantized format packs `block_elems()` weights into `block_bytes()` bytes. Structs are `repr(C)`
//! and match the on-disk layout byte for byte, so weight rows are used straight from the mapped file.
//! Only types that implement the sealed [`Pod`] trait (the block structs, checked for padding at
//! compile time) can be viewed from bytes, and the views check length and alignment.
use half::f16;

/// The tensor element types inhaus reads from GGUF files (ids as in the GGUF spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K | Self::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            Self::Q4_1 => std::mem::size_of::<BlockQ4_1>(),
            Self::Q5_0 => std::mem::size_of::<BlockQ5_0>(),
            Self::Q5_1 => std::mem::size_of::<BlockQ5_1>(),
            Self::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            Self::Q8_1 => std::mem::size_of::<BlockQ8_1>(),
            Self::Q4K => std::mem::size_of::<BlockQ4K>(),
            Self::Q5K => std::mem::size_of::<BlockQ5K>(),
            Self::Q6K => std::mem::size_of::<BlockQ6K>(),
            Self::Q8K => std::mem::size_of::<BlockQ8K>(),
        }
    }

    /// Bytes of one row of `cols` elements (`cols` must be a multiple of `block_elems`).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }

    /// The 8-bit format activations are quantized to for a dot product with this weight format;
    /// `None` for float weights (activations stay f32).
    pub fn activation_partner(self) -> Option<GgmlType> {
        match self {
            Self::F32 | Self::F16 => None,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => Some(Self::Q8_0),
            Self::Q4_1 | Self::Q5_1 => Some(Self::Q8_1),
            Self::Q4K | Self::Q5K | Self::Q6K => Some(Self::Q8K),
            Self::Q8_1 | Self::Q8K => None,
        }
    }
}

pub const QK: usize = 32;
pub const QK_K: usize = 256;

/// Plain-old-data block types that may be viewed from (and as) raw bytes.
///
/// Sealed: only the GGUF block structs of this crate implement it, so no caller can reinterpret bytes
/// as a type with invalid bit patterns (`bool`, references, enums) or padding.
///
/// # Safety
/// An implementor is `#[repr(C)]`, has a non-zero size and no padding, holds no pointers, references or
/// interior mutability, and every bit pattern of its size is a valid value of it. `pod_struct!` checks
/// all of this at compile time for the structs it defines (the only implementors).
pub unsafe trait Pod: sealed::Sealed + Copy + Send + Sync + 'static {}

/// Holds the trait that seals [`Pod`]: nameable inside this crate only.
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Field types of a [`Pod`] struct: every bit pattern valid, no padding, no pointers.
pub(crate) trait PodField {}
impl PodField for u8 {}
impl PodField for i8 {}
impl PodField for u16 {}
impl PodField for i16 {}
impl PodField for i32 {}
impl PodField for u32 {}
impl PodField for f32 {}
impl PodField for f16 {}
impl<T: PodField, const N: usize> PodField for [T; N] {}

/// Compiles only for [`PodField`] types (called from `pod_struct!`'s compile-time checks).
pub(crate) const fn pod_field<T: PodField>() {}

/// Defines `#[repr(C)]` block structs and implements [`Pod`] for them, after checking at compile time
/// that every field is a [`PodField`] and that each struct's size is the sum of its fields' sizes (no
/// padding) and is not zero.
macro_rules! pod_struct {
    ($($(#[$m:meta])* pub struct $t:ident { $(pub $f:ident: $ft:ty),+ $(,)? })+) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct $t {
            $(pub $f: $ft),+
        }
        const _: () = {
            $($crate::quant::pod_field::<$ft>();)+
            let fields = 0 $(+ std::mem::size_of::<$ft>())+;
            assert!(std::mem::size_of::<$t>() == fields, "block struct has padding");
            assert!(fields > 0);
        };
        impl $crate::quant::sealed::Sealed for $t {}
        // SAFETY: `$t` is `#[repr(C)]`; the checks above prove its fields are `PodField`s (integers,
        // `f32`, `f16` and arrays of them: every bit pattern valid, no pointers or cells) and that it has
        // no padding and a non-zero size.
        unsafe impl $crate::quant::Pod for $t {}
    )+};
}
pub(crate) use pod_struct;

pod_struct! {
    pub struct BlockQ4_0 {
        pub d: f16,
        pub qs: [u8; QK / 2],
    }

    pub struct BlockQ4_1 {
        pub d: f16,
        pub m: f16,
        pub qs: [u8; QK / 2],
    }

    pub struct BlockQ5_0 {
        pub d: f16,
        pub qh: [u8; 4],
        pub qs: [u8; QK / 2],
    }

    pub struct BlockQ5_1 {
        pub d: f16,
        pub m: f16,
        pub qh: [u8; 4],
        pub qs: [u8; QK / 2],
    }

    pub struct BlockQ8_0 {
        pub d: f16,
        pub qs: [i8; QK],
    }

    /// 8-bit activations for Q4_1/Q5_1 weights: `s = d * sum(qs)` carries the offset term.
    pub struct BlockQ8_1 {
        pub d: f16,
        pub s: f16,
        pub qs: [i8; QK],
    }

    pub struct BlockQ4K {
        pub d: f16,
        pub dmin: f16,
        pub scales: [u8; 12],
        pub qs: [u8; QK_K / 2],
    }

    pub struct BlockQ5K {
        pub d: f16,
        pub dmin: f16,
        pub scales: [u8; 12],
        pub qh: [u8; QK_K / 8],
        pub qs: [u8; QK_K / 2],
    }

    pub struct BlockQ6K {
        pub ql: [u8; QK_K / 2],
        pub qh: [u8; QK_K / 4],
        pub scales: [i8; QK_K / 16],
        pub d: f16,
    }

    /// 8-bit activations for K-quant weights, with per-16 sums for the min terms.
    pub struct BlockQ8K {
        pub d: f32,
        pub qs: [i8; QK_K],
        pub bsums: [i16; QK_K / 16],
    }
}

const _: () = {
    assert!(std::mem::size_of::<BlockQ4_0>() == 18);
    assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    assert!(std::mem::size_of::<BlockQ5_0>() == 22);
    assert!(std::mem::size_of::<BlockQ5_1>() == 24);
    assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    assert!(std::mem::size_of::<BlockQ4K>() == 144);
    assert!(std::mem::size_of::<BlockQ5K>() == 176);
    assert!(std::mem::size_of::<BlockQ6K>() == 210);
    assert!(std::mem::size_of::<BlockQ8K>() == 292);
};

/// Why a byte slice cannot be viewed as blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockViewError {
    /// The length is not a whole number of blocks.
    Length { len: usize, block: usize },
    /// The start is not aligned to the block type's alignment.
    Misaligned { addr: usize, align: usize },
}

impl std::fmt::Display for BlockViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Length { len, block } => {
                write!(
                    f,
                    "{len} bytes is not a whole number of {block}-byte blocks"
                )
            }
            Self::Misaligned { addr, align } => {
                write!(f, "block data at {addr:#x} is not {align}-byte aligned")
            }
        }
    }
}

impl std::error::Error for BlockViewError {}

fn check_view<T: Pod>(bytes: &[u8]) -> Result<usize, BlockViewError> {
    let (size, align) = (std::mem::size_of::<T>(), std::mem::align_of::<T>());
    if !bytes.len().is_multiple_of(size) {
        return Err(BlockViewError::Length {
            len: bytes.len(),
            block: size,
        });
    }
    let addr = bytes.as_ptr() as usize;
    if !addr.is_multiple_of(align) {
        return Err(BlockViewError::Misaligned { addr, align });
    }
    Ok(bytes.len() / size)
}

/// Views a byte slice as blocks of `T`, or says why it cannot (length or alignment).
///
/// Only the block types ([`Pod`]) can be viewed; a type with invalid bit patterns cannot:
/// ```compile_fail
/// let _ = inhaus_kernels::quant::try_as_blocks::<bool>(&[2u8]);
/// ```
pub fn try_as_blocks<T: Pod>(bytes: &[u8]) -> Result<&[T], BlockViewError> {
    let n = check_view::<T>(bytes)?;
    // SAFETY: `bytes` covers exactly `n * size_of::<T>()` initialized bytes starting at an address
    // aligned for `T` (checked above), `T: Pod` makes every bit pattern a valid `T`, and the result
    // borrows `bytes`, so the memory stays valid and unmutated for its lifetime.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) })
}

/// Mutable counterpart of [`try_as_blocks`].
pub fn try_as_blocks_mut<T: Pod>(bytes: &mut [u8]) -> Result<&mut [T], BlockViewError> {
    let n = check_view::<T>(bytes)?;
    // SAFETY: as in `try_as_blocks`; the exclusive borrow of `bytes` moves to the result, and any
    // `T` written through it is plain bytes again (`T: Pod` has no padding).
    Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), n) })
}

/// Views a byte slice as blocks of `T` (a [`Pod`] block type; `as_blocks::<bool>` does not compile).
/// Panics (a programming error, not input) when the length or
/// alignment does not fit; model loading checks alignment once, and [`try_as_blocks`] reports it.
pub fn as_blocks<T: Pod>(bytes: &[u8]) -> &[T] {
    match try_as_blocks(bytes) {
        Ok(blocks) => blocks,
        Err(e) => panic!("as_blocks: {e}"),
    }
}

/// Mutable counterpart of [`as_blocks`].
pub fn as_blocks_mut<T: Pod>(bytes: &mut [u8]) -> &mut [T] {
    match try_as_blocks_mut(bytes) {
        Ok(blocks) => blocks,
        Err(e) => panic!("as_blocks_mut: {e}"),
    }
}

/// The bytes of a slice of blocks (e.g. to store or compare them).
pub fn blocks_as_bytes<T: Pod>(blocks: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of_val(blocks)` bytes are initialized; `u8` has
    // alignment 1 and the result borrows `blocks`.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one row of `dtype` data into `out` (`out.len()` elements).
pub fn dequantize_row(dtype: GgmlType, data: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in as_blocks::<BlockQ4_0>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = b.d.to_f32();
                for j in 0..QK / 2 {
                    y[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in as_blocks::<BlockQ4_1>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let (d, m) = (b.d.to_f32(), b.m.to_f32());
                for j in 0..QK / 2 {
                    y[j] = (b.qs[j] & 0xF) as f32 * d + m;
                    y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in as_blocks::<BlockQ5_0>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = b.d.to_f32();
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((b.qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                    y[j + QK / 2] = (((b.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in as_blocks::<BlockQ5_1>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let (d, m) = (b.d.to_f32(), b.m.to_f32());
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((b.qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                    y[j + QK / 2] = ((b.qs[j] >> 4) as u32 | h1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in as_blocks::<BlockQ8_0>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = b.d.to_f32();
                for j in 0..QK {
                    y[j] = b.qs[j] as f32 * d;
                }
            }
        }
        GgmlType::Q8_1 => {
            for (b, y) in as_blocks::<BlockQ8_1>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK))
            {
                let d = b.d.to_f32();
                for j in 0..QK {
                    y[j] = b.qs[j] as f32 * d;
                }
            }
        }
        GgmlType::Q4K => {
            for (b, y) in as_blocks::<BlockQ4K>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
                for c in 0..4 {
                    let (sc0, m0) = scale_min_k4(2 * c, &b.scales);
                    let (sc1, m1) = scale_min_k4(2 * c + 1, &b.scales);
                    let q = &b.qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d * sc0 as f32 * (q[l] & 0xF) as f32 - dmin * m0 as f32;
                        y[64 * c + 32 + l] = d * sc1 as f32 * (q[l] >> 4) as f32 - dmin * m1 as f32;
                    }
                }
            }
        }
        GgmlType::Q5K => {
            for (b, y) in as_blocks::<BlockQ5K>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
                for c in 0..4 {
                    let (sc0, m0) = scale_min_k4(2 * c, &b.scales);
                    let (sc1, m1) = scale_min_k4(2 * c + 1, &b.scales);
                    let q = &b.qs[32 * c..32 * c + 32];
                    let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                    for l in 0..32 {
                        let h0 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                        let h1 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                        y[64 * c + l] =
                            d * sc0 as f32 * ((q[l] & 0xF) + h0) as f32 - dmin * m0 as f32;
                        y[64 * c + 32 + l] =
                            d * sc1 as f32 * ((q[l] >> 4) + h1) as f32 - dmin * m1 as f32;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, y) in as_blocks::<BlockQ6K>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                let d = b.d.to_f32();
                for half in 0..2 {
                    let ql = &b.ql[64 * half..];
                    let qh = &b.qh[32 * half..];
                    let sc = &b.scales[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Q8K => {
            for (b, y) in as_blocks::<BlockQ8K>(data)
                .iter()
                .zip(out.chunks_exact_mut(QK_K))
            {
                for j in 0..QK_K {
                    y[j] = b.qs[j] as f32 * b.d;
                }
            }
        }
    }
    debug_assert_eq!(n, out.len());
}
