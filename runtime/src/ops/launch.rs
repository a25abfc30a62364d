//! The launch geometry of the CUDA kernels of `kernels/recap.cu`: how many blocks of how many
//! threads each launch in `ops::cuda` uses. It is kept apart from the CUDA code, and public, so
//! the emulated-kernel tests (`tests/cuda_emu.rs`, which run the kernels on the CPU) launch them
//! exactly as the CUDA path does, on a machine with no GPU and a build with no `cuda` feature.

/// Blocks of a launch and threads per block, each as (x, y, z).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// Threads per block of the element-wise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;

/// A grid size; one too large for `u32` becomes `u32::MAX`, which the driver rejects, rather
/// than wrapping to a grid that would silently leave work undone.
fn blocks(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One block per row, its width the row length rounded up to whole warps, at most 256 threads
/// (which leaves every kernel room for up to 255 registers a thread). The row-wise kernels
/// need whole warps: their reductions shuffle across all 32 lanes.
pub fn per_row(rows: usize, n: usize) -> Geometry {
    Geometry {
        grid: (blocks(rows), 1, 1),
        block: ((n.div_ceil(32) * 32).clamp(32, 256) as u32, 1, 1),
    }
}

/// One thread per element, in blocks of [`ELEMENTWISE_BLOCK`].
pub fn per_elem(len: usize) -> Geometry {
    Geometry {
        grid: (blocks(len.div_ceil(ELEMENTWISE_BLOCK as usize)), 1, 1),
        block: (ELEMENTWISE_BLOCK, 1, 1),
    }
}

/// The RMSNorm weight gradient's launch over `rows` rows of `n` columns, and the rows each
/// thread sums (`chunk`): one thread per column (grid x), chunks of rows along grid y, which
/// may not pass 65535 blocks, so a chunk is at least `rows / 65535` rows (and at least 64, so
/// a thread's one atomic add follows enough work).
pub fn rms_norm_dw(rows: usize, n: usize) -> (Geometry, usize) {
    let chunk = rows.div_ceil(65_535).max(64);
    let geometry = Geometry {
        grid: (
            blocks(n.div_ceil(ELEMENTWISE_BLOCK as usize)),
            blocks(rows.div_ceil(chunk)),
            1,
        ),
        block: (ELEMENTWISE_BLOCK, 1, 1),
    };
    (geometry, chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_get_whole_warps_and_grids_stay_in_the_hardware_limits() {
        assert_eq!(per_row(3, 1).block, (32, 1, 1));
        assert_eq!(per_row(3, 40).block, (64, 1, 1));
        assert_eq!(per_row(3, 300).block, (256, 1, 1));
        assert_eq!(per_row(7, 300).grid, (7, 1, 1));
        assert_eq!(per_elem(257).grid, (2, 1, 1));
        let (g, chunk) = rms_norm_dw(10_000_000, 896);
        assert!(g.grid.1 <= 65_535 && g.grid.1 as usize * chunk >= 10_000_000);
        assert_eq!(rms_norm_dw(150, 40), (per_elem_2d(1, 3), 64));
        assert_eq!(per_row(1 << 33, 8).grid.0, u32::MAX);
    }

    fn per_elem_2d(x: u32, y: u32) -> Geometry {
        Geometry {
            grid: (x, y, 1),
            block: (ELEMENTWISE_BLOCK, 1, 1),
        }
    }
}
