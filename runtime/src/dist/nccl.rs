//! A process-level [`Collective`] over NCCL (cudarc's bindings), for ranks on CUDA GPUs, one GPU
//! per rank. Takes the ranks' tensors in GPU memory; gives the sums and gathers NCCL computes
//! there, without a copy through the host. Rank 0 makes NCCL's unique id and hands it to the
//! others through the job's TCP store, after a rendezvous that names any rank that did not come.
//!
//! NCCL's ring sums in an order of its own, so sums agree across ranks (NCCL gives every rank
//! the same bits) but need not equal a sum in rank order; the TCP group is the exact reference.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DeviceRepr, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Shape, Storage, Tensor};
use half::{bf16, f16};

use super::env::Topology;
use super::store::{rendezvous, Store};
use super::tcp::Timeouts;
use super::Collective;

/// The store key under which rank 0 publishes NCCL's unique id.
const ID_KEY: &str = "nccl/unique-id";

/// One rank of a job whose collectives go through NCCL on this rank's GPU.
pub struct NcclGroup {
    comm: Comm,
    device: CudaDevice,
    /// The store stays open for the group's life: rank 0 serves it.
    _store: Store,
}

// SAFETY: an NCCL communicator may be used from any thread as long as no two threads use it at
// once; the group is only reached through `&mut self` (the `Collective` methods), so calls on
// it are never concurrent. cudarc leaves `Comm` without `Send` only because it holds a raw
// pointer.
unsafe impl Send for NcclGroup {}

impl NcclGroup {
    /// Meets the other ranks at the store, shares rank 0's NCCL id, and opens the communicator
    /// on `device`'s stream, so collectives queue behind the kernels that made their operands.
    pub fn connect(topo: &Topology, device: &Device, timeouts: Timeouts) -> Result<NcclGroup> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device, not {device:?}");
        };
        let mut store = Store::start(
            &topo.master_addr,
            topo.master_port,
            topo.rank == 0,
            timeouts.connect,
        )?;
        if topo.rank == 0 {
            let id = Id::new().map_err(|e| anyhow!("NCCL cannot make a unique id: {e:?}"))?;
            let bytes: Vec<u8> = id.internal().iter().map(|c| *c as u8).collect();
            store.set(ID_KEY, &bytes)?;
        }
        rendezvous(&mut store, topo.rank, topo.world, timeouts.connect)?;
        let bytes = store.get(ID_KEY, timeouts.connect)?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|b| *b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                anyhow!(
                    "rank 0 published an NCCL id of {} bytes, not 128",
                    bytes.len()
                )
            })?;
        let stream: Arc<CudaStream> = cuda.cuda_stream();
        let comm = Comm::from_rank(stream, topo.rank, topo.world, Id::uninit(internal))
            .map_err(|e| anyhow!("NCCL cannot open the communicator: {e:?}"))?;
        Ok(NcclGroup {
            comm,
            device: cuda.clone(),
            _store: store,
        })
    }

    /// The element-wise sum across ranks of one contiguous CUDA buffer of `T`.
    fn sum_slice<T: NcclType + CudaDType + DeviceRepr + ValidAsZeroBits>(
        &self,
        t: &Tensor,
    ) -> Result<Tensor> {
        let t = t.contiguous()?;
        self.call::<T, _, _>(
            &t,
            t.elem_count(),
            t.shape().clone(),
            "all_reduce",
            |c, s, d| c.all_reduce(s, d, &ReduceOp::Sum),
        )
    }

    /// This rank's segment of the sum across ranks of a one-dimensional CUDA buffer of `T` cut
    /// into segments of `counts[r]` elements. NCCL scatters equal segments only, so every
    /// segment is padded to the longest before the call and this rank's padding is cut off
    /// after it.
    fn scatter_slice<T: NcclType + CudaDType + DeviceRepr + ValidAsZeroBits>(
        &self,
        t: &Tensor,
        counts: &[usize],
    ) -> Result<Tensor> {
        let most = counts.iter().copied().max().unwrap_or(0);
        let mine = counts[self.comm.rank()];
        if most == 0 {
            return Ok(Tensor::zeros(0, t.dtype(), t.device())?);
        }
        let mut parts = Vec::with_capacity(2 * counts.len());
        let mut at = 0;
        for &n in counts {
            parts.push(t.narrow(0, at, n)?);
            if n < most {
                parts.push(Tensor::zeros(most - n, t.dtype(), t.device())?);
            }
            at += n;
        }
        let padded = Tensor::cat(&parts, 0)?;
        let sum = self.call::<T, _, _>(&padded, most, most, "reduce_scatter", |c, s, d| {
            c.reduce_scatter(s, d, &ReduceOp::Sum)
        })?;
        Ok(sum.narrow(0, 0, mine)?)
    }

    /// Every rank's contiguous CUDA buffer of `T`, of `rows[r]` rows each, concatenated in rank
    /// order. NCCL gathers equal lengths only, so shorter shards are padded to the longest and
    /// the padding is cut out afterwards.
    fn gather_slice<T: NcclType + CudaDType + DeviceRepr + ValidAsZeroBits>(
        &self,
        t: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor> {
        let most = rows.iter().copied().max().unwrap_or(0);
        let padded = if t.dim(0)? < most {
            let mut shape = t.dims().to_vec();
            shape[0] = most - t.dim(0)?;
            Tensor::cat(&[t, &Tensor::zeros(shape, t.dtype(), t.device())?], 0)?
        } else {
            t.contiguous()?
        };
        let world = rows.len();
        let mut shape = t.dims().to_vec();
        shape[0] = most * world;
        let all = self.call::<T, _, _>(
            &padded,
            padded.elem_count() * world,
            shape,
            "all_gather",
            |c, s, d| c.all_gather(s, d),
        )?;
        let parts = rows
            .iter()
            .enumerate()
            .map(|(r, n)| all.narrow(0, r * most, *n))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Runs one NCCL call `op` from the CUDA buffer of `T` that the contiguous `t` holds into
    /// a new buffer of `len` elements, given back as a tensor of `shape`; `what` names the call
    /// in errors.
    fn call<T: CudaDType + DeviceRepr + ValidAsZeroBits, S, E: std::fmt::Debug>(
        &self,
        t: &Tensor,
        len: usize,
        shape: impl Into<Shape>,
        what: &str,
        op: impl FnOnce(&Comm, &CudaView<'_, T>, &mut CudaSlice<T>) -> std::result::Result<S, E>,
    ) -> Result<Tensor> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            bail!("NCCL takes CUDA tensors; this one is on {:?}", t.device());
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| anyhow!("a contiguous tensor without contiguous offsets"))?;
        let src = cs.as_cuda_slice::<T>()?.slice(start..end);
        let mut dst: CudaSlice<T> = self.comm.stream().alloc_zeros(len)?;
        op(&self.comm, &src, &mut dst).map_err(|e| anyhow!("NCCL {what} failed: {e:?}"))?;
        drop(storage);
        let out = CudaStorage::wrap_cuda_slice(dst, self.device.clone());
        Ok(from_cuda(out, shape))
    }
}

/// A tensor (outside any gradient graph) over a CUDA buffer, with contiguous strides.
fn from_cuda(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        match t.dtype() {
            DType::F32 => self.sum_slice::<f32>(t),
            DType::F64 => self.sum_slice::<f64>(t),
            DType::BF16 => self.sum_slice::<bf16>(t),
            DType::F16 => self.sum_slice::<f16>(t),
            d => bail!("NCCL sums f32, f64, bf16 and f16 tensors, not {d:?}"),
        }
    }

    fn reduce_scatter_sum(&mut self, t: &Tensor, counts: &[usize]) -> Result<Tensor> {
        super::segment_start(t, counts, self.rank(), self.world())?;
        match t.dtype() {
            DType::F32 => self.scatter_slice::<f32>(t, counts),
            DType::F64 => self.scatter_slice::<f64>(t, counts),
            DType::BF16 => self.scatter_slice::<bf16>(t, counts),
            DType::F16 => self.scatter_slice::<f16>(t, counts),
            d => bail!("NCCL sums f32, f64, bf16 and f16 tensors, not {d:?}"),
        }
    }

    fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::from_slice(values, values.len(), &Device::Cuda(self.device.clone()))?;
        let sum = self.sum_slice::<f64>(&t)?.to_vec1::<f64>()?;
        values.copy_from_slice(&sum);
        Ok(())
    }

    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        if t.rank() == 0 {
            bail!("all_gather needs tensors of at least one dimension");
        }
        // The shards' lengths first, so every rank knows where each one ends.
        let mut rows = vec![0.0f64; self.world()];
        rows[self.rank()] = t.dim(0)? as f64;
        self.all_reduce_f64(&mut rows)?;
        let rows: Vec<usize> = rows.iter().map(|r| *r as usize).collect();
        match t.dtype() {
            DType::F32 => self.gather_slice::<f32>(t, &rows),
            DType::F64 => self.gather_slice::<f64>(t, &rows),
            DType::BF16 => self.gather_slice::<bf16>(t, &rows),
            DType::F16 => self.gather_slice::<f16>(t, &rows),
            DType::U32 => self.gather_slice::<u32>(t, &rows),
            DType::I64 => self.gather_slice::<i64>(t, &rows),
            DType::U8 => self.gather_slice::<u8>(t, &rows),
            d => bail!("NCCL gathers numeric tensors, not {d:?}"),
        }
    }

    fn barrier(&mut self) -> Result<()> {
        // A one-element sum every rank must join, waited for on the host.
        let mut one = [1.0];
        self.all_reduce_f64(&mut one)
            .context("the NCCL barrier failed")
    }
}
