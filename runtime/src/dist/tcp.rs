//! A process-level [`Collective`] over TCP, for ranks on CPUs (and the tests of a job of several
//! processes on machines without GPUs). Takes each rank's tensors; gives every rank the sums and
//! gathers, bit-identical to [`super::ThreadGroup`] and to summing in one process in rank order.
//!
//! Rank 0 is the hub: every other rank sends its operand to rank 0, which reads them in rank
//! order, checks that they agree (the same operation, dtype and shape), sums them in rank order
//! with the same tensor additions a `ThreadGroup` makes, and sends the result back. That is
//! `2 (world - 1)` transfers through one host per operation: slow for large models, which is
//! why GPUs go through NCCL, but simple and exact.
//!
//! A frame is an operation byte, a dtype byte, the dimensions (u32 count, u64 each) and the
//! payload (u64 length, raw little-endian elements). A rank that dies closes its socket and is
//! named at once; a rank that hangs is named when the operation's timeout passes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::store::{bind_addr, connect_with_retry, read_bytes, rendezvous, secs, Store};
use super::Collective;

const OP_SUM: u8 = 1;
const OP_SUM_F64: u8 = 2;
const OP_GATHER: u8 = 3;
const OP_BARRIER: u8 = 4;
const OP_SCATTER: u8 = 5;
const OP_ERROR: u8 = 255;

/// The store key under which rank 0 publishes the port of its collective listener.
const PORT_KEY: &str = "tcp/port";

fn op_name(op: u8) -> &'static str {
    match op {
        OP_SUM => "all_reduce_sum",
        OP_SUM_F64 => "all_reduce_f64",
        OP_GATHER => "all_gather",
        OP_BARRIER => "barrier",
        OP_SCATTER => "reduce_scatter_sum",
        _ => "an unknown operation",
    }
}

/// How long the TCP group waits for others.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the ranks to meet (the store, the rendezvous, the connections).
    pub connect: Duration,
    /// For one operation: how long a rank may take to reach the same call as the others.
    pub op: Duration,
}

/// One rank of a job whose collectives go through rank 0 over TCP.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: a connection to each other rank, indexed by rank (index 0 unused). Others: the
    /// connection to rank 0 at index 0.
    peers: Vec<Option<Peer>>,
    /// The store stays open for the group's life: rank 0 serves it.
    _store: Store,
    /// Set once an operation failed: the ranks no longer agree on where they are, so every
    /// later operation fails with this message instead of mismatching frames.
    failed: Option<String>,
}

struct Peer {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
}

impl Peer {
    fn new(s: TcpStream, timeout: Duration) -> Result<Peer> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Peer {
            r: BufReader::new(s.try_clone()?),
            w: BufWriter::new(s),
        })
    }
}

impl TcpGroup {
    /// Meets the other ranks at rank 0's store (`master_addr:master_port`; rank 0 serves it),
    /// then connects every rank to rank 0's collective listener.
    pub fn connect(
        rank: usize,
        world: usize,
        master_addr: &str,
        master_port: u16,
        timeouts: Timeouts,
    ) -> Result<TcpGroup> {
        let store = Store::start(master_addr, master_port, rank == 0, timeouts.connect)?;
        TcpGroup::over(store, rank, world, timeouts)
    }

    /// As [`TcpGroup::connect`], on a store already started.
    pub fn over(
        mut store: Store,
        rank: usize,
        world: usize,
        timeouts: Timeouts,
    ) -> Result<TcpGroup> {
        if rank >= world {
            bail!("rank {rank} in a world of {world}");
        }
        let mut peers: Vec<Option<Peer>> = (0..world).map(|_| None).collect();
        if rank == 0 {
            let listener = TcpListener::bind(bind_addr(store.addr(), 0))
                .context("rank 0 cannot open its collective listener")?;
            let port = listener.local_addr()?.port();
            store.set(PORT_KEY, &port.to_le_bytes())?;
            rendezvous(&mut store, rank, world, timeouts.connect)?;
            accept_ranks(&listener, &mut peers, world, timeouts)?;
        } else {
            rendezvous(&mut store, rank, world, timeouts.connect)?;
            let port = store.get(PORT_KEY, timeouts.connect)?;
            let port = u16::from_le_bytes(
                port.try_into()
                    .map_err(|_| anyhow!("rank 0 published a malformed port"))?,
            );
            let s = connect_with_retry(store.addr(), port, timeouts.connect)
                .context("cannot reach rank 0's collective listener")?;
            let mut peer = Peer::new(s, timeouts.op)?;
            peer.w.write_all(&(rank as u64).to_le_bytes())?;
            peer.w.write_all(&(world as u64).to_le_bytes())?;
            peer.w.flush()?;
            peers[0] = Some(peer);
        }
        Ok(TcpGroup {
            rank,
            world,
            peers,
            _store: store,
            failed: None,
        })
    }

    /// One operation: this rank's `frame` in, the combined frame out, the same on every rank.
    fn exchange(&mut self, frame: Frame) -> Result<Frame> {
        if let Some(e) = &self.failed {
            bail!("the collective group failed earlier: {e}");
        }
        let result = if self.rank == 0 {
            self.hub(frame)
        } else {
            self.spoke(frame)
        };
        if let Err(e) = &result {
            self.failed = Some(format!("{e:#}"));
        }
        result
    }

    /// Rank 0: reads every rank's frame in rank order, combines them, sends the result back.
    fn hub(&mut self, own: Frame) -> Result<Frame> {
        let op = own.op;
        let mut frames = vec![own];
        for r in 1..self.world {
            let read = {
                let peer = self.peers[r].as_mut().expect("rank 0 holds every peer");
                Frame::read(&mut peer.r)
            };
            match read {
                Ok(f) => frames.push(f),
                Err(e) => {
                    let message = lost(r, op, &e);
                    self.broadcast_error(&message);
                    bail!(message);
                }
            }
        }
        let combined = match combine(&frames) {
            Ok(f) => f,
            Err(e) => {
                let message = format!("{e:#}");
                self.broadcast_error(&message);
                bail!(message);
            }
        };
        for r in 1..self.world {
            let peer = self.peers[r].as_mut().expect("rank 0 holds every peer");
            if let Err(e) = combined.write_part(r, &mut peer.w) {
                let message = lost(r, op, &e);
                self.broadcast_error(&message);
                bail!(message);
            }
        }
        combined.into_part(0)
    }

    /// Every other rank: sends its frame to rank 0 and reads the result.
    fn spoke(&mut self, own: Frame) -> Result<Frame> {
        let op = own.op;
        let peer = self.peers[0]
            .as_mut()
            .expect("a rank holds rank 0's connection");
        let answer = own
            .write(&mut peer.w)
            .and_then(|()| Frame::read(&mut peer.r));
        match answer {
            Ok(f) if f.op == OP_ERROR => bail!("{}", String::from_utf8_lossy(&f.data)),
            Ok(f) => Ok(f),
            Err(e) => bail!(lost(0, op, &e)),
        }
    }

    /// Tells every rank still listening why the operation failed, so they stop at once rather
    /// than at their timeout.
    fn broadcast_error(&mut self, message: &str) {
        let frame = Frame {
            op: OP_ERROR,
            dtype: 0,
            dims: Vec::new(),
            data: message.as_bytes().to_vec(),
        };
        for peer in self.peers.iter_mut().flatten() {
            let _ = frame.write(&mut peer.w);
        }
    }
}

/// Rank 0 accepts a connection from each other rank, which introduces itself with its rank and
/// world; gives up after the connect timeout naming the ranks that did not connect.
fn accept_ranks(
    listener: &TcpListener,
    peers: &mut [Option<Peer>],
    world: usize,
    timeouts: Timeouts,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeouts.connect;
    let mut waiting = world - 1;
    while waiting > 0 {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                let mut peer = Peer::new(s, timeouts.connect)?;
                let mut hello = [0u8; 16];
                peer.r.read_exact(&mut hello)?;
                let r = u64::from_le_bytes(hello[..8].try_into()?) as usize;
                let w = u64::from_le_bytes(hello[8..].try_into()?) as usize;
                if w != world || r == 0 || r >= world {
                    bail!("a process says it is rank {r} of {w}, but this job has {world} ranks");
                }
                if peers[r].is_some() {
                    bail!("two processes say they are rank {r}");
                }
                let s = peer.w.get_ref();
                s.set_read_timeout(Some(timeouts.op))?;
                s.set_write_timeout(Some(timeouts.op))?;
                peers[r] = Some(peer);
                waiting -= 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|r| peers[*r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "rank(s) {} did not connect to rank 0 within {}",
                        missing.join(", "),
                        secs(timeouts.connect)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The error for a connection to `rank` that failed during `op`: closed (the rank died) or
/// silent past the timeout (the rank hangs or is elsewhere in the program).
fn lost(rank: usize, op: u8, e: &anyhow::Error) -> String {
    let timed_out = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    });
    if timed_out {
        format!(
            "rank {rank} did not take part in {} before the timeout (it hangs, or it is at another collective call)",
            op_name(op)
        )
    } else {
        format!(
            "rank {rank} left the job during {} (its connection closed: did it fail?): {e:#}",
            op_name(op)
        )
    }
}

/// One rank's operand or a result on the wire. A reduce-scatter's frame carries the segments'
/// lengths after the operand's length in `dims` (`[n, counts...]`), so that rank 0 checks the
/// ranks agree on them and cuts the sum by them.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    op: u8,
    dtype: u8,
    dims: Vec<u64>,
    data: Vec<u8>,
}

impl Frame {
    fn write(&self, w: &mut impl Write) -> Result<()> {
        write_frame(w, self.op, self.dtype, &self.dims, &self.data)
    }

    fn read(r: &mut impl Read) -> Result<Frame> {
        let mut head = [0u8; 6];
        r.read_exact(&mut head)?;
        let n = u32::from_le_bytes(head[2..6].try_into()?) as usize;
        let mut dims = Vec::with_capacity(n);
        for _ in 0..n {
            let mut d = [0u8; 8];
            r.read_exact(&mut d)?;
            dims.push(u64::from_le_bytes(d));
        }
        let data = read_bytes(r)?;
        Ok(Frame {
            op: head[0],
            dtype: head[1],
            dims,
            data,
        })
    }

    fn of_tensor(op: u8, t: &Tensor) -> Result<Frame> {
        Ok(Frame {
            op,
            dtype: dtype_code(t.dtype())?,
            dims: t.dims().iter().map(|d| *d as u64).collect(),
            data: tensor_bytes(t)?,
        })
    }

    fn tensor(&self) -> Result<Tensor> {
        let dims: Vec<usize> = match self.op {
            OP_SCATTER => self.dims.first().map(|n| *n as usize).into_iter().collect(),
            _ => self.dims.iter().map(|d| *d as usize).collect(),
        };
        tensor_from_bytes(&self.data, code_dtype(self.dtype)?, &dims)
    }

    /// Sends rank `r` its part of a combined frame: a reduce-scatter's segment `r`, written
    /// from the combined sum without copying it out, or else the whole frame.
    fn write_part(&self, r: usize, w: &mut impl Write) -> Result<()> {
        if self.op != OP_SCATTER {
            return self.write(w);
        }
        let (len, bytes) = self.segment(r)?;
        write_frame(w, OP_SCATTER, self.dtype, &[len], &self.data[bytes])
    }

    /// Rank 0's own part of a combined frame: its reduce-scatter segment, cut from the sum in
    /// place, or else the whole frame.
    fn into_part(mut self, r: usize) -> Result<Frame> {
        if self.op != OP_SCATTER {
            return Ok(self);
        }
        let (len, bytes) = self.segment(r)?;
        self.data.truncate(bytes.end);
        self.data.drain(..bytes.start);
        self.dims = vec![len];
        Ok(self)
    }

    /// The length of a reduce-scatter's segment `r` and its byte range in the combined sum.
    fn segment(&self, r: usize) -> Result<(u64, std::ops::Range<usize>)> {
        let size = code_dtype(self.dtype)?.size_in_bytes();
        let counts = self.dims.get(1..).unwrap_or_default();
        let (Some(&len), Some(start)) = (
            counts.get(r),
            counts.get(..r).map(|c| c.iter().sum::<u64>()),
        ) else {
            bail!(
                "a reduce-scatter of {} segments has none for rank {r}",
                counts.len()
            );
        };
        let bytes = (start as usize * size)..((start + len) as usize * size);
        if bytes.end > self.data.len() {
            bail!("a reduce-scatter's segments overrun its sum");
        }
        Ok((len, bytes))
    }

    fn shape_text(&self) -> String {
        format!("{:?} {}", self.dims, dtype_name(self.dtype))
    }
}

/// Writes one frame: its operation, dtype, dims and the length of its data, then the data.
fn write_frame(w: &mut impl Write, op: u8, dtype: u8, dims: &[u64], data: &[u8]) -> Result<()> {
    w.write_all(&[op, dtype])?;
    w.write_all(&(dims.len() as u32).to_le_bytes())?;
    for d in dims {
        w.write_all(&d.to_le_bytes())?;
    }
    w.write_all(&(data.len() as u64).to_le_bytes())?;
    w.write_all(data)?;
    w.flush()?;
    Ok(())
}

/// Rank 0's combination of the ranks' frames (in rank order) for their common operation.
fn combine(frames: &[Frame]) -> Result<Frame> {
    let first = &frames[0];
    for (r, f) in frames.iter().enumerate().skip(1) {
        if f.op != first.op {
            bail!(
                "ranks called different collectives: rank 0 {}, rank {r} {}",
                op_name(first.op),
                op_name(f.op)
            );
        }
        let agree = match first.op {
            OP_GATHER => {
                f.dtype == first.dtype
                    && f.dims.len() == first.dims.len()
                    && f.dims.get(1..) == first.dims.get(1..)
            }
            _ => f.dtype == first.dtype && f.dims == first.dims,
        };
        if !agree {
            bail!(
                "ranks passed {} operands that do not match: rank 0 {}, rank {r} {}",
                op_name(first.op),
                first.shape_text(),
                f.shape_text()
            );
        }
    }
    match first.op {
        OP_SUM | OP_SCATTER => {
            // The same additions in the same order as ThreadGroup: bit-identical results.
            let mut sum = first.tensor()?;
            for f in &frames[1..] {
                sum = (sum + f.tensor()?)?;
            }
            let mut out = Frame::of_tensor(first.op, &sum)?;
            out.dims.clone_from(&first.dims);
            Ok(out)
        }
        OP_SUM_F64 => {
            let mut sum = vec![0.0f64; first.data.len() / 8];
            for f in frames {
                for (s, x) in sum.iter_mut().zip(f.data.chunks_exact(8)) {
                    *s += f64::from_le_bytes(x.try_into()?);
                }
            }
            Ok(Frame {
                op: OP_SUM_F64,
                dtype: dtype_code(DType::F64)?,
                dims: first.dims.clone(),
                data: sum.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
        }
        OP_GATHER => {
            let mut dims = first.dims.clone();
            if dims.is_empty() {
                bail!("all_gather needs tensors of at least one dimension");
            }
            dims[0] = frames.iter().map(|f| f.dims[0]).sum();
            Ok(Frame {
                op: OP_GATHER,
                dtype: first.dtype,
                dims,
                data: frames.iter().flat_map(|f| f.data.iter().copied()).collect(),
            })
        }
        OP_BARRIER => Ok(first.clone()),
        other => bail!("unknown collective operation {other}"),
    }
}

const DTYPES: [(DType, &str); 7] = [
    (DType::F32, "f32"),
    (DType::F64, "f64"),
    (DType::BF16, "bf16"),
    (DType::F16, "f16"),
    (DType::U8, "u8"),
    (DType::U32, "u32"),
    (DType::I64, "i64"),
];

fn dtype_code(d: DType) -> Result<u8> {
    DTYPES
        .iter()
        .position(|(x, _)| *x == d)
        .map(|i| i as u8)
        .ok_or_else(|| anyhow!("the TCP collective does not carry {d:?} tensors"))
}

fn code_dtype(c: u8) -> Result<DType> {
    DTYPES
        .get(c as usize)
        .map(|(d, _)| *d)
        .ok_or_else(|| anyhow!("unknown dtype code {c} on the wire"))
}

fn dtype_name(c: u8) -> &'static str {
    DTYPES.get(c as usize).map_or("?", |(_, n)| n)
}

/// A tensor's elements in row-major order as little-endian bytes.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(match t.dtype() {
        DType::F32 => le_pod(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le_pod(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::BF16 => le(flat.to_vec1::<bf16>()?, |x| x.to_bits().to_le_bytes()),
        DType::F16 => le(flat.to_vec1::<f16>()?, |x| x.to_bits().to_le_bytes()),
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => le_pod(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I64 => le_pod(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        d => bail!("the TCP collective does not carry {d:?} tensors"),
    })
}

fn le<T, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// [`le`] for plain numbers: on a little-endian machine their memory is already the wire's
/// bytes, copied at once rather than element by element (gradient buckets are 128 MiB).
fn le_pod<T: bytemuck::Pod, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(&v).to_vec()
    } else {
        le(v, f)
    }
}

/// Elements of `N` little-endian bytes each, decoded by `f`.
fn de<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    b.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

/// [`de`] for plain numbers, copied at once on a little-endian machine.
fn de_pod<T: bytemuck::Pod, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(b)
    } else {
        de(b, f)
    }
}

/// The inverse of [`tensor_bytes`], on the CPU.
fn tensor_from_bytes(b: &[u8], dtype: DType, dims: &[usize]) -> Result<Tensor> {
    let elements: usize = dims.iter().product();
    if b.len() != elements * dtype.size_in_bytes() {
        bail!(
            "a frame of {} bytes cannot hold a {dims:?} {dtype:?} tensor",
            b.len()
        );
    }
    let cpu = &Device::Cpu;
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(de_pod(b, f32::from_le_bytes), dims, cpu)?,
        DType::F64 => Tensor::from_vec(de_pod(b, f64::from_le_bytes), dims, cpu)?,
        DType::BF16 => {
            Tensor::from_vec(de(b, |x| bf16::from_bits(u16::from_le_bytes(x))), dims, cpu)?
        }
        DType::F16 => {
            Tensor::from_vec(de(b, |x| f16::from_bits(u16::from_le_bytes(x))), dims, cpu)?
        }
        DType::U8 => Tensor::from_vec(b.to_vec(), dims, cpu)?,
        DType::U32 => Tensor::from_vec(de_pod(b, u32::from_le_bytes), dims, cpu)?,
        DType::I64 => Tensor::from_vec(de_pod(b, i64::from_le_bytes), dims, cpu)?,
        d => bail!("the TCP collective does not carry {d:?} tensors"),
    })
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        let out = self.exchange(Frame::of_tensor(OP_SUM, t)?)?;
        Ok(out.tensor()?.to_device(t.device())?)
    }

    fn reduce_scatter_sum(&mut self, t: &Tensor, counts: &[usize]) -> Result<Tensor> {
        super::segment_start(t, counts, self.rank, self.world)?;
        let mut frame = Frame::of_tensor(OP_SCATTER, t)?;
        frame.dims.extend(counts.iter().map(|c| *c as u64));
        let out = self.exchange(frame)?;
        Ok(out.tensor()?.to_device(t.device())?)
    }

    fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()> {
        let frame = Frame {
            op: OP_SUM_F64,
            dtype: dtype_code(DType::F64)?,
            dims: vec![values.len() as u64],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let out = self.exchange(frame)?;
        for (v, x) in values.iter_mut().zip(out.data.chunks_exact(8)) {
            *v = f64::from_le_bytes(x.try_into()?);
        }
        Ok(())
    }

    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        if t.rank() == 0 {
            bail!("all_gather needs tensors of at least one dimension");
        }
        let out = self.exchange(Frame::of_tensor(OP_GATHER, t)?)?;
        Ok(out.tensor()?.to_device(t.device())?)
    }

    fn barrier(&mut self) -> Result<()> {
        let frame = Frame {
            op: OP_BARRIER,
            dtype: 0,
            dims: Vec::new(),
            data: Vec::new(),
        };
        self.exchange(frame).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_through_bytes() {
        let t = Tensor::new(&[[1.5f32, -0.0], [f32::MIN_POSITIVE, 3.0]], &Device::Cpu).unwrap();
        for dtype in [
            DType::F32,
            DType::F64,
            DType::BF16,
            DType::F16,
            DType::U8,
            DType::U32,
            DType::I64,
        ] {
            let x = t.abs().unwrap().to_dtype(dtype).unwrap();
            let back = tensor_from_bytes(&tensor_bytes(&x).unwrap(), dtype, &[2, 2]).unwrap();
            assert_eq!(
                tensor_bytes(&back).unwrap(),
                tensor_bytes(&x).unwrap(),
                "{dtype:?}"
            );
            assert_eq!(back.dims(), &[2, 2]);
        }
        assert!(tensor_from_bytes(&[0; 7], DType::F32, &[2]).is_err());
    }

    #[test]
    fn mismatched_operands_are_named() {
        let a = Frame::of_tensor(
            OP_SUM,
            &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let b = Frame::of_tensor(
            OP_SUM,
            &Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert_eq!(
            format!("{:#}", combine(&[a.clone(), b]).unwrap_err()),
            "ranks passed all_reduce_sum operands that do not match: rank 0 [2, 3] f32, rank 1 [3, 2] f32"
        );
        let c = Frame {
            op: OP_BARRIER,
            dtype: 0,
            dims: vec![],
            data: vec![],
        };
        assert_eq!(
            format!("{:#}", combine(&[a, c]).unwrap_err()),
            "ranks called different collectives: rank 0 all_reduce_sum, rank 1 barrier"
        );
    }
}
