//! Portable scalar micro-kernels over the same packings as the SIMD kernels. They run anywhere, and
//! their tests check the packing (including the +128 trick) that the AVX-512 VNNI kernels share.

use super::packed::{MicroKernel, PackW, PackX, TileGeo, TileOutOfBounds, in_bounds};

/// Generic scalar tile: `acc[p·NR + c] = Σ x·w` (wrapping, like the hardware).
#[inline(always)]
fn tile_scalar<
    X: PackX + Into<i32>,
    W: PackW + Into<i32>,
    const MR: usize,
    const NR: usize,
    const KW: usize,
>(
    x: &[X],
    offs: &[usize],
    w: &[W],
    geo: &TileGeo<'_>,
    acc: &mut [i32],
    name: &'static str,
) -> Result<(), TileOutOfBounds> {
    if !in_bounds(x, offs, w, geo, acc, (MR, NR, KW)) {
        return Err(TileOutOfBounds(name));
    }
    acc[..offs.len() * NR].fill(0);
    let mut wi = 0;
    for &t in geo.taps {
        for ch in 0..geo.chunks {
            let wb = &w[wi..wi + NR * KW];
            wi += NR * KW;
            for (p, &o) in offs.iter().enumerate().take(MR) {
                let xs = &x[o + t + ch * KW..o + t + ch * KW + KW];
                for c in 0..NR {
                    let mut s = 0i32;
                    for kk in 0..KW {
                        s = s.wrapping_add(xs[kk].into() * wb[c * KW + kk].into());
                    }
                    acc[p * NR + c] = acc[p * NR + c].wrapping_add(s);
                }
            }
        }
    }
    Ok(())
}

/// `portable-u8i8i32`: the VNNI packing (NR = 32, KW = 4, MR = 12), in scalar code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortableU8;
impl MicroKernel for PortableU8 {
    const NAME: &'static str = "portable-u8i8i32";
    type X = u8;
    type W = i8;
    const MR: usize = 12;
    const NR: usize = 32;
    const KW: usize = 4;
    fn tile(
        &self,
        x: &[u8],
        offs: &[usize],
        w: &[i8],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds> {
        tile_scalar::<u8, i8, 12, 32, 4>(x, offs, w, geo, acc, Self::NAME)
    }
}

/// `portable-i16i16i32`: the AVX2 packing (NR = 16, KW = 2, MR = 6), in scalar code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortableI16;
impl MicroKernel for PortableI16 {
    const NAME: &'static str = "portable-i16i16i32";
    type X = i16;
    type W = i16;
    const MR: usize = 6;
    const NR: usize = 16;
    const KW: usize = 2;
    fn tile(
        &self,
        x: &[i16],
        offs: &[usize],
        w: &[i16],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds> {
        tile_scalar::<i16, i16, 6, 16, 2>(x, offs, w, geo, acc, Self::NAME)
    }
}
