//! The NCCL collective on one GPU, built only with `--features nccl` and run on a machine with
//! a CUDA device 0 and NCCL's library (`libnccl.so.2`) on the loader's path.
//!
//! One card cannot hold two ranks, but NCCL accepts a communicator of one rank: these tests
//! open `NcclGroup` in a world of one (as `dist::connect` does for a launcher's `WORLD_SIZE=1`
//! on a GPU), through the same store and rendezvous as a real job, and check every operation
//! the engine uses: in a world of one a sum, a reduce-scatter and a gather give back the
//! rank's own values, so any slip in the buffer offsets, the dtypes or the shapes shows as a
//! difference.
//!
//! Run: `cargo test -p recap-runtime --features nccl --test nccl` (needs a CUDA device 0).
#![cfg(feature = "nccl")]

use std::net::TcpListener;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use recap_runtime::dist::nccl::NcclGroup;
use recap_runtime::dist::{Collective, Launcher, Timeouts, Topology};

/// A world of one on device 0, its store on a free loopback port.
fn group() -> (NcclGroup, Device) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let topo = Topology {
        rank: 0,
        world: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: Launcher::Torchrun,
    };
    let device = Device::new_cuda(0).expect("a CUDA device 0");
    let timeouts = Timeouts {
        connect: Duration::from_secs(30),
        op: Duration::from_secs(30),
    };
    let group = NcclGroup::connect(&topo, &device, timeouts).expect("NCCL opens a world of one");
    (group, device)
}

/// A 6 x 10 tensor of 0..60 in `dtype` on `device` (cast on the host, which casts every dtype).
fn counting(dtype: DType, device: &Device) -> Tensor {
    Tensor::arange(0u32, 60, &Device::Cpu)
        .and_then(|t| t.reshape((6, 10)))
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_device(device))
        .unwrap()
}

/// The values of `t` as f64, in row-major order.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap()
}

#[test]
fn a_world_of_one_sums_and_gathers_its_own_values() {
    let (mut g, dev) = group();
    assert_eq!((g.rank(), g.world(), g.is_leader()), (0, 1, true));

    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        let base = counting(dtype, &dev);
        // Rows 2-4 are contiguous but start 20 elements into the buffer, so the sum must read
        // from the view's offset; their transposed middle columns are not contiguous at all.
        let rows = base.narrow(0, 2, 3).unwrap();
        let strided = rows.narrow(1, 1, 7).unwrap().t().unwrap();
        for t in [&rows, &strided] {
            let sum = g.all_reduce_sum(t).unwrap();
            assert_eq!((sum.dims(), sum.dtype()), (t.dims(), dtype), "{dtype:?}");
            assert_eq!(values(&sum), values(t), "all_reduce_sum in {dtype:?}");
        }
    }

    // ZeRO-2's gradient buckets: one-dimensional f32, the whole tensor this rank's segment.
    for dtype in [DType::F32, DType::BF16] {
        let flat = counting(dtype, &dev)
            .flatten_all()
            .unwrap()
            .narrow(0, 5, 50)
            .unwrap();
        let part = g.reduce_scatter_sum(&flat, &[50]).unwrap();
        assert_eq!(
            (part.dims(), part.dtype()),
            (flat.dims(), dtype),
            "{dtype:?}"
        );
        assert_eq!(
            values(&part),
            values(&flat),
            "reduce_scatter_sum in {dtype:?}"
        );
    }
    assert!(g
        .reduce_scatter_sum(&counting(DType::F32, &dev), &[60])
        .is_err());

    let mut moments = [1.5, -2.25, 1e300, 0.0];
    g.all_reduce_f64(&mut moments).unwrap();
    assert_eq!(moments, [1.5, -2.25, 1e300, 0.0]);

    for dtype in [DType::F32, DType::BF16, DType::U32, DType::I64, DType::U8] {
        let rows = counting(dtype, &dev).narrow(0, 1, 4).unwrap();
        let all = g.all_gather(&rows).unwrap();
        assert_eq!((all.dims(), all.dtype()), (rows.dims(), dtype), "{dtype:?}");
        assert_eq!(values(&all), values(&rows), "all_gather in {dtype:?}");
    }
    g.barrier().unwrap();
}

#[test]
fn a_world_of_one_refuses_what_nccl_cannot_carry() {
    let (mut g, dev) = group();
    let ids = counting(DType::U32, &dev);
    let err = g.all_reduce_sum(&ids).unwrap_err().to_string();
    assert!(err.contains("not U32"), "{err}");
    let scalar = Tensor::new(1f32, &dev).unwrap();
    let err = g.all_gather(&scalar).unwrap_err().to_string();
    assert!(err.contains("at least one dimension"), "{err}");
}
